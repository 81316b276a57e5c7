"""Fit diagnostics: ECSV tables of pairs and images, and the PNG plot."""

from __future__ import annotations

import logging
import os
import sys

import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table

from conftest import TABLE1_POS, TABLE1_SKY, scale_shift_wcs
from skymatch_step import ImageInput, SkymatchError, SkyResult, match
from skymatch_step._diagnostics import (
    _centre,
    build_figure,
    check_diagnostics_prefix,
    diagnostics_paths,
    diagnostics_tables,
    require_matplotlib,
    write_diagnostics,
)
from skymatch_step._footprints import image_footprint
from skymatch_step._pairs import PairRecord
from skymatch_step._plot import _tangent_plane
from skymatch_step.exceptions import MissingDependencyError

NAN = float("nan")


def _footprint(shift, *, ra0=10.0, shape=(40, 40)):
    wcs = scale_shift_wcs(*shift, ra0=ra0)
    return image_footprint(shape, wcs.forward_transform)


def _inputs(skies, positions, shape=(40, 40), *, ra0=10.0):
    images = []
    for k, (sky, pos) in enumerate(zip(skies, positions, strict=True)):
        wcs = scale_shift_wcs(*pos, ra0=ra0)
        images.append(
            ImageInput.from_arrays(
                np.full(shape, sky, np.float32),
                None,
                wcs.forward_transform,
                wcs.backward_transform,
                id=f"img{k}_cal.fits",
            )
        )
    return images


def _result(*, ra0=10.0, positions=((0, 0), (30, 0), (0, 30), (60, 60))):
    """Four images: 0 and 1 form group 'exp1', 2 and 3 are one-image groups.

    Image 3 is skipped. Pairs: (0, 1) used, (0, 2) rejected as an outlier,
    (1, 2) rejected for having few pixels (not fitted).
    """
    pairs = [
        PairRecord(0, 1, 800, 790, 10.5, 20.0, -9.5, 0.1, 2.0, -9.4, -0.1, -1.0, ""),
        PairRecord(0, 2, 400, 410, 10.0, 14.0, -4.0, 0.2, 1.0, -5.0, 1.0, 5.0, "outlier"),
        PairRecord(1, 2, 3, 4, 20.0, 14.0, 6.0, NAN, 0.0, NAN, NAN, NAN, "few pixels"),
    ]
    return SkyResult(
        method="match",
        terms=[(1.5,), (1.5,), (6.5,), (0.0,)],
        valid=np.array([True, True, True, False]),
        reasons=["", "", "", "it has no usable pixels"],
        groups=[0, 0, 1, 2],
        sets=np.array([0, 0, 1]),
        footprints=[_footprint(p, ra0=ra0) for p in positions],
        names=["a_cal.fits", "b_cal.fits", "c_cal.fits", "d_cal.fits"],
        group_labels=["exp1", "c_cal.fits", "d_cal.fits"],
        pairs=pairs,
    )


# --------------------------------------------------------------------------- tables


def test_tables_hold_pairs_and_images():
    result = _result()
    pairs, images = diagnostics_tables(result, unit="MJy/sr")

    assert len(pairs) == 3
    # A group is named by its label, a one-image group by its image.
    assert list(pairs["group_a"]) == ["exp1", "exp1", "c_cal.fits"]
    assert list(pairs["group_b"]) == ["c_cal.fits", "d_cal.fits", "d_cal.fits"]
    assert list(pairs["index_a"]) == [0, 0, 1]
    assert list(pairs["index_b"]) == [1, 2, 2]
    for rec, row in zip(result.pairs, pairs, strict=True):
        for name in ("npix_a", "npix_b"):
            assert row[name] == getattr(rec, name)
        for name in _FLOAT_COLUMNS:
            np.testing.assert_equal(row[name], getattr(rec, name))
        assert row["rejected"] == rec.rejected
    assert pairs["difference"].unit == u.MJy / u.sr
    assert "MJy / sr" in pairs["residual"].description
    assert pairs["normalized"].unit is None
    assert pairs.meta["method"] == "match"
    assert pairs.meta["n_rejected"] == 2

    assert list(images["image"]) == ["a_cal.fits", "b_cal.fits", "c_cal.fits", "d_cal.fits"]
    assert list(images["group"]) == ["exp1", "exp1", "c_cal.fits", "d_cal.fits"]
    assert list(images["group_index"]) == [0, 0, 1, 2]
    assert list(images["set"]) == [0, 0, 0, 1]
    np.testing.assert_array_equal(images["level"], [1.5, 1.5, 6.5, NAN])
    assert images["level"].unit == u.MJy / u.sr
    assert list(images["status"]) == ["COMPLETE", "COMPLETE", "COMPLETE", "SKIPPED"]
    assert list(images["reason"]) == ["", "", "", "it has no usable pixels"]
    # Footprint outlines (closed) and centres, in degrees.
    fp_ra, fp_dec = next(iter(result.footprints[0].to_radec()))
    np.testing.assert_allclose(images["ra_outline"][0], fp_ra)
    np.testing.assert_allclose(images["dec_outline"][0], fp_dec)
    np.testing.assert_allclose(images["ra"][0], np.mean(fp_ra[:-1]), atol=1e-9)
    np.testing.assert_allclose(images["dec"][0], np.mean(fp_dec[:-1]), atol=1e-9)


