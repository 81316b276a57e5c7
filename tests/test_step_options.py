"""Step options beyond jwst's: compare, anchor_sets, grouping, skymask, diagnostics."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from jwst.datamodels import ModelLibrary

from conftest import TABLE2, TABLE2_POS, TABLE2_SKY, library_results, scale_shift_wcs
from skymatch_step import SkymatchStep
from skymatch_step.exceptions import SkymatchError
from skymatch_step.simulate import make_image_model

DO_NOT_USE = 1


def _levels(library):
    return [r[1] for r in library_results(library)]


def _gradient_models(skies, positions, *, shape=(60, 60), masked=None, slope=1.0):
    """Noise-free images of a strong sky gradient plus a constant per image.

    The gradient is linear in the common tangent plane of the Shift/Scale
    WCSs (so in every image's pixels). ``masked``: (image, rows, cols) of
    pixels flagged DO_NOT_USE (and set to a wrong value) in one image.
    """
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx].astype(float)
    out = []
    for k, (sky, (sx, sy)) in enumerate(zip(skies, positions, strict=True)):
        data = (sky + slope * (0.5 * (x + sx) + 0.25 * (y + sy))).astype(np.float32)
        dq = np.zeros(shape, np.uint32)
        if masked is not None and masked[0] == k:
            dq[masked[1], masked[2]] = DO_NOT_USE
            data[masked[1], masked[2]] = 1e4
        out.append(
            make_image_model(
                data,
                scale_shift_wcs(sx, sy),
                dq=dq,
                exposure=k + 1,
                filename=f"grad{k}_cal.fits",
            )
        )
    return out


SKIES = [10.0, 13.0, 11.5, 12.0]
POSITIONS = [(0, 0), (45, 0), (0, 45), (45, 45)]


def _relative(levels):
    levels = np.asarray(levels, float)
    return levels - levels.min()


def test_differences_recover_offsets_under_a_gradient_with_a_masked_strip():
    # Image 0's right-hand overlap with image 1 (columns 45-59) has a
    # masked strip: with a per-image statistic, image 0 measures the
    # gradient over other pixels than image 1 does and the offset is
    # biased; pixel differences at the same positions are exact.
    models = _gradient_models(SKIES, POSITIONS, masked=(0, slice(0, 60), slice(45, 52)))
    truth = _relative(SKIES)
    stats = _relative(_levels(SkymatchStep.call(models, skymethod="match", skystat="median")))
    diffs = _levels(
        SkymatchStep.call(models, skymethod="match", skystat="median", compare="differences")
    )
    np.testing.assert_allclose(_relative(diffs), truth, rtol=0, atol=1e-4)
    assert np.abs(stats - truth).max() > 0.5


def test_differences_leave_inputs_alone_and_record_levels():
    models = _gradient_models(SKIES, POSITIONS)
    before = [m.data.copy() for m in models]
    result = SkymatchStep.call(models, skymethod="global+match", compare="differences")
    for m, b in zip(models, before, strict=True):
        np.testing.assert_array_equal(m.data, b)
        assert m.meta.background.level is None
    rows = library_results(result)
    assert all(r[4] == "COMPLETE" and r[3] == "global+match" for r in rows)


@pytest.mark.parametrize("compare", ["statistics", "differences"])
def test_anchor_sets_through_the_step(compare):
    from conftest import constant_model

    models = [
        constant_model(s, p, exposure=k + 1)
        for k, (s, p) in enumerate(zip(TABLE2_SKY, TABLE2_POS, strict=True))
    ]
    plain = _levels(SkymatchStep.call(models, skymethod="global+match", compare=compare))
    np.testing.assert_allclose(plain, TABLE2["global+match"], atol=1e-6)
    anchored = _levels(
        SkymatchStep.call(models, skymethod="global+match", compare=compare, anchor_sets=True)
    )
    np.testing.assert_allclose(anchored, TABLE2_SKY, atol=1e-6)


def _two_detector_models():
    # Two detectors of one exposure (one sky group in jwst) with different
    # skies, and a third exposure overlapping both.
    wcs = [scale_shift_wcs(0, 0), scale_shift_wcs(45, 0), scale_shift_wcs(20, 30)]
    skies = [5.0, 7.0, 6.0]
    specs = [(1, "nrca1"), (1, "nrca2"), (2, "nrca1")]
    return [
        make_image_model(np.full((60, 60), s, np.float32), w, exposure=e, detector=d)
        for s, w, (e, d) in zip(skies, wcs, specs, strict=True)
    ], skies


def test_grouping_image_gives_every_image_its_level(caplog):
    models, skies = _two_detector_models()
    with ModelLibrary(models) as lib:
        groups = lib.group_indices
    assert sorted(map(sorted, groups.values())) == [[0, 1], [2]]
    exposure = _levels(SkymatchStep.call(models, skymethod="global+match"))
    assert exposure[0] == exposure[1]
    with caplog.at_level(logging.INFO, logger="skymatch_step"):
        image = _levels(SkymatchStep.call(models, skymethod="global+match", grouping="image"))
    np.testing.assert_allclose(image, skies, atol=1e-6)
    assert "grouping='image'" in caplog.text


# --- sky masks ---------------------------------------------------------------


def _write_mask(path, mask):
    fits.PrimaryHDU(mask.astype(np.uint8)).writeto(path)
    return path


def test_skymask_excludes_a_source(tmp_path):
    # A bright source in image 1 where it overlaps image 0 biases 'match';
    # masking it gives the true offsets, for both comparisons. (A flat sky
    # for 'statistics': under a gradient, masking pixels in one image only
    # biases per-image statistics, which is what 'differences' avoids.)
    models = _gradient_models(SKIES, POSITIONS)
    flat = _gradient_models(SKIES, POSITIONS, slope=0.0)
    for m in (models[1], flat[1]):
        m.data[:, 0:12] += 50.0
    mask = np.ones((60, 60), bool)
    mask[:, 0:12] = False
    _write_mask(tmp_path / "grad1_mask.fits", mask)
    listing = tmp_path / "masks.txt"
    listing.write_text("# image  mask\ngrad1_cal.fits grad1_mask.fits\n")
    truth = _relative(SKIES)
    for compare, inputs in (("statistics", flat), ("differences", models)):
        kwargs = {"skymethod": "match", "skystat": "median", "compare": compare}
        biased = _relative(_levels(SkymatchStep.call(inputs, **kwargs)))
        fixed = _relative(_levels(SkymatchStep.call(inputs, skymask=str(listing), **kwargs)))
        assert np.abs(biased - truth).max() > 0.5, compare
        np.testing.assert_allclose(fixed, truth, atol=1e-4)


def test_skymask_applies_to_local_sky(tmp_path):
    models = _gradient_models(SKIES, POSITIONS)
    mask = np.zeros((60, 60), bool)
    mask[0, 0] = True  # only the first pixel: its value is the local sky
    _write_mask(tmp_path / "m.fits", mask)
    listing = tmp_path / "masks.txt"
    listing.write_text("grad2_cal.fits m.fits\n")
    levels = _levels(SkymatchStep.call(models, skymethod="local", skymask=str(listing)))
    assert levels[2] == pytest.approx(models[2].data[0, 0])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("grad9_cal.fits m.fits", "lists images that are not in the input: grad9"),
        ("grad1_cal.fits missing.fits", "missing.fits"),
        ("grad1_cal.fits small.fits", r"shape"),
    ],
)
def test_bad_skymask_is_rejected_before_any_change(tmp_path, line, message):
    _write_mask(tmp_path / "m.fits", np.ones((60, 60), bool))
    _write_mask(tmp_path / "small.fits", np.ones((10, 60), bool))
    listing = tmp_path / "masks.txt"
    listing.write_text(line + "\n")
    models = _gradient_models(SKIES, POSITIONS)
    library = ModelLibrary(models)
    before = [m.data.copy() for m in models]
    with pytest.raises(ValueError, match=message):
        SkymatchStep.call(library, skymask=str(listing), subtract=True)
    for m, b in zip(models, before, strict=True):
        np.testing.assert_array_equal(m.data, b)
        assert m.meta.cal_step.skymatch is None


def test_missing_skymask_file(tmp_path):
    with pytest.raises(ValueError, match=r"skymask file .*nope.txt' does not exist"):
        SkymatchStep.call(_gradient_models(SKIES, POSITIONS), skymask=str(tmp_path / "nope.txt"))


# --- diagnostics -----------------------------------------------------------------


def test_diagnostics_files(tmp_path):
    models = _gradient_models(SKIES, POSITIONS)
    prefix = tmp_path / "run1"
    SkymatchStep.call(models, skymethod="match", compare="differences", diagnostics=str(prefix))
    pairs = Table.read(f"{prefix}_pairs.ecsv", format="ascii.ecsv", fill_values=[])
    images = Table.read(f"{prefix}_images.ecsv", format="ascii.ecsv", fill_values=[])
    assert len(images) == 4
    assert list(images["image"]) == [f"grad{k}_cal.fits" for k in range(4)]
    assert list(images["status"]) == ["COMPLETE"] * 4
    # 2 x 2 mosaic: 4 side pairs and 2 diagonal (corner) pairs
    assert len(pairs) == 6
    sky = np.array(SKIES)
    for row in pairs:
        a, b = int(row["index_a"]), int(row["index_b"])
        assert row["difference"] == pytest.approx(sky[a] - sky[b], abs=1e-4)
        assert row["error"] > 0
    png = (tmp_path / "run1.png").read_bytes()
    assert png.startswith(b"\x89PNG")


def test_diagnostics_without_plot_in_output_dir(tmp_path):
    models = _gradient_models(SKIES, POSITIONS)
    SkymatchStep.call(models, diagnostics="diag", diagnostics_plot=False, output_dir=str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diag_images.ecsv", "diag_pairs.ecsv"]


def test_diagnostics_need_matplotlib_for_the_plot(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    models = _gradient_models(SKIES, POSITIONS)
    library = ModelLibrary(models)
    with pytest.raises(SkymatchError, match=r"pip install \"skymatch-step\[plot\]\""):
        SkymatchStep.call(library, diagnostics=str(tmp_path / "d"))
    assert list(tmp_path.iterdir()) == []
    assert all(m.meta.cal_step.skymatch is None for m in models)


def test_diagnostics_directory_must_exist(tmp_path):
    with pytest.raises(ValueError, match="nowhere"):
        SkymatchStep.call(
            _gradient_models(SKIES, POSITIONS), diagnostics=str(tmp_path / "nowhere" / "d")
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"compare": "pixels"}, "compare"),
        ({"grouping": "detector"}, "grouping"),
        ({"min_pair_pixels": 0}, "min_pair_pixels"),
        ({"reject_sigma": -2.0}, "reject_sigma"),
    ],
)
def test_bad_option_values(kwargs, message):
    with pytest.raises(Exception, match=message):
        SkymatchStep.call(_gradient_models(SKIES, POSITIONS), **kwargs)
