"""The Image3 pipeline with this package's skymatch step, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jwst.datamodels import ModelLibrary
from stdatamodels.jwst import datamodels

import skymatch_step
from skymatch_step import SkymatchImage3Pipeline, SkymatchStep
from skymatch_step.simulate import MosaicSpec, write_mosaic


@pytest.fixture
def offline(monkeypatch):
    for name in ("STPIPE_DISABLE_CRDS_STEPPARS", "CRDS_SERVER_URL", "CRDS_PATH"):
        monkeypatch.delenv(name, raising=False)


def _residual_spread(i2d, scene):
    """Spread of (mosaic - simulated diffuse emission) over the mosaic."""
    ny, nx = i2d.data.shape
    yy, xx = np.mgrid[0:ny:4, 0:nx:4]
    ra, dec = i2d.meta.wcs(xx, yy)
    resid = i2d.data[::4, ::4] - scene.diffuse(ra, dec)
    ok = np.isfinite(resid) & (i2d.wht[::4, ::4] > 0)
    lo, hi = np.percentile(resid[ok], [5, 95])
    return hi - lo, np.median(resid[ok])


@pytest.mark.slow
def test_image3_mosaic_has_matched_sky_removed(tmp_path, offline):
    spec = MosaicSpec(
        n_exposures=4,
        shape=(128, 128),
        noise=0.002,
        n_stars=0,
        cosmic_ray_fraction=0.0,
        sky_levels=(0.1, 0.4, 0.25, 0.7),
        seed=8,
    )
    truth = write_mosaic(spec, tmp_path / "data", product_name="mos")
    steps = {"tweakreg": {"skip": True}, "source_catalog": {"skip": True}}

    assert isinstance(SkymatchImage3Pipeline().skymatch, SkymatchStep)
    SkymatchImage3Pipeline.call(
        str(truth.asn_path), output_dir=str(tmp_path / "on"), steps=steps, save_results=True
    )
    skipped = {**steps, "skymatch": {"skip": True}}
    SkymatchImage3Pipeline.call(
        str(truth.asn_path), output_dir=str(tmp_path / "off"), steps=skipped, save_results=True
    )

    with (
        datamodels.open(tmp_path / "on" / "mos_i2d.fits") as on,
        datamodels.open(tmp_path / "off" / "mos_i2d.fits") as off,
    ):
        spread_on, level_on = _residual_spread(on, truth.scene)
        spread_off, _ = _residual_spread(off, truth.scene)
    # Without skymatch the mosaic shows the exposures' sky differences
    # (0.1 to 0.7); with it, resample removed BKGLEVEL and only the lowest
    # sky (0.1) remains, flat to the noise.
    assert spread_off > 0.4
    assert spread_on < 0.02
    assert level_on == pytest.approx(0.1, abs=0.01)
    crf = sorted((tmp_path / "on").glob("*_crf.fits"))
    assert len(crf) == 4
    with datamodels.open(crf[0]) as model:
        assert model.meta.cal_step.skymatch == "COMPLETE"
        assert model.meta.background.method == "match"


def test_pipeline_library_reads_its_association_once(tmp_path, offline):
    # jwst's ModelLibrary rebuilds a read-only view of the whole association
    # at every access (several per model borrowed); the pipeline's library
    # builds it once and keeps jwst's behaviour otherwise.
    spec = MosaicSpec(n_exposures=3, shape=(32, 32), n_stars=0, seed=3)
    truth = write_mosaic(spec, tmp_path, product_name="few")
    library = SkymatchImage3Pipeline()._load_input_as_library(str(truth.asn_path))
    assert isinstance(library, ModelLibrary)
    assert library.asn is library.asn
    assert library.asn["products"][0]["name"] == "few"
    assert len(library) == 3
    with library:
        model = library.borrow(1)
        assert model.meta.filename == truth.files[1].name
        library.shelve(model, 1, modify=False)
    # a library passed in is used as it is
    given = ModelLibrary(str(truth.asn_path))
    assert SkymatchImage3Pipeline()._load_input_as_library(given) is given
    assert type(given) is ModelLibrary


def _pipeline_from_config(**kwargs):
    """Build the pipeline the way ``strun`` and ``call`` do (config section)."""
    config, config_file = SkymatchImage3Pipeline.build_config(None, **kwargs)
    return SkymatchImage3Pipeline.from_config_section(config, config_file=config_file)


def test_offline_pipeline_writes_its_products(tmp_path, offline, caplog):
    # The README's command, without CRDS: source_catalog (the only Image3
    # step with reference files) is skipped with a warning saying how to
    # enable it, and the pipeline writes its _crf and _i2d products.
    # tweakreg is skipped (warning) because the simulated WCSs have no
    # v2v3 frame: jwst's tweakreg would stop the pipeline.
    spec = MosaicSpec(n_exposures=3, shape=(64, 64), n_stars=5, seed=4)
    truth = write_mosaic(spec, tmp_path / "data", product_name="off")
    SkymatchImage3Pipeline.call(
        str(truth.asn_path), output_dir=str(tmp_path / "out"), save_results=True
    )
    assert (tmp_path / "out" / "off_i2d.fits").exists()
    assert len(list((tmp_path / "out").glob("*_crf.fits"))) == 3
    assert not list((tmp_path / "out").glob("*_cat.ecsv"))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    skipped = [m for m in warnings if "CRDS is not configured" in m]
    assert len(skipped) == 1
    assert "source_catalog (apcorr, abvegaoffset)" in skipped[0]
    assert "CRDS_SERVER_URL" in skipped[0]
    assert "--steps.source_catalog.skip=false" in skipped[0]
    tweakreg = [m for m in warnings if m.startswith("Skipping tweakreg")]
    assert len(tweakreg) == 1
    assert "jw01234001001_01101_00001_nrca1_cal.fits has no 'v2v3' frame" in tweakreg[0]
    assert "frames: detector, world" in tweakreg[0]
    with datamodels.open(tmp_path / "out" / "off_i2d.fits") as i2d:
        assert i2d.meta.cal_step.resample == "COMPLETE"
        assert i2d.meta.cal_step.skymatch == "COMPLETE"


@pytest.mark.parametrize("build", ["call", "direct"])
def test_offline_skip_respects_the_callers_choice(offline, build):
    def make(**kwargs):
        if build == "call":
            return _pipeline_from_config(**kwargs)
        return SkymatchImage3Pipeline(**kwargs)

    default = make()
    default._skip_steps_needing_references()
    assert default.source_catalog.skip
    assert not default.resample.skip
    assert not default.outlier_detection.skip

    chosen = make(steps={"source_catalog": {"skip": False}})
    chosen._skip_steps_needing_references()
    assert not chosen.source_catalog.skip

    overridden = make(
        steps={
            "source_catalog": {"override_apcorr": "apcorr.fits", "override_abvegaoffset": "ab.asdf"}
        }
    )
    overridden._skip_steps_needing_references()
    assert not overridden.source_catalog.skip


def test_tweakreg_runs_when_chosen(tmp_path, offline):
    spec = MosaicSpec(n_exposures=2, shape=(32, 32), n_stars=0, seed=3)
    truth = write_mosaic(spec, tmp_path, product_name="few")
    chosen = _pipeline_from_config(steps={"tweakreg": {"skip": False}})
    chosen._load_input_as_library(str(truth.asn_path))
    assert not chosen.tweakreg.skip
    default = _pipeline_from_config()
    default._load_input_as_library(str(truth.asn_path))
    assert default.tweakreg.skip


def test_no_skip_when_crds_is_configured(offline, monkeypatch, tmp_path):
    monkeypatch.setenv("CRDS_PATH", str(tmp_path))
    pipeline = _pipeline_from_config()
    pipeline._skip_steps_needing_references()
    assert not pipeline.source_catalog.skip


@pytest.mark.slow
def test_strun_skymatch_image3_offline(tmp_path):
    # The command the README shows, in a subprocess without CRDS variables.
    spec = MosaicSpec(n_exposures=3, shape=(64, 64), n_stars=5, seed=4)
    truth = write_mosaic(spec, tmp_path, product_name="cli")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CRDS_SERVER_URL", "CRDS_PATH", "STPIPE_DISABLE_CRDS_STEPPARS")
    }
    # this source tree, whatever the working directory
    source = str(Path(skymatch_step.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    strun = Path(sys.executable).with_name("strun")
    proc = subprocess.run(
        [str(strun), "skymatch_image3", truth.asn_path.name],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipping the step(s) that need CRDS reference files: source_catalog" in proc.stderr
    assert "Skipping tweakreg: the WCS of" in proc.stderr
    assert (tmp_path / "cli_i2d.fits").exists()
    assert len(list(tmp_path.glob("*_crf.fits"))) == 3
