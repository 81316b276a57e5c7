"""The least-squares solve of sky offsets: sparse solver and robust fit."""

from __future__ import annotations

import logging
from fractions import Fraction

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from skymatch_step._solver import _bridges, _equations, _solve, fit_offsets, solve_offsets

# --------------------------------------------------------------------------
# references


def pinv_offsets(pairs, n):
    """The dense pseudo-inverse solve this package used before."""
    deltas = np.full(n, np.nan)
    if not pairs:
        return deltas
    k = np.zeros((len(pairs), n))
    f = np.zeros(len(pairs))
    used = np.zeros(n, dtype=bool)
    for row, (i, j, s_i, s_j, w) in enumerate(pairs):
        k[row, i] = w
        k[row, j] = -w
        f[row] = w * (float(s_i) - float(s_j))
        used[i] = used[j] = True
    deltas = np.linalg.pinv(k, rcond=1e-12) @ f
    deltas[~used] = np.nan
    return deltas


def exact_offsets(pairs, n):
    """Minimum-norm least-squares offsets in exact rational arithmetic."""
    eqs = [
        (i, j, Fraction(float(a)) - Fraction(float(b)), Fraction(float(w)) ** 2)
        for i, j, a, b, w in pairs
    ]
    labels = _labels(pairs, n)
    out = np.full(n, np.nan)
    for label in np.unique(labels):
        nodes = [k for k in range(n) if labels[k] == label]
        if not any(k in (i, j) for i, j, *_ in eqs for k in nodes):
            continue
        col = {k: c for c, k in enumerate(nodes[1:])}
        size = len(col)
        lap = [[Fraction(0)] * size for _ in range(size)]
        rhs = [Fraction(0)] * size
        for i, j, b, w2 in eqs:
            for a, o, sign in ((i, j, 1), (j, i, -1)):
                if a in col:
                    rhs[col[a]] += sign * w2 * b
                    lap[col[a]][col[a]] += w2
                    if o in col:
                        lap[col[a]][col[o]] -= w2
        for p in range(size):
            for q in range(p + 1, size):
                if lap[q][p]:
                    factor = lap[q][p] / lap[p][p]
                    for t in range(p, size):
                        lap[q][t] -= factor * lap[p][t]
                    rhs[q] -= factor * rhs[p]
        x = [Fraction(0)] * size
        for p in range(size - 1, -1, -1):
            x[p] = (rhs[p] - sum(lap[p][t] * x[t] for t in range(p + 1, size))) / lap[p][p]
        values = [Fraction(0), *x]
        mean = sum(values) / len(values)
        for k, v in zip(nodes, values, strict=True):
            out[k] = float(v - mean)
    return out


def _labels(pairs, n):
    rows = [p[0] for p in pairs]
    cols = [p[1] for p in pairs]
    graph = coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


# --------------------------------------------------------------------------
# graphs


def grid_links(rows, cols, start=0):
    idx = np.arange(rows * cols).reshape(rows, cols) + start
    links = list(zip(idx[:, :-1].ravel(), idx[:, 1:].ravel(), strict=True))
    links += list(zip(idx[:-1, :].ravel(), idx[1:, :].ravel(), strict=True))
    return [(int(a), int(b)) for a, b in links]


def random_graph(kind, rng):
    """(n, links) of a graph of the given kind."""
    if kind == "tree":
        n = int(rng.integers(2, 30))
        return n, [(int(rng.integers(0, k)), k) for k in range(1, n)]
    if kind == "grid":
        rows, cols = rng.integers(2, 6, 2)
        return int(rows * cols), grid_links(rows, cols)
    if kind == "clique":
        n = int(rng.integers(2, 12))
        return n, [(a, b) for a in range(n) for b in range(a + 1, n)]
    if kind == "components":
        # two grids, a triangle, a pair, and isolated groups in between
        links = grid_links(3, 3) + grid_links(2, 4, start=10)
        links += [(20, 21), (21, 22), (20, 22), (24, 25)]
        return 27, links
    # sparse random graph: several components, isolated groups
    n = int(rng.integers(5, 30))
    links = set()
    for _ in range(int(rng.integers(1, 2 * n))):
        a, b = (int(x) for x in rng.integers(0, n, 2))
        if a != b:
            links.add((min(a, b), max(a, b)))
    return n, sorted(links)


