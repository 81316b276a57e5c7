"""Sky models (constant, plane), honest pair errors and level uncertainties."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from conftest import library_results, scale_shift_wcs
from skymatch_step import ImageInput, MatchOptions, SkymatchStep, match, model_input
from skymatch_step._network import Network
from skymatch_step._tangent import TangentPlane
from skymatch_step.simulate import MosaicSpec, simulate_mosaic

POSITIONS = [(x, y) for y in (0, 90) for x in (0, 90, 180)]


def _plane_images(planes, *, noise=0.005, seed=1, shape=(100, 100)):
    """Images whose skies are the given planes in the tangent plane at (10, 0)."""
    rng = np.random.default_rng(seed)
    tangent = TangentPlane(10.0, 0.0)
    images = []
    for k, ((x0, y0), (a, b, c)) in enumerate(zip(POSITIONS, planes, strict=False)):
        wcs = scale_shift_wcs(x0, y0)
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
        xi, eta = tangent(*wcs(xx, yy))
        data = a + b * xi + c * eta + rng.normal(0.0, noise, xi.shape)
        images.append(
            ImageInput.from_arrays(
                data.astype(np.float32),
                None,
                wcs.forward_transform,
                wcs.backward_transform,
                id=f"im{k}",
            )
        )
    return images


def _surface_error(result, images, planes):
    """RMS of (recovered - true) surfaces once a common plane is removed."""
    truth_tangent = TangentPlane(10.0, 0.0)
    rows = []
    for k, ((x0, y0), (a, b, c)) in enumerate(zip(POSITIONS, planes, strict=False)):
        wcs = scale_shift_wcs(x0, y0)
        yy, xx = np.mgrid[0:100:5, 0:100:5].astype(float)
        ra, dec = wcs(xx, yy)
        xi0, eta0 = truth_tangent(ra, dec)
        true = a + b * xi0 + c * eta0
        if result.planes is None:
            found = np.full(true.shape, result.levels[k])
        else:
            xi, eta = result.tangent(ra, dec)
            p = result.planes[k]
            found = p[0] + p[1] * xi + p[2] * eta
        rows.append(np.column_stack([(found - true).ravel(), xi0.ravel(), eta0.ravel()]))
    err = np.concatenate(rows)
    design = np.column_stack([np.ones(len(err)), err[:, 1], err[:, 2]])
    coef, *_ = np.linalg.lstsq(design, err[:, 0], rcond=None)
    return float(np.sqrt(np.mean((err[:, 0] - design @ coef) ** 2)))


def _random_planes(n, seed=4, slope=300.0):
    rng = np.random.default_rng(seed)
    return [(rng.uniform(0, 2), rng.normal(0, slope), rng.normal(0, slope)) for _ in range(n)]


def test_plane_needs_differences():
    with pytest.raises(ValueError, match="sky_model='plane' needs compare='differences'"):
        MatchOptions(sky_model="plane")
    with pytest.raises(ValueError, match="Unknown sky_model 'cubic'; valid choices are"):
        MatchOptions(sky_model="cubic", compare="differences")


def test_step_plane_with_statistics_is_a_clear_error(table1_models):
    with pytest.raises(ValueError, match="needs compare='differences'"):
        SkymatchStep.call(table1_models, sky_model="plane")


def test_planes_are_recovered_up_to_a_common_plane():
    planes = _random_planes(6)
    images = _plane_images(planes)
    plane = match(images, skymethod="match", compare="differences", sky_model="plane")
    constant = match(images, skymethod="match", compare="differences")
    # the slopes change each image's sky by ~0.3 across it: a constant cannot
    # follow that, a plane can, to the noise
    # slopes across 10-pixel overlaps are the noisy part: ~5e-3 here
    assert _surface_error(plane, images, planes) < 1e-2
    assert _surface_error(constant, images, planes) > 30 * _surface_error(plane, images, planes)
    assert plane.sky_model == "plane"
    assert all(p is not None and len(p) == 3 for p in plane.planes)
    assert np.all(np.isfinite(plane.uncertainties))


def test_plane_on_flat_skies_is_as_good_as_constant():
    # Flat skies: the slopes' prior width collapses and the planes stay flat.
    planes = [(level, 0.0, 0.0) for level, _, _ in _random_planes(6)]
    images = _plane_images(planes, noise=0.02)
    plane = match(images, skymethod="match", compare="differences", sky_model="plane")
    constant = match(images, skymethod="match", compare="differences")
    assert _surface_error(plane, images, planes) < 1.5 * _surface_error(constant, images, planes)


def test_plane_options_keep_working():
    planes = _random_planes(6)
    images = _plane_images(planes)
    anchored = match(
        images, skymethod="global+match", compare="differences", sky_model="plane", anchor_sets=True
    )
    assert anchored.valid.all()
    assert all(len(t) == 2 for t in anchored.terms)  # plane mean, then the global level


def test_honest_errors_keep_pixel_errors_on_clean_skies():
    models, truth = simulate_mosaic(
        MosaicSpec(n_exposures=6, shape=(128, 128), noise=0.02, seed=3, diffuse_step=1)
    )
    inputs = [model_input(m, group=truth.exposure[m.meta.filename]) for m in models]
    result = match(inputs, skymethod="match", compare="differences")
    same = [p.error == p.pixel_error for p in result.pairs]
    assert np.mean(same) >= 0.8
    assert result.excess == 0.0


def test_structure_widens_errors_and_is_reported(caplog):
    spec = MosaicSpec(n_exposures=9, shape=(128, 128), noise=0.02, seed=5, sky_gradient=0.05)
    models, truth = simulate_mosaic(spec)
    inputs = [model_input(m, group=truth.exposure[m.meta.filename]) for m in models]
    with caplog.at_level(logging.WARNING, logger="skymatch_step"):
        result = match(inputs, skymethod="match", compare="differences")
    assert "disagree with the fit far more than pixel noise explains" in caplog.text
    assert "sky_model='plane'" in caplog.text
    widened = f"an excess of {result.excess:.3g}" if result.excess > 0 else "no further excess"
    assert widened in caplog.text
    assert result.chi2_pixel > 9.0
    errors = np.array([p.error for p in result.pairs])
    pixel = np.array([p.pixel_error for p in result.pairs])
    assert np.all(errors >= pixel)
    assert np.median(errors / pixel) > 3.0


def test_statistics_mode_gets_uncertainties_without_changing_levels(table1_models):
    rng = np.random.default_rng(2)
    for model in table1_models:
        model.data += rng.normal(0.0, 0.5, model.data.shape).astype(np.float32)
    inputs = [model_input(m) for m in table1_models]
    result = match(inputs, skymethod="match", stats=None)
    assert np.all(np.isfinite(result.uncertainties))
    assert np.all(result.uncertainties > 0)


@pytest.mark.parametrize("dim", [1, 3])
def test_network_variances_match_a_dense_pseudo_inverse(dim):
    rng = np.random.default_rng(dim)
    n = 7
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if rng.random() < 0.6]
    pairs += [(k, k + 1) for k in range(n - 1) if (k, k + 1) not in pairs]
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    m = len(pairs)
    root = rng.normal(size=(m, dim, dim))
    cov = root @ root.transpose(0, 2, 1) + 0.5 * np.eye(dim)
    delta = rng.normal(size=(m, dim))
    net = Network(n, a, b, delta, cov)
    # dense weighted normal matrix and its pseudo-inverse
    full = np.zeros((n * dim, n * dim))
    for k in range(m):
        w = np.linalg.inv(cov[k])
        sa, sb = slice(a[k] * dim, a[k] * dim + dim), slice(b[k] * dim, b[k] * dim + dim)
        full[sa, sa] += w
        full[sb, sb] += w
        full[sa, sb] -= w
        full[sb, sa] -= w
    pinv = np.linalg.pinv(full)
    e = rng.normal(size=(n, dim))
    project = np.eye(n * dim) - np.kron(np.ones((n, n)) / n, np.eye(dim))
    cov_min = project @ pinv @ project.T
    for g in range(n):
        u = np.zeros(n * dim)
        u[g * dim : g * dim + dim] = e[g]
        expected = u @ cov_min @ u
        assert net.level_variances(e)[g] == pytest.approx(expected, rel=1e-6)
    # and the solution is the pseudo-inverse's (minimum norm)
    rhs = np.zeros(n * dim)
    for k in range(m):
        wd = np.linalg.inv(cov[k]) @ delta[k]
        rhs[a[k] * dim : a[k] * dim + dim] += wd
        rhs[b[k] * dim : b[k] * dim + dim] -= wd
    np.testing.assert_allclose(net.solve().ravel(), pinv @ rhs, atol=1e-9)


@pytest.fixture(scope="module")
def gradient_mosaic():
    spec = MosaicSpec(
        n_exposures=4,
        detectors_per_exposure=2,
        shape=(128, 128),
        noise=0.01,
        seed=8,
        sky_gradient=0.2,
        diffuse_step=1,
    )
    return simulate_mosaic(spec)


def test_step_subtracts_planes_and_records_them(gradient_mosaic):
    models, truth = gradient_mosaic
    before = [m.data.copy() for m in models]
    library = SkymatchStep.call(
        models, skymethod="match", compare="differences", sky_model="plane", subtract=True
    )
    errors = []
    with library:
        for index in range(len(library)):
            model = library.borrow(index)
            removed = before[index].astype(float) - model.data
            bkg = model.meta.background
            assert bkg.subtracted is True
            plane = bkg.instance["plane"]
            assert set(plane) == {
                "tangent_ra",
                "tangent_dec",
                "value",
                "slope_xi",
                "slope_eta",
                "mean",
            }
            finite = np.isfinite(removed)
            # BKGLEVEL is the plane's mean over the image: what was
            # subtracted, averaged over its finite pixels (0.1% are NaN)
            assert bkg.level == pytest.approx(plane["mean"], abs=1e-9)
            assert np.mean(removed[finite]) == pytest.approx(bkg.level, abs=5e-4)
            true = truth.sky_image(model.meta.filename)
            yy, xx = np.nonzero(finite)
            ra, dec = model.meta.wcs(xx.astype(float), yy.astype(float))
            errors.append(np.column_stack([(removed - true)[finite], true[finite], ra, dec]))
            library.shelve(model, index, modify=False)
    # the subtracted surfaces follow the true gradients, but for a common
    # plane that no relative matching can know
    err = np.concatenate(errors)
    design = np.column_stack([np.ones(len(err)), err[:, 2] - 53.16, err[:, 3] + 27.78])
    coef, *_ = np.linalg.lstsq(design, err[:, 0], rcond=None)
    relative_true = err[:, 1] - design @ np.linalg.lstsq(design, err[:, 1], rcond=None)[0]
    assert np.std(err[:, 0] - design @ coef) < 0.1 * np.std(relative_true)
    # the caller's models were not modified
    for model, data in zip(models, before, strict=True):
        np.testing.assert_array_equal(model.data, data)


def test_step_plane_without_subtract_warns_and_records(gradient_mosaic, caplog):
    models, _ = gradient_mosaic
    with caplog.at_level(logging.WARNING, logger="skymatch_step"):
        library = SkymatchStep.call(
            models, skymethod="match", compare="differences", sky_model="plane"
        )
    assert "sky_model='plane' with subtract=False" in caplog.text
    rows = library_results(library)
    for row, model in zip(rows, models, strict=True):
        np.testing.assert_array_equal(row[5], model.data)  # data unchanged
        assert row[2] is False
    with library:
        model = library.borrow(0)
        assert model.meta.background.level == pytest.approx(
            model.meta.background.instance["plane"]["mean"]
        )
        library.shelve(model, 0, modify=False)


def test_level_log_lines_carry_uncertainties(gradient_mosaic, caplog):
    models, _ = gradient_mosaic
    with caplog.at_level(logging.INFO, logger="skymatch_step"):
        SkymatchStep.call(models, skymethod="match", compare="differences")
    lines = [r.getMessage() for r in caplog.records if ": sky level " in r.getMessage()]
    assert lines
    assert all(" +- " in line for line in lines)
