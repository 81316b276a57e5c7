"""From the pair records to every group's sky: the fit, its errors and what it reports.

The pair records (`PairRecord`) are the boundary between measuring and
solving: the comparison fills in what each pair measured, `fit_sky`
solves for every group and fills in how the fit used each pair; the
diagnostics read the records.

Honest errors. When the pairs carry errors (``compare='differences'``),
the fit checks them against its residuals. If the residuals are larger
than the errors allow (their chi-square exceeds its expectation by more
than three standard deviations), an *excess variance* ``s**2`` is added to
every pair's variance, chosen so that the chi-square per degree of freedom
is 1 (the Paule-Mandel estimator of random-effects meta-analysis): the
weights then follow the real disagreement of the pairs, not the pixel noise
alone, and no few pairs dominate. The log says so, with what to try. On
skies with pixel noise only the excess is 0 and nothing changes.

Uncertainties. Each group's level gets a 1-sigma uncertainty relative to
the mean level of its connected set (the offsets of a set are determined up
to a common constant, and a plane's up to a common plane). With pair errors
(``compare='differences'``) they are calibrated (`skymatch_step._uncertainty`):
the pair errors are propagated through the fit together with the pixels
that overlapping pairs share and, for a constant sky, the gradients that the
pairs' slopes show and a constant cannot follow; the Birge ratio widens the
part of the pair errors when the residuals call for it. For planes the
shared pixels and each group's own structure (what its pairs' errors hold
beyond pixel noise, common to all of them) widen the network's own
uncertainties (`Network`). Without
pair errors (``compare='statistics'``), the errors are taken from the
robust scatter of the weighted residuals.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2
from scipy.stats import f as f_dist

from ._network import Network
from ._solver import connected_sets, fit_offsets
from ._uncertainty import level_variances, shared_pixel_covariances, shared_structure_covariances

__all__ = ["SkyFit", "fit_sky"]

log = logging.getLogger(__name__)

#: Chi-square excess (in its standard errors) that calls for an excess variance.
_EXCESS_SIGMAS = 2.0

#: Most factor-of-4 steps when bracketing an excess variance.
_SEARCH_STEPS = 200

#: Residuals larger than their errors by this factor (RMS) get a WARNING.
_WARN_FACTOR = 3.0

#: Confidence of the test that keeps planes flat when no slope is called for.
_FLAT_CONFIDENCE = 0.99

#: Most EM iterations of the slopes' prior width.
_PRIOR_ITERATIONS = 50

#: Most groups for which uncertainties are computed.
_MAX_UNCERTAINTY_GROUPS = 20000


@dataclass
class SkyFit:
    """What the fit found for every group.

    Attributes
    ----------
    offsets : ndarray
        Level of every group (minimum-norm, before anchoring); NaN for
        groups in no used pair.
    sets : ndarray of int
        The connected set of every group through the pairs used.
    uncertainties : ndarray
        1-sigma uncertainty of every group's level relative to its set's
        mean; NaN where unknown.
    planes : ndarray or None
        ``(ngroups, 3)``: each group's plane, ``(value at the tangent point,
        d/dxi, d/deta)`` (per degree), for the plane sky model.
    excess : float
        Standard deviation added to every pair's error (0: none needed).
    chi2_pixel : float
        Chi-square per degree of freedom of the residuals with the
        pixel-noise errors alone (NaN without errors).
    """

    offsets: np.ndarray
    sets: np.ndarray
    uncertainties: np.ndarray
    planes: np.ndarray | None = None
    excess: float = 0.0
    chi2_pixel: float = math.nan


def fit_sky(records, layout, options):
    """Fit every group's sky to the pair records; fill in their fit columns.

    Parameters
    ----------
    records : list of PairRecord
    layout : Layout
        Groups, their labels and, for planes, their mean positions.
    options : MatchOptions
        ``sky_model``, ``min_pair_pixels``, ``reject_sigma``,
        ``reject_iterations``.

    Returns
    -------
    SkyFit
    """
    started = time.perf_counter()
    if options.sky_model.dim == 1:
        fit = _fit_constant(records, layout, options)
    else:
        fit = _fit_planes(records, layout, options)
    _report_rejections(records, layout.group_labels)
    log.info(
        "Fitted %d group %s to %d pair(s) in %.2f s.",
        layout.ngroups,
        "offset(s)" if options.sky_model.dim == 1 else "plane(s)",
        len(records),
        time.perf_counter() - started,
    )
    return fit


# -- constant sky ------------------------------------------------------------


def _fit_constant(records, layout, options):
    ngroups = layout.ngroups
    npix = [min(r.npix_a, r.npix_b) for r in records]
    errors = None
    if records and all(np.isfinite(r.error) for r in records):
        errors = np.array([r.error for r in records])
    excess, chi2_pixel = 0.0, math.nan
    if errors is not None:
        excess, chi2_pixel = _constant_excess(records, ngroups, npix, errors, options)
        if excess > 0:
            errors = np.sqrt(errors**2 + excess**2)
            for r, e in zip(records, errors, strict=True):
                r.error, r.weight = float(e), 1.0 / float(e)
    equations = [(r.a, r.b, r.difference, 0.0, r.weight) for r in records]
    fit = fit_offsets(
        equations,
        ngroups,
        npix=npix,
        errors=None if errors is None else list(errors),
        min_pixels=options.min_pair_pixels,
        reject_sigma=options.reject_sigma,
        max_iterations=options.reject_iterations,
    )
    for k, r in enumerate(records):
        r.fitted = float(fit.fitted[k])
        r.residual = float(fit.residuals[k])
        r.normalized = float(fit.normalized[k])
        r.rejected = fit.rejected[k]
    used = [eq for eq, r in zip(equations, records, strict=True) if not r.rejected]
    sets = connected_sets(used, ngroups)
    offsets = np.array(fit.offsets, dtype=float)
    if errors is None and np.isfinite(fit.scale):
        # Errors from the scatter of the weighted residuals (no pixel errors).
        errors = np.array([fit.scale / abs(r.weight) if r.weight else np.inf for r in records])
    if errors is not None and np.isfinite(chi2_pixel):
        normalized = np.array([r.normalized for r in records if not r.rejected])
        birge = _birge(float(np.sum(normalized**2)), _dof(records, ngroups))
        uncertainties = _calibrated_uncertainties(records, layout, errors, birge, options)
    else:
        uncertainties = _uncertainties(records, ngroups, errors, np.ones((ngroups, 1)))
    return SkyFit(offsets, sets, uncertainties, None, excess, chi2_pixel)


def _used_with_errors(records, errors):
    """Return the indices of the pairs the fit used that have a finite positive error."""
    return np.array(
        [
            k
            for k, (r, e) in enumerate(zip(records, errors, strict=True))
            if not r.rejected and np.isfinite(e) and e > 0
        ],
        dtype=np.intp,
    )


def _shared(records, used, errors):
    """Shared-pixel covariances of the pairs ``used`` (None without their geometry)."""
    recs = [records[k] for k in used]
    if not recs or any(r.centre is None or r.moments is None for r in recs):
        return None
    pixel = np.array(
        [
            r.pixel_error if np.isfinite(r.pixel_error) else e
            for r, e in zip(recs, errors[used], strict=True)
        ]
    )
    return shared_pixel_covariances(
        [r.a for r in recs],
        [r.b for r in recs],
        pixel,
        np.array([r.centre for r in recs], dtype=float),
        np.array([r.moments for r in recs], dtype=float),
    )


def _calibrated_uncertainties(records, layout, errors, birge, options):
    """Constant-sky uncertainties with shared pixels and unmodelled gradients (`_uncertainty`).

    The pair errors' part (shared pixels included) is widened by the Birge
    ratio; the gradients' part is added when the pairs' slopes call for
    gradients (0 otherwise).
    """
    ngroups = layout.ngroups
    out = np.full(ngroups, np.nan)
    if ngroups > _MAX_UNCERTAINTY_GROUPS:
        return out
    errors = np.asarray(errors, dtype=float)
    used = _used_with_errors(records, errors)
    if not used.size:
        return out
    recs = [records[k] for k in used]
    tau2 = _gradient_spread(records, layout, options)
    gradients = None
    if tau2 > 0:
        scale = layout.plane_scale
        centres = np.array([r.centre for r in recs], dtype=float)
        pos = layout.group_positions
        gradients = (
            (centres - pos[[r.a for r in recs]]) / scale,
            (centres - pos[[r.b for r in recs]]) / scale,
            tau2,
        )
    noise, gradient = level_variances(
        [r.a for r in recs],
        [r.b for r in recs],
        errors[used],
        ngroups,
        shared=_shared(records, used, errors),
        gradients=gradients,
    )
    out = np.sqrt(birge**2 * noise + gradient)
    if tau2 > 0:
        linked = np.isfinite(out)
        log.info(
            "Level uncertainties include the sky gradients a constant cannot follow "
            "(RMS %.3g per unit of the mosaic's size): up to %.3g of the %d level(s); "
            "sky_model='plane' fits them.",
            math.sqrt(tau2),
            float(np.sqrt(np.max(gradient[linked]))) if linked.any() else math.nan,
            int(linked.sum()),
        )
    return out


def _gradient_spread(records, layout, options):
    """Variance of the groups' sky gradients per axis (scaled units) the pairs' slopes call for.

    The slopes of the pairs' differences, fitted as the plane sky model
    fits them (its excess variances and the empirical-Bayes spread of its
    slopes, `_slope_prior`); 0 when the overlaps do not call for slopes or
    too few pairs measured them.
    """
    ngroups = layout.ngroups
    enough = [min(r.npix_a, r.npix_b) >= options.min_pair_pixels for r in records]
    used = np.flatnonzero(
        [
            r.plane is not None and r.moments is not None and not r.rejected and ok
            for r, ok in zip(records, enough, strict=True)
        ]
    )
    if used.size < 3:
        return 0.0
    eqs = _PlaneEquations(records, layout.plane_scale, ngroups)
    excess, slope_excess, _ = _plane_excess(eqs, used, report=False, quick=True)
    _, tau2 = _slope_prior(eqs, used, eqs.cov(excess, slope_excess), ngroups, quiet=True)
    return tau2


def _dof(records, ngroups):
    """Equations of the used pairs beyond the offsets they determine."""
    used = [r for r in records if not r.rejected]
    linked = sorted({g for r in used for g in (r.a, r.b)})
    labels = connected_sets([(r.a, r.b, 0.0, 0.0, 1.0) for r in used], ngroups)
    return len(used) - (len(linked) - len({int(labels[g]) for g in linked}))


def _birge(chi2_sum, dof):
    """Factor on the uncertainties when the residuals exceed the final errors (Birge ratio).

    A common factor on every error changes no offset, only the
    uncertainties: when the fit's chi-square per degree of freedom is above
    1 (structure the median-based excess leaves in the tails, correlated
    pairs), the uncertainties are widened by its square root; never
    narrowed.
    """
    if dof < 1 or not np.isfinite(chi2_sum):
        return 1.0
    return math.sqrt(max(1.0, chi2_sum / dof))


def _constant_excess(records, ngroups, npix, errors, options):
    """Excess standard deviation the residuals call for, and their pixel chi-square."""
    use = np.array([n >= options.min_pair_pixels for n in npix], dtype=bool)
    if use.sum() < 2:
        return 0.0, math.nan
    sub = [r for r, u in zip(records, use, strict=True) if u]
    err = errors[use]
    pixel = np.array([r.pixel_error for r in sub])

    def fit_with(sigma):
        eqs = [(r.a, r.b, r.difference, 0.0, 1.0 / e) for r, e in zip(sub, sigma, strict=True)]
        return fit_offsets(eqs, ngroups, errors=list(sigma)).residuals

    linked = sorted({g for r in sub for g in (r.a, r.b)})
    labels = connected_sets([(r.a, r.b, 0.0, 0.0, 1.0) for r in sub], ngroups)
    dof = len(sub) - (len(linked) - len({int(labels[g]) for g in linked}))
    if dof < 2:
        return 0.0, math.nan
    chi2_pixel = float(np.sum((fit_with(pixel) / pixel) ** 2) / dof)
    excess2 = _excess_variance(
        lambda s2: fit_with(np.sqrt(err**2 + s2)) ** 2 / (err**2 + s2), dof, 1
    )
    excess = math.sqrt(excess2)
    _report_fit_quality(chi2_pixel, excess, dof, "constant")
    return excess, chi2_pixel


def _excess_variance(chi2_of, dof, k, start=1.0, tolerance=1.001):
    """Excess variance ``s2`` that makes the pairs' chi-squares what their errors predict.

    ``chi2_of(s2)`` returns each used pair's chi-square (``k`` degrees of
    freedom) in the fit with ``s2`` added to its variance. The *median*
    chi-square, scaled by ``k m / dof`` for the parameters the fit
    absorbs, is set to that of a chi-square of ``k`` degrees of freedom (a
    robust Paule-Mandel estimate: a few outlying pairs, which rejection
    handles, do not inflate every error). 0 when the residuals are within
    ``_EXCESS_SIGMAS`` standard errors of the expected median. The search
    brackets ``s2`` by factors of 4 from ``start`` and bisects it to a
    ratio ``tolerance``.
    """
    expected = float(chi2.ppf(0.5, k))

    def ratio(s2):
        values = chi2_of(s2)
        return float(np.median(values)) * values.size * k / dof / expected

    values0 = chi2_of(0.0)
    # Standard error of a sample median of chi-square(k), relative to it.
    density = float(chi2.pdf(expected, k))
    relative_se = 1.0 / (2.0 * math.sqrt(values0.size) * density * expected)
    if ratio(0.0) <= 1.0 + _EXCESS_SIGMAS * relative_se:
        return 0.0
    lo, hi = 0.0, float(start)
    for _ in range(_SEARCH_STEPS):
        if ratio(hi) <= 1.0:
            break
        lo, hi = hi, hi * 4.0
    else:
        return hi  # the residuals cannot be explained by any excess
    if lo == 0.0:
        lo = hi
        for _ in range(_SEARCH_STEPS):
            if ratio(lo) > 1.0:
                break
            hi, lo = lo, lo / 4.0
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if ratio(mid) > 1.0:
            lo = mid
        else:
            hi = mid
        if hi <= lo * tolerance:
            break
    return hi


def _uncertainties(records, ngroups, errors, combos):
    """1-sigma uncertainty of every group's level (NaN where unknown)."""
    out = np.full(ngroups, np.nan)
    if errors is None or ngroups > _MAX_UNCERTAINTY_GROUPS:
        return out
    used = [
        (r.a, r.b, e)
        for r, e in zip(records, errors, strict=True)
        if not r.rejected and np.isfinite(e) and e > 0
    ]
    if not used:
        return out
    a, b, e = (np.array(v) for v in zip(*used, strict=True))
    network = Network(ngroups, a, b, np.zeros((a.size, 1)), (e**2)[:, None, None])
    return np.sqrt(network.level_variances(combos))