def make_pairs(links, rng, *, weights="unit", scale=1.0):
    m = len(links)
    s = rng.normal(0.0, scale, (m, 2))
    if weights == "unit":
        w = np.ones(m)
    elif weights == "duplicate":
        w = rng.choice([1.0, 2.0, 2.0, 5.0], m)
    else:  # log-uniform over the given number of decades either side of 1
        w = 10.0 ** rng.uniform(-weights, weights, m)
    return [(a, b, s[k, 0], s[k, 1], w[k]) for k, (a, b) in enumerate(links)]


KINDS = ["tree", "grid", "clique", "components", "random"]


# --------------------------------------------------------------------------
# solve_offsets


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("weights", ["unit", "duplicate", 2])
def test_agrees_with_pseudo_inverse(kind, weights):
    for seed in range(15):
        rng = np.random.default_rng(seed)
        n, links = random_graph(kind, rng)
        scale = 10.0 ** rng.uniform(-3, 3)
        pairs = make_pairs(links, rng, weights=weights, scale=scale)
        new = solve_offsets(pairs, n)
        old = pinv_offsets(pairs, n)
        np.testing.assert_array_equal(np.isnan(new), np.isnan(old))
        sky = max(abs(float(v)) for p in pairs for v in p[2:4])
        np.testing.assert_allclose(new, old, rtol=0, atol=1e-9 * sky, err_msg=f"seed {seed}")


@pytest.mark.parametrize(("kind", "decades"), [("grid", 3), ("random", 3), ("clique", 6)])
def test_exact_with_weights_over_many_decades(kind, decades):
    # The sparse solve (with iterative refinement) is closer to the exact
    # least-squares answer than the pseudo-inverse, whose cut-off and
    # squared condition number lose accuracy first.
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        n, links = random_graph(kind, rng)
        scale = 10.0 ** rng.uniform(-3, 3)
        pairs = make_pairs(links, rng, weights=decades, scale=scale)
        sky = max(abs(float(v)) for p in pairs for v in p[2:4])
        np.testing.assert_allclose(
            solve_offsets(pairs, n), exact_offsets(pairs, n), rtol=0, atol=1e-9 * sky
        )


def test_trees_are_exact_whatever_the_weights():
    # every link of a tree is a bridge: it is met exactly, even with weights
    # from 1e-6 to 1e6 (where the pseudo-inverse drops singular values)
    for seed in range(10):
        rng = np.random.default_rng(200 + seed)
        n, links = random_graph("tree", rng)
        pairs = make_pairs(links, rng, weights=6, scale=10.0 ** rng.uniform(-3, 3))
        d = solve_offsets(pairs, n)
        sky = max(abs(float(v)) for p in pairs for v in p[2:4])
        for i, j, s_i, s_j, _ in pairs:
            assert d[i] - d[j] == pytest.approx(s_i - s_j, abs=1e-12 * sky)
        assert abs(d.sum()) < 1e-12 * sky * n


def test_unreachable_precision_warns_and_stays_bounded(caplog):
    # two heavily tied pairs joined only by two light links: float64 cannot
    # hold w**2 = 1e12 and 1e-12 in one Laplacian row
    heavy, light = 1e6, 1e-6
    pairs = [
        (0, 1, 3.0, 1.0, heavy),
        (2, 3, 7.0, 4.0, heavy),
        (0, 2, 1.0, 2.0, light),
        (1, 3, 0.0, 2.5, light),
    ]
    with caplog.at_level(logging.WARNING, logger="skymatch_step"):
        d = solve_offsets(pairs, 4)
    assert "lost precision" in caplog.text
    assert np.isfinite(d).all()
    assert abs(d).max() < 10.0
    # the heavy links still hold
    assert d[0] - d[1] == pytest.approx(2.0, abs=1e-6)
    assert d[2] - d[3] == pytest.approx(3.0, abs=1e-6)


