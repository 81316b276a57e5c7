"""The Image3 pipeline with this package's skymatch step, offline."""

from __future__ import annotations

import numpy as np
import pytest
from jwst.datamodels import ModelLibrary
from stdatamodels.jwst import datamodels

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