def _report_fit_quality(chi2_pixel, excess, dof, model):
    """Say, in plain words, when the pairs disagree far more than their errors allow."""
    if not np.isfinite(chi2_pixel) or chi2_pixel <= _WARN_FACTOR**2:
        if excess > 0:
            log.info(
                "Pair errors widened by an excess of %.3g (%d degrees of freedom).", excess, dof
            )
        return
    hint = (
        "sky_model='plane' for gradients, a skymask for extended sources or scattered "
        "light, or reject_sigma for a few bad pairs"
        if model == "constant"
        else "a skymask for extended sources or scattered light, or reject_sigma for a few "
        "bad pairs"
    )
    widened = (
        f"the scatter across its overlap and an excess of {excess:.3g}"
        if excess > 0
        else "the scatter across its overlap (no further excess is needed)"
    )
    log.warning(
        "The overlaps disagree with the fit far more than pixel noise explains: the RMS "
        "normalized residual is %.3g with pixel-noise errors (1 expected). The skies have "
        "structure that a %s sky per image cannot follow (gradients, scattered light, PSF "
        "differences, stripes). Each pair's error now includes %s, so that no few pairs "
        "dominate; levels are as good as a %s model allows. Try %s.",
        math.sqrt(chi2_pixel),
        model,
        widened,
        model,
        hint,
    )


# -- plane sky ---------------------------------------------------------------


def _fit_planes(records, layout, options):
    ngroups = layout.ngroups
    scale = layout.plane_scale
    positions = layout.group_positions / scale  # (ngroups, 2), scaled
    combos = np.column_stack([np.ones(ngroups), positions])
    enough = [min(r.npix_a, r.npix_b) >= options.min_pair_pixels for r in records]
    use = np.array(
        [r.plane is not None and ok for r, ok in zip(records, enough, strict=True)], dtype=bool
    )
    for r, u in zip(records, use, strict=True):
        if not u:
            r.rejected = "few pixels"
    eqs = _PlaneEquations(records, scale, ngroups)
    used = np.flatnonzero(use)
    excess, slope_excess, chi2_pixel = 0.0, 0.0, math.nan
    if used.size >= 2:
        excess, slope_excess, chi2_pixel = _plane_excess(eqs, used)
    cov = eqs.cov(excess, slope_excess)
    used = _reject_planes(records, eqs, used, cov, options)
    planes = np.full((ngroups, 3), np.nan)
    uncertainties = np.full(ngroups, np.nan)
    sets = np.arange(ngroups)
    if used.size:
        prior, _ = _slope_prior(eqs, used, cov, ngroups)
        network = eqs.network(used, cov, prior)
        planes = network.solve()
        sets = network.sets
        if ngroups <= _MAX_UNCERTAINTY_GROUPS:
            # Relative to the set's mean plane: a common gradient is not
            # determined by the overlaps (only by the slopes' prior).
            uncertainties = np.sqrt(network.level_variances(combos, np.ones(3, dtype=bool)))
            free = eqs.network(used, cov)
            uncertainties *= _birge(float(free.chi2(free.solve()).sum()), free.redundancy())
            level_errors = np.sqrt(eqs.cov_m[used, 0, 0] + excess**2)  # at each centre
            uncertainties *= _shared_factor(records, used, level_errors, ngroups)
        _fill_plane_columns(records, planes, scale, excess)
    levels = np.einsum("gd,gd->g", combos, planes)
    # Back to physical units: slopes per degree of xi and eta.
    planes = planes * np.array([1.0, 1.0 / scale, 1.0 / scale])
    linked = np.isfinite(levels)
    sets = np.where(linked, sets, -1)
    sets = _relabel(sets)
    return SkyFit(levels, sets, uncertainties, planes, excess, chi2_pixel)


