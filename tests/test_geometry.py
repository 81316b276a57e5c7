"""Footprints and candidate pairs."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import scale_shift_wcs
from skymatch_step._footprints import Cap, bounding_cap, image_footprint
from skymatch_step._overlaps import CapIndex, candidate_pairs
from skymatch_step.exceptions import GeometryError


def _footprint(pos, shape=(40, 40), stepsize=None):
    return image_footprint(shape, scale_shift_wcs(*pos).forward_transform, stepsize)


@pytest.mark.parametrize(("stepsize", "nvert"), [(None, 5), (10, 17), (1000, 5)])
def test_footprint_vertices(stepsize, nvert):
    fp = _footprint((0, 0), stepsize=stepsize)
    (poly,) = fp.polygons
    assert len(poly.points) == nvert


def test_footprint_area_matches_pixels():
    fp = _footprint((0, 0))
    pix_sr = np.deg2rad(1e-4) ** 2
    assert abs(fp.area()) == pytest.approx(40 * 40 * pix_sr, rel=1e-3)


def test_footprint_rejects_bad_wcs():
    def broken(x, y):
        return np.full_like(x, np.nan), np.zeros_like(y)

    with pytest.raises(GeometryError, match=r"image 'bad'.*non-finite"):
        image_footprint((10, 10), broken, name="bad")


def test_candidate_pairs_keep_every_intersecting_pair():
    # Random sparse layout: the cap filter must keep every pair whose
    # footprints really intersect, and drop most of the others.
    rng = np.random.default_rng(4)
    pos = rng.uniform(0, 1500, size=(60, 2))
    fps = [_footprint(p) for p in pos]
    caps = [bounding_cap(f) for f in fps]
    groups = list(range(60))
    found = set(candidate_pairs(caps, groups))
    truth = {
        (i, j)
        for i in range(60)
        for j in range(i + 1, 60)
        if abs(fps[i].intersection(fps[j]).area()) > 0
    }
    assert truth <= found
    assert len(found) < 0.1 * (60 * 59 / 2)


def test_candidate_pairs_skip_same_group():
    fps = [_footprint((0, 0)), _footprint((20, 0)), _footprint((40, 0))]
    caps = [bounding_cap(f) for f in fps]
    assert candidate_pairs(caps, [0, 0, 1]) == [(0, 2), (1, 2)]
    assert candidate_pairs(caps, [0, 1, 2]) == [(0, 1), (0, 2), (1, 2)]


def test_cap_index_matches_brute_force():
    # Caps of very different sizes, added in random order, including one
    # wider than the layout (checked against every cap): the grid finds
    # exactly the touching pairs.
    rng = np.random.default_rng(8)
    n = 300
    vec = rng.normal(size=(n, 3)) * [1.0, 1.0, 30.0]
    vec /= np.linalg.norm(vec, axis=1)[:, None]
    radii = rng.choice([0.002, 0.01, 0.05], size=n)
    radii[137] = 1.2
    caps = [Cap(v, r) for v, r in zip(vec, radii, strict=True)]
    index = CapIndex()
    found = set()
    for j, cap in enumerate(caps):
        found |= {(i, j) for i in index.add(cap)}
    ang = np.arccos(np.clip(vec @ vec.T, -1.0, 1.0))
    touch = ang <= radii[:, None] + radii[None, :] + 1e-9
    truth = {(i, j) for i in range(n) for j in range(i + 1, n) if touch[i, j]}
    assert found == truth
    assert len(index) == n


def test_overlap_regions_convert_all_polygons_in_one_call():
    # An image's overlap polygons with all its neighbours go through its
    # inverse transform in one call; every vertex gets the pixel position
    # a call of its own gives (distorted WCSs, rotated images, 8 neighbours).
    from skymatch_step._overlaps import intersect_footprints, overlap_regions
    from skymatch_step.simulate import make_gwcs

    shape = (60, 80)
    scale = 0.031 / 3600.0
    wcss = []
    for k, (i, j) in enumerate((i, j) for i in range(3) for j in range(3)):
        ra = 10.0 + (j - 1) * 60 * scale / np.cos(np.deg2rad(-30.0))
        dec = -30.0 + (i - 1) * 40 * scale
        wcss.append(make_gwcs(shape, ra, dec, 0.5 * k, distortion=2e-6))
    footprints = [image_footprint(shape, w.forward_transform) for w in wcss]
    pairs, overlaps = intersect_footprints(footprints, range(9), [f"im{k}" for k in range(9)])
    centre = 4
    neighbours = sorted({j for p in pairs for j in p if centre in p} - {centre})
    assert len(neighbours) == 8
    backward = wcss[centre].backward_transform
    calls = []

    def inverse(ra, dec):
        calls.append(len(ra))
        return backward(ra, dec)

    regions = overlap_regions(centre, neighbours, overlaps, inverse, list(range(9)))
    assert sorted(regions) == neighbours
    vertices = 0
    for j in neighbours:
        pair = overlaps[(min(centre, j), max(centre, j))]
        area, pieces = pair.first if centre < j else pair.second
        assert area > 0
        assert regions[j].area == area
        assert len(regions[j].polygons) == len(pieces)
        for (x, y), (ra, dec) in zip(regions[j].polygons, pieces, strict=True):
            want_x, want_y = backward(ra, dec)
            np.testing.assert_array_equal(x, want_x)
            np.testing.assert_array_equal(y, want_y)
            vertices += len(ra)
    assert calls == [vertices]
