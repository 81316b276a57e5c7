"""Calibrated level uncertainties: what independent pair errors leave out, propagated.

The fit weighs every pair as if its error were independent of the other
pairs' errors. Two things make them depend on each other, and both make
the levels less certain than the fit's own covariance says:

- *Shared pixels.* Where three or four images overlap, the same pixels of
  one image enter several of its pairs (a corner enters the two edge pairs
  and the diagonal pair). The pixel noise of the pairs ``(a, b)`` and
  ``(a, c)`` then correlates by the pixels of ``a`` in both overlaps:
  ``cov = +-sigma_a**2 n_shared / (n_ab n_ac)``. Each overlap is taken as
  the rectangle of its pixels' positions (centre and second moments), and
  ``n_shared`` as the overlap of the two rectangles.
- *A group's own structure* (plane sky). What a pair's error holds beyond
  pixel noise (sky structure, 1/f striping) is half each group's; a
  group's half is taken as common to all its pairs: its stripes or its
  sky's structure shift all its overlaps alike, so the fit cannot average
  it away (`shared_structure_covariances`). Measured on striped skies
  (``benchmarks/bench_structure.py``), the plane's level uncertainties
  otherwise fall short by a third.
- *Unmodelled gradients.* A constant sky per group cannot follow a sky
  gradient ``g``: every pair of group ``a`` then measures ``a``'s level
  plus ``g . (c_k - c_a)``, ``c_k`` the overlap's centre and ``c_a`` the
  group's. These errors are common to all of ``a``'s pairs and leave
  little trace in the residuals. Their size comes from the slopes of the
  pairs' differences: the spread of the groups' gradients, ``tau**2`` per
  axis, is estimated as the plane model estimates its slopes' prior
  (`skymatch_step._fit`), and is 0 unless the overlaps call for slopes.

`level_variances` propagates both through the fit's linear map from the
pair differences to the levels (a sandwich estimate): with ``h_g`` the
row of that map giving group ``g``'s level relative to its set's mean,
``var_g = h_g C h_g'`` for the pairs' covariance ``C``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.sparse import csr_matrix

from ._network import Network

__all__ = ["level_variances", "shared_pixel_covariances", "shared_structure_covariances"]

#: Groups whose rows of the fit's map are computed at once.
_BATCH = 64

#: Most pairs of pairs examined for shared pixels.
_MAX_SHARED = 2_000_000


def level_variances(a, b, errors, ngroups, *, shared=None, gradients=None):
    """Variance of every group's level relative to its set's mean, from correlated pair errors.

    Parameters
    ----------
    a, b : ndarray of int
        The groups of every used pair (the fit's equations ``p[a] - p[b]``).
    errors : ndarray
        The fit's error of every pair: its weights are ``1 / errors**2``,
        and its variances ``errors**2`` the diagonal of the covariance.
    ngroups : int
    shared : tuple of ndarray, optional
        ``(k, l, cov)``: covariances between pairs ``k`` and ``l``
        (`shared_pixel_covariances`).
    gradients : tuple, optional
        ``(offsets_a, offsets_b, tau2)``: ``(m, 2)`` offsets ``c_k - c_a``
        and ``c_k - c_b`` of every pair's centre from its groups' (scaled
        units) and the variance of each gradient component (same units).

    Returns
    -------
    noise : ndarray
        ``(ngroups,)`` variance from the pair errors and their shared
        pixels; NaN for groups in no pair.
    gradient : ndarray
        ``(ngroups,)`` variance from the unmodelled gradients (0 without).
    """
    a = np.asarray(a, dtype=np.intp)
    b = np.asarray(b, dtype=np.intp)
    errors = np.asarray(errors, dtype=float)
    noise = np.full(ngroups, np.nan)
    gradient = np.zeros(ngroups)
    if not a.size:
        return noise, gradient
    network = Network(ngroups, a, b, np.zeros((a.size, 1)), (errors**2)[:, None, None])
    weight = 1.0 / errors**2
    if gradients is not None and gradients[2] > 0:
        # Sums over each group's pairs of offset * h, as sparse products.
        rows = np.arange(a.size)
        ones = np.ones(a.size)
        side_a = csr_matrix((ones, (a, rows)), shape=(ngroups, a.size))
        side_b = csr_matrix((ones, (b, rows)), shape=(ngroups, a.size))
    for label in np.unique(network.sets[network.linked]):
        members = np.flatnonzero(network.linked & (network.sets == label))
        for start in range(0, members.size, _BATCH):
            batch = members[start : start + _BATCH]
            # Right-hand sides e_g - (set mean): the level relative to the set's mean.
            rhs = np.zeros((ngroups, 1, batch.size))
            rhs[members, 0, :] = -1.0 / members.size
            rhs[batch, 0, np.arange(batch.size)] += 1.0
            y = network.solve_normal(rhs)[:, 0, :]  # (n, B)
            h = weight[:, None] * (y[a] - y[b])  # (m, B): d level / d difference
            var = np.einsum("kb,k->b", h**2, errors**2)
            if shared is not None and shared[0].size:
                first, second, cov = shared
                var += 2.0 * np.einsum("kb,kb,k->b", h[first], h[second], cov)
            noise[batch] = np.maximum(var, 0.0)
            if gradients is not None and gradients[2] > 0:
                off_a, off_b, tau2 = gradients
                total = np.zeros(batch.size)
                for axis in range(2):
                    v = side_a @ (off_a[:, axis, None] * h) - side_b @ (off_b[:, axis, None] * h)
                    total += np.einsum("gb,gb->b", v, v)
                gradient[batch] = tau2 * total
    return noise, gradient


def shared_pixel_covariances(a, b, pixel_errors, centres, moments):
    """Covariances of the pixel noise of pairs that share a group's pixels.

    Parameters
    ----------
    a, b : ndarray of int
        The groups of every pair.
    pixel_errors : ndarray
        Every pair's pixel-noise error; half its variance is taken as each
        side's share.
    centres : ndarray
        ``(m, 2)`` centre of every pair's pixel differences.
    moments : ndarray
        ``(m, 2, 2)`` covariance of their positions (NaN: unknown).

    Returns
    -------
    tuple of ndarray
        ``(k, l, cov)`` for the pairs ``k < l`` whose overlaps overlap.
    """
    a = np.asarray(a, dtype=np.intp)
    b = np.asarray(b, dtype=np.intp)
    m = a.size
    rects = [_rectangle(centres[k], moments[k]) for k in range(m)]
    areas = np.array([_area(r) if r is not None else 0.0 for r in rects])
    radius = np.array(
        [
            np.max(np.hypot(*(r - c).T)) if r is not None else 0.0
            for r, c in zip(rects, centres, strict=True)
        ]
    )
    by_group = {}
    for k in range(m):
        by_group.setdefault(int(a[k]), []).append(k)
        by_group.setdefault(int(b[k]), []).append(k)
    if sum(len(v) ** 2 for v in by_group.values()) > 2 * _MAX_SHARED:
        return np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0)
    out_k, out_l, out_c = [], [], []
    for g, pairs in by_group.items():
        for i, k in enumerate(pairs):
            if rects[k] is None:
                continue
            for j in pairs[i + 1 :]:
                if rects[j] is None:
                    continue
                if np.hypot(*(centres[k] - centres[j])) >= radius[k] + radius[j]:
                    continue
                common = _area(_clip(rects[k], rects[j]))
                if common <= 0:
                    continue
                fraction = min(common / math.sqrt(areas[k] * areas[j]), 1.0)
                sign = (1.0 if a[k] == g else -1.0) * (1.0 if a[j] == g else -1.0)
                out_k.append(k)
                out_l.append(j)
                out_c.append(sign * fraction * pixel_errors[k] * pixel_errors[j] / 2.0)
    return np.array(out_k, np.intp), np.array(out_l, np.intp), np.array(out_c, float)


def shared_structure_covariances(a, b, structure):
    """Covariances of pairs that share a group, from the structure in their errors.

    Parameters
    ----------
    a, b : ndarray of int
        The groups of every pair.
    structure : ndarray
        Every pair's error beyond its pixel noise (standard deviation;
        0 where there is none).

    Returns
    -------
    tuple of ndarray
        ``(k, l, cov)`` for the pairs ``k < l`` with a group ``g`` in common:
        ``+-structure[k] * structure[l] / 2`` (half of each pair's
        structure variance is ``g``'s, common to all of ``g``'s pairs;
        the sign as in `shared_pixel_covariances`). Pairs with both groups
        in common get both terms.
    """
    a = np.asarray(a, dtype=np.intp)
    b = np.asarray(b, dtype=np.intp)
    structure = np.asarray(structure, dtype=float)
    pairs = np.flatnonzero(structure > 0)
    # Every (pair, group, sign) incidence, then every two incidences of a group.
    k = np.concatenate([pairs, pairs])
    g = np.concatenate([a[pairs], b[pairs]])
    sign = np.concatenate([np.ones(pairs.size), -np.ones(pairs.size)])
    order = np.argsort(g, kind="stable")
    k, g, sign = k[order], g[order], sign[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    counts = np.diff(np.r_[starts, g.size])
    if int(np.sum(counts * (counts - 1))) > 2 * _MAX_SHARED:
        return np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0)
    out_k, out_l, out_c = [], [], []
    for start, count in zip(starts, counts, strict=True):
        if count < 2:
            continue
        i, j = np.triu_indices(count, 1)
        ki, kj = k[start + i], k[start + j]
        out_k.append(np.minimum(ki, kj))
        out_l.append(np.maximum(ki, kj))
        out_c.append(sign[start + i] * sign[start + j] * structure[ki] * structure[kj] / 2.0)
    if not out_k:
        return np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0)
    return np.concatenate(out_k), np.concatenate(out_l), np.concatenate(out_c)


def _rectangle(centre, moments):
    """Counter-clockwise corners of the rectangle with these second moments (or None)."""
    moments = np.asarray(moments, dtype=float)
    if not (np.all(np.isfinite(moments)) and np.all(np.isfinite(centre))):
        return None
    values, vectors = np.linalg.eigh(moments)
    if not values[0] > 0:
        return None
    half = np.sqrt(3.0 * values)  # a uniform width w has variance w**2 / 12
    corners = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]) * half
    out = np.asarray(centre, dtype=float) + corners @ vectors.T
    return out if _signed_area(out) > 0 else out[::-1]


def _signed_area(poly):
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _area(poly):
    return abs(_signed_area(poly)) if len(poly) >= 3 else 0.0


def _clip(subject, clipper):
    """Intersection of two convex counter-clockwise polygons (Sutherland-Hodgman)."""
    out = list(subject)
    for i in range(len(clipper)):
        p, q = clipper[i], clipper[(i + 1) % len(clipper)]
        edge = q - p
        inp, out = out, []
        if not inp:
            break
        side = [edge[0] * (v[1] - p[1]) - edge[1] * (v[0] - p[0]) for v in inp]
        for j in range(len(inp)):
            cur, prev = inp[j], inp[j - 1]
            s_cur, s_prev = side[j], side[j - 1]
            if s_cur >= 0:
                if s_prev < 0:
                    out.append(prev + (cur - prev) * (s_prev / (s_prev - s_cur)))
                out.append(cur)
            elif s_prev >= 0:
                out.append(prev + (cur - prev) * (s_prev / (s_prev - s_cur)))
    return np.array(out) if out else np.zeros((0, 2))
