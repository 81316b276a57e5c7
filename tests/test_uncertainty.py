"""Calibrated level uncertainties: shared pixels and unmodelled gradients, propagated."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from skymatch_step import match, model_input
from skymatch_step._uncertainty import (
    level_variances,
    shared_pixel_covariances,
    shared_structure_covariances,
)
from skymatch_step.simulate import MosaicSpec, simulate_mosaic

# A 2x2 mosaic of unit squares overlapping by 0.2: groups 0 1 / 2 3.
#: (a, b, centre, half widths) of each overlap: two edges per group and the diagonals.
_OVERLAPS = [
    (0, 1, (0.9, 0.5), (0.1, 0.5)),
    (2, 3, (0.9, 1.3), (0.1, 0.5)),
    (0, 2, (0.5, 0.9), (0.5, 0.1)),
    (1, 3, (1.3, 0.9), (0.5, 0.1)),
    (0, 3, (0.9, 0.9), (0.1, 0.1)),
    (1, 2, (0.9, 0.9), (0.1, 0.1)),
]


def _geometry():
    a = np.array([o[0] for o in _OVERLAPS])
    b = np.array([o[1] for o in _OVERLAPS])
    centres = np.array([o[2] for o in _OVERLAPS], dtype=float)
    # A uniform width w has variance w**2 / 12.
    moments = np.array([np.diag((2 * np.array(o[3])) ** 2 / 12.0) for o in _OVERLAPS])
    return a, b, centres, moments


def test_shared_pixels_are_found_with_their_signs_and_fractions():
    a, b, centres, moments = _geometry()
    errors = np.full(a.size, 2.0)
    k, l_, cov = shared_pixel_covariances(a, b, errors, centres, moments)
    found = {(int(i), int(j)): c for i, j, c in zip(k, l_, cov, strict=True)}
    # Pairs 0-1 and 0-2 (group 0 on side a of both) share the corner: 0.04 of
    # sqrt(0.2 * 0.2) = 0.2 of their geometric mean area; errors**2 / 2 each.
    assert found[(0, 2)] == pytest.approx(0.2 * 4.0 / 2.0)
    # Pair 0-2 and pair 1-3 share no group; the two edges of one side never meet.
    assert (2, 3) not in found
    assert (0, 1) not in found
    # Group 1 is side b of pair 0-1 and side a of pair 1-2: opposite signs;
    # the corner is the whole of the diagonal's overlap: sqrt(0.04 / 0.2).
    assert found[(0, 5)] == pytest.approx(-np.sqrt(0.04 / 0.2) * 4.0 / 2.0)


def test_level_variances_match_repeated_fits_with_shared_pixels():
    """The sandwich variance is the scatter of weighted least-squares levels."""
    a, b, centres, moments = _geometry()
    rng = np.random.default_rng(3)
    errors = rng.uniform(0.5, 1.5, a.size)
    shared = shared_pixel_covariances(a, b, errors, centres, moments)
    cov = np.diag(errors**2)
    for i, j, c in zip(*shared, strict=True):
        cov[i, j] = cov[j, i] = c
    design = np.zeros((a.size, 4))
    design[np.arange(a.size), a] = 1.0
    design[np.arange(a.size), b] = -1.0
    weight = np.diag(1.0 / errors**2)
    solve = np.linalg.pinv(design.T @ weight @ design) @ design.T @ weight
    draws = rng.multivariate_normal(np.zeros(a.size), cov, size=40000)
    levels = draws @ solve.T
    levels -= levels.mean(axis=1, keepdims=True)
    noise, gradient = level_variances(a, b, errors, 4, shared=shared)
    np.testing.assert_allclose(noise, levels.var(axis=0), rtol=0.03)
    assert np.all(gradient == 0.0)
    alone, _ = level_variances(a, b, errors, 4)
    assert np.all(noise > alone)


def test_shared_structure_pairs_every_two_pairs_of_a_group_with_their_signs():
    a, b, _, _ = _geometry()
    structure = np.array([1.0, 2.0, 3.0, 4.0, 0.5, 0.0])
    k, l_, cov = shared_structure_covariances(a, b, structure)
    found = {(int(i), int(j)): c for i, j, c in zip(k, l_, cov, strict=True)}
    # Pairs 0-1 and 0-2: group 0 on side a of both; half of each variance.
    assert found[(0, 2)] == pytest.approx(1.0 * 3.0 / 2.0)
    # Pairs 0-1 and 1-3: group 1 on side b, then side a: opposite signs.
    assert found[(0, 3)] == pytest.approx(-1.0 * 4.0 / 2.0)
    # Pairs 0-1 and 2-3 share no group; pair 5 has no structure.
    assert (0, 1) not in found
    assert not any(5 in key for key in found)
    # Four groups of three pairs each, less pair 5's two groups' pairs with it.
    assert len(found) == 4 * 3 - 2 * 2
    assert shared_structure_covariances(a, b, np.zeros(a.size))[0].size == 0


def test_level_variances_match_repeated_fits_with_each_groups_own_structure():
    """Structure u_g common to all of a group's pairs: d = p_a - p_b + u_a - u_b + noise."""
    a, b, _, _ = _geometry()
    rng = np.random.default_rng(4)
    noise = rng.uniform(0.5, 1.5, a.size)
    own = 0.8  # standard deviation of every group's structure
    errors = np.sqrt(noise**2 + 2 * own**2)
    shared = shared_structure_covariances(a, b, np.full(a.size, np.sqrt(2) * own))
    design = np.zeros((a.size, 4))
    design[np.arange(a.size), a] = 1.0
    design[np.arange(a.size), b] = -1.0
    weight = np.diag(1.0 / errors**2)
    solve = np.linalg.pinv(design.T @ weight @ design) @ design.T @ weight
    draws = rng.normal(0.0, own, (40000, 4)) @ design.T + rng.normal(0.0, noise, (40000, a.size))
    levels = draws @ solve.T
    levels -= levels.mean(axis=1, keepdims=True)
    with_structure, _ = level_variances(a, b, errors, 4, shared=shared)
    np.testing.assert_allclose(with_structure, levels.var(axis=0), rtol=0.03)
    alone, _ = level_variances(a, b, errors, 4)
    # Independent pair errors average each group's structure away.
    assert np.all(levels.var(axis=0) > 1.3 * alone)


