"""Least-squares sky offsets from pairwise overlap measurements."""

from __future__ import annotations

import logging

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["connected_sets", "solve_offsets"]

log = logging.getLogger(__name__)

# Relative cut-off of small singular values in the pseudo-inverse.
_RCOND = 1.0e-12


def solve_offsets(pairs, n):
    """Sky offsets that best equalise the overlap levels of ``n`` groups.

    Each pair ``(i, j, s_i, s_j, w)`` says that in their common area group
    ``i`` measured ``s_i`` and group ``j`` measured ``s_j``; it gives the
    equation ``w * (d_i - d_j) = w * (s_i - s_j)`` with weight ``w``. The
    system is solved with the pseudo-inverse, i.e. the minimum-norm
    least-squares solution: within each connected set of overlapping
    groups the offsets sum to zero. Groups in no equation get NaN.

    Parameters
    ----------
    pairs : list of tuple
        ``(i, j, s_i, s_j, w)`` with ``i < j``, in the order the equations
        are to be written.
    n : int
        Number of groups.

    Returns
    -------
    ndarray
        Offset of each group (NaN where undetermined).
    """
    deltas = np.full(n, np.nan)
    if not pairs:
        return deltas
    k = np.zeros((len(pairs), n))
    f = np.zeros(len(pairs))
    used = np.zeros(n, dtype=bool)
    for row, (i, j, s_i, s_j, w) in enumerate(pairs):
        k[row, i] = w
        k[row, j] = -w
        # float64 difference, whatever the statistics' scalar type
        f[row] = w * (float(s_i) - float(s_j))
        used[i] = used[j] = True
    deltas = np.linalg.pinv(k, rcond=_RCOND) @ f
    deltas[~used] = np.nan
    return deltas


def connected_sets(pairs, n):
    """Label the connected sets of groups linked by overlap equations.

    Parameters
    ----------
    pairs : list of tuple
        ``(i, j, ...)`` links.
    n : int
        Number of groups.

    Returns
    -------
    ndarray of int
        Set label of each group (isolated groups get their own label).
    """
    if n == 0:
        return np.zeros(0, dtype=int)
    rows = [p[0] for p in pairs]
    cols = [p[1] for p in pairs]
    graph = coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels
