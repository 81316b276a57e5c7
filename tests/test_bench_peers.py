"""The real-data loader and the peers benchmark, on small synthetic FITS tiles."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits

from conftest import load_benchmark


@pytest.fixture(scope="module")
def realdata():
    return load_benchmark("realdata")


def _tile(path, crval, *, crota=0.007, shape=(60, 80), level=640.0, seed=0):
    rng = np.random.default_rng(seed)
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---SIN", "DEC--SIN"
    header["CRPIX1"], header["CRPIX2"] = shape[1] / 2 + 0.5, shape[0] / 2 + 0.5
    header["CRVAL1"], header["CRVAL2"] = crval
    header["CDELT1"], header["CDELT2"] = -1.0 / 3600.0, 1.0 / 3600.0
    header["CROTA2"] = crota
    header["SKYSIG"] = 4.0
    data = (level + rng.normal(0.0, 4.0, shape)).astype(np.float32)
    data[0, :3] = np.nan
    fits.PrimaryHDU(data, header).writeto(path)


def test_fits_tiles_become_models_with_an_exact_gwcs(realdata, tmp_path):
    from astropy.wcs import WCS

    for k, ra in enumerate((270.0, 270.015)):
        _tile(tmp_path / f"tile{k}.fits", (ra, -16.2), seed=k)
    tiles = realdata.read_tiles(tmp_path)
    assert [t.name for t in tiles] == ["tile0", "tile1"]
    for tile in tiles:
        aw = WCS(tile.header).celestial
        yy, xx = np.mgrid[0:60:7, 0:80:9].astype(float)
        ra_g, dec_g = tile.gwcs(xx, yy)
        ra_a, dec_a = aw.pixel_to_world_values(xx, yy)
        np.testing.assert_allclose(ra_g, ra_a, atol=1e-10)
        np.testing.assert_allclose(dec_g, dec_a, atol=1e-10)
        assert tile.noise == 4.0
        assert tile.noise_source == "SKYSIG"
    models = realdata.tile_models(tiles)
    assert [int(m.meta.observation.exposure_number) for m in models] == [1, 2]
    assert models[0].meta.bunit_data == "DN"
    assert models[0].dq[0, 0] & 1  # NaN pixels are DO_NOT_USE


def test_a_wcs_the_gwcs_cannot_follow_is_an_error(realdata, tmp_path):
    _tile(tmp_path / "tile.fits", (270.0, -16.2))
    tile = realdata.read_tiles(tmp_path)[0]
    header = tile.header.copy()
    header["CRPIX1"] += 0.5  # a different WCS than the one the gwcs was built from
    from astropy.wcs import WCS

    with pytest.raises(ValueError, match="gWCS"):
        realdata.check_gwcs(tile.gwcs, WCS(header).celestial, tile.shape)


def test_peers_smoke_runs_without_the_peers(tmp_path):
    # The peers are an optional extra: without them the smoke run measures
    # jwst's step and ours, and says what to install for the others.
    bench = load_benchmark("bench_peers")
    assert bench.main(["--smoke", "--outdir", str(tmp_path), "--repeats", "1"]) == 0
    summary = json.loads((tmp_path / "peers_smoke.json").read_text())
    text = json.dumps(summary)
    assert "ours_constant" in text
    assert "ours_plane" in text
    md = (tmp_path / "peers_smoke.md").read_text()
    assert "ours, differences, plane" in md
