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