def test_level_variances_follow_random_gradients():
    """Random group gradients g: every pair of a group sees g . (centre - group centre)."""
    a, b, centres, _ = _geometry()
    positions = np.array([(0.5, 0.5), (1.3, 0.5), (0.5, 1.3), (1.3, 1.3)])
    errors = np.full(a.size, 0.01)
    off_a, off_b = centres - positions[a], centres - positions[b]
    rng = np.random.default_rng(5)
    tau2 = 0.3
    design = np.zeros((a.size, 4))
    design[np.arange(a.size), a] = 1.0
    design[np.arange(a.size), b] = -1.0
    solve = np.linalg.pinv(design.T @ design) @ design.T
    g = rng.normal(0.0, np.sqrt(tau2), size=(20000, 4, 2))
    diffs = np.einsum("nkd,kd->nk", g[:, a], off_a) - np.einsum("nkd,kd->nk", g[:, b], off_b)
    diffs += rng.normal(0.0, errors, diffs.shape)
    levels = diffs @ solve.T
    levels -= levels.mean(axis=1, keepdims=True)
    noise, gradient = level_variances(a, b, errors, 4, gradients=(off_a, off_b, tau2))
    np.testing.assert_allclose(noise + gradient, levels.var(axis=0), rtol=0.04)
    assert np.all(gradient > 10 * noise)


def _fit(spec, sky_model="constant"):
    models, truth = simulate_mosaic(spec)
    inputs = [model_input(m, group=truth.exposure[m.meta.filename]) for m in models]
    result = match(inputs, skymethod="match", compare="differences", sky_model=sky_model)
    true = np.array([truth.sky[n] for n in result.names])
    return result, true


def test_constant_uncertainties_include_gradients_and_say_so(caplog):
    spec = MosaicSpec(n_exposures=9, shape=(128, 128), noise=0.02, seed=5, sky_gradient=0.05)
    with caplog.at_level(logging.INFO, logger="skymatch_step"):
        result, true = _fit(spec)
    assert "Level uncertainties include the sky gradients a constant cannot follow" in caplog.text
    flat, _ = _fit(MosaicSpec(n_exposures=9, shape=(128, 128), noise=0.02, seed=5))
    # Gradients of 0.05 across an exposure move the levels by ~0.01; noise ~1e-4.
    assert np.median(result.uncertainties) > 10 * np.median(flat.uncertainties)
    errors = (result.levels - result.levels.mean()) - (true - true.mean())
    assert np.sqrt(np.mean((errors / result.uncertainties) ** 2)) < 2.0


def test_flat_skies_get_no_gradient_term(caplog):
    spec = MosaicSpec(n_exposures=9, shape=(128, 128), noise=0.02, seed=6)
    with caplog.at_level(logging.INFO, logger="skymatch_step"):
        result, _ = _fit(spec)
    assert "Level uncertainties include the sky gradients" not in caplog.text
    assert np.all(np.isfinite(result.uncertainties))
    # Only the shared pixels (and the Birge ratio) widen them, by tens of percent.
    pairs = [p for p in result.pairs if not p.rejected]
    assert all(p.moments is not None and p.plane is not None for p in pairs)
    groups = np.array(result.groups)
    alone, _ = level_variances(
        [p.a for p in pairs], [p.b for p in pairs], [p.error for p in pairs], groups.max() + 1
    )
    ratio = result.uncertainties / np.sqrt(alone[groups])
    assert np.all(ratio >= 1.0)
    assert np.median(ratio) > 1.03
    assert np.all(ratio < 2.0)
