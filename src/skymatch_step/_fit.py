"""From the pair records to group offsets: the weighted fit and what it reports.

The pair records (`PairRecord`) are the boundary between measuring and
solving: the comparison fills in what each pair measured, `fit_records`
solves for the offsets (`skymatch_step._solver`) and fills in how the fit
used each pair; the diagnostics read the records.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ._solver import connected_sets, fit_offsets

__all__ = ["fit_records"]

log = logging.getLogger(__name__)


def fit_records(records, group_labels, options):
    """Fit the group offsets to the pair records; fill in their fit columns.

    Parameters
    ----------
    records : list of PairRecord
        What every overlapping pair of groups measured.
    group_labels : list
        The label of every group (for messages).
    options : MatchOptions
        ``min_pair_pixels``, ``reject_sigma`` and ``reject_iterations``.

    Returns
    -------
    offsets : ndarray
        Offset of every group (NaN for groups left out of every used pair).
    sets : ndarray of int
        The connected set of every group through the pairs used.
    """
    started = time.perf_counter()
    ngroups = len(group_labels)
    equations = [(r.a, r.b, r.difference, 0.0, r.weight) for r in records]
    errors = None
    if records and all(np.isfinite(r.error) for r in records):
        errors = [r.error for r in records]
    fit = fit_offsets(
        equations,
        ngroups,
        npix=[min(r.npix_a, r.npix_b) for r in records],
        errors=errors,
        min_pixels=options.min_pair_pixels,
        reject_sigma=options.reject_sigma,
        max_iterations=options.reject_iterations,
    )
    for k, r in enumerate(records):
        r.fitted = float(fit.fitted[k])
        r.residual = float(fit.residuals[k])
        r.normalized = float(fit.normalized[k])
        r.rejected = fit.rejected[k]
    _report_rejections(records, group_labels)
    used = [eq for eq, r in zip(equations, records, strict=True) if not r.rejected]
    sets = connected_sets(used, ngroups)
    log.info(
        "Fitted %d group offset(s) to %d pair(s) in %.2f s.",
        ngroups,
        len(records),
        time.perf_counter() - started,
    )
    return np.array(fit.offsets, dtype=float), sets


def _report_rejections(records, group_labels):
    """Name the pairs the fit left out, at WARNING."""
    rejected = [r for r in records if r.rejected]
    if not rejected:
        return
    shown = [
        f"{group_labels[r.a]} - {group_labels[r.b]} ({r.rejected}"
        + (f", normalized residual {r.normalized:.3g})" if r.rejected == "outlier" else ")")
        for r in rejected[:20]
    ]
    more = f"; and {len(rejected) - 20} more" if len(rejected) > 20 else ""
    log.warning(
        "%d of %d overlapping pair(s) left out of the fit: %s%s.",
        len(rejected),
        len(records),
        "; ".join(shown),
        more,
    )