def test_minimum_norm_components_and_isolated_groups():
    rng = np.random.default_rng(7)
    n, links = random_graph("components", rng)
    pairs = make_pairs(links, rng)
    d = solve_offsets(pairs, n)
    labels = _labels(pairs, n)
    used = np.zeros(n, dtype=bool)
    used[[a for a, _ in links]] = used[[b for _, b in links]] = True
    assert np.isnan(d[~used]).all()
    assert set(np.flatnonzero(~used)) == {9, 18, 19, 23, 26}
    for label in np.unique(labels[used]):
        assert abs(d[labels == label].sum()) < 1e-12
    assert np.isnan(solve_offsets([], 3)).all()
    assert solve_offsets([], 0).shape == (0,)


def test_zero_weight_links_carry_no_information():
    # as with the pseudo-inverse: a zero-weight link does not join two sets,
    # and a group in nothing else is determined (offset 0)
    pairs = [
        (0, 1, 5.0, 3.0, 1.0),
        (1, 2, 9.0, 0.0, 0.0),
        (2, 3, 1.0, 2.0, 1.0),
        (4, 5, 1.0, 3.0, 0.0),
    ]
    d = solve_offsets(pairs, 7)
    np.testing.assert_allclose(d[:6], [1.0, -1.0, -0.5, 0.5, 0.0, 0.0], atol=1e-14)
    assert np.isnan(d[6])
    np.testing.assert_allclose(d, pinv_offsets(pairs, 7), atol=1e-14)


def test_parallel_links_and_float32_values():
    pairs = [
        (0, 1, np.float32(2.5), np.float32(0.5), 1.0),
        (0, 1, 3.0, 0.0, 1.0),
        (1, 2, 1.0, 0.0, 2.0),
    ]
    np.testing.assert_allclose(solve_offsets(pairs, 3), pinv_offsets(pairs, 3), atol=1e-14)


def test_bridges_match_brute_force():
    for seed in range(30):
        rng = np.random.default_rng(300 + seed)
        n = int(rng.integers(2, 15))
        m = int(rng.integers(1, 2 * n))
        u = rng.integers(0, n, m)
        v = rng.integers(0, n, m)
        keep = u != v
        u, v = u[keep], v[keep]  # parallel links allowed
        labels = _labels(list(zip(u, v, strict=True)), n)
        found = _bridges(u, v, n, labels)
        ncomp = labels.max() + 1 if n else 0
        for k in range(u.size):
            rest = [(a, b) for t, (a, b) in enumerate(zip(u, v, strict=True)) if t != k]
            split = _labels(rest, n).max() + 1 > ncomp
            assert found[k] == split, f"seed {seed}, link {k}"


@pytest.mark.parametrize(
    ("pairs", "n", "message"),
    [
        ([(0, 3, 1.0, 2.0, 1.0)], 3, r"pair 0: group index j=3 is not an integer from 0 to 2"),
        ([(0, 1.5, 1.0, 2.0, 1.0)], 3, r"group index j=1.5 is not an integer"),
        ([(0, 1, np.nan, 2.0, 1.0)], 3, r"pair 0 \(groups 0, 1\): s_i - s_j = nan"),
        ([(0, 1, 1.0, 2.0, np.inf)], 3, r"w = inf; both must be finite"),
        ([(1, 1, 1.0, 2.0, 1.0)], 3, r"pair 0 links group 1 to itself; i and j must differ"),
        ([(0, 1, 1.0)], 3, r"each pair must be a tuple \(i, j, s_i, s_j, w\)"),
        ([(0, 1, 1.0, 2.0, 1.0)], -1, r"number of groups must be >= 0, got -1"),
    ],
)
def test_bad_pairs(pairs, n, message):
    with pytest.raises(ValueError, match=message):
        solve_offsets(pairs, n)