def _shared_factor(records, used, errors, ngroups):
    """Factor on each group's plane uncertainty for what its pairs share.

    Computed on the levels alone (each pair's level at its centre, with its
    error): the ratio of the level's standard deviation with and without
    the covariances of the pairs' shared pixels and of each group's own
    structure (`_uncertainty`); 1 where unknown.
    """
    full = np.full(len(records), np.nan)
    full[used] = errors
    keep = _used_with_errors(records, full)
    a = [records[k].a for k in keep]
    b = [records[k].b for k in keep]
    # Each error beyond its pixel noise (none where the pixel noise is unknown).
    pixel = np.array([records[k].pixel_error for k in keep], dtype=float)
    pixel = np.where(np.isfinite(pixel), pixel, full[keep])
    structure = np.sqrt(np.maximum(full[keep] ** 2 - pixel**2, 0.0))
    parts = [shared_structure_covariances(a, b, structure)]
    shared = _shared(records, keep, full)
    if shared is not None:
        parts.append(shared)
    shared = tuple(np.concatenate(column) for column in zip(*parts, strict=True))
    if not shared[0].size:
        return np.ones(ngroups)
    with_shared, _ = level_variances(a, b, full[keep], ngroups, shared=shared)
    alone, _ = level_variances(a, b, full[keep], ngroups)
    factor = np.sqrt(with_shared / alone)
    return np.where(np.isfinite(factor) & (factor > 0), factor, 1.0)


