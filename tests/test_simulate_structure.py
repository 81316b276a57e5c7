"""The simulator's optional sky structure: gradients, seeing, striping, true sky images."""

from __future__ import annotations

import numpy as np
import pytest
from stdatamodels.jwst import datamodels

from skymatch_step import simulate
from skymatch_step.simulate import MosaicSpec, MosaicTruth, simulate_mosaic, write_mosaic

#: no diffuse emission, stars, noise or defects: the data are the sky (+ stripes)
_PLAIN = {
    "n_stars": 0,
    "noise": 0.0,
    "cosmic_ray_fraction": 0.0,
    "bad_fraction": 0.0,
    "diffuse": 0.0,
}
_SMALL = {"n_exposures": 4, "shape": (96, 96)}
_OFF = {"sky_gradient": 0.0, "seeing_scatter": 0.0, "striping": 0.0}


def _stripes(truth, name):
    rows, columns = truth.stripes[name]
    return rows[:, None] + columns[None, :]


# -- defaults ------------------------------------------------------------------


def test_defaults_render_as_without_the_new_fields():
    models, truth = simulate_mosaic(MosaicSpec(**_SMALL))
    models_off, truth_off = simulate_mosaic(MosaicSpec(**_SMALL, **_OFF))
    for model, off in zip(models, models_off, strict=True):
        np.testing.assert_array_equal(model.data, off.data)
        np.testing.assert_array_equal(model.dq, off.dq)
    assert truth.sky == truth_off.sky
    assert truth.stripes == {}
    for name, sky in truth.sky.items():
        assert truth.sky_plane[name] == (sky, 0.0, 0.0)
        assert truth.psf_sigma[name] == 1.5
        assert truth.striping[name] == 0.0
        np.testing.assert_array_equal(truth.sky_image(name), np.full((96, 96), sky))


def test_defaults_render_as_the_committed_simulator():
    # recorded with the simulator as it was before these options existed
    recorded = [
        (4494.774715036154, 0.49121591448783875, 0.4242710471153259, 0.2695),
        (3316.445329129696, 0.46338310837745667, 0.33611464500427246, 0.1815),
        (6070.123807728291, 0.38687315583229065, 0.3628036379814148, 0.29),
        (5015.760522991419, 0.5606780052185059, 0.514644980430603, 0.4849),
    ]
    models, truth = simulate_mosaic(MosaicSpec(**_SMALL))
    for model, (total, p1, p2, sky) in zip(models, recorded, strict=True):
        assert float(np.nansum(model.data, dtype=np.float64)) == pytest.approx(total, rel=1e-9)
        assert float(model.data[10, 20]) == p1
        assert float(model.data[50, 70]) == p2
        assert truth.sky[model.meta.filename] == sky


def test_gradient_and_stripes_leave_the_rest_of_the_image_alone():
    # They draw from generators of their own: taking their contribution
    # away gives back the image without them, noise, cosmic rays and all.
    base = {**_SMALL, "n_stars": 0, "detectors_per_exposure": 2}
    plain, plain_truth = simulate_mosaic(MosaicSpec(**base))
    models, truth = simulate_mosaic(
        MosaicSpec(**base, sky_gradient=0.05, seeing_scatter=0.3, striping=0.01)
    )
    for model, ref in zip(models, plain, strict=True):
        name = model.meta.filename
        restored = model.data - truth.sky_image(name) - _stripes(truth, name)
        expected = ref.data - plain_truth.sky[name]
        np.testing.assert_allclose(restored, expected, atol=2e-6)
        np.testing.assert_array_equal(model.dq, ref.dq)


# -- gradients -----------------------------------------------------------------


def test_gradient_truth_matches_the_data():
    spec = MosaicSpec(
        **_SMALL, **_PLAIN, sky_gradient=0.05, sky_levels=(0.1, 0.2, 0.3, 0.4), seed=3
    )
    models, truth = simulate_mosaic(spec)
    for model in models:
        name = model.meta.filename
        sky = truth.sky_image(name)
        np.testing.assert_array_equal(model.data, sky.astype(np.float32))
        assert np.ptp(sky) > 1e-3  # a real slope, not a constant
        # sky: the plane's mean over the image
        assert truth.sky[name] == pytest.approx(sky.mean(), rel=1e-12)
        # the exposure's sky level is the plane's value at its centre (one
        # detector per exposure: the tile centre)
        level, gx, gy = truth.sky_plane[name]
        east, north = truth.tiles[name].offset
        e = truth.exposure[name]
        assert level + gx * east + gy * north == pytest.approx(spec.sky_levels[e - 1], abs=1e-12)
        # evaluating at every pixel changes little (the grid interpolates
        # across the distortion)
        np.testing.assert_allclose(truth.sky_image(name, step=1), sky, atol=1e-3 * np.ptp(sky))
    slopes = {truth.sky_plane[n][1:] for n in truth.sky}
    assert len(slopes) == 4


