"""The simulator and the demo command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jwst.datamodels import ModelLibrary
from stdatamodels.jwst import datamodels

import skymatch_step
from skymatch_step import SkymatchStep, demo, simulate
from skymatch_step.simulate import MosaicSpec, make_gwcs, simulate_mosaic, write_mosaic

#: this source tree, for subprocesses
_SOURCE = os.pathsep.join(
    filter(
        None, [str(Path(skymatch_step.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]
    )
)


def test_simulated_files_group_by_exposure(mosaic_on_disk):
    library = ModelLibrary(str(mosaic_on_disk.asn_path))
    assert len(library) == 8
    assert sorted(len(v) for v in library.group_indices.values()) == [2, 2, 2, 2]
    with library:
        model = library.borrow(0)
        assert model.meta.wcsinfo.s_region.startswith("POLYGON ICRS")
        assert model.var_rnoise.shape == model.data.shape
        bad = np.isnan(model.data)
        assert bad.any()
        assert (model.dq[bad] & 1).all()
        library.shelve(model, 0, modify=False)


def test_simulated_sky_is_known():
    spec = MosaicSpec(
        n_exposures=3,
        shape=(64, 64),
        noise=0.0,
        n_stars=0,
        cosmic_ray_fraction=0.0,
        bad_fraction=0.0,
        diffuse=0.0,
        sky_levels=(0.1, 0.2, 0.3),
    )
    models, truth = simulate_mosaic(spec)
    for model in models:
        assert np.allclose(model.data, truth.sky[model.meta.filename])


def test_gwcs_inverse_is_consistent():
    wcs = make_gwcs((200, 300), 10.0, -20.0, 30.0, distortion=2.0)
    x = np.array([0.0, 150.0, 299.0])
    y = np.array([0.0, 100.0, 199.0])
    xi, yi = wcs.invert(*wcs(x, y))
    np.testing.assert_allclose(xi, x, atol=0.01)
    np.testing.assert_allclose(yi, y, atol=0.01)


def test_sky_levels_length_is_checked():
    with pytest.raises(ValueError, match="sky_levels has 2 values for 3 exposures"):
        simulate_mosaic(MosaicSpec(n_exposures=3, sky_levels=(0.1, 0.2)))


def test_demo_recovers_offsets(capsys):
    assert demo.main(["--exposures", "4", "--size", "96", "--detectors", "1"]) == 0
    out = capsys.readouterr().out
    assert "Recovered the true sky offsets" in out
    assert out.count("COMPLETE") == 4


@pytest.mark.parametrize("seed", [5, 12, 21])
def test_demo_passes_on_other_seeds(seed, capsys):
    # smaller than the defaults (fast); the tolerance follows the overlap size
    argv = ["--seed", str(seed), "--exposures", "4", "--size", "128"]
    assert demo.main(argv) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    ratio = float(out.split("largest error / tolerance = ")[1].split(")")[0])
    assert 0 < ratio < 1


@pytest.mark.slow
def test_demo_default_settings_seed_5(capsys):
    # seed 5 failed the former fixed 0.02 MJy/sr threshold (error 0.031)
    assert demo.main(["--seed", "5"]) == 0, capsys.readouterr().out


def test_demo_verdict_fails_for_wrong_levels(capsys):
    rows = [
        ("a_cal.fits", 1, 0.1, 0.0, "COMPLETE"),
        ("b_cal.fits", 2, 0.3, 0.2, "COMPLETE"),
        ("c_cal.fits", 3, 0.2, 0.16, "COMPLETE"),
    ]
    assert demo._report(rows, "match", 0.003, "mode") == 1  # error 0.06 > 0.03
    assert "off by more than the tolerance" in capsys.readouterr().out
    assert demo._report(rows, "match", 0.01, "mode") == 0  # 0.06 < 0.1
    unmeasured = [*rows[:2], ("c_cal.fits", 3, 0.2, None, "SKIPPED")]
    assert demo._report(unmeasured, "match", 0.01, "mode") == 1


@pytest.mark.parametrize("skystat", ["mode", "midpt", "median", "mean"])
def test_expected_scatter_model_matches_the_statistics(skystat):
    # The demo's tolerance rests on this model of each statistic's scatter
    # (a statistical term and, for histogram statistics, a floor).
    from skymatch_step import SkyStatistics

    stats = SkyStatistics(skystat=skystat)
    rng = np.random.default_rng(11)
    spread = 0.02
    for n in (4000, 16000):
        spec = MosaicSpec(shape=(100, n // 15), overlap=0.15)  # overlap_pixels = n
        assert demo.overlap_pixels(spec) == pytest.approx(n, rel=0.01)
        values = [stats(rng.normal(0.3, spread, n))[0] for _ in range(150)]
        measured = np.std(values)
        assert 0.75 < measured / demo.expected_scatter(spec, skystat, spread) < 1.33


_PLAIN = {
    "n_stars": 0,
    "noise": 0.0,
    "cosmic_ray_fraction": 0.0,
    "bad_fraction": 0.0,
    "diffuse": 0.0,
}


@pytest.mark.parametrize(("region", "fraction"), [("quadrant", 0.25), ("disc", 0.28)])
def test_masked_region_changes_only_the_masked_pixels(region, fraction):
    base = MosaicSpec(n_exposures=2, detectors_per_exposure=2, shape=(64, 64), seed=6)
    masked = MosaicSpec(
        n_exposures=2,
        detectors_per_exposure=2,
        shape=(64, 64),
        seed=6,
        masked_region=region,
        masked_images=(1, 2),
    )
    plain_models, _ = simulate_mosaic(base)
    models, truth = simulate_mosaic(masked)
    for index, (model, plain) in enumerate(zip(models, plain_models, strict=True)):
        name = model.meta.filename
        if index not in (1, 2):
            assert truth.masked_fraction[name] == 0.0
            np.testing.assert_array_equal(model.data, plain.data)
            np.testing.assert_array_equal(model.dq, plain.dq)
            continue
        # the unusable region: NaN and DO_NOT_USE, inside the image outline
        region_mask = np.isnan(model.data) & ~np.isnan(plain.data)
        assert region_mask.mean() == pytest.approx(fraction, abs=0.01)
        assert truth.masked_fraction[name] == pytest.approx(region_mask.mean(), abs=0.003)
        assert (model.dq[region_mask] & 1).all()
        outside = ~region_mask
        np.testing.assert_array_equal(model.data[outside], plain.data[outside])
        assert model.meta.wcsinfo.s_region == plain.meta.wcsinfo.s_region
    if region == "quadrant":
        assert np.isnan(models[1].data[40:, 40:]).all()
        assert np.isfinite(models[1].data[:20, :20]).any()


def test_detector_sky_scatter_gives_each_detector_its_sky():
    spec = MosaicSpec(
        n_exposures=2,
        detectors_per_exposure=4,
        shape=(32, 32),
        sky_levels=(0.1, 0.3),
        detector_sky_scatter=0.05,
        **_PLAIN,
    )
    models, truth = simulate_mosaic(spec)
    assert len(models) == 8
    for model in models:
        np.testing.assert_allclose(model.data, truth.sky[model.meta.filename], atol=1e-6)
    offsets = np.array(
        [sky - (0.1, 0.3)[truth.exposure[name] - 1] for name, sky in truth.sky.items()]
    )
    # every detector differs from its exposure's sky; spread about 0.05
    assert (np.abs(offsets) > 0).all()
    assert len({round(s, 6) for s in truth.sky.values()}) == 8
    assert 0.02 < offsets.std() < 0.1
    # without scatter, the detectors of an exposure share its sky
    _, plain_truth = simulate_mosaic(
        MosaicSpec(
            n_exposures=2,
            detectors_per_exposure=4,
            shape=(32, 32),
            sky_levels=(0.1, 0.3),
            **_PLAIN,
        )
    )
    for name, sky in plain_truth.sky.items():
        assert sky == (0.1, 0.3)[plain_truth.exposure[name] - 1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"masked_region": "circle"}, r"masked_region must be None or one of \('quadrant'"),
        ({"detector_sky_scatter": -0.1}, "detector_sky_scatter must be >= 0 MJy/sr, not -0.1"),
    ],
)
def test_new_options_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MosaicSpec(**kwargs)


def test_masked_images_out_of_range():
    spec = MosaicSpec(n_exposures=2, shape=(32, 32), masked_region="disc", masked_images=(2,))
    with pytest.raises(ValueError, match=r"masked_images \[2\] out of range: the mosaic has 2"):
        simulate_mosaic(spec)


def test_step_measures_the_sky_of_a_masked_mosaic():
    # A coronagraph-like mask on one image: the step still matches its sky
    # from the pixels left in its overlaps. (With diffuse emission, the
    # mask biases jwst-like statistics, which compare each image's own good
    # pixels: the case issue 9 asks the simulator for. Here the sky is flat.)
    spec = MosaicSpec(
        n_exposures=4,
        shape=(96, 96),
        overlap=0.3,
        sky_levels=(0.1, 0.3, 0.2, 0.4),
        masked_region="quadrant",
        masked_images=(0,),
        noise=0.002,
        n_stars=0,
        diffuse=0.0,
        seed=3,
    )
    models, truth = simulate_mosaic(spec)
    result = SkymatchStep.call(models, skymethod="match", skystat="median")
    levels = {}
    with result:
        for index in range(len(result)):
            model = result.borrow(index)
            assert model.meta.cal_step.skymatch == "COMPLETE"
            levels[model.meta.filename] = model.meta.background.level
            result.shelve(model, index, modify=False)
    names = sorted(levels)
    found = np.array([levels[n] for n in names])
    true = np.array([truth.sky[n] for n in names])
    np.testing.assert_allclose(found - found.min(), true - true.min(), atol=0.01)


def test_simulate_command(tmp_path, capsys):
    status = simulate.main(
        [
            "--outdir",
            str(tmp_path / "sim"),
            "--exposures",
            "2",
            "--detectors",
            "2",
            "--size",
            "32",
            "--masked-region",
            "disc",
            "--masked-images",
            "1",
            "--detector-sky-scatter",
            "0.02",
            "--sky-levels",
            "0.1",
            "0.3",
        ]
    )
    assert status == 0
    out = capsys.readouterr().out
    asn = tmp_path / "sim" / "sim_asn.json"
    assert f"association {asn}" in out
    assert f"strun skymatch_step {asn}" in out
    library = ModelLibrary(str(asn))
    assert len(library) == 4
    rows = [line.split() for line in out.splitlines() if line.startswith("jw0")]
    assert len(rows) == 4
    assert [r[3] for r in rows] == ["-", "28%", "-", "-"]
    # the printed true sky is each file's own (exposure sky + detector offset)
    assert len({r[2] for r in rows}) == 4


def test_simulate_command_rejects_bad_options(tmp_path, capsys):
    status = simulate.main(
        ["--outdir", str(tmp_path), "--masked-region", "disc", "--masked-images", "7"]
    )
    assert status == 2
    assert "masked_images [7] out of range" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_simulate_module_help():
    proc = subprocess.run(
        [sys.executable, "-m", "skymatch_step.simulate", "--help"],
        env={**os.environ, "PYTHONPATH": _SOURCE},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert proc.stdout.startswith("usage: skymatch-simulate")
    assert "--masked-region" in proc.stdout
    assert "--detector-sky-scatter" in proc.stdout


def test_demo_compares_by_differences_on_a_nebula(capsys):
    # Strong diffuse emission: pixel differences recover the offsets far
    # better than jwst's per-image statistics.
    def worst(argv):
        assert demo.main(argv) == 0
        out = capsys.readouterr().out
        assert "compare=" in out
        line = next(t for t in out.splitlines() if t.startswith("Largest error"))
        return float(line.split(":")[1].split()[0])

    base = ["--exposures", "4", "--size", "128", "--detectors", "1", "--diffuse", "5"]
    stats = worst(base)
    diffs = worst([*base, "--compare", "differences"])
    assert diffs < 0.01
    assert diffs * 10 < stats


def test_simulate_command_diffuse_option(tmp_path, capsys):
    from skymatch_step import simulate

    assert (
        simulate.main(
            ["--outdir", str(tmp_path), "--exposures", "2", "--size", "32", "--diffuse", "5"]
        )
        == 0
    )
    assert (tmp_path / "sim_asn.json").exists()


def test_write_mosaic_in_two_processes_writes_the_same_files(tmp_path):
    spec = MosaicSpec(n_exposures=5, detectors_per_exposure=1, shape=(64, 64), seed=4)
    one = write_mosaic(spec, tmp_path / "one", product_name="m")
    two = write_mosaic(spec, tmp_path / "two", product_name="m", workers=2)
    assert [f.name for f in two.files] == [f.name for f in one.files]
    assert all(f.exists() for f in two.files)
    assert json.loads(two.asn_path.read_text()) == json.loads(one.asn_path.read_text())
    assert two.sky == one.sky
    assert two.exposure == one.exposure
    assert two.masked_fraction == one.masked_fraction
    for a, b in zip(one.files, two.files, strict=True):
        with datamodels.open(a) as ma, datamodels.open(b) as mb:
            np.testing.assert_array_equal(ma.data, mb.data)
            np.testing.assert_array_equal(ma.dq, mb.dq)
            assert ma.meta.wcs(10.0, 20.0) == mb.meta.wcs(10.0, 20.0)


@pytest.mark.parametrize("workers", [0, -1, 1.5])
def test_write_mosaic_rejects_a_bad_number_of_workers(workers, tmp_path):
    spec = MosaicSpec(n_exposures=2, detectors_per_exposure=1, shape=(32, 32))
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        write_mosaic(spec, tmp_path, workers=workers)
    assert not list(tmp_path.iterdir())