_FLOAT_COLUMNS = (
    "value_a",
    "value_b",
    "difference",
    "error",
    "fitted",
    "residual",
    "normalized",
    "weight",
)


def test_tables_without_names_fall_back_to_indices():
    result = _result()
    result.names = []
    result.group_labels = []
    pairs, images = diagnostics_tables(result)
    assert list(images["image"]) == ["image 0", "image 1", "image 2", "image 3"]
    assert list(pairs["group_a"]) == ["group 0", "group 0", "image 2"]
    assert pairs["difference"].unit is None
    assert "data units" in pairs["difference"].description


def test_unknown_unit_is_not_recorded(caplog):
    with caplog.at_level(logging.WARNING, logger="skymatch_step"):
        pairs, images = diagnostics_tables(_result(), unit="not a unit at all")
    assert pairs["difference"].unit is None
    assert images.meta["unit"] == ""
    assert "'not a unit at all' of the data is not understood" in caplog.text


# --------------------------------------------------------------------------- files


def test_tables_read_back(tmp_path):
    result = _result()
    paths = write_diagnostics(result, tmp_path / "run", plot=False, unit="MJy/sr")
    assert paths == [tmp_path / "run_pairs.ecsv", tmp_path / "run_images.ecsv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_images.ecsv", "run_pairs.ecsv"]

    pairs = Table.read(paths[0], format="ascii.ecsv", fill_values=[])
    assert pairs.meta["method"] == "match"
    assert len(pairs) == len(result.pairs)
    assert list(pairs["group_a"]) == ["exp1", "exp1", "c_cal.fits"]
    assert list(pairs["rejected"]) == ["", "outlier", "few pixels"]
    for rec, row in zip(result.pairs, pairs, strict=True):
        assert (row["npix_a"], row["npix_b"]) == (rec.npix_a, rec.npix_b)
        for name in _FLOAT_COLUMNS:
            np.testing.assert_equal(row[name], getattr(rec, name))
    assert pairs["fitted"].unit == u.MJy / u.sr
    assert "fit" in pairs["fitted"].description
    # A plain read gives the empty 'rejected' (pair used) as a masked entry.
    plain = Table.read(paths[0], format="ascii.ecsv")
    assert list(plain["rejected"].mask) == [True, False, False]

    images = Table.read(paths[1], format="ascii.ecsv", fill_values=[])
    assert images.meta["method"] == "match"
    assert list(images["image"]) == result.names
    assert list(images["status"]) == ["COMPLETE", "COMPLETE", "COMPLETE", "SKIPPED"]
    np.testing.assert_array_equal(images["level"], result.levels)
    assert list(images["set"]) == [0, 0, 0, 1]
    assert list(images["reason"]) == result.reasons
    ra, _ = next(iter(result.footprints[3].to_radec()))
    np.testing.assert_allclose(np.asarray(images["ra_outline"][3], float), ra)


def test_png_is_an_image(tmp_path):
    from matplotlib.image import imread

    paths = write_diagnostics(_result(), str(tmp_path / "run"))
    png = tmp_path / "run.png"
    assert paths[2] == png
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(png)
    assert pixels.shape[:2] == (560, 1300)
    # Not blank: footprints and links are drawn in colour.
    assert np.ptp(pixels[..., :3]) > 0.5
    assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 100