# --------------------------------------------------------------------------
# fit_offsets


def noisy_grid(rng, *, rows=10, cols=10, noise=0.01, weight=None):
    """Grid pairs measuring true offsets with noise; returns (pairs, truth)."""
    links = grid_links(rows, cols)
    n = rows * cols
    truth = rng.uniform(-5.0, 5.0, n)
    truth -= truth.mean()
    sky = 100.0
    pairs = []
    for a, b in links:
        w = float(rng.uniform(500, 2000)) if weight is None else weight
        pairs.append((a, b, sky + truth[a] + rng.normal(0, noise), sky + truth[b], w))
    return pairs, truth


def test_leverage_matches_the_hat_matrix():
    rng = np.random.default_rng(21)
    for kind in ("grid", "random", "components"):
        n, links = random_graph(kind, rng)
        pairs = make_pairs(links, rng, weights=1)
        eqs = _equations(pairs, n)
        sol = _solve(eqs)
        k = np.zeros((len(pairs), n))
        for row, (i, j, *_, w) in enumerate(pairs):
            k[row, i], k[row, j] = w, -w
        hat = np.diag(k @ np.linalg.pinv(k))
        inner = np.flatnonzero(~sol.bridges)
        np.testing.assert_allclose(sol.leverage(eqs, inner), hat[inner], atol=1e-10)
        np.testing.assert_allclose(hat[sol.bridges], 1.0, atol=1e-10)


def test_fit_defaults_equal_solve_offsets():
    for kind in KINDS:
        rng = np.random.default_rng(11)
        n, links = random_graph(kind, rng)
        pairs = make_pairs(links, rng, weights=2)
        fit = fit_offsets(pairs, n, npix=np.full(len(pairs), 5))
        np.testing.assert_array_equal(fit.offsets, solve_offsets(pairs, n))
        assert fit.rejected == [""] * len(pairs)
        assert fit.iterations == 1


def test_fit_recovers_consistent_data_exactly(caplog):
    rng = np.random.default_rng(3)
    pairs, truth = noisy_grid(rng, noise=0.0)
    with caplog.at_level(logging.INFO, logger="skymatch_step"):
        fit = fit_offsets(pairs, truth.size, reject_sigma=3.0)
    np.testing.assert_allclose(fit.offsets, truth, atol=1e-12)
    np.testing.assert_allclose(fit.residuals, 0.0, atol=1e-12)
    assert fit.rejected == [""] * len(pairs)
    assert "No outlier rejection: the residuals are zero to rounding" in caplog.text
    assert np.isnan(fit.scale)


def test_fit_rejects_one_corrupted_pair_and_only_it():
    rng = np.random.default_rng(5)
    noise = 0.01
    pairs, truth = noisy_grid(rng, noise=noise)
    bad = 17
    i, j, s_i, s_j, w = pairs[bad]
    pairs[bad] = (i, j, s_i + 2.0, s_j, w)  # 200 sigma off

    first = fit_offsets(pairs, truth.size)
    above = np.flatnonzero(np.abs(first.normalized) > 5.0)
    # the outlier drags its neighbours' residuals above the threshold too:
    # rejecting everything above it at once would drop good pairs
    assert bad in above
    assert above.size > 1
    assert np.argmax(np.abs(first.normalized)) == bad

    fit = fit_offsets(pairs, truth.size, reject_sigma=5.0)
    assert [k for k, r in enumerate(fit.rejected) if r] == [bad]
    assert fit.rejected[bad] == "outlier"
    assert fit.iterations == 2
    np.testing.assert_allclose(fit.offsets, truth, atol=5 * noise)
    # the rejected pair keeps its residual from the final fit
    assert fit.residuals[bad] == pytest.approx(2.0, abs=5 * noise)
    assert fit.normalized[bad] > 50
    assert 0.3 * noise < fit.scale / np.median([p[4] for p in pairs]) < 3 * noise
    # without rejection the corrupted pair shifts the solution
    assert np.abs(first.offsets - truth).max() > 0.2


