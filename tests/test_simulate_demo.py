"""The simulator and the demo command."""

from __future__ import annotations

import numpy as np
import pytest
from jwst.datamodels import ModelLibrary

from skymatch_step import demo
from skymatch_step.simulate import MosaicSpec, make_gwcs, simulate_mosaic


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
