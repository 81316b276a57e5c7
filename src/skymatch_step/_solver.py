"""Least-squares sky offsets from pairwise overlap measurements.

Every overlapping pair of sky groups ``(i, j)`` gives one equation
``w * (d_i - d_j) = w * (s_i - s_j)``: in their common area group ``i``
measured ``s_i`` and group ``j`` measured ``s_j``, and the offsets ``d``
should explain the difference. The equations form a graph whose nodes are
the groups. Its least-squares solution is found without dense matrices:

- the graph's *bridges* (equations whose removal splits a connected set)
  are satisfied exactly whatever their weight, since nothing else
  constrains the two sides they join;
- within each *two-edge-connected block* left when the bridges are
  removed, the weighted normal equations (the graph Laplacian with
  weights ``w**2``) are solved by a sparse LU factorization after fixing
  the block's most strongly tied group;
- the blocks are then placed relative to each other along the bridges, and
  every connected set is shifted so that its offsets sum to zero (the
  minimum-norm solution that a pseudo-inverse would give).

Time and memory grow about linearly with the number of equations for
mosaic-like graphs. Handling bridges apart keeps trees and chains exact
even when weights span many orders of magnitude (the Laplacian alone would
add ``w**2`` of very different sizes on one diagonal).

`fit_offsets` adds what the engine needs for diagnostics: equations with
too few pixels are left out, outliers are rejected one at a time, and every
equation gets its fitted difference, residual and normalized residual.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix, diags_array
from scipy.sparse.csgraph import connected_components, depth_first_order
from scipy.sparse.linalg import splu, spsolve, spsolve_triangular

__all__ = ["FitResult", "connected_sets", "fit_offsets", "solve_offsets"]

log = logging.getLogger(__name__)

#: Factor from the median absolute deviation to the standard deviation of
#: a normal distribution.
_MAD_TO_SIGMA = 1.482602218505602

#: A robust residual scale below this many float64 epsilons of the largest
#: weighted measurement is rounding noise: the equations agree exactly.
_SCALE_FLOOR_EPS = 1024.0

#: Most steps of iterative refinement of each sparse solve.
_REFINE = 3

#: Relative diagonal damping when the plain factorization fails.
_DAMPING = 1.0e-10

#: Equations with the largest normalized residuals whose leverage is
#: computed in each round of outlier rejection.
_CANDIDATES = 32

#: Leverage cap (a leverage of 1 means a bridge, fitted exactly).
_MAX_LEVERAGE = 1.0 - 1.0e-9

#: Reasons for leaving an equation out of the fit.
_FEW_PIXELS = "few pixels"
_OUTLIER = "outlier"


@dataclass
class _Equations:
    """Pairs as arrays: ``d[i] - d[j] = b`` with weight ``w``."""

    i: np.ndarray
    j: np.ndarray
    b: np.ndarray
    w: np.ndarray
    n: int


@dataclass
class _Solution:
    """Offsets of one least-squares solve and the graph facts behind them."""

    offsets: np.ndarray
    bridges: np.ndarray  # (m,) bool: equation is a bridge of the solved graph
    redundancy: int  # equations minus independent unknowns
    lu: object = None  # factorization of the reduced block Laplacians
    col: np.ndarray | None = None  # (n,) row of each group in ``lu``, -1 if fixed
    wmax: float = 1.0  # weights were divided by this

    def leverage(self, eqs, which):
        """Leverage ``w**2 * R(i, j)`` of the non-bridge equations ``which``.

        ``R`` is the effective resistance between the two groups in the
        network of conductances ``w**2``, one solve with the factorization
        per equation.
        """
        which = np.asarray(which, dtype=np.intp)
        if which.size == 0 or self.lu is None:
            return np.zeros(which.size)
        cu, cv = self.col[eqs.i[which]], self.col[eqs.j[which]]
        unit = np.zeros((self.col.max() + 1, which.size))
        cols = np.arange(which.size)
        unit[cu[cu >= 0], cols[cu >= 0]] += 1.0
        unit[cv[cv >= 0], cols[cv >= 0]] -= 1.0
        x = np.asarray(self.lu.solve(unit)).reshape(unit.shape)
        xu = np.where(cu >= 0, x[np.maximum(cu, 0), cols], 0.0)
        xv = np.where(cv >= 0, x[np.maximum(cv, 0), cols], 0.0)
        return (eqs.w[which] / self.wmax) ** 2 * (xu - xv)


def _equations(pairs, n):
    """Check the pairs and return them as float64 arrays."""
    n = int(n)
    if n < 0:
        raise ValueError(f"number of groups must be >= 0, got {n}")
    m = len(pairs)
    if m == 0:
        empty = np.zeros(0)
        return _Equations(empty.astype(np.intp), empty.astype(np.intp), empty, empty, n)
    try:
        table = np.array(pairs, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"each pair must be a tuple (i, j, s_i, s_j, w) of numbers: {exc}"
        ) from None
    if table.shape != (m, 5):
        raise ValueError(
            f"each pair must be a tuple (i, j, s_i, s_j, w); got an array of shape {table.shape}"
        )
    i, j = table[:, 0], table[:, 1]
    for name, idx in (("i", i), ("j", j)):
        bad = np.flatnonzero((idx != np.round(idx)) | (idx < 0) | (idx >= n))
        if bad.size:
            k = bad[0]
            raise ValueError(
                f"pair {k}: group index {name}={idx[k]:g} is not an integer from 0 to {n - 1} "
                f"({n} groups)"
            )
    same = np.flatnonzero(i == j)
    if same.size:
        k = same[0]
        raise ValueError(f"pair {k} links group {i[k]:g} to itself; i and j must differ")
    # float64 difference, whatever the statistics' scalar type
    b = table[:, 2] - table[:, 3]
    w = table[:, 4]
    bad = np.flatnonzero(~(np.isfinite(b) & np.isfinite(w)))
    if bad.size:
        k = bad[0]
        raise ValueError(
            f"pair {k} (groups {i[k]:g}, {j[k]:g}): s_i - s_j = {float(b[k])!r} and "
            f"w = {float(w[k])!r}; both must be finite"
        )
    return _Equations(i.astype(np.intp), j.astype(np.intp), b, w, n)


def _graph(u, v, n, data=None):
    """Symmetric sparse adjacency (CSR) of the links ``u[k] -- v[k]``."""
    if data is None:
        data = np.ones(len(u))
    rows = np.concatenate([u, v])
    cols = np.concatenate([v, u])
    return coo_matrix((np.concatenate([data, data]), (rows, cols)), shape=(n, n)).tocsr()


def _bridges(u, v, n, labels):
    """Which links ``u[k] -- v[k]`` (``u != v``) are bridges of the multigraph.

    A depth-first search tree is grown from a virtual root joined to one
    node of every connected set, so every link outside the tree joins a
    node to one of its ancestors. A tree link is a bridge when no such
    back link spans it; back links spanning a tree link are counted as
    subtree sums of +1 (deeper end) and -1 (ancestor end), computed with a
    sparse triangular solve in depth-first order.
    """
    m = len(u)
    if m == 0:
        return np.zeros(0, dtype=bool)
    root = n
    _, first = np.unique(labels, return_index=True)
    graph = _graph(
        np.concatenate([u, np.full(first.size, root)]),
        np.concatenate([v, first]),
        n + 1,
    )
    order, pred = depth_first_order(graph, root, directed=False, return_predecessors=True)
    pos = np.empty(n + 1, dtype=np.intp)
    pos[order] = np.arange(n + 1)

    # The tree link of child c is the first link joining c to pred[c];
    # parallel links to the same pair are back links.
    child = np.where(pred[v] == u, v, np.where(pred[u] == v, u, -1))
    candidates = np.flatnonzero(child >= 0)
    _, firsts = np.unique(child[candidates], return_index=True)
    is_tree = np.zeros(m, dtype=bool)
    is_tree[candidates[firsts]] = True

    back = ~is_tree
    deep = np.where(pos[u] > pos[v], u, v)[back]
    high = np.where(pos[u] > pos[v], v, u)[back]
    count = np.zeros(n + 1)
    np.add.at(count, pos[deep], 1.0)
    np.add.at(count, pos[high], -1.0)
    # Subtree sums: (I - C) s = count, C[parent, child] = 1, upper
    # triangular in depth-first order (every parent precedes its children).
    nodes = order[1:]
    rows = np.concatenate([np.arange(n + 1), pos[pred[nodes]]])
    cols = np.concatenate([np.arange(n + 1), pos[nodes]])
    vals = np.concatenate([np.ones(n + 1), -np.ones(nodes.size)])
    tri = csr_matrix((vals, (rows, cols)), shape=(n + 1, n + 1))
    spans = spsolve_triangular(tri, count, lower=False, unit_diagonal=True)
    # counts are small integers: exact in float64
    bridge = np.zeros(m, dtype=bool)
    tree_links = np.flatnonzero(is_tree)
    bridge[tree_links] = np.rint(spans[pos[child[tree_links]]]) == 0
    return bridge


def _node_sums(values, ui, vi, col, size):
    """Sum ``values[k]`` into node ``ui[k]`` and subtract it from ``vi[k]`` (free nodes)."""
    cu, cv = col[ui], col[vi]
    out = np.bincount(cu[cu >= 0], values[cu >= 0], minlength=size).astype(np.float64)
    out -= np.bincount(cv[cv >= 0], values[cv >= 0], minlength=size)
    return out


def _block_solve(lap, ui, vi, bi, wi, col, free):
    """Solve the reduced Laplacian system, refined with link-by-link residuals.

    The offsets of a connected set never differ by more than the sum of the
    ``|b|`` of its links (they are averages of path sums), which checks the
    result. If the factorization is singular or breaks that bound (weights
    spanning so many orders of magnitude that float64 loses the light links
    next to heavy ones), the diagonal is raised slightly and a WARNING is
    logged: the light links then barely count.
    """
    rhs = _node_sums(wi * bi, ui, vi, col, free.size)
    bound = np.abs(bi).sum() * (1.0 + 1.0e-6)
    for damping in (0.0, _DAMPING):
        x = np.zeros(col.size)
        matrix = lap
        if damping:
            matrix = lap + damping * diags_array(lap.diagonal(), format="csc")
        try:
            lu = splu(matrix, permc_spec="MMD_AT_PLUS_A")
        except RuntimeError:  # exactly singular factor
            continue
        x[free] = lu.solve(rhs)
        # Refinement: the residual is summed link by link, so the light
        # links' share survives next to heavy ones; stop when the steps no
        # longer shrink.
        last = np.inf
        for _ in range(_REFINE):
            resid = _node_sums(wi * (bi - (x[ui] - x[vi])), ui, vi, col, free.size)
            step = lu.solve(resid)
            size = np.abs(step).max()
            if not size < last:
                break
            x[free] += step
            last = size
            if size <= np.finfo(float).eps * np.abs(x).max():
                break
        if np.abs(x).max() <= bound:
            break
    else:
        x[free] = 0.0
        lu = None
    if damping:
        log.warning(
            "The least-squares solve lost precision: pair weights w**2 from %.3g to %.3g "
            "(relative) within one overlapping set; links much lighter than their "
            "neighbours were damped and the offsets may be inaccurate.",
            wi.min(),
            wi.max(),
        )
    return x[free], lu


def _solve(eqs, use=None):
    """Minimum-norm least-squares offsets from the equations selected by ``use``.

    Parameters
    ----------
    eqs : _Equations
        All equations.
    use : ndarray of bool, optional
        Equations to solve with (default: all).

    Returns
    -------
    _Solution
    """
    n = eqs.n
    m_all = eqs.b.size
    if use is None:
        use = np.ones(m_all, dtype=bool)
    offsets = np.full(n, np.nan)
    bridges = np.zeros(m_all, dtype=bool)
    if not use.any():
        return _Solution(offsets, bridges, 0)
    # A group in any equation is determined, even by an equation that
    # carries no information (zero weight): its offset is then 0.
    grouped = np.zeros(n, dtype=bool)
    grouped[eqs.i[use]] = grouped[eqs.j[use]] = True

    wmax = np.abs(eqs.w[use]).max()
    active = use & (eqs.w != 0.0)
    idx = np.flatnonzero(active)
    u, v, b = eqs.i[idx], eqs.j[idx], eqs.b[idx]
    # common scale of the weights: it does not change the solution and
    # keeps w**2 within float64 range
    w2 = (eqs.w[idx] / wmax) ** 2 if idx.size else np.zeros(0)

    ncomp, comp = connected_components(_graph(u, v, n), directed=False)
    is_bridge = _bridges(u, v, n, comp)
    bridges[idx] = is_bridge

    # Two-edge-connected blocks: what is left when bridges are removed.
    inner = ~is_bridge
    ui, vi, bi, wi = u[inner], v[inner], b[inner], w2[inner]
    _, block = connected_components(_graph(ui, vi, n), directed=False)
    strength = np.bincount(ui, wi, minlength=n) + np.bincount(vi, wi, minlength=n)
    # fixed group of each block: the most strongly tied one (lowest index on ties)
    by_block = np.lexsort((np.arange(n), -strength, block))
    _, first = np.unique(block[by_block], return_index=True)
    fixed = np.zeros(n, dtype=bool)
    fixed[by_block[first]] = True

    relative = np.zeros(n)
    lu = None
    col = None
    free = np.flatnonzero(~fixed)
    if free.size:
        col = np.full(n, -1, dtype=np.intp)
        col[free] = np.arange(free.size)
        cu, cv = col[ui], col[vi]
        # Laplacian rows and right-hand side of the free groups
        rows = np.concatenate([cu, cv, cu, cv])
        cols = np.concatenate([cu, cv, cv, cu])
        vals = np.concatenate([wi, wi, -wi, -wi])
        keep = (rows >= 0) & (cols >= 0)
        lap = coo_matrix(
            (vals[keep], (rows[keep], cols[keep])), shape=(free.size, free.size)
        ).tocsc()
        relative[free], lu = _block_solve(lap, ui, vi, bi, wi, col, free)

    # Place the blocks along the bridges: c[a] - c[b] = b - r[u] + r[v] for
    # a bridge u -- v from block a to block b; one block per set stays at 0.
    shift = np.zeros(n)
    if is_bridge.any():
        bu, bv = u[is_bridge], v[is_bridge]
        nblock = block.max() + 1
        _, anchor_nodes = np.unique(comp, return_index=True)
        anchored = np.zeros(nblock, dtype=bool)
        anchored[block[anchor_nodes]] = True
        bcol = np.full(nblock, -1, dtype=np.intp)
        placed = np.flatnonzero(~anchored)
        bcol[placed] = np.arange(placed.size)
        a_col, b_col = bcol[block[bu]], bcol[block[bv]]
        nb = bu.size
        rows = np.concatenate([np.arange(nb), np.arange(nb)])
        cols = np.concatenate([a_col, b_col])
        vals = np.concatenate([np.ones(nb), -np.ones(nb)])
        keep = cols >= 0
        incidence = coo_matrix(
            (vals[keep], (rows[keep], cols[keep])), shape=(nb, placed.size)
        ).tocsc()
        value = b[is_bridge] - relative[bu] + relative[bv]
        level = np.zeros(nblock)
        level[placed] = np.atleast_1d(spsolve(incidence, value))
        shift = level[block]

    deltas = relative + shift
    # minimum norm: the offsets of each connected set sum to zero
    size = np.bincount(comp, minlength=ncomp)
    deltas -= (np.bincount(comp, deltas, minlength=ncomp) / size)[comp]
    offsets[grouped] = deltas[grouped]
    redundancy = int(idx.size - (n - ncomp))
    return _Solution(offsets, bridges, redundancy, lu, col, wmax)


def solve_offsets(pairs, n):
    """Sky offsets that best equalise the overlap levels of ``n`` groups.

    Each pair ``(i, j, s_i, s_j, w)`` says that in their common area group
    ``i`` measured ``s_i`` and group ``j`` measured ``s_j``; it gives the
    equation ``w * (d_i - d_j) = w * (s_i - s_j)``, so its weight in the sum
    of squares is ``w**2``. The result is the minimum-norm least-squares
    solution: within each connected set of overlapping groups the offsets
    sum to zero. Groups in no equation get NaN.

    The system is solved with sparse matrices, one connected set's bridges
    and two-edge-connected blocks at a time (see the module description);
    the result agrees with the dense pseudo-inverse to rounding for
    well-conditioned systems.

    Parameters
    ----------
    pairs : list of tuple
        ``(i, j, s_i, s_j, w)`` with ``0 <= i, j < n``, ``i != j`` and
        finite values. A zero weight links nothing: such a pair only marks
        its groups as determined.
    n : int
        Number of groups.

    Returns
    -------
    ndarray
        Offset of each group (NaN where undetermined).

    Raises
    ------
    ValueError
        If a group index is out of range, a pair links a group to itself,
        or a difference or weight is not finite.
    """
    eqs = _equations(pairs, n)
    return _solve(eqs).offsets


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


@dataclass
class FitResult:
    """Outcome of `fit_offsets`.

    Attributes
    ----------
    offsets : ndarray
        ``(n,)`` offset of each group; NaN for groups in no used equation.
        The offsets of each connected set of used equations sum to zero.
    fitted : ndarray
        ``(m,)`` ``d_i - d_j`` for every equation, rejected ones included;
        NaN where either group is undetermined.
    residuals : ndarray
        ``(m,)`` ``(s_i - s_j) - fitted``.
    normalized : ndarray
        ``(m,)`` residual divided by its expected spread: ``residual /
        error`` when errors are given, else ``residual * |w| / scale`` with
        the robust ``scale`` below; NaN when that spread is unknown.
    rejected : list of str
        ``(m,)`` why the fit left each equation out: ``''`` (used),
        ``'few pixels'`` or ``'outlier'``.
    iterations : int
        Number of least-squares solves (1 + number of outliers rejected).
    scale : float
        Robust spread of the weighted residuals ``residual * |w|`` of the
        final fit (1 when errors are given; NaN when it cannot be
        estimated).
    """

    offsets: np.ndarray
    fitted: np.ndarray
    residuals: np.ndarray
    normalized: np.ndarray
    rejected: list[str] = field(default_factory=list)
    iterations: int = 0
    scale: float = float("nan")


def _robust_scale(weighted, inner, redundancy, floor):
    """Robust spread of the weighted residuals of one fit, or (NaN, reason).

    The spread is ``1.4826 * median(|r * w|)`` over the used equations that
    are not bridges, measured from zero rather than from the sample median
    because least-squares residuals have zero expectation (which is why
    ``astropy.stats.mad_std`` is not used). Bridges always fit exactly and
    are left out; the other residuals are on average smaller than the
    measurement spread by ``sqrt(redundancy / count)`` (the mean of
    ``1 - leverage``), which is divided out.
    """
    if redundancy <= 0:
        return np.nan, "the equations have no redundancy (each one is needed to link the groups)"
    count = int(inner.sum())
    spread = _MAD_TO_SIGMA * np.median(np.abs(weighted[inner]))
    spread *= np.sqrt(count / redundancy)
    if not spread > floor:
        return np.nan, "the residuals are zero to rounding (the equations agree exactly)"
    return float(spread), ""


def fit_offsets(
    pairs,
    n,
    *,
    npix=None,
    errors=None,
    min_pixels=1,
    reject_sigma=None,
    max_iterations=10,
) -> FitResult:
    """Weighted least-squares sky offsets with optional outlier rejection.

    Parameters
    ----------
    pairs : list of tuple
        ``(i, j, s_i, s_j, w)`` as for `solve_offsets`: the equation
        ``w * (d_i - d_j) = w * (s_i - s_j)``, weight ``w**2`` in the sum
        of squares. Pass ``w = 1 / error`` with ``errors``, or a pixel count
        without.
    n : int
        Number of groups.
    npix : array_like of int, optional
        Usable pixels behind each equation; equations with fewer than
        ``min_pixels`` are left out (``'few pixels'``) before any fit.
    errors : array_like of float, optional
        Expected error of each difference ``s_i - s_j`` (positive). When
        given, normalized residuals are ``residual / error``; otherwise
        ``residual * |w|`` divided by a robust scale of the used equations'
        weighted residuals.
    min_pixels : int, optional
        Fewest usable pixels for an equation to be used.
    reject_sigma : float, optional
        Reject outliers whose studentized residual (see Notes) exceeds
        this. None (default) rejects nothing.
    max_iterations : int, optional
        Most outliers rejected; each rejection is followed by a new fit.

    Returns
    -------
    FitResult

    Raises
    ------
    ValueError
        For a bad pair (see `solve_offsets`), ``npix`` or ``errors`` of the
        wrong length, a non-positive or non-finite error, or an invalid
        option.

    Notes
    -----
    Outliers are rejected one at a time. In each round the
    ``_CANDIDATES`` (32) used equations with the largest ``|normalized|``
    residuals get their *studentized* residual ``|normalized| / sqrt(1 -
    h)``, where the leverage ``h = w**2 R(i, j)`` (``R`` the effective
    resistance between the two groups in the network of conductances
    ``w**2``) measures how much the equation fits itself; the one with the
    largest studentized residual above ``reject_sigma`` (lowest index among
    equal values) is rejected and the fit is repeated, scale included. One
    bad equation also pulls up the residuals of its neighbours, and an
    equation on the edge of a mosaic (high leverage) shows a smaller
    residual than its error: rejecting every equation above the threshold
    at once, or the largest ``|normalized|``, would remove good pairs.
    Bridges (equations whose removal would split a connected set) fit
    exactly and are never rejected, so rejection never splits a set nor
    leaves a group without equations. Without errors, rejection needs
    redundancy (more equations than independent offsets) and a nonzero
    scale; otherwise it is skipped with an INFO message. Rejection stops
    with a WARNING after ``max_iterations`` rejections.

    With the defaults (no rejection, every ``npix >= min_pixels``) the
    offsets are those of `solve_offsets`, computed by the same code.
    """
    eqs = _equations(pairs, n)
    errors = _check_fit_options(eqs.b.size, errors, reject_sigma, max_iterations)
    use, rejected = _select_by_pixels(npix, min_pixels, eqs.b.size)
    absw = np.abs(eqs.w)
    # a robust scale below this is rounding noise
    floor = _SCALE_FLOOR_EPS * np.finfo(np.float64).eps * (np.abs(eqs.b) * absw).max(initial=0.0)
    fits = 0
    outliers = 0
    while True:
        fit = _fit_once(eqs, use, errors, absw, floor)
        fits += 1
        if reject_sigma is None:
            break
        if fit.why:
            log.info("No outlier rejection: %s.", fit.why)
            break
        worst = _outlier_round(eqs, fit, reject_sigma, outliers, max_iterations)
        if worst is None:
            break
        use[worst] = False
        rejected[worst] = _OUTLIER
        outliers += 1
    if reject_sigma is not None and outliers:
        log.info("%d outlier pair(s) rejected (> %g sigma).", outliers, reject_sigma)
    return FitResult(
        offsets=fit.sol.offsets,
        fitted=fit.fitted,
        residuals=fit.residuals,
        normalized=fit.normalized,
        rejected=rejected,
        iterations=fits,
        scale=fit.scale,
    )


def _check_fit_options(m, errors, reject_sigma, max_iterations):
    """Check the options of `fit_offsets`; return ``errors`` as float64 (or None)."""
    if reject_sigma is not None and not (np.isfinite(reject_sigma) and reject_sigma > 0):
        raise ValueError(f"reject_sigma must be a positive number or None, got {reject_sigma!r}")
    if int(max_iterations) != max_iterations or max_iterations < 0:
        raise ValueError(f"max_iterations must be an integer >= 0, got {max_iterations!r}")
    if errors is None:
        return None
    errors = np.asarray(errors, dtype=np.float64)
    if errors.shape != (m,):
        raise ValueError(f"errors has shape {errors.shape}; expected ({m},), one per pair")
    bad = np.flatnonzero(~(np.isfinite(errors) & (errors > 0)))
    if bad.size:
        raise ValueError(f"errors[{bad[0]}] = {float(errors[bad[0]])!r}; errors must be positive")
    return errors


def _select_by_pixels(npix, min_pixels, m):
    """Leave out the equations with fewer than ``min_pixels`` pixels.

    Returns the ``(m,)`` mask of the equations to use and the ``(m,)``
    list of rejection reasons (``'few pixels'`` or ``''``).
    """
    use = np.ones(m, dtype=bool)
    rejected = [""] * m
    if npix is None:
        return use, rejected
    npix = np.asarray(npix)
    if npix.shape != (m,):
        raise ValueError(f"npix has shape {npix.shape}; expected ({m},), one per pair")
    few = npix < min_pixels
    use &= ~few
    for k in np.flatnonzero(few):
        rejected[k] = _FEW_PIXELS
    if few.any():
        log.info(
            "%d of %d pair(s) left out of the fit: fewer than %d usable pixel(s).",
            int(few.sum()),
            m,
            min_pixels,
        )
    return use, rejected


@dataclass
class _Fit:
    """One least-squares fit of `fit_offsets` and its residuals."""

    sol: _Solution
    fitted: np.ndarray
    residuals: np.ndarray
    normalized: np.ndarray
    scale: float
    why: str  # why there is no robust scale ('' when there is, or with errors)
    inner: np.ndarray  # used equations that are informative and not bridges


def _fit_once(eqs, use, errors, absw, floor):
    """Solve with the equations ``use`` and normalize the residuals.

    The residuals are divided by the ``errors`` when given, else weighted
    by ``absw`` and divided by their robust scale (see `_robust_scale`;
    ``floor`` is the smallest scale that is not rounding noise).
    """
    sol = _solve(eqs, use)
    fitted = sol.offsets[eqs.i] - sol.offsets[eqs.j]
    residuals = eqs.b - fitted
    # equations that constrain the offsets at all and could be rejected
    inner = use & (absw > 0) & ~sol.bridges
    if errors is not None:
        return _Fit(sol, fitted, residuals, residuals / errors, 1.0, "", inner)
    scale, why = _robust_scale(residuals * absw, inner, sol.redundancy, floor)
    return _Fit(sol, fitted, residuals, residuals * absw / scale, scale, why, inner)


def _outlier_round(eqs, fit, reject_sigma, outliers, max_iterations):
    """Return the equation to reject after ``fit``, or None when rejection stops.

    The ``_CANDIDATES`` inner equations with the largest ``|normalized|``
    get their studentized residual; the largest above ``reject_sigma`` is
    rejected unless ``outliers`` (rejected so far) reached
    ``max_iterations`` (then a WARNING is logged).
    """
    # studentized residuals of the equations that look worst
    candidates = np.flatnonzero(fit.inner)
    order = np.lexsort((candidates, -np.abs(fit.normalized[candidates])))
    top = candidates[order[:_CANDIDATES]]
    leverage = np.clip(fit.sol.leverage(eqs, top), 0.0, _MAX_LEVERAGE)
    student = np.abs(fit.normalized[top]) / np.sqrt(1.0 - leverage)
    above = student > reject_sigma
    if not above.any():
        return None
    worst = int(top[np.argmax(np.where(above, student, -np.inf))])
    if outliers == max_iterations:
        log.warning(
            "Outlier rejection stopped after %d rejection(s) (max_iterations); "
            "%d pair(s) still exceed %g sigma.",
            outliers,
            int(above.sum()),
            reject_sigma,
        )
        return None
    log.debug(
        "Rejecting pair %d (groups %d, %d): studentized residual %.3g.",
        worst,
        eqs.i[worst],
        eqs.j[worst],
        student.max(),
    )
    return worst