def test_fit_max_iterations_warns(caplog):
    rng = np.random.default_rng(8)
    pairs, truth = noisy_grid(rng)
    for bad in (3, 40):
        i, j, s_i, s_j, w = pairs[bad]
        pairs[bad] = (i, j, s_i - 3.0, s_j, w)
    with caplog.at_level(logging.WARNING, logger="skymatch_step"):
        fit = fit_offsets(pairs, truth.size, reject_sigma=5.0, max_iterations=1)
    assert sum(r == "outlier" for r in fit.rejected) == 1
    assert "Outlier rejection stopped after 1 rejection(s)" in caplog.text
    # pair 3 (on the mosaic's edge, high leverage) is not the largest
    # normalized residual once 40 is gone, but it is the studentized one
    used = np.array([r == "" for r in fit.rejected])
    assert fit.rejected[40] == "outlier"
    assert np.flatnonzero(used)[np.argmax(np.abs(fit.normalized[used]))] != 3
    full = fit_offsets(pairs, truth.size, reject_sigma=5.0)
    assert [k for k, r in enumerate(full.rejected) if r] == [3, 40]
    np.testing.assert_allclose(full.offsets, truth, atol=0.05)


def test_fit_never_rejects_a_bridge():
    rng = np.random.default_rng(9)
    pairs, truth = noisy_grid(rng)
    n = truth.size
    # group n hangs on group 0 by one pair, whatever its value
    pairs.append((0, n, 100.0, 170.0, 1000.0))
    fit = fit_offsets(pairs, n + 1, reject_sigma=3.0)
    assert fit.rejected[-1] == ""
    assert fit.offsets[0] - fit.offsets[n] == pytest.approx(-70.0, abs=1e-9)
    assert fit.residuals[-1] == pytest.approx(0.0, abs=1e-9)


def test_fit_min_pixels():
    rng = np.random.default_rng(12)
    n, links = random_graph("components", rng)
    pairs = make_pairs(links, rng)
    npix = np.full(len(pairs), 100)
    low = [0, len(pairs) - 1]  # a grid link and the only link of groups 24, 25
    npix[low] = 10
    fit = fit_offsets(pairs, n, npix=npix, min_pixels=50)
    assert [k for k, r in enumerate(fit.rejected) if r] == low
    assert {fit.rejected[k] for k in low} == {"few pixels"}
    kept = [p for k, p in enumerate(pairs) if k not in low]
    np.testing.assert_array_equal(fit.offsets, solve_offsets(kept, n))
    assert np.isnan(fit.offsets[[24, 25]]).all()
    # the rejected grid link still gets the final fit's values
    i, j = links[0]
    assert fit.fitted[0] == fit.offsets[i] - fit.offsets[j]
    assert np.isfinite(fit.residuals[0])
    assert np.isnan([fit.fitted[-1], fit.residuals[-1], fit.normalized[-1]]).all()


def test_fit_no_rejection_without_redundancy(caplog):
    rng = np.random.default_rng(13)
    n, links = random_graph("tree", rng)
    pairs = make_pairs(links, rng)
    with caplog.at_level(logging.INFO, logger="skymatch_step"):
        fit = fit_offsets(pairs, n, reject_sigma=3.0)
    assert "No outlier rejection: the equations have no redundancy" in caplog.text
    assert fit.rejected == [""] * len(pairs)
    assert np.isnan(fit.normalized).all()
    np.testing.assert_allclose(fit.residuals, 0.0, atol=1e-12)


