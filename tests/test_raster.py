"""Polygon fill: the same pixels as gwcs.region.Polygon.scan, bounded masks."""

from __future__ import annotations

import numpy as np
import pytest
from gwcs import region

from skymatch_step._raster import fill_polygon
from skymatch_step.exceptions import GeometryError


def _gwcs_mask(xs, ys, shape):
    mask = np.zeros(shape, dtype=bool)
    return region.Polygon(True, list(zip(xs, ys, strict=True))).scan(mask)


def _full(origin, sub, shape):
    out = np.zeros(shape, dtype=bool)
    r, c = origin
    out[r : r + sub.shape[0], c : c + sub.shape[1]] = sub
    return out


def _random_polygon(rng, shape, kind):
    ny, nx = shape
    nv = int(rng.integers(3, 9))
    if kind == "star":  # around a centre, possibly beyond the image
        cx, cy = rng.uniform(-10, nx + 10), rng.uniform(-10, ny + 10)
        ang = np.sort(rng.uniform(0, 2 * np.pi, nv))
        r = rng.uniform(2, 40, nv)
        xs, ys = cx + r * np.cos(ang), cy + r * np.sin(ang)
    elif kind == "random":  # self-intersecting too
        xs, ys = rng.uniform(-5, nx + 5, nv), rng.uniform(-5, ny + 5, nv)
    else:  # vertices on half pixels: rounding ties
        xs = np.round(rng.uniform(-3, nx + 3, nv) * 2) / 2
        ys = np.round(rng.uniform(-3, ny + 3, nv) * 2) / 2
    return np.r_[xs, xs[0]], np.r_[ys, ys[0]]


@pytest.mark.parametrize("kind", ["star", "random", "half-pixel"])
def test_same_pixels_as_gwcs_scan(kind):
    rng = np.random.default_rng({"star": 1, "random": 2, "half-pixel": 3}[kind])
    for _ in range(400):
        shape = (int(rng.integers(5, 60)), int(rng.integers(5, 60)))
        xs, ys = _random_polygon(rng, shape, kind)
        origin, sub = fill_polygon(xs, ys, shape)
        np.testing.assert_array_equal(_full(origin, sub, shape), _gwcs_mask(xs, ys, shape))


def test_mask_covers_only_the_polygon_box():
    # A small polygon in a big image: the mask is the polygon's size.
    xs = np.array([1000.2, 1010.7, 1005.0, 1000.2])
    ys = np.array([2000.1, 2000.4, 2012.3, 2000.1])
    origin, sub = fill_polygon(xs, ys, (4096, 4096))
    assert sub.shape[0] <= 13
    assert sub.shape[1] <= 12
    assert origin == (2000, 1000)
    assert sub.any()


def test_polygon_right_of_image_selects_nothing():
    xs = np.array([50.0, 80.0, 60.0, 50.0])
    ys = np.array([5.0, 5.0, 20.0, 5.0])
    assert fill_polygon(xs, ys, (30, 30))[1].size == 0
    assert not _gwcs_mask(xs, ys, (30, 30)).any()


def test_polygon_left_of_image_follows_gwcs_quirk():
    # gwcs fills data[row][start:stop] with a negative stop for spans left
    # of the image, which wraps around and selects pixels. Overlap polygons
    # lie inside the image, so this never matters for skymatch; we keep
    # the rule identical anyway.
    xs = np.array([-50.0, -20.0, -30.0, -50.0])
    ys = np.array([5.0, 5.0, 20.0, 5.0])
    origin, sub = fill_polygon(xs, ys, (30, 30))
    expected = _gwcs_mask(xs, ys, (30, 30))
    assert expected.any()
    np.testing.assert_array_equal(_full(origin, sub, (30, 30)), expected)


def test_rejects_bad_polygons():
    with pytest.raises(GeometryError, match="at least 4 vertices, got 3"):
        fill_polygon([0, 1, 0], [0, 0, 1], (5, 5))
    with pytest.raises(GeometryError, match="not finite"):
        fill_polygon([0, 1, np.nan, 0], [0, 0, 1, 0], (5, 5))


def test_span_mask_is_the_union_of_the_spans():
    # Several spans per row, touching and overlapping ones, empty rows.
    from skymatch_step._raster import _span_mask

    rows = np.array([0, 0, 0, 2, 3, 3])
    starts = np.array([0, 3, 4, 5, 1, 1])
    stops = np.array([2, 5, 7, 6, 3, 2])
    expected = np.zeros((4, 7), dtype=bool)
    for r, a, b in zip(rows, starts, stops, strict=True):
        expected[r, a:b] = True
    np.testing.assert_array_equal(_span_mask(rows, starts, stops, (4, 7)), expected)
    assert expected[0].tolist() == [True, True, False, True, True, True, True]
