"""User sky masks: the ``skymask`` list, its checks, and lazily loaded masks."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
from astropy.io import fits

from conftest import scale_shift_wcs
from skymatch_step import ImageInput, match
from skymatch_step._masks import SkyMasks, read_skymask

NAMES = ["jw01_nrca1_cal.fits", "jw02_nrca1_cal.fits", "jw03_nrca1_cal.fits"]
SHAPES = [(6, 5), (6, 5), (4, 4)]


def _write_mask(path, data, *, extension=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    if extension:
        hdul = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, name="MASK")])
    else:
        hdul = fits.HDUList([fits.PrimaryHDU(data)])
    hdul.writeto(path, overwrite=True)
    return path


def _write_list(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _pattern(shape, seed):
    return np.random.default_rng(seed).integers(0, 3, size=shape).astype(np.int16)


def test_masks_are_matched_and_loaded(tmp_path, caplog):
    m1 = _pattern((6, 5), 1)
    m3 = np.array(
        [[0.0, 1.5, np.nan, -2.0], [1, 1, 1, 1], [0, 0, 0, 0], [3, 0, 3, 0]], dtype=np.float32
    )
    _write_mask(tmp_path / "m1.fits", m1)
    _write_mask(tmp_path / "m3.fits", m3, extension=True)
    listing = _write_list(
        tmp_path / "masks.txt",
        [
            "# image  mask",
            "",
            # Matched by stem without the pipeline suffix, like skylist.
            "jw01_nrca1_skymatch.fits  m1.fits",
            f"jw03_nrca1_cal.fits {tmp_path / 'm3.fits'}",
        ],
    )
    with caplog.at_level(logging.INFO, logger="skymatch_step"):
        masks = read_skymask(listing, NAMES, SHAPES)
    assert "2 of 3 image(s) have a mask" in caplog.text
    assert len(masks) == 3
    assert masks.count == 2
    assert [masks.has_mask(k) for k in range(3)] == [True, False, True]
    assert masks.files[2].hdu == 1

    got1 = masks.mask(0)
    assert got1.dtype == bool
    np.testing.assert_array_equal(got1, m1 != 0)
    assert masks.mask(1) is None
    # Nonzero is usable; NaN is not.
    np.testing.assert_array_equal(
        masks.mask(2),
        [[False, True, False, True], [True] * 4, [False] * 4, [True, False, True, False]],
    )


def test_masks_are_read_when_asked(tmp_path):
    path = _write_mask(tmp_path / "m.fits", np.ones((6, 5), np.uint8))
    listing = _write_list(tmp_path / "l.txt", ["jw02_nrca1_cal.fits m.fits"])
    masks = read_skymask(listing, NAMES, SHAPES)
    # The list holds paths only (picklable for worker processes) ...
    assert pickle.loads(pickle.dumps(masks)).files == masks.files
    # ... and the pixels are read at .mask() time, not before.
    new = np.zeros((6, 5), np.uint8)
    new[2, 3] = 7
    _write_mask(path, new)
    np.testing.assert_array_equal(masks.mask(1), new != 0)
    _write_mask(path, np.ones((3, 3), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(3, 3\) is not the \(6, 5\) checked before"):
        masks.mask(1)
    path.unlink()
    with pytest.raises(ValueError, match=r"Cannot read sky mask .*m\.fits"):
        masks.mask(1)


def test_relative_paths_are_relative_to_the_list(tmp_path, monkeypatch):
    mask = np.eye(4, dtype=np.uint8)
    _write_mask(tmp_path / "lists" / "masks" / "m.fits", mask)
    listing = _write_list(tmp_path / "lists" / "l.txt", ["jw03_nrca1_cal.fits masks/m.fits"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    masks = read_skymask(listing, NAMES, SHAPES)
    assert masks.files[2].path == tmp_path / "lists" / "masks" / "m.fits"
    np.testing.assert_array_equal(masks.mask(2), mask.astype(bool))
    # A relative list path works the same way.
    masks = read_skymask("../lists/l.txt", NAMES, SHAPES)
    np.testing.assert_array_equal(masks.mask(2), mask.astype(bool))


def test_compressed_mask(tmp_path):
    mask = _pattern((6, 5), 4)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(mask)]).writeto(tmp_path / "m.fits.fz")
    listing = _write_list(tmp_path / "l.txt", ["jw02_nrca1_cal.fits m.fits.fz"])
    masks = read_skymask(listing, NAMES, SHAPES)
    assert masks.files[1].hdu == 1
    np.testing.assert_array_equal(masks.mask(1), mask != 0)


def test_one_mask_file_for_several_images(tmp_path):
    _write_mask(tmp_path / "m.fits", np.ones((6, 5), np.uint8))
    listing = _write_list(
        tmp_path / "l.txt", ["jw01_nrca1_cal.fits m.fits", "jw02_nrca1_cal.fits m.fits"]
    )
    masks = read_skymask(listing, NAMES, SHAPES)
    assert masks.count == 2
    assert masks.mask(0).all()
    assert masks.mask(1).all()


@pytest.fixture
def good_mask(tmp_path):
    return _write_mask(tmp_path / "good.fits", np.ones((6, 5), np.uint8))


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["jw01_nrca1_cal.fits"], r"line 1: expected 2 columns \(file name, mask file\), got 1"),
        (["jw01_nrca1_cal.fits good.fits extra"], "expected 2 columns .* got 3"),
        (
            ["jw01_nrca1_cal.fits good.fits", "jw01_nrca1_i2d.fits good.fits"],
            "line 2: image 'jw01_nrca1' is listed more than once",
        ),
        (["jw09_nrca1_cal.fits good.fits"], "lists images that are not in the input: jw09"),
        (
            ["jw01_nrca1_cal.fits nothere.fits"],
            r"line 1 \(jw01_nrca1_cal.fits\): mask file '.*nothere.fits' \('nothere.fits' "
            r"relative to the list's directory\) does not exist",
        ),
        (
            ["jw03_nrca1_cal.fits good.fits"],
            r"mask '.*good.fits' has shape \(6, 5\), but image jw03_nrca1_cal.fits has shape "
            r"\(4, 4\)",
        ),
    ],
)
def test_bad_list(tmp_path, good_mask, lines, message):
    listing = _write_list(tmp_path / "l.txt", lines)
    with pytest.raises(ValueError, match=message):
        read_skymask(listing, NAMES, SHAPES)


def test_missing_list(tmp_path):
    with pytest.raises(ValueError, match=r"Cannot read skymask '.*nope.txt'"):
        read_skymask(tmp_path / "nope.txt", NAMES, SHAPES)


def test_missing_absolute_mask(tmp_path):
    listing = _write_list(tmp_path / "l.txt", [f"jw01_nrca1_cal.fits {tmp_path / 'gone.fits'}"])
    with pytest.raises(ValueError, match=r"mask file '.*gone.fits' does not exist"):
        read_skymask(listing, NAMES, SHAPES)


def _not_fits(path):
    path.write_text("this is not a FITS file\n" * 200)


def _cube(path):
    _write_mask(path, np.ones((2, 6, 5), np.uint8))


def _line(path):
    _write_mask(path, np.ones(5, np.uint8))


def _no_image(path):
    table = fits.BinTableHDU.from_columns([fits.Column(name="x", format="E", array=[1.0])])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)


def _truncated(path):
    _write_mask(path, np.ones((6, 5), np.float64))
    data = path.read_bytes()
    # Keep the header and 100 of the 240 data bytes.
    path.write_bytes(data[: 2880 + 100])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_not_fits, r"Cannot read sky mask '.*bad.fits' as FITS"),
        (_cube, r"'.*bad.fits': the image in HDU 0 has 3 dimensions \(2, 6, 5\); a mask must"),
        (_line, "the image in HDU 0 has 1 dimensions"),
        (_no_image, "holds no image data: expected a 2-D image"),
        (_truncated, r"the data of HDU 0 are truncated \(the file has 2980 bytes, 3120 are"),
    ],
)
def test_bad_mask_file(tmp_path, make, message):
    make(tmp_path / "bad.fits")
    listing = _write_list(tmp_path / "l.txt", ["jw01_nrca1_cal.fits bad.fits"])
    with pytest.raises(ValueError, match=message):
        read_skymask(listing, NAMES, SHAPES)


def test_names_and_shapes_must_agree(tmp_path, good_mask):
    listing = _write_list(tmp_path / "l.txt", ["jw01_nrca1_cal.fits good.fits"])
    with pytest.raises(ValueError, match="3 image names but 2 shapes"):
        read_skymask(listing, NAMES, SHAPES[:2])


def test_mask_changes_the_sky_of_the_engine(tmp_path):
    # A sky of 5 with a bright source of 100 over a third of the image: the
    # mask keeps only sky pixels, and the engine (given mask & finite, as
    # the step gives it) measures exactly 5.
    data = np.full((30, 30), 5.0, np.float32)
    data[:, :10] = 100.0
    mask = np.ones((30, 30), np.uint8)
    mask[:, :12] = 0
    _write_mask(tmp_path / "m.fits", mask)
    listing = _write_list(tmp_path / "l.txt", ["img0_cal.fits m.fits"])
    masks = read_skymask(listing, ["img0_cal.fits"], [data.shape])
    wcs = scale_shift_wcs(0, 0)

    def level(usable):
        image = ImageInput.from_arrays(
            data, usable, wcs.forward_transform, wcs.backward_transform, id="img0_cal.fits"
        )
        return match([image], skymethod="local").levels[0]

    assert level(masks.mask(0)) == 5.0
    assert level(None) != 5.0


def test_skymasks_without_masks():
    masks = SkyMasks([None, None])
    assert masks.count == 0
    assert masks.mask(0) is None