def test_gradient_sign_convention():
    # Unrotated, undistorted detectors: x grows towards decreasing RA
    # ("east" in the simulator's tangent plane), y towards north.
    spec = MosaicSpec(
        **_SMALL, **_PLAIN, sky_gradient=0.05, rotation_jitter=0.0, distortion=0.0, seed=4
    )
    models, truth = simulate_mosaic(spec)
    ny, nx = spec.shape
    for model in models:
        _, gx, gy = truth.sky_plane[model.meta.filename]
        data = model.data.astype(float)
        along_x = data[:, -1].mean() - data[:, 0].mean()
        along_y = data[-1, :].mean() - data[0, :].mean()
        assert along_x == pytest.approx(gx * (nx - 1) * spec.pixel_scale, rel=1e-3)
        assert along_y == pytest.approx(gy * (ny - 1) * spec.pixel_scale, rel=1e-3)
        ra0, _ = model.meta.wcs(0, 48)
        ra1, _ = model.meta.wcs(95, 48)
        assert ra1 < ra0


def test_gradient_size_is_the_rms_change_across_an_exposure():
    spec = MosaicSpec(n_exposures=4000, detectors_per_exposure=2, shape=(50, 50), sky_gradient=0.1)
    slopes = np.array(simulate._exposure_slopes(spec))
    width = (2 * 50 + 0.02 * 50) * spec.pixel_scale  # two detectors and their gap, arcsec
    rms_change = np.sqrt(np.mean((slopes * width) ** 2, axis=0))
    np.testing.assert_allclose(rms_change, [0.1, 0.1], rtol=0.05)


def test_detectors_of_an_exposure_share_the_plane():
    spec = MosaicSpec(
        n_exposures=2, detectors_per_exposure=4, shape=(48, 48), **_PLAIN, sky_gradient=0.05
    )
    models, truth = simulate_mosaic(spec)
    planes = {}
    for model in models:
        name = model.meta.filename
        planes.setdefault(truth.exposure[name], set()).add(truth.sky_plane[name])
        np.testing.assert_array_equal(model.data, truth.sky_image(name).astype(np.float32))
    assert [len(p) for p in planes.values()] == [1, 1]
    assert planes[1] != planes[2]
    # one plane, so the detectors' mean skies differ (they sit apart on it)
    assert len({truth.sky[m.meta.filename] for m in models}) == 8


def test_detector_offsets_shift_the_shared_plane():
    common = {"n_exposures": 2, "detectors_per_exposure": 2, "shape": (48, 48), **_PLAIN}
    _, flat = simulate_mosaic(MosaicSpec(**common, detector_sky_scatter=0.01))
    _, truth = simulate_mosaic(MosaicSpec(**common, detector_sky_scatter=0.01, sky_gradient=0.05))
    _, no_scatter = simulate_mosaic(MosaicSpec(**common, sky_gradient=0.05))
    for name, (level, gx, gy) in truth.sky_plane.items():
        ref_level, ref_gx, ref_gy = no_scatter.sky_plane[name]
        assert (gx, gy) == (ref_gx, ref_gy)
        offset = flat.sky[name] - simulate.spec_sky(truth.spec)[truth.exposure[name] - 1]
        assert level - ref_level == pytest.approx(offset, abs=1e-12)


# -- seeing --------------------------------------------------------------------


def test_seeing_is_recorded_per_exposure_and_changes_the_stars():
    common = {**_SMALL, **_PLAIN, "n_stars": 200, "diffuse": 0.3, "detectors_per_exposure": 2}
    sharp, sharp_truth = simulate_mosaic(MosaicSpec(**common))
    models, truth = simulate_mosaic(MosaicSpec(**common, seeing_scatter=0.25))
    per_exposure = {}
    for name, sigma in truth.psf_sigma.items():
        per_exposure.setdefault(truth.exposure[name], set()).add(sigma)
    assert all(len(s) == 1 for s in per_exposure.values())
    sigmas = [s.pop() for s in per_exposure.values()]
    assert len(set(sigmas)) == 4
    assert min(sigmas) >= 0.5
    assert set(sharp_truth.psf_sigma.values()) == {1.5}
    # the same diffuse emission without stars (the stars are drawn after it)
    diffuse, _ = simulate_mosaic(MosaicSpec(**{**common, "n_stars": 0}))
    for model, ref, smooth in zip(models, sharp, diffuse, strict=True):
        sigma = truth.psf_sigma[model.meta.filename]
        stars = model.data.astype(float) - smooth.data
        ref_stars = ref.data.astype(float) - smooth.data
        assert np.sum(stars) == pytest.approx(np.sum(ref_stars), rel=0.02)  # same flux
        # a Gaussian star's sum of squares scales as 1 / sigma^2
        ratio = np.sum(stars**2) / np.sum(ref_stars**2)
        assert ratio == pytest.approx((1.5 / sigma) ** 2, rel=0.2)


def test_seeing_is_clipped():
    spec = MosaicSpec(n_exposures=400, seeing_scatter=1.0)
    sigmas = simulate._exposure_psf_sigmas(spec)
    assert min(sigmas) == 0.5
    assert max(sigmas) > 3.0


# -- striping ------------------------------------------------------------------