def _figure_parts(fig):
    from matplotlib.collections import LineCollection, PolyCollection

    sky, hist = fig.axes[0], next(ax for ax in fig.axes if ax.get_title().startswith("Normal"))
    lines = [c for c in sky.collections if isinstance(c, LineCollection)]
    polys = [c for c in sky.collections if isinstance(c, PolyCollection)]
    return sky, hist, lines, polys


@pytest.mark.parametrize("from_files", [False, True])
def test_figure_content(tmp_path, from_files):
    result = _result()
    if from_files:
        # The plot needs only the tables: redraw from the files.
        paths = write_diagnostics(result, tmp_path / "run", plot=False)
        pairs, images = (Table.read(p, format="ascii.ecsv") for p in paths)
    else:
        pairs, images = diagnostics_tables(result)
    fig = build_figure(pairs, images)
    sky, hist, lines, polys = _figure_parts(fig)

    # RA increases to the left.
    left, right = sky.get_xlim()
    assert left > right
    # Footprints: 3 coloured by level, the skipped one hatched.
    coloured = next(c for c in polys if c.get_array() is not None)
    np.testing.assert_array_equal(coloured.get_array(), [1.5, 1.5, 6.5])
    hatched = next(c for c in polys if c.get_hatch())
    assert len(hatched.get_paths()) == 1
    # Links: one used pair coloured by |normalized|, two rejected (dashed).
    used = next(c for c in lines if c.get_array() is not None)
    np.testing.assert_array_equal(used.get_array(), [1.0])
    dashed = [c for c in lines if c.get_array() is None]
    assert sum(len(c.get_segments()) for c in dashed) == 2
    legend = [t.get_text() for t in sky.get_legend().get_texts()]
    assert "rejected (few pixels, outlier)" in legend
    assert "skipped" in legend
    # Histogram: one used and one rejected residual; the unfitted pair noted.
    counts = [sum(p.get_height() for p in c) for c in hist.containers]
    assert counts == [1, 1]
    assert any("not shown: 1" in t.get_text() for t in hist.texts)


def test_engine_result_match(tmp_path):
    result = match(_inputs(TABLE1_SKY, TABLE1_POS), skymethod="match")
    paths = write_diagnostics(result, tmp_path / "m")
    pairs = Table.read(paths[0], format="ascii.ecsv")
    images = Table.read(paths[1], format="ascii.ecsv")
    assert len(pairs) == len(result.pairs)
    assert pairs.meta["method"] == "match"
    np.testing.assert_allclose(images["level"], result.levels)
    assert list(images["set"]) == [int(result.sets[g]) for g in result.groups]
    assert set(images["status"]) == {"COMPLETE"}
    assert paths[2].stat().st_size > 0


@pytest.mark.parametrize("method", ["local", "global"])
def test_methods_without_pairs(tmp_path, method):
    result = match(_inputs(TABLE1_SKY, TABLE1_POS), skymethod=method)
    paths = write_diagnostics(result, tmp_path / method)
    pairs = Table.read(paths[0], format="ascii.ecsv")
    images = Table.read(paths[1], format="ascii.ecsv")
    assert len(pairs) == 0
    assert "normalized" in pairs.colnames
    assert "rejected" in pairs.colnames
    assert pairs.meta["method"] == method
    assert list(images["set"]) == [-1] * 6
    np.testing.assert_allclose(images["level"], result.levels)

    fig = build_figure(pairs, images)
    sky, hist, lines, polys = _figure_parts(fig)
    assert not lines
    assert len(polys[0].get_paths()) == 6
    assert any("no pairs" in t.get_text() for t in hist.texts)
    assert any("no pairs" in t.get_text() for t in sky.texts)


def test_existing_files_are_overwritten(tmp_path):
    for p in diagnostics_paths(tmp_path / "run"):
        p.write_text("old")
    paths = write_diagnostics(_result(), tmp_path / "run")
    assert len(Table.read(paths[0], format="ascii.ecsv")) == 3
    assert paths[2].read_bytes()[:4] == b"\x89PNG"


def test_failure_leaves_no_files(tmp_path, monkeypatch):
    import skymatch_step._diagnostics as diag

    (tmp_path / "run_pairs.ecsv").write_text("old")

    def broken(pairs, images):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(diag, "build_figure", broken)
    with pytest.raises(RuntimeError, match="plot failed"):
        write_diagnostics(_result(), tmp_path / "run")
    # Nothing renamed (the old file is untouched), no temporary file left.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_pairs.ecsv"]
    assert (tmp_path / "run_pairs.ecsv").read_text() == "old"


