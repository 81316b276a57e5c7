"""The engine on plain arrays: documentation tables, grouping, skipping."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from conftest import (
    TABLE1,
    TABLE1_POS,
    TABLE1_SKY,
    TABLE2,
    TABLE2_POS,
    TABLE2_SKY,
    scale_shift_wcs,
)
from skymatch_step import ImageInput, SkyStatistics, match
from skymatch_step._solver import connected_sets, solve_offsets

METHODS = ["local", "global", "match", "global+match"]


def _inputs(skies, positions, shape=(40, 40), groups=None):
    images = []
    for k, (sky, pos) in enumerate(zip(skies, positions, strict=True)):
        wcs = scale_shift_wcs(*pos)
        tr, inv = wcs.forward_transform, wcs.backward_transform
        images.append(
            ImageInput.from_arrays(
                np.full(shape, sky, np.float32),
                None,
                lambda x, y, tr=tr: tr(x, y),
                lambda r, d, inv=inv: inv(r, d),
                id=f"img{k}",
                group=None if groups is None else groups[k],
            )
        )
    return images


@pytest.mark.parametrize("method", METHODS)
def test_documentation_table1(method):
    result = match(_inputs(TABLE1_SKY, TABLE1_POS), skymethod=method)
    assert result.valid.all()
    np.testing.assert_allclose(result.levels, TABLE1[method], rtol=0, atol=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_documentation_table2_disconnected_sets(method, caplog):
    # Two mosaics that do not overlap each other: the least-squares system
    # is rank deficient; its minimum-norm solution gives the table's values.
    with caplog.at_level(logging.WARNING, logger="skymatch_step"):
        result = match(_inputs(TABLE2_SKY, TABLE2_POS), skymethod=method)
    assert result.valid.all()
    np.testing.assert_allclose(result.levels, TABLE2[method], rtol=0, atol=1e-9)
    if "match" in method:
        assert "2 sets that do not overlap" in caplog.text
        assert len(set(result.sets.tolist())) == 2


def test_match_up():
    result = match(_inputs(TABLE1_SKY, TABLE1_POS), skymethod="match", match_down=False)
    np.testing.assert_allclose(result.levels, np.array(TABLE1_SKY) - 120.0, atol=1e-9)


def test_groups_share_one_level():
    # images 0/1 form one exposure, 2/3 another; a group's local sky is the
    # lowest of its members.
    skies = [100.0, 104.0, 110.0, 111.0]
    pos = [(0, 0), (30, 0), (0, 30), (30, 30)]
    result = match(_inputs(skies, pos, groups=["a", "a", "b", "b"]), skymethod="local")
    np.testing.assert_allclose(result.levels, [100, 100, 110, 110])
    assert result.groups == [0, 0, 1, 1]
    matched = match(_inputs(skies, pos, groups=["a", "a", "b", "b"]), skymethod="match")
    lv = matched.levels
    assert lv[0] == lv[1]
    assert lv[2] == lv[3]
    assert lv[0] == 0.0
    assert lv[2] > 5.0


def test_group_footprint_is_the_union():
    pos = [(0, 0), (30, 0), (0, 30), (30, 30)]
    result = match(_inputs([1.0] * 4, pos, groups=["a", "a", "b", "b"]), skymethod="local")
    one = abs(result.footprints[0].area())
    union = abs(result.group_footprint(0).area())
    # two 40-pixel images offset by 30 pixels: 70 x 40 pixels
    assert union == pytest.approx(one * 70 / 40, rel=1e-3)
    with pytest.raises(ValueError, match="no group 5; groups are 0 to 1"):
        result.group_footprint(5)


def test_terms_keep_order_for_global_match():
    result = match(_inputs(TABLE1_SKY, TABLE1_POS), skymethod="global+match")
    offsets = [t[0] for t in result.terms]
    assert all(len(t) == 2 for t in result.terms)
    np.testing.assert_allclose(offsets, TABLE1["match"], atol=1e-9)
    assert {t[1] for t in result.terms} == {100.0}


@pytest.mark.parametrize("method", METHODS)
def test_unusable_image_is_skipped(method, caplog):
    images = _inputs(TABLE1_SKY, TABLE1_POS)
    bad = images[1]
    data = np.full((40, 40), np.nan, np.float32)
    images[1] = ImageInput.from_arrays(data, None, bad.forward, bad.inverse, id="allnan")
    with caplog.at_level(logging.WARNING, logger="skymatch_step"):
        result = match(images, skymethod=method)
    assert not result.valid[1]
    assert result.valid[[0, 2, 3, 4, 5]].all()
    assert "allnan" in caplog.text
    assert "no usable pixels" in caplog.text


def test_isolated_image_in_match_is_skipped(caplog):
    skies = [1.0, 2.0, 3.0]
    pos = [(0, 0), (30, 0), (900, 900)]
    with caplog.at_level(logging.WARNING, logger="skymatch_step"):
        result = match(_inputs(skies, pos), skymethod="match")
    assert result.valid.tolist() == [True, True, False]
    assert "img2" in caplog.text
    # global+match gives it offset 0 plus the global level, as jwst does
    gm = match(_inputs(skies, pos), skymethod="global+match")
    assert gm.valid.all()
    np.testing.assert_allclose(gm.levels, [1.0, 2.0, 1.0])


def test_mask_excludes_pixels():
    images = _inputs([5.0, 5.0], [(0, 0), (30, 0)])
    data = np.full((40, 40), 5.0, np.float32)
    data[:, :20] = 1000.0
    mask = np.ones((40, 40), bool)
    mask[:, :20] = False
    images[0] = ImageInput.from_arrays(data, mask, images[0].forward, images[0].inverse, id="m")
    result = match(images, skymethod="local", stats=SkyStatistics(skystat="mean"))
    np.testing.assert_allclose(result.levels, [5.0, 5.0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"skymethod": "best"}, "Unknown skymethod 'best'; valid choices are local, global"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        match(_inputs([1.0], [(0, 0)]), **kwargs)


def test_empty_input():
    with pytest.raises(ValueError, match="No images to match: the input is empty"):
        match([])


def test_from_arrays_checks_shapes():
    wcs = scale_shift_wcs(0, 0)
    with pytest.raises(ValueError, match="must be 2-D, got 3 dimensions"):
        ImageInput.from_arrays(np.zeros((2, 3, 4)), None, wcs, wcs.invert, id="cube")
    with pytest.raises(ValueError, match=r"mask shape \(3, 3\) != data shape \(4, 4\)"):
        ImageInput.from_arrays(np.zeros((4, 4)), np.ones((3, 3), bool), wcs, wcs.invert)


def test_solver_minimum_norm_per_set():
    # set {0, 1}: d0 - d1 = 2; set {2, 3}: d2 - d3 = -4; 4 isolated.
    pairs = [(0, 1, 5.0, 3.0, 1.0), (2, 3, 1.0, 5.0, 2.0)]
    deltas = solve_offsets(pairs, 5)
    np.testing.assert_allclose(deltas[:4], [1.0, -1.0, -2.0, 2.0], atol=1e-12)
    assert np.isnan(deltas[4])
    labels = connected_sets(pairs, 5)
    assert labels[0] == labels[1] != labels[2] == labels[3] != labels[4]
    assert np.isnan(solve_offsets([], 3)).all()


def test_parallel_workers_are_bit_identical():
    # enough overlapping pairs that the intersections go to worker processes
    rng = np.random.default_rng(9)
    pos = [(30 * (k % 5), 30 * (k // 5)) for k in range(20)]
    skies = rng.uniform(1.0, 2.0, 20)
    images = _inputs(skies, pos)
    for i, im in enumerate(images):
        noisy = np.full((40, 40), skies[i], np.float32) + rng.normal(0, 0.01, (40, 40)).astype(
            np.float32
        )
        images[i] = ImageInput.from_arrays(noisy, None, im.forward, im.inverse, id=im.id)
    serial = match(images, skymethod="global+match", workers=1)
    parallel = match(images, skymethod="global+match", workers=2)
    assert serial.terms == parallel.terms
    np.testing.assert_array_equal(serial.levels, parallel.levels)