def test_striping_rms_is_recorded_and_in_the_data():
    spec = MosaicSpec(**_SMALL, **_PLAIN, striping=0.02, detectors_per_exposure=2)
    models, truth = simulate_mosaic(spec)
    assert len(truth.stripes) == 8
    profiles = set()
    for model in models:
        name = model.meta.filename
        added = model.data.astype(float) - truth.sky_image(name)
        np.testing.assert_allclose(added, _stripes(truth, name), atol=1e-7)
        # rows: RMS `striping` exactly; columns a quarter of it; zero mean
        assert np.std(added.mean(axis=1)) == pytest.approx(0.02, rel=1e-4)
        assert np.std(added.mean(axis=0)) == pytest.approx(0.005, rel=1e-3)
        assert abs(added.mean()) < 1e-7
        assert truth.striping[name] == pytest.approx(np.sqrt(np.mean(added**2)), rel=1e-4)
        assert truth.striping[name] == pytest.approx(0.02 * np.hypot(1, 0.25), rel=1e-9)
        profiles.add(truth.stripes[name][0][0])
    assert len(profiles) == 8  # every image has stripes of its own


def test_stripes_have_a_one_over_f_spectrum():
    rng = np.random.default_rng(0)
    n = 256
    power = np.mean(
        [np.abs(np.fft.rfft(simulate._stripe_profile(rng, n, 1.0))) ** 2 for _ in range(400)],
        axis=0,
    )
    k = np.arange(2, 100)
    slope = np.polyfit(np.log(k), np.log(power[k]), 1)[0]
    assert slope == pytest.approx(-1.0, abs=0.2)


# -- true sky images -----------------------------------------------------------


def test_sky_image_errors():
    models, truth = simulate_mosaic(MosaicSpec(n_exposures=1, shape=(32, 32), sky_gradient=0.1))
    name = models[0].meta.filename
    with pytest.raises(KeyError, match="not an image of this mosaic"):
        truth.sky_image("other_cal.fits")
    with pytest.raises(ValueError, match="step must be None or a positive integer"):
        truth.sky_image(name, step=0)
    with pytest.raises(ValueError, match="no geometry recorded"):
        MosaicTruth(sky={"a": 0.1}, exposure={"a": 1}).sky_image("a")


def test_written_mosaic_keeps_the_truth(tmp_path):
    spec = MosaicSpec(
        n_exposures=2,
        detectors_per_exposure=2,
        shape=(48, 48),
        **_PLAIN,
        sky_gradient=0.05,
        seeing_scatter=0.2,
        striping=0.01,
    )
    _, memory = simulate_mosaic(spec)
    truth = write_mosaic(spec, tmp_path)
    for attribute in ("sky", "sky_plane", "psf_sigma", "striping", "tiles", "exposure"):
        assert getattr(truth, attribute) == getattr(memory, attribute)
    assert truth.spec == spec
    for path in truth.files:
        with datamodels.open(path) as model:
            expected = truth.sky_image(path) + _stripes(truth, path.name)
            np.testing.assert_allclose(model.data, expected, atol=1e-7)
            np.testing.assert_array_equal(truth.sky_image(path), memory.sky_image(path.name))


# -- validation and the command ------------------------------------------------


@pytest.mark.parametrize("name", ["sky_gradient", "seeing_scatter", "striping"])
@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), "0.1", True])
def test_spec_rejects_bad_values(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0"):
        MosaicSpec(**{name: value})


def test_command_flags(tmp_path, capsys):
    argv = ["--outdir", str(tmp_path), "--exposures", "2", "--size", "32", "--detectors", "2"]
    argv += ["--sky-gradient", "0.05", "--seeing-scatter", "0.2", "--striping", "0.01"]
    assert simulate.main(argv) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("image"))
    assert header.split()[-5:] == ["masked", "gx", "gy", "psf", "stripes"]
    rows = [line.split() for line in out.splitlines() if line.startswith("jw0")]
    assert len(rows) == 4
    assert len({r[4] for r in rows}) == 2  # gx: one per exposure
    assert {r[7] for r in rows} == {f"{0.01 * np.hypot(1, 0.25):.4f}"}
    assert "mean of the image's sky plane" in out
    assert len(list(tmp_path.glob("*_cal.fits"))) == 4


def test_command_defaults_print_no_extra_columns(tmp_path, capsys):
    argv = ["--outdir", str(tmp_path), "--exposures", "2", "--size", "32"]
    assert simulate.main(argv) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("image"))
    assert header.split()[-1] == "masked"


@pytest.mark.parametrize("flag", ["--sky-gradient", "--seeing-scatter", "--striping"])
@pytest.mark.parametrize("value", ["-0.5", "nan"])
def test_command_rejects_bad_values(flag, value, tmp_path, capsys):
    status = simulate.main(["--outdir", str(tmp_path / "out"), flag, value])
    assert status == 2
    assert f"{flag} must be a finite number >= 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_command_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit, match="0"):
        simulate.main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--sky-gradient", "--seeing-scatter", "--striping"):
        assert flag in out