# --------------------------------------------------------------------------- prefix


def test_check_prefix_returns_paths(tmp_path):
    assert check_diagnostics_prefix(tmp_path / "x", plot=True) == [
        tmp_path / "x_pairs.ecsv",
        tmp_path / "x_images.ecsv",
        tmp_path / "x.png",
    ]
    assert check_diagnostics_prefix(str(tmp_path / "x"), plot=False) == [
        tmp_path / "x_pairs.ecsv",
        tmp_path / "x_images.ecsv",
    ]


def test_prefix_in_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = write_diagnostics(_result(), "run", plot=False)
    assert [p.name for p in paths] == ["run_pairs.ecsv", "run_images.ecsv"]
    assert (tmp_path / "run_pairs.ecsv").is_file()


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        ("", "prefix is empty"),
        ("missing/run", r"directory '.*missing' of the diagnostics prefix .* does not exist"),
        ("sub/", "names a directory"),
        ("sub", "names a directory"),
        ("taken", r"Cannot write diagnostics file '.*taken_pairs\.ecsv': it is a directory"),
    ],
)
def test_bad_prefix(tmp_path, prefix, message):
    (tmp_path / "sub").mkdir()
    (tmp_path / "taken_pairs.ecsv").mkdir()
    full = "" if not prefix else os.path.join(str(tmp_path), prefix)
    with pytest.raises(ValueError, match=message):
        check_diagnostics_prefix(full, plot=False)
    with pytest.raises(ValueError, match=message):
        write_diagnostics(_result(), full, plot=False)


def test_prefix_directory_not_writable(tmp_path, monkeypatch):
    # Permissions do not stop root (as CI runs): the check asks os.access,
    # which is made to answer as for an unprivileged user.
    import skymatch_step._diagnostics as diagnostics

    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(
        diagnostics.os, "access", lambda p, mode: False if str(p) == str(locked) else real(p, mode)
    )
    with pytest.raises(ValueError, match="is not writable"):
        check_diagnostics_prefix(locked / "run", plot=False)
    check_diagnostics_prefix(tmp_path / "run", plot=False)


# --------------------------------------------------------------------------- matplotlib


def test_missing_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(
        MissingDependencyError, match=r'Install the .plot. extra: pip install "\.\[plot\]"'
    ):
        require_matplotlib()
    with pytest.raises(ImportError, match="needs matplotlib"):
        check_diagnostics_prefix(tmp_path / "run", plot=True)
    with pytest.raises(SkymatchError, match="diagnostics_plot=False"):
        write_diagnostics(_result(), tmp_path / "run")
    assert not list(tmp_path.iterdir())
    # The tables need no matplotlib.
    paths = write_diagnostics(_result(), tmp_path / "run", plot=False)
    assert [p.name for p in paths] == ["run_pairs.ecsv", "run_images.ecsv"]


# --------------------------------------------------------------------------- geometry


def test_tangent_plane_across_ra_zero():
    ra = np.array([359.99, 0.01, 0.01, 359.99])
    dec = np.array([-0.01, -0.01, 0.01, 0.01])
    centre = _centre(ra, dec)
    assert min(centre[0], 360.0 - centre[0]) < 1e-9
    assert abs(centre[1]) < 1e-9
    x, y = _tangent_plane(ra, dec, centre)
    # east (larger RA) is positive x: 0.01 east, 359.99 west
    np.testing.assert_allclose(x, [-0.01, 0.01, 0.01, -0.01], rtol=1e-4)
    np.testing.assert_allclose(y, [-0.01, -0.01, 0.01, 0.01], rtol=1e-4)


def test_plot_of_mosaic_across_ra_zero():
    # Images 0.003 deg wide straddling RA = 0: the plot spans arcseconds, not 360 deg.
    result = _result(ra0=0.0, positions=((-50, -20), (-10, -20), (-50, 10), (-10, 10)))
    ras = np.concatenate([next(iter(fp.to_radec()))[0] for fp in result.footprints])
    assert ras.max() > 359.0
    assert ras.min() < 1.0
    pairs, images = diagnostics_tables(result)
    sky = build_figure(pairs, images).axes[0]
    left, right = sky.get_xlim()
    assert "arcsec" in sky.get_xlabel()
    assert 0 < left - right < 60.0
