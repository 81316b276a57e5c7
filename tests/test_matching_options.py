"""Engine options beyond jwst's: anchored sets, pair rejection, pair records."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from conftest import TABLE1, TABLE1_POS, TABLE1_SKY, TABLE2, TABLE2_POS, TABLE2_SKY
from skymatch_step import match
from test_engine import _inputs


@pytest.mark.parametrize("method", ["match", "global+match"])
def test_anchor_sets_change_nothing_for_one_set(method):
    plain = match(_inputs(TABLE1_SKY, TABLE1_POS), skymethod=method)
    anchored = match(_inputs(TABLE1_SKY, TABLE1_POS), skymethod=method, anchor_sets=True)
    np.testing.assert_allclose(anchored.levels, plain.levels, rtol=0, atol=1e-9)
    np.testing.assert_allclose(anchored.levels, TABLE1[method], rtol=0, atol=1e-9)


def test_anchor_sets_global_match_gives_true_skies(caplog):
    # The second documentation table: with anchored sets, each set gets its
    # own global level, so the levels are the true skies.
    with caplog.at_level(logging.INFO, logger="skymatch_step"):
        result = match(_inputs(TABLE2_SKY, TABLE2_POS), skymethod="global+match", anchor_sets=True)
    assert result.valid.all()
    np.testing.assert_allclose(result.levels, TABLE2_SKY, rtol=0, atol=1e-9)
    assert not np.allclose(TABLE2["global+match"], TABLE2_SKY)
    assert "anchored on its own" in caplog.text
    assert "may be offset" not in caplog.text


@pytest.mark.parametrize(("match_down", "expected"), [(True, min), (False, max)])
def test_anchor_sets_match_zero_per_set(match_down, expected):
    result = match(
        _inputs(TABLE2_SKY, TABLE2_POS),
        skymethod="match",
        anchor_sets=True,
        match_down=match_down,
    )
    levels = result.levels
    first, second = levels[:4], levels[4:]
    assert expected(first) == pytest.approx(0.0, abs=1e-9)
    assert expected(second) == pytest.approx(0.0, abs=1e-9)
    sky = np.array(TABLE2_SKY)
    np.testing.assert_allclose(first, sky[:4] - expected(sky[:4]), atol=1e-9)
    np.testing.assert_allclose(second, sky[4:] - expected(sky[4:]), atol=1e-9)


def test_isolated_group_with_anchor_sets():
    # An image far from the others: skipped by 'match' (nothing to match
    # it to), its own sky with 'global+match' when sets are anchored.
    skies = [*TABLE1_SKY, 77.0]
    positions = [*TABLE1_POS, (2000, 2000)]
    result = match(_inputs(skies, positions), skymethod="match", anchor_sets=True)
    assert not result.valid[-1]
    result = match(_inputs(skies, positions), skymethod="global+match", anchor_sets=True)
    assert result.valid.all()
    np.testing.assert_allclose(result.levels, skies, atol=1e-9)


@pytest.mark.parametrize("compare", ["statistics", "differences"])
def test_pair_records_describe_the_fit(compare):
    result = match(_inputs(TABLE1_SKY, TABLE1_POS), skymethod="match", compare=compare)
    assert result.pairs, "every overlapping pair is recorded"
    sky = np.array(TABLE1_SKY)
    for r in result.pairs:
        assert r.a < r.b
        assert r.difference == pytest.approx(sky[r.a] - sky[r.b], abs=1e-6)
        assert r.fitted == pytest.approx(sky[r.a] - sky[r.b], abs=1e-6)
        assert r.residual == pytest.approx(0.0, abs=1e-6)
        assert r.rejected == ""
        assert r.weight > 0
        assert min(r.npix_a, r.npix_b) > 0
        if compare == "statistics":
            assert np.isnan(r.error)
            assert r.value_a - r.value_b == pytest.approx(r.difference)
        else:
            assert np.isfinite(r.error)
            assert r.error > 0
            assert np.isnan(r.value_a)
    assert result.names == [f"img{k}" for k in range(6)]
    assert result.group_labels == result.names


def test_min_pair_pixels_rejects_small_overlaps(caplog):
    full = match(_inputs(TABLE1_SKY, TABLE1_POS), skymethod="match")
    npix = sorted(min(r.npix_a, r.npix_b) for r in full.pairs)
    # the corner overlaps (diagonal neighbours) are the smallest
    threshold = npix[0] + 1
    with caplog.at_level(logging.WARNING, logger="skymatch_step"):
        result = match(
            _inputs(TABLE1_SKY, TABLE1_POS), skymethod="match", min_pair_pixels=threshold
        )
    rejected = [r for r in result.pairs if r.rejected]
    assert rejected
    assert all(r.rejected == "few pixels" for r in rejected)
    assert all(min(r.npix_a, r.npix_b) < threshold for r in rejected)
    assert "left out of the fit" in caplog.text
    assert f"img{rejected[0].a} - img{rejected[0].b}" in caplog.text
    # the remaining pairs still connect everything: same levels
    np.testing.assert_allclose(result.levels, TABLE1["match"], atol=1e-9)


def test_outlier_pair_is_rejected(caplog):
    # A 3 x 3 grid of constant images; the centre image carries a bright
    # blob in its overlap with its right neighbour only (rows 10-29 of its
    # right-hand strip; the strips shared with the diagonal neighbours are
    # rows 0-9 and 30-39), which corrupts that one pair.
    skies = [10.0, 12.0, 11.0, 13.0, 9.0, 14.0, 10.5, 12.5, 11.5]
    positions = [(x, y) for y in (0, 30, 60) for x in (0, 30, 60)]
    images = _inputs(skies, positions)
    data = np.full((40, 40), skies[4], np.float32)
    data[10:30, 30:] += 50.0
    from skymatch_step import ImageInput

    im = images[4]
    images[4] = ImageInput.from_arrays(data, None, im.forward, im.inverse, id=im.id)
    plain = match(images, skymethod="match", compare="differences")
    with caplog.at_level(logging.WARNING, logger="skymatch_step"):
        robust = match(images, skymethod="match", compare="differences", reject_sigma=5.0)
    outliers = [(r.a, r.b) for r in robust.pairs if r.rejected == "outlier"]
    assert (4, 5) in outliers
    truth = np.array(skies) - min(skies)
    err_plain = np.abs(plain.levels - truth).max()
    err_robust = np.abs(robust.levels - truth).max()
    assert err_robust < 1e-3 < err_plain
    assert "outlier" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"compare": "pixels"}, "Unknown compare 'pixels'; valid choices are statistics"),
        ({"min_pair_pixels": 0}, "min_pair_pixels=0 must be a positive integer"),
        ({"reject_sigma": -1.0}, "reject_sigma=-1.0 must be a positive number or None"),
        ({"reject_iterations": 0}, "reject_iterations=0 must be a positive integer"),
    ],
)
def test_bad_matching_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        match(_inputs(TABLE1_SKY, TABLE1_POS), **kwargs)


def test_overflowing_image_is_skipped_with_a_warning_saying_why(caplog):
    from skymatch_step import ImageInput

    images = _inputs(TABLE1_SKY, TABLE1_POS)
    data = np.full((40, 40), TABLE1_SKY[1], np.float32)
    data[::7, ::7] = 1e30  # squares overflow float32
    im = images[1]
    images[1] = ImageInput.from_arrays(data, None, im.forward, im.inverse, id="hot")
    with caplog.at_level(logging.WARNING, logger="skymatch_step"):
        result = match(images, skymethod="local", stats=None)
    assert not result.valid[1]
    assert "Image hot: pixel values too large for float32 statistics (overflow)" in caplog.text
    assert "Image hot: sky not computed" in caplog.text