class _PlaneEquations:
    """Every pair's plane of differences as an equation on the groups' planes.

    Coefficients are in the scaled frame: ``(value at the tangent point,
    slope * scale, slope * scale)``. Each pair's measurement ``m`` (level at
    its centre, scaled slopes) maps to ``delta = frame @ m`` in that frame;
    its covariance ``cov_m`` is kept in the pair's frame, where excess
    variances are added to the level and to the slopes.
    """

    def __init__(self, records, scale, ngroups):
        m = len(records)
        self.records = records
        self.ngroups = ngroups
        self.a = np.array([r.a for r in records], dtype=np.intp)
        self.b = np.array([r.b for r in records], dtype=np.intp)
        self.delta = np.zeros((m, 3))
        self.frame = np.tile(np.eye(3), (m, 1, 1))
        self.cov_m = np.tile(np.eye(3), (m, 1, 1))
        self.pixel_m = np.tile(np.eye(3), (m, 1, 1))
        # Inverse of each overlap's position covariance (scaled units): how a
        # structure of unit amplitude over the overlap tilts its plane.
        self.lever = np.zeros((m, 2, 2))
        stretch = np.diag([1.0, scale, scale])
        for k, r in enumerate(records):
            if r.plane is None:
                continue
            xi, eta = r.centre[0] / scale, r.centre[1] / scale
            self.frame[k] = [[1.0, -xi, -eta], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
            measured = stretch @ np.asarray(r.plane, float)
            self.delta[k] = self.frame[k] @ measured
            self.cov_m[k] = stretch @ np.asarray(r.plane_cov, float) @ stretch
            self.pixel_m[k] = self.cov_m[k].copy()
            self.pixel_m[k][0, 0] = r.pixel_error**2
            if r.moments is not None:
                self.lever[k] = np.linalg.pinv(np.asarray(r.moments, float) / scale**2)

    def cov(self, excess=0.0, slope_excess=0.0, pixel=False):
        """Covariances in the scaled frame, with excess level and slope variances added.

        A structure of amplitude ``s`` over an overlap tilts its plane by
        ``s**2`` times the inverse covariance of its positions (far more
        across a narrow overlap than along it): the slopes get that, for the
        level's excess and for ``slope_excess``, the amplitude of structure
        that tilts without shifting.
        """
        inner = (self.pixel_m if pixel else self.cov_m).copy()
        inner[:, 1:, 1:] += (excess**2 + slope_excess**2) * self.lever
        inner[:, 0, 0] += excess**2
        return np.einsum("kij,kjl,kml->kim", self.frame, inner, self.frame)

    def network(self, used, cov, prior=None):
        """Return the normal equations of the pairs ``used``."""
        return Network(self.ngroups, self.a[used], self.b[used], self.delta[used], cov[used], prior)

    def pair_residuals(self, used, net):
        """Residuals of the pairs ``used`` in their own frame (level at centre, slopes)."""
        r = net.residuals(net.solve())
        back = np.linalg.inv(self.frame[used])
        return np.einsum("kij,kj->ki", back, r)


def _plane_excess(eqs, used, report=True, quick=False):
    """Excess level and slope standard deviations the residuals call for; the pixel chi2.

    Structure beyond a plane adds to each pair's level at its centre and to
    its slopes, whatever the pixel noise (overlapping tiles resampled from
    the same exposures can have almost no noise in their differences, yet
    not fit the others): an excess variance is added to each, set so that
    the median normalized chi-square of its residuals is what it would be
    by chance (`_excess_variance`), alternately, three times.
    """
    net = eqs.network(used, eqs.cov())
    nsets = np.unique(net.sets[net.linked]).size
    dof = len(used) - (int(net.linked.sum()) - nsets)
    if dof < 2:
        return 0.0, 0.0, math.nan
    pixel_net = eqs.network(used, eqs.cov(pixel=True))
    chi2_pixel = float(pixel_net.chi2(pixel_net.solve()).sum() / (3 * dof))

    def residuals(excess2, slope2):
        cov = eqs.cov(math.sqrt(excess2), math.sqrt(slope2))
        return eqs.pair_residuals(used, eqs.network(used, cov))

    def chi2_level(excess2, slope2):
        return residuals(excess2, slope2)[:, 0] ** 2 / (eqs.cov_m[used, 0, 0] + excess2)

    def chi2_slopes(slope2, excess2):
        r = residuals(excess2, slope2)[:, 1:]
        inner = eqs.cov_m[used, 1:, 1:] + (excess2 + slope2) * eqs.lever[used]
        inv = np.linalg.inv(inner)
        return np.einsum("ki,kij,kj->k", r, inv, r)

    excess2 = slope2 = 0.0
    # quick (for the constant sky's uncertainties): one round, searched from
    # the pairs' own variances, to 10%.
    rounds, level, slope = 3, {}, {}
    if quick:
        rounds = 1
        level = {"start": float(np.median(eqs.cov_m[used, 0, 0])), "tolerance": 1.1}
        slope = {
            "start": float(np.median(eqs.cov_m[used, 1, 1] + eqs.cov_m[used, 2, 2])),
            "tolerance": 1.1,
        }
    for _ in range(rounds):
        excess2 = _excess_variance(lambda t, v=slope2: chi2_level(t, v), dof, 1, **level)
        slope2 = _excess_variance(lambda t, e=excess2: chi2_slopes(t, e), 2 * dof, 2, **slope)
    excess, slope_excess = math.sqrt(excess2), math.sqrt(slope2)
    if not report:
        return excess, slope_excess, chi2_pixel
    _report_fit_quality(chi2_pixel, excess, dof, "plane")
    if slope_excess > 0:
        log.info("Plane slopes: errors widened by structure of amplitude %.3g.", slope_excess)
    return excess, slope_excess, chi2_pixel


def _relabel(sets):
    """Connected-set labels 0, 1, ... in order of first appearance; unlinked groups apart."""
    out = np.empty_like(sets)
    labels = {}
    for g, s in enumerate(sets):
        key = ("alone", g) if s < 0 else s
        out[g] = labels.setdefault(key, len(labels))
    return out


def _slope_prior(eqs, used, cov, ngroups, quiet=False):
    """Precision of a zero-mean prior on the groups' slopes (empirical Bayes), and its variance.

    A plane has three times the unknowns of a level, and slopes measured
    across narrow overlaps are noisy: left free, they add noise to skies
    that are flat. The slopes' true spread ``tau**2`` is estimated by
    maximum marginal likelihood (the EM iteration of a random-effects
    model: ``tau**2`` becomes the mean of the posterior second moments of
    the slopes), which weighs every group's slopes, in every direction, by
    how well the overlaps determine them; the fit is then made with the
    prior ``slope ~ N(0, tau**2)``. Flat skies keep flat planes, real
    gradients are barely shrunk (by ``tau**2 / (tau**2 + variance)``). When
    freeing the slopes does not improve the fit's chi-square significantly
    (an F test at 99%), or flat planes already fit the overlaps within their
    errors (a chi-square test at 99%), the planes are kept flat outright.

    Returns ``(precision, tau2)``: the precision of every coefficient
    (None: no prior) and ``tau**2`` (0 when the planes are kept flat or no
    prior is set). ``quiet``: no log lines (the constant sky's uncertainties
    use ``tau**2``).
    """
    if ngroups > _MAX_UNCERTAINTY_GROUPS:
        return None, 0.0
    free = eqs.network(used, cov)
    slopes = free.solve()[:, 1:]
    linked = np.all(np.isfinite(slopes), axis=1)
    if linked.sum() < 3:
        return None, 0.0
    scale2 = max(float(np.mean(slopes[linked] ** 2)), 1e-12)
    # Do the overlaps call for slopes at all? The chi-square the fit gains by
    # freeing them is chi-square(2 (n - 1)) when the skies are flat.
    # Nested models: the F test (chi-square gain per slope over the free
    # fit's chi-square per degree of freedom) holds even when every error is
    # off by a common factor.
    flat = eqs.network(used, cov, np.array([0.0, 1e6 / scale2, 1e6 / scale2]))
    residual = float(free.chi2(free.solve()).sum())
    gain = float(flat.chi2(flat.solve()).sum()) - residual
    dof = 2 * (int(linked.sum()) - 1)
    dof_free = free.redundancy()
    if dof_free >= 1 and residual > 0:
        called_for = (gain / max(dof, 1)) / (residual / dof_free) > f_dist.ppf(
            _FLAT_CONFIDENCE, max(dof, 1), dof_free
        )
    else:
        called_for = gain > chi2.ppf(_FLAT_CONFIDENCE, max(dof, 1))
    # ... and only when flat planes do not fit the overlaps within their errors.
    called_for &= residual + gain > chi2.ppf(_FLAT_CONFIDENCE, max(dof_free + dof, 1))
    if not called_for:
        if not quiet:
            log.info(
                "Plane slopes: the overlaps do not call for them (chi-square gain %.3g for %d "
                "slopes): the planes are kept flat.",
                gain,
                dof,
            )
        return np.array([0.0, 1e6 / scale2, 1e6 / scale2]), 0.0
    tau2 = scale2
    absolute = np.array([True, False, False])
    units = [np.tile(e, (ngroups, 1)) for e in ((0.0, 1.0, 0.0), (0.0, 0.0, 1.0))]
    for _ in range(_PRIOR_ITERATIONS):
        net = eqs.network(used, cov, np.array([0.0, 1.0 / tau2, 1.0 / tau2]))
        post = net.solve()[:, 1:][linked]
        var = np.column_stack([net.level_variances(e, absolute) for e in units])[linked]
        new = max(float(np.mean(post**2 + var)), 1e-12)
        if abs(new - tau2) <= 1e-3 * tau2:
            tau2 = new
            break
        tau2 = new
    if not quiet:
        log.info(
            "Plane slopes: prior width %.3g (scaled units), from %d group(s).",
            math.sqrt(tau2),
            int(linked.sum()),
        )
    return np.array([0.0, 1.0 / tau2, 1.0 / tau2]), tau2


def _reject_planes(records, eqs, used, cov, options):
    """Leave out, one at a time, the pair with the largest normalized residual."""
    if options.reject_sigma is None or used.size < 2:
        return used
    for _ in range(options.reject_iterations):
        net = eqs.network(used, cov)
        norm = np.sqrt(net.chi2(net.solve()) / 3.0)
        bridges = _bridges_of(records, used, eqs.ngroups)
        norm[bridges] = -np.inf
        worst = int(np.argmax(norm))
        if not norm[worst] > options.reject_sigma:
            break
        records[used[worst]].rejected = "outlier"
        used = np.delete(used, worst)
    return used


def _bridges_of(records, used, ngroups):
    """Which used pairs are bridges (their removal would split a set)."""
    from ._solver import _bridges

    a = np.array([records[k].a for k in used])
    b = np.array([records[k].b for k in used])
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(a.size), (a, b)), shape=(ngroups, ngroups)).tocsr()
    _, labels = connected_components(graph, directed=False)
    return _bridges(a, b, ngroups, labels)


def _fill_plane_columns(records, planes, scale, excess):
    """Fitted difference at each pair's centre, residual and normalized residual."""
    for r in records:
        if r.plane is None or not np.all(np.isfinite(planes[[r.a, r.b]])):
            continue
        xi, eta = r.centre[0] / scale, r.centre[1] / scale
        at = np.array([1.0, xi, eta])
        r.fitted = float(at @ (planes[r.a] - planes[r.b]))
        r.residual = float(r.difference - r.fitted)
        r.error = math.sqrt(r.error**2 + excess**2)
        r.weight = 1.0 / r.error
        r.normalized = r.residual / r.error


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