def test_fit_with_errors_weights_matter():
    # a triangle: the pair 0-2 disagrees with the path 0-1-2 by 1.0
    def pairs_for(errors):
        values = [(0, 1, 1.0, 0.0), (1, 2, 1.0, 0.0), (0, 2, 3.0, 0.0)]
        return [(i, j, a, b, 1.0 / e) for (i, j, a, b), e in zip(values, errors, strict=True)]

    equal = fit_offsets(pairs_for([1.0, 1.0, 1.0]), 3, errors=[1.0, 1.0, 1.0])
    # equal errors share the disagreement
    np.testing.assert_allclose(equal.residuals, [-1 / 3, -1 / 3, 1 / 3], atol=1e-12)
    errors = np.array([1.0, 1.0, 1e4])
    noisy = fit_offsets(pairs_for(errors), 3, errors=errors)
    # a pair with a huge error barely moves the solution
    assert noisy.offsets[0] - noisy.offsets[2] == pytest.approx(2.0, abs=1e-7)
    np.testing.assert_allclose(noisy.normalized, noisy.residuals / errors)
    assert noisy.scale == 1.0


def test_fit_errors_drive_rejection():
    rng = np.random.default_rng(14)
    noise = 0.01
    pairs, truth = noisy_grid(rng, noise=noise, weight=1.0 / noise)
    pairs[5] = (*pairs[5][:2], pairs[5][2] + 1.0, *pairs[5][3:])
    fit = fit_offsets(pairs, truth.size, errors=np.full(len(pairs), noise), reject_sigma=6.0)
    assert [k for k, r in enumerate(fit.rejected) if r] == [5]
    np.testing.assert_allclose(fit.offsets, truth, atol=5 * noise)


def test_fit_is_deterministic():
    rng = np.random.default_rng(15)
    pairs, truth = noisy_grid(rng)
    for bad in (2, 30, 44):
        pairs[bad] = (*pairs[bad][:2], pairs[bad][2] + 1.0, *pairs[bad][3:])
    runs = [fit_offsets(pairs, truth.size, reject_sigma=4.0) for _ in range(2)]
    for field in ("offsets", "fitted", "residuals", "normalized"):
        np.testing.assert_array_equal(getattr(runs[0], field), getattr(runs[1], field))
    assert runs[0].rejected == runs[1].rejected
    assert runs[0].iterations == runs[1].iterations == 4


def test_fit_isolated_groups_are_nan():
    pairs = [(0, 1, 2.0, 1.0, 1.0), (1, 3, 4.0, 1.0, 1.0), (0, 3, 5.0, 1.0, 1.0)]
    fit = fit_offsets(pairs, 5, reject_sigma=3.0)
    assert np.isnan(fit.offsets[[2, 4]]).all()
    assert np.isfinite(fit.offsets[[0, 1, 3]]).all()
    empty = fit_offsets([], 2)
    assert np.isnan(empty.offsets).all()
    assert empty.fitted.shape == (0,)
    assert empty.rejected == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reject_sigma": 0.0}, r"reject_sigma must be a positive number or None, got 0.0"),
        ({"max_iterations": -1}, r"max_iterations must be an integer >= 0, got -1"),
        ({"npix": [1, 2]}, r"npix has shape \(2,\); expected \(3,\), one per pair"),
        ({"errors": [1.0, 0.0, 1.0]}, r"errors\[1\] = 0.0; errors must be positive"),
        ({"errors": [1.0]}, r"errors has shape \(1,\); expected \(3,\)"),
    ],
)
def test_fit_bad_options(kwargs, message):
    pairs = [(0, 1, 2.0, 1.0, 1.0), (1, 2, 4.0, 1.0, 1.0), (0, 2, 5.0, 1.0, 1.0)]
    with pytest.raises(ValueError, match=message):
        fit_offsets(pairs, 3, **kwargs)
