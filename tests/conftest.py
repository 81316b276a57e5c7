"""Shared fixtures: synthetic images with exact WCSs, simulated mosaics."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import ICRS
from astropy.modeling import models
from gwcs import WCS, coordinate_frames

from skymatch_step.simulate import MosaicSpec, make_image_model, simulate_mosaic, write_mosaic


def scale_shift_wcs(shift_x, shift_y, *, scale=1.0e-4, ra0=10.0, dec0=0.0):
    """Tangent-plane WCS whose pixel (0, 0) sits at ``(shift_x, shift_y)`` pixels.

    Images with such WCSs tile the sky exactly, which makes expected
    overlaps and levels exact.
    """
    forward = (
        (models.Shift(shift_x) & models.Shift(shift_y))
        | (models.Scale(scale) & models.Scale(scale))
        | models.Pix2Sky_TAN()
        | models.RotateNative2Celestial(ra0, dec0, 180.0)
    )
    detector = coordinate_frames.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    world = coordinate_frames.CelestialFrame(
        reference_frame=ICRS(), name="world", unit=(u.deg, u.deg)
    )
    return WCS([(detector, forward), (world, None)])


def constant_model(level, shift, *, shape=(40, 40), exposure=1, name=None):
    """An ImageModel holding nothing but a constant sky."""
    data = np.full(shape, level, dtype=np.float32)
    wcs = scale_shift_wcs(*shift)
    return make_image_model(
        data, wcs, exposure=exposure, filename=name or f"img{exposure:03d}_cal.fits"
    )


#: Documentation example 1: a 2 x 3 mosaic, every image overlapping its
#: neighbours (positions in pixels; images are 40 x 40).
TABLE1_SKY = [100.0, 120.0, 105.0, 110.0, 105.0, 115.0]
TABLE1_POS = [(0, 0), (30, 0), (60, 0), (0, 30), (30, 30), (60, 30)]
TABLE1 = {
    "local": [100, 120, 105, 110, 105, 115],
    "global": [100] * 6,
    "match": [0, 20, 5, 10, 5, 15],
    "global+match": [100, 120, 105, 110, 105, 115],
}

#: Documentation example 2: a 2 x 2 mosaic and, far away, a 3-image
#: mosaic; the two sets do not overlap.
TABLE2_SKY = [100.0, 120.0, 105.0, 110.0, 95.0, 90.0, 100.0]
TABLE2_POS = [(0, 0), (30, 0), (0, 30), (30, 30), (500, 0), (530, 0), (515, 30)]
TABLE2 = {
    "local": [100, 120, 105, 110, 95, 90, 100],
    "global": [90] * 7,
    "match": [0, 20, 5, 10, 8.75, 3.75, 13.75],
    "global+match": [86.25, 106.25, 91.25, 96.25, 95, 90, 100],
}


@pytest.fixture
def table1_models():
    return [
        constant_model(s, p, exposure=k + 1)
        for k, (s, p) in enumerate(zip(TABLE1_SKY, TABLE1_POS, strict=True))
    ]


@pytest.fixture
def table2_models():
    return [
        constant_model(s, p, exposure=k + 1)
        for k, (s, p) in enumerate(zip(TABLE2_SKY, TABLE2_POS, strict=True))
    ]


@pytest.fixture
def jwst_oracle(monkeypatch):
    """jwst's SkyMatchStep, runnable offline (it would ask CRDS for parameters)."""
    monkeypatch.setenv("STPIPE_DISABLE_CRDS_STEPPARS", "true")
    from jwst.skymatch import SkyMatchStep

    return SkyMatchStep


@pytest.fixture(scope="session")
def small_mosaic():
    """A noisy 6-exposure mosaic (single detector), in memory."""
    return simulate_mosaic(MosaicSpec(n_exposures=6, shape=(128, 128), seed=5))


@pytest.fixture(scope="session")
def grouped_mosaic():
    """A noisy mosaic of 4 exposures x 2 detectors, in memory."""
    return simulate_mosaic(
        MosaicSpec(n_exposures=4, detectors_per_exposure=2, shape=(128, 128), seed=7)
    )


@pytest.fixture(scope="session")
def clean_mosaic():
    """A noise-free mosaic: diffuse emission and sky only."""
    return simulate_mosaic(
        MosaicSpec(
            n_exposures=6,
            shape=(128, 128),
            noise=0.0,
            n_stars=0,
            cosmic_ray_fraction=0.0,
            seed=11,
        )
    )


@pytest.fixture
def mosaic_on_disk(tmp_path):
    """A small grouped mosaic written as _cal.fits files plus an association."""
    spec = MosaicSpec(n_exposures=4, detectors_per_exposure=2, shape=(96, 96), seed=2)
    return write_mosaic(spec, tmp_path / "data")


def library_results(library):
    """(filename, level, subtracted, method, status, data copy) of every model."""
    rows = []
    with library:
        for index in range(len(library)):
            model = library.borrow(index)
            bkg = model.meta.background
            rows.append(
                (
                    model.meta.filename,
                    bkg.level,
                    bkg.subtracted,
                    bkg.method,
                    model.meta.cal_step.skymatch,
                    np.array(model.data, copy=True),
                )
            )
            library.shelve(model, index, modify=False)
    return rows


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name):
    """Import ``benchmarks/<name>.py`` as a module (the benchmarks are scripts)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    # Registered before running it: dataclasses look their module up.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
