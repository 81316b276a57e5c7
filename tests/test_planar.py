"""Planar (tangent-plane) footprint intersections against spherical-geometry."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from astropy.modeling import models
from spherical_geometry import great_circle_arc
from spherical_geometry.polygon import SphericalPolygon
from spherical_geometry.vector import lonlat_to_vector, normalize_vector

from conftest import load_benchmark, scale_shift_wcs
from skymatch_step import _overlaps
from skymatch_step._footprints import bounding_cap, image_footprint
from skymatch_step._overlaps import (
    PairOverlap,
    _intersection,
    candidate_pairs,
    intersect_pair,
    region_mask,
)
from skymatch_step._planar import (
    PlanarGeometryError,
    _crosses,
    _graph_replay,
    _normalize,
    _on_arc,
    exact_intersection,
    intersect_footprints,
)
from skymatch_step.simulate import make_gwcs

FOUR_PI = 4.0 * np.pi


# -- helpers -----------------------------------------------------------------


class _Image:
    """Shape, footprint and inverse transform of one simulated image."""

    def __init__(self, shape, forward, backward, stepsize=None):
        self.shape = tuple(int(n) for n in shape)
        self.footprint = image_footprint(self.shape, forward, stepsize)
        self._backward = backward

    def inverse(self, ra, dec):
        """Pixel coordinates of sky positions (what `_pair_pixels` maps the overlap with)."""
        return self._backward(ra, dec)

    def pixels(self, area, pieces):
        """Pixels the overlap selects in this image (as the engine selects them)."""
        full = np.zeros(self.shape, dtype=bool)
        if area == 0.0:
            return full
        polys = []
        for ra, dec in pieces:
            x, y = self._backward(ra, dec)
            polys.append((np.asarray(x, float), np.asarray(y, float)))
        where, mask = region_mask(polys, self.shape)
        if where is not None:
            full[where] |= mask
        return full


def _simulated(shape, ra, dec, rotation, distortion, scale, stepsize=None):
    wcs = make_gwcs(shape, ra, dec, rotation, distortion=distortion, pixel_scale=scale)
    backward = wcs.backward_transform

    def inverse(r, d):
        return backward(r, d, with_bounding_box=False)

    return _Image(shape, wcs.forward_transform, inverse, stepsize)


def _tile(shift_x, shift_y, shape=(40, 40), *, scale=1.0e-4, ra0=10.0, dec0=0.0):
    """Image on a TAN grid shared by all tiles: pixel (0, 0) at (shift_x, shift_y)."""
    forward = (
        (models.Shift(shift_x) & models.Shift(shift_y))
        | (models.Scale(scale) & models.Scale(scale))
        | models.Pix2Sky_TAN()
        | models.RotateNative2Celestial(ra0, dec0, 180.0)
    )
    return _Image(shape, forward, forward.inverse)


def _random_pair(rng, kind, *, stepsizes=(None,)):
    """Two simulated images whose footprints overlap as ``kind`` says.

    ``large``: centres closer than 0.8 of the sum of half-diagonals;
    ``corner``: 0.7-0.95 of it (corner-only and edge overlaps, or none);
    ``nested``: the second image a third of the first's size, near its
    centre. Random places (anywhere, within 0.15 deg of a pole, or
    straddling RA = 0), rotations, pixel scales and distortions.
    """
    scale = float(rng.choice([0.031, 0.063, 0.11]))
    shape_a = tuple(rng.integers(40, 400, 2))
    shape_b = tuple(rng.integers(40, 400, 2))
    place = rng.choice(["any", "pole", "ra0"])
    if place == "any":
        ra, dec = rng.uniform(0, 360), rng.uniform(-80, 80)
    elif place == "pole":
        ra, dec = rng.uniform(0, 360), rng.choice([-1, 1]) * rng.uniform(89.85, 89.99)
    else:
        ra, dec = rng.uniform(-0.01, 0.01) % 360, rng.uniform(-60, 60)
    half_a = np.hypot(*shape_a) * scale / 2
    if kind == "nested":
        shape_b = tuple(np.maximum(10, np.array(shape_a) // 3))
        dist = rng.uniform(0, 0.3) * half_a
    else:
        half_b = np.hypot(*shape_b) * scale / 2
        lo, hi = (0.0, 0.8) if kind == "large" else (0.7, 0.95)
        dist = rng.uniform(lo, hi) * (half_a + half_b)
    angle = rng.uniform(0, 2 * np.pi)
    # small offsets (arcsec) in the local east/north directions
    dra = dist * np.cos(angle) / 3600 / max(np.cos(np.deg2rad(dec)), 1e-3)
    ra_b = (ra + dra) % 360
    dec_b = float(np.clip(dec + dist * np.sin(angle) / 3600, -89.999, 89.999))
    stepsize = stepsizes[rng.integers(len(stepsizes))]
    a = _simulated(shape_a, ra, dec, rng.uniform(0, 360), rng.choice([0, 0, 1, 3]), scale, stepsize)
    rot_b = rng.choice([rng.uniform(0, 360), 0.0])
    b = _simulated(shape_b, ra_b, dec_b, rot_b, rng.choice([0, 0, 1, 3]), scale, stepsize)
    return a, b


def _compare_random(npairs, seed, *, stepsizes=(None,)):
    """Intersect random pairs both ways; count pairs whose pixels differ."""
    rng = np.random.default_rng(seed)
    kinds = ("large", "corner", "nested")
    out = {"pairs": 0, "overlapping": 0, "pixel_diff": [], "zero_diff": [], "rel_area": []}
    for k in range(npairs):
        a, b = _random_pair(rng, kinds[k % 3], stepsizes=stepsizes)
        ref = _intersection(a.footprint, b.footprint)
        got = intersect_footprints(a.footprint, b.footprint)
        out["pairs"] += 1
        if (ref[0] == 0.0) != (got[0] == 0.0):
            out["zero_diff"].append(k)
        if ref[0] > 0.0 and got[0] > 0.0:
            out["overlapping"] += 1
            # spherical-geometry sometimes reports the complement's area.
            ref_area = min(ref[0], FOUR_PI - ref[0])
            out["rel_area"].append(abs(got[0] - ref_area) / ref_area)
            for ra, _ in got[1]:
                assert np.all((ra >= 0.0) & (ra < 360.0))
        ndiff = sum(int((im.pixels(*ref) != im.pixels(*got)).sum()) for im in (a, b))
        if ndiff:
            out["pixel_diff"].append((k, ndiff))
    return out


# -- agreement with spherical-geometry ----------------------------------------------


def test_random_pairs_select_the_same_pixels():
    # Rotations, distortion, corner/edge/large/nested overlaps, poles, RA = 0.
    res = _compare_random(120, seed=11)
    assert res["overlapping"] > 60
    assert res["zero_diff"] == []
    assert res["pixel_diff"] == []
    rel = np.array(res["rel_area"])
    # spherical-geometry's sum-of-angles area loses ~1e-15 sr absolute.
    assert np.median(rel) < 1e-5
    assert np.all(rel < 1e-2)


def test_random_pairs_with_edge_vertices_select_the_same_pixels():
    res = _compare_random(12, seed=12, stepsizes=(64,))
    assert res["overlapping"] > 4
    assert res["zero_diff"] == []
    assert res["pixel_diff"] == []


@pytest.mark.slow
def test_many_random_pairs_select_the_same_pixels():
    # Measured (seed 13): 9 of 2000 pairs differ by 1 to 112 pixels, 1
    # pair overlaps here and not in spherical-geometry. The differences are
    # crossing points lying exactly on the border of an undistorted image
    # (pixel coordinate n + 0.5) when an edge is crossed twice:
    # spherical-geometry computes the second crossing on the sub-arc left by
    # the first, in an order of its own, and the last bit decides how the
    # vertex rounds. The zero-area mismatch is a 2e-4 pixel^2 corner
    # overlap that spherical-geometry misses. The first 600 of those pairs
    # are checked here (468 overlapping, 2 differing by 15 and 84 pixels,
    # none on overlap or not; 50 s instead of 4 to 5 minutes for 2000).
    res = _compare_random(600, seed=13, stepsizes=(None, None, None, 100))
    assert res["overlapping"] > 300
    assert len(res["zero_diff"]) <= 1, res["zero_diff"]
    assert len(res["pixel_diff"]) <= 6, res["pixel_diff"]
    assert np.median(res["rel_area"]) < 1e-5


def test_area_is_exact_for_large_polygons():
    # The octant's area is pi/2; spherical-geometry agrees to its precision.
    octant = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 0, 0]])
    area, pieces = intersect_footprints(octant, octant)
    assert area == pytest.approx(np.pi / 2, rel=1e-13)
    assert len(pieces) == 1
    big = _simulated((3000, 3000), 150.0, 30.0, 20.0, 0.0, 1.2)
    shifted = _simulated((3000, 3000), 150.3, 30.4, 50.0, 0.0, 1.2)
    area, _ = intersect_footprints(big.footprint, shifted.footprint)
    ref = abs(big.footprint.intersection(shifted.footprint).area())
    assert area == pytest.approx(ref, rel=1e-9)


def test_normalisation_matches_spherical_geometry_bit_for_bit():
    rng = np.random.default_rng(5)
    v = np.stack(lonlat_to_vector(rng.uniform(0, 360, 20000), rng.uniform(-90, 90, 20000)), -1)
    v *= rng.uniform(0.5, 2.0, (len(v), 1))
    np.testing.assert_array_equal(_normalize(v), normalize_vector(v))


def test_pieces_are_closed_and_oriented_as_spherical_geometry():
    a = _simulated((300, 200), 0.001, -40.0, 30.0, 2.0, 0.063)
    b = _simulated((300, 200), 359.998, -40.001, 80.0, 1.0, 0.063)
    area, pieces = intersect_footprints(a.footprint, b.footprint)
    assert area > 0
    ((ra, dec),) = pieces
    assert ra[0] == ra[-1]
    assert dec[0] == dec[-1]
    assert np.all((ra >= 0) & (ra < 360))
    assert ra.min() < 1
    assert ra.max() > 359
    pts = np.stack(lonlat_to_vector(ra, dec), -1)
    ext = np.vstack([pts, pts[1]])
    orient = great_circle_arc.triple_product(ext[:-2] - ext[1:-1], ext[2:] - ext[1:-1], ext[1:-1])
    assert np.sum(orient) > 0  # spherical-geometry's "clockwise"


def test_polygon_containing_the_pole():
    a = _simulated((400, 400), 0.0, 90.0, 10.0, 1.0, 0.11)
    b = _simulated((300, 300), 120.0, 89.995, 70.0, 0.0, 0.11)
    ref = _intersection(a.footprint, b.footprint)
    got = intersect_footprints(a.footprint, b.footprint)
    assert got[0] == pytest.approx(ref[0], rel=1e-5)
    for im in (a, b):
        np.testing.assert_array_equal(im.pixels(*got), im.pixels(*ref))


# -- degenerate cases -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("shift", "shape"),
    [
        ((-40, 0), (40, 40)),  # shares a whole edge
        ((-40, -20), (40, 40)),  # shares half an edge
        ((-40, -40), (40, 40)),  # shares a corner
        ((-41, 0), (40, 40)),  # disjoint
        ((-40.000001, 0), (40, 40)),  # disjoint by 1e-6 pixel
    ],
)
def test_touching_or_disjoint_footprints_do_not_overlap(shift, shape):
    a = _tile(0, 0)
    b = _tile(*shift, shape)
    assert intersect_footprints(a.footprint, b.footprint) == (0.0, [])
    assert intersect_footprints(b.footprint, a.footprint) == (0.0, [])
    assert _intersection(a.footprint, b.footprint) == (0.0, [])


@pytest.mark.parametrize(
    ("shift", "shape", "rows", "cols"),
    [
        ((0, 0), (40, 40), slice(0, 40), slice(0, 40)),  # identical
        ((-20, -7), (40, 40), slice(0, 33), slice(0, 20)),  # generic
        ((-39, 0), (40, 40), slice(0, 40), slice(0, 1)),  # one column
        ((-39, -39), (40, 40), slice(0, 1), slice(0, 1)),  # one corner pixel
        ((10, 10), (10, 12), slice(10, 20), slice(10, 22)),  # nested
        ((0, 10), (10, 12), slice(10, 20), slice(0, 12)),  # nested, on an edge
        ((0, 0), (10, 12), slice(0, 10), slice(0, 12)),  # nested, in a corner
    ],
)
def test_overlaps_of_tiles(shift, shape, rows, cols):
    # Tiles of one pixel grid: the overlap is a whole number of pixels,
    # all selected (gwcs's scan rule, rounding half-integer vertices to
    # even, may add a row or column on each side), and spherical-geometry
    # selects the same pixels.
    a = _tile(0, 0)
    b = _tile(*shift, shape)
    inside = np.zeros(a.shape, dtype=bool)
    inside[rows, cols] = True
    pix = np.deg2rad(1.0e-4) ** 2
    for first, second in ((a, b), (b, a)):
        area, pieces = intersect_footprints(first.footprint, second.footprint)
        assert area == pytest.approx(inside.sum() * pix, rel=1e-6)
        selected = a.pixels(area, pieces)
        assert np.all(selected[inside])
        grown = np.zeros_like(inside)
        grown[max(rows.start - 1, 0) : rows.stop + 1, max(cols.start - 1, 0) : cols.stop + 1] = True
        assert not np.any(selected & ~grown)
        ref = _intersection(first.footprint, second.footprint)
        for im in (a, b):
            np.testing.assert_array_equal(im.pixels(area, pieces), im.pixels(*ref))


def test_nested_footprint_keeps_its_own_vertices():
    outer = _tile(0, 0)
    inner = _tile(10, 10, (10, 12))
    ((ra, dec),) = intersect_footprints(outer.footprint, inner.footprint)[1]
    ((ref_ra, ref_dec),) = _intersection(outer.footprint, inner.footprint)[1]
    # the same vertices, bit for bit, possibly from another starting vertex
    assert sorted(zip(ra[:-1], dec[:-1], strict=True)) == sorted(
        zip(ref_ra[:-1], ref_dec[:-1], strict=True)
    )


def test_sub_pixel_corner_overlap_is_kept():
    # A 0.001 x 0.001 pixel overlap is a real (tiny) polygon; it is returned
    # (spherical-geometry finds none here) and rounds to a single pixel.
    a = _tile(0, 0)
    b = _tile(-39.999, -39.999)
    area, pieces = intersect_footprints(a.footprint, b.footprint)
    assert area == pytest.approx(1e-6 * np.deg2rad(1.0e-4) ** 2, rel=1e-3)
    assert a.pixels(area, pieces).sum() == 0
    assert b.pixels(area, pieces).sum() == 1


def test_multi_part_footprints_give_one_piece_per_part_pair():
    left, right = _tile(0, 0), _tile(-60, 0)
    both = SphericalPolygon([left.footprint.polygons[0], right.footprint.polygons[0]])
    cover = _tile(-50, -5, (30, 80))
    area, pieces = intersect_footprints(both, cover.footprint)
    assert len(pieces) == 2
    parts = [intersect_footprints(p.footprint, cover.footprint)[0] for p in (left, right)]
    assert area == pytest.approx(sum(parts), rel=1e-12)


def test_vertex_arrays_are_accepted():
    a = _simulated((200, 300), 45.0, 10.0, 30.0, 2.0, 0.063)
    b = _simulated((300, 200), 45.003, 10.002, 60.0, 1.0, 0.063)
    ref = intersect_footprints(a.footprint, b.footprint)
    (pts,) = [p.points for p in a.footprint.polygons]
    ra_b, dec_b = next(b.footprint.to_radec())
    for first, second in (
        (pts, (ra_b, dec_b)),
        (pts[:-1], b.footprint),
        (a.footprint, (ra_b, dec_b)),
    ):
        area, pieces = intersect_footprints(first, second)
        assert area == pytest.approx(ref[0], rel=1e-12)
        for im in (a, b):
            np.testing.assert_array_equal(im.pixels(area, pieces), im.pixels(*ref))


def test_empty_footprint_gives_no_overlap():
    a = _tile(0, 0)
    assert intersect_footprints(SphericalPolygon([]), a.footprint) == (0.0, [])
    assert intersect_footprints(a.footprint, np.zeros((0, 3))) == (0.0, [])


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.zeros((4, 2)), r"fp_b: expected a SphericalPolygon.*shape \(4, 2\)"),
        (([1.0, 2.0, 3.0], [1.0, 2.0]), "fp_b: ra and dec must have the same length"),
        (np.full((4, 3), np.nan), "fp_b: the vertices are not all finite"),
    ],
)
def test_bad_vertex_arrays_are_rejected(value, match):
    with pytest.raises(ValueError, match=match):
        intersect_footprints(_tile(0, 0).footprint, value)


# -- when the caller must fall back to spherical-geometry ------------------------------


def test_footprints_too_far_apart_for_one_plane():
    a = _simulated((100, 100), 10.0, 0.0, 0.0, 0.0, 0.1)
    b = _simulated((100, 100), 140.0, 0.0, 0.0, 0.0, 0.1)
    with pytest.raises(PlanarGeometryError, match=r"6\d\.\d degrees from the pair's mean"):
        intersect_footprints(a.footprint, b.footprint)


def test_self_intersecting_footprint_is_refused():
    ra = np.array([10.0, 10.01, 10.0, 10.01, 10.0])
    dec = np.array([0.0, 0.01, 0.01, 0.0, 0.0])  # a bow tie
    with pytest.raises(PlanarGeometryError, match="not a valid polygon in the plane"):
        intersect_footprints((ra, dec), _tile(0, 0).footprint)


def test_polygon_describing_the_larger_region_is_refused():
    a = _tile(0, 0)
    outside = a.footprint.invert_polygon()
    with pytest.raises(PlanarGeometryError, match="inside point is outside its outline"):
        intersect_footprints(outside, _tile(-20, 0).footprint)


# -- the step's path: planar when provably exact, spherical-geometry otherwise ---------


class _FastImage(_Image):
    """Image whose WCS is a plain astropy model (fast to build, no fitted inverse).

    Pixel (``crpix``) at ``(ra, dec)``; ``distortion`` pixels of radial
    distortion at the corner, whose backward transform is only approximate
    (the check needs the same transform for both methods, not an exact one).
    """

    def __init__(
        self, shape, ra, dec, rotation, scale, *, distortion=0.0, stepsize=None, crpix=None
    ):
        ny, nx = shape
        cx, cy = crpix if crpix is not None else ((nx - 1) / 2.0, (ny - 1) / 2.0)
        theta = np.deg2rad(rotation)
        matrix = (
            scale
            / 3600.0
            * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        )
        centre = models.Shift(-cx) & models.Shift(-cy)
        affine = models.AffineTransformation2D(matrix=matrix)
        sky = models.Pix2Sky_TAN() | models.RotateNative2Celestial(ra, dec, 180.0)
        if distortion:
            k = distortion / (cx * cx + cy * cy) ** 1.5
            forward = centre | _radial(k) | affine | sky
            backward = sky.inverse | affine.inverse | _radial(-k) | centre.inverse
        else:
            forward = centre | affine | sky
            backward = forward.inverse
        super().__init__(shape, forward, backward, stepsize)


def _radial(k):
    px = models.Polynomial2D(3, c1_0=1.0, c3_0=k, c1_2=k)
    py = models.Polynomial2D(3, c0_1=1.0, c0_3=k, c2_1=k)
    return models.Mapping((0, 1, 0, 1)) | (px & py)


def _place(rng):
    """A random sky position: anywhere, within 0.1 degree of a pole, or at RA = 0."""
    place = rng.integers(3)
    if place == 0:
        return rng.uniform(0, 360), rng.uniform(-80, 80)
    if place == 1:
        return rng.uniform(0, 360), rng.choice([-1, 1]) * rng.uniform(89.9, 89.99)
    return rng.uniform(-0.005, 0.005) % 360, rng.uniform(-60, 60)


def _fast_pair(rng, kind):
    """Two small images overlapping as ``kind`` says (see `_random_pair`), or

    ``aligned``: undistorted tiles of one pixel grid (same tangent point,
    rotation and scale) shifted by whole or half pixels, so that edges fall
    on each other's pixel borders (the rounding ties of the pixel fill);
    many pairs touch along an edge or at a corner, share edges or are
    identical.
    """
    ra, dec = _place(rng)
    scale = float(rng.choice([0.031, 0.063, 0.11]))
    shape_a = tuple(int(n) for n in rng.integers(16, 90, 2))
    shape_b = tuple(int(n) for n in rng.integers(16, 90, 2))
    if kind == "aligned":
        rot = float(rng.choice([0.0, 90.0, rng.uniform(0, 360)]))
        unit = rng.choice([1.0, 0.5])
        sx = unit * rng.integers(-int(shape_b[1] / unit) - 1, int(shape_a[1] / unit) + 2)
        sy = unit * rng.integers(-int(shape_b[0] / unit) - 1, int(shape_a[0] / unit) + 2)
        if rng.uniform() < 0.15:
            shape_b, sx, sy = shape_a, 0.0, 0.0  # identical
        a = _FastImage(shape_a, ra, dec, rot, scale, crpix=(0.0, 0.0))
        b = _FastImage(shape_b, ra, dec, rot, scale, crpix=(-sx, -sy))
        return a, b
    half_a = np.hypot(*shape_a) * scale / 2
    if kind == "nested":
        shape_b = tuple(max(8, n // 3) for n in shape_a)
        dist = rng.uniform(0, 0.3) * half_a
    else:
        half_b = np.hypot(*shape_b) * scale / 2
        lo, hi = (0.0, 0.8) if kind == "large" else (0.7, 1.0)
        dist = rng.uniform(lo, hi) * (half_a + half_b)
    angle = rng.uniform(0, 2 * np.pi)
    ra_b = (ra + dist * np.cos(angle) / 3600 / max(np.cos(np.deg2rad(dec)), 1e-3)) % 360
    dec_b = float(np.clip(dec + dist * np.sin(angle) / 3600, -89.999, 89.999))
    step = [None, None, None, 16][rng.integers(4)]
    a = _FastImage(
        shape_a,
        ra,
        dec,
        rng.uniform(0, 360),
        scale,
        distortion=rng.choice([0, 0, 1, 3]),
        stepsize=step,
    )
    rot_b = float(rng.choice([rng.uniform(0, 360), 0.0]))
    b = _FastImage(
        shape_b, ra_b, dec_b, rot_b, scale, distortion=rng.choice([0, 0, 1, 3]), stepsize=step
    )
    return a, b


def _spherical_pair(fp_i, fp_j):
    """What `intersect_pair` gives with spherical-geometry alone (jwst's method)."""
    try:
        both = _intersection(fp_i, fp_j)
    except Exception:  # jwst's fallbacks are compared elsewhere
        return None
    return PairOverlap(both, both)


def _compare_wired(npairs, seed, kinds):
    """Pixel parity of `intersect_pair` with spherical-geometry on random pairs."""
    rng = np.random.default_rng(seed)
    res = {"pairs": 0, "planar": 0, "overlapping": 0, "differ": []}
    for k in range(npairs):
        a, b = _fast_pair(rng, kinds[k % len(kinds)])
        ref = _spherical_pair(a.footprint, b.footprint)
        if ref is None:
            continue
        res["pairs"] += 1
        try:
            exact_intersection(a.footprint, b.footprint)
            res["planar"] += 1
        except PlanarGeometryError:
            pass
        got = intersect_pair(a.footprint, b.footprint)
        want = _pair_pixels(ref, (a, b))
        have = _pair_pixels(got, (a, b))
        res["overlapping"] += not want[0][0]
        ndiff = sum(
            int((w[1] != h[1]).sum()) + (w[0] != h[0]) for w, h in zip(want, have, strict=True)
        )
        if ndiff:
            res["differ"].append((k, ndiff))
    return res


def test_step_path_selects_spherical_geometry_pixels_on_random_pairs():
    # Rotations, distortion, corner-only and nested overlaps, poles, RA = 0,
    # vertices along the edges, in both images' pixel grids.
    res = _compare_wired(90, seed=21, kinds=("large", "corner", "nested"))
    assert res["differ"] == []
    assert res["overlapping"] > 50
    assert res["planar"] > 0.9 * res["pairs"]


def test_step_path_selects_spherical_geometry_pixels_on_aligned_grids():
    # Undistorted tiles of one grid: every crossing lies on a pixel border
    # (a rounding tie of the fill), so any last-bit difference of a vertex
    # from spherical-geometry's changes the pixels; edges crossed twice are
    # common, and so are touching, shared-edge and identical footprints.
    res = _compare_wired(150, seed=22, kinds=("aligned",))
    assert res["differ"] == []
    assert res["overlapping"] > 60
    # the exact path takes them (planar, or replaying spherical-geometry's graph)
    assert res["planar"] > 0.95 * res["pairs"]


def test_edge_crossed_twice_gives_spherical_geometry_vertices():
    # B crosses A's right edge twice: spherical-geometry computes the second
    # crossing on what is left of that edge after the first split.
    a = _tile(0, 0)
    b = _tile(-30, -10, (20, 60))
    ((ra, dec),) = exact_intersection(a.footprint, b.footprint)[1]
    ((ref_ra, ref_dec),) = _intersection(a.footprint, b.footprint)[1]
    assert sorted(zip(ra[:-1], dec[:-1], strict=True)) == sorted(
        zip(ref_ra[:-1], ref_dec[:-1], strict=True)
    )


def _vertex_sets(pieces):
    return sorted(sorted(zip(ra[:-1], dec[:-1], strict=True)) for ra, dec in pieces)


def test_disjoint_pairs_are_exactly_empty():
    a = _tile(0, 0)
    for shift in ((-41, 3), (-47, -52), (60, 7)):
        assert exact_intersection(a.footprint, _tile(*shift).footprint) == (0.0, [])


# -- degenerate configurations: spherical-geometry's graph replayed ----------------------


@pytest.fixture
def no_spherical_geometry(monkeypatch):
    """Make `intersect_pair`'s spherical-geometry fallback fail: the exact path must do."""

    def fail(fp_a, fp_b):
        raise AssertionError("the pair fell back to spherical-geometry")

    monkeypatch.setattr(_overlaps, "_intersection", fail)


def _assert_exact_path(a, b):
    """`intersect_pair`, without fallback, gives spherical-geometry's result both ways.

    The same vertices bit for bit (spherical-geometry's starting vertex
    varies from run to run), an area zero exactly when spherical-geometry's
    is (and within its rounding otherwise), and the same pixels in both
    images.
    """
    for first, second in ((a, b), (b, a)):
        got = intersect_pair(first.footprint, second.footprint)
        ref = _intersection(first.footprint, second.footprint)  # the real one
        assert got.failed == ()
        assert (got.first[0] == 0.0) == (ref[0] == 0.0)
        assert _vertex_sets(got.first[1]) == _vertex_sets(ref[1])
        if ref[0] > 0.0:
            # spherical-geometry's sum of angles is good to ~1e-14 sr; ours is exact
            assert got.first[0] == pytest.approx(ref[0], rel=1e-9, abs=5e-14)
        want = _pair_pixels(PairOverlap(ref, ref), (first, second))
        have = _pair_pixels(got, (first, second))
        for (w_empty, w_mask), (h_empty, h_mask) in zip(want, have, strict=True):
            assert h_empty == w_empty
            np.testing.assert_array_equal(h_mask, w_mask)


@pytest.mark.parametrize(
    ("shift", "shape"),
    [
        ((-40, 0), (40, 40)),  # shares a whole edge
        ((-40, -20), (40, 40)),  # shares half an edge (collinear, overlapping edges)
        ((-40, 10), (40, 20)),  # an edge within the other's (two corners on it)
        ((-40, -40), (40, 40)),  # corners touch
        ((-40, 40), (40, 40)),  # corners touch, the other diagonal
        ((0, 0), (40, 40)),  # identical
        ((-20, 0), (40, 40)),  # collinear edges, shared corners
        ((-20, -7), (40, 40)),  # edges crossed twice
        ((-39, 0), (40, 40)),  # a one-pixel column
        ((-39, -39), (40, 40)),  # one corner pixel
        ((-39.5, -0.5), (40, 40)),  # half a pixel
        ((-39.99, -39.99), (40, 40)),  # a 1e-4 pixel^2 corner
        ((0, 10), (10, 12)),  # nested on an edge
        ((0, 0), (10, 12)),  # nested in a corner
        ((10, 10), (10, 12)),  # nested
        ((-10, 15), (20, 10)),  # a vertex on the other's edge
        ((-40.000001, 0), (40, 40)),  # disjoint by 1e-6 pixel
    ],
)
def test_degenerate_tile_pairs_take_the_exact_path(shift, shape, no_spherical_geometry):
    # Tiles of one pixel grid: edges on each other's great circles (to the
    # last bit), corners on edges and on corners.
    _assert_exact_path(_tile(0, 0), _tile(*shift, shape))


def _candidate_pairs(images):
    caps = [bounding_cap(im.footprint) for im in images]
    return candidate_pairs(caps, list(range(len(images))))


def _scale_shift_grid(step, n=3, shape=(40, 40)):
    """``n x n`` tiles of one pixel grid (``scale_shift_wcs``), ``step`` pixels apart."""
    images = []
    for row in range(n):
        for col in range(n):
            wcs = scale_shift_wcs(col * step, row * step)
            images.append(_Image(shape, wcs.forward_transform, wcs.backward_transform))
    return images


@pytest.mark.parametrize(
    "step",
    [
        36,  # 10% overlaps
        39,  # one-pixel overlaps
        40,  # shared edges, touching corners
        30,  # quarter overlaps: corners of diagonal neighbours on edges
        35.5,  # half-pixel overlaps
    ],
)
def test_scale_shift_grid_takes_the_exact_path(step, no_spherical_geometry):
    images = _scale_shift_grid(step)
    pairs = _candidate_pairs(images)
    assert len(pairs) >= 20
    for i, j in pairs:
        _assert_exact_path(images[i], images[j])


def _gwcs_grid(rotation, step, n=3, size=32):
    """``n x n`` images of their own gwcs (``make_gwcs``), laid out as a mosaic.

    The centres are ``step`` pixels apart on the pixel grid of one large
    reference WCS, every image with the same ``rotation``: neighbouring
    edges are nearly, not exactly, on one great circle.
    """
    ref = make_gwcs((n * size, n * size), 150.1, 2.2, rotation)
    mid = (n * size - 1) / 2.0
    images = []
    for row in range(n):
        for col in range(n):
            x = mid + (col - (n - 1) / 2.0) * step
            y = mid + (row - (n - 1) / 2.0) * step
            ra, dec = ref.forward_transform(x, y, with_bounding_box=False)
            wcs = make_gwcs((size, size), float(ra), float(dec), rotation)
            images.append(
                _Image(
                    (size, size),
                    functools.partial(wcs.forward_transform, with_bounding_box=False),
                    functools.partial(wcs.backward_transform, with_bounding_box=False),
                )
            )
    return images


@pytest.mark.parametrize("rotation", [0.0, 17.0])
@pytest.mark.parametrize("step", [28.8, 31.0, 32.0])  # 10%, 1-pixel overlaps, touching
def test_gwcs_mosaic_grid_takes_the_exact_path(rotation, step, no_spherical_geometry):
    images = _gwcs_grid(rotation, step)
    pairs = _candidate_pairs(images)
    assert len(pairs) >= 20
    for i, j in pairs:
        _assert_exact_path(images[i], images[j])


def _stepped_tiles(rng):
    """Two tiles of one pixel grid with vertices every few pixels along their edges."""
    ra, dec = _place(rng)
    scale = float(rng.choice([0.031, 0.11]))
    rot = float(rng.choice([0.0, 90.0, 17.0]))
    shape_a = tuple(int(n) for n in rng.integers(16, 40, 2))
    shape_b = tuple(int(n) for n in rng.integers(16, 40, 2))
    unit = float(rng.choice([1.0, 0.5]))
    sx = unit * rng.integers(-int(shape_b[1] / unit) - 1, int(shape_a[1] / unit) + 2)
    sy = unit * rng.integers(-int(shape_b[0] / unit) - 1, int(shape_a[0] / unit) + 2)
    step = int(rng.choice([8, 16]))
    a = _FastImage(shape_a, ra, dec, rot, scale, crpix=(0.0, 0.0), stepsize=step)
    b = _FastImage(shape_b, ra, dec, rot, scale, crpix=(-sx, -sy), stepsize=step)
    return a, b


def test_graph_replay_gives_spherical_geometry_vertices_on_random_degenerate_pairs():
    # Aligned tiles (whole and half-pixel shifts, corners only or vertices
    # along the edges: collinear edges within each footprint too), the
    # replay alone against spherical-geometry.
    rng = np.random.default_rng(31)
    counts = {"pairs": 0, "overlapping": 0, "refused": 0}
    for k in range(120):
        a, b = _stepped_tiles(rng) if k % 2 else _fast_pair(rng, "aligned")
        try:
            ref = _intersection(a.footprint, b.footprint)
        except Exception:  # whatever it raises, the replay must refuse
            ref = None
        try:
            got = _graph_replay(a.footprint, b.footprint)
        except PlanarGeometryError:
            counts["refused"] += 1
            continue
        assert ref is not None, k
        counts["pairs"] += 1
        counts["overlapping"] += ref[0] > 0.0
        assert (got[0] == 0.0) == (ref[0] == 0.0), k
        assert _vertex_sets(got[1]) == _vertex_sets(ref[1]), k
    assert counts["refused"] <= 6, counts
    assert counts["overlapping"] > 60, counts


def test_fast_predicates_decide_as_spherical_geometry():
    # Arcs 1e-5 rad long, the other arc's ends on or near their great circle
    # (down to 1e-20 rad away): what double precision cannot decide goes to
    # spherical-geometry's own (quad-double) functions.
    rng = np.random.default_rng(7)

    def unit(v):
        return v / np.sqrt(np.sum(v * v, axis=-1))[:, None]

    n = 20000
    a = unit(rng.normal(size=(n, 3)))
    b = unit(a + 1e-5 * unit(np.cross(a, rng.normal(size=(n, 3)))))
    off = rng.choice([0.0, 1e-20, 1e-16, 1e-12, 1e-6], (n, 1))
    c = unit(a + (b - a) * rng.uniform(-1, 2, (n, 1)) + off * unit(rng.normal(size=(n, 3))))
    d = unit(a + (b - a) * rng.uniform(-1, 2, (n, 1)) + off * unit(rng.normal(size=(n, 3))))
    d[:100] = c[:100]  # an arc of zero length
    c[100:200] = a[100:200]  # a shared end
    np.testing.assert_array_equal(_crosses(a, b, c, d), great_circle_arc.intersects(a, b, c, d))
    m = 3000
    e = unit(a[:m] + (b[:m] - a[:m]) * rng.uniform(-0.5, 1.5, (m, 1)))
    e += rng.choice([0.0, 1e-10, 5e-11, 2e-10], (m, 1)) * unit(rng.normal(size=(m, 3)))
    np.testing.assert_array_equal(
        _on_arc(a[:m], b[:m], e), great_circle_arc.intersects_point(a[:m], b[:m], e)
    )


# -- what still falls back to spherical-geometry ----------------------------------------


def test_multi_part_footprints_fall_back():
    left, right = _tile(0, 0), _tile(-60, 0)
    both = SphericalPolygon([left.footprint.polygons[0], right.footprint.polygons[0]])
    with pytest.raises(PlanarGeometryError, match="footprints of 2 and 1 parts"):
        exact_intersection(both, _tile(-50, -5, (30, 80)).footprint)


def test_pair_spherical_geometry_fails_on_is_left_to_it():
    # Here spherical-geometry's trace meets a self-loop (a crossing merged
    # into an end of its arc) and fails; the replay sees the self-loop and
    # refuses, so the pair goes to spherical-geometry as before.
    a, b = _tile(0, 0), _tile(-40, 1)
    with pytest.raises(ValueError, match="No more edges to follow"):
        _intersection(a.footprint, b.footprint)
    with pytest.raises(PlanarGeometryError, match="self-loop"):
        exact_intersection(a.footprint, b.footprint)


def test_set_order_dependent_merge_falls_back():
    # A corner of B within 2**-32 (in every component) of two vertices of A
    # (1.5 * 2**-32 apart, so not merged): spherical-geometry merges it into
    # whichever its set of nodes lists first, which changes from run to run.
    def vec(ra, dec):
        return np.array(lonlat_to_vector(ra, dec))

    tiny = np.array([0.0, 0.0, 2.0**-32])
    corner = vec(10.0, 0.0)
    a = SphericalPolygon(
        np.array(
            [corner, vec(10.001, 0.0), vec(10.001, 0.001), vec(10.0, 0.001), corner + 1.5 * tiny]
        )
    )
    b = SphericalPolygon(
        np.array([corner + 0.75 * tiny, vec(10.0005, 0.0), vec(10.0005, 0.0005), vec(10.0, 0.0005)])
    )
    with pytest.raises(PlanarGeometryError, match=r"within 2\*\*-32 of two nodes"):
        exact_intersection(a, b)


def test_other_spherical_geometry_version_is_not_replayed(monkeypatch):
    # The replay follows spherical-geometry 1.4; with another version the
    # pairs the planar proof refuses go to spherical-geometry itself.
    import spherical_geometry

    monkeypatch.setattr(spherical_geometry, "__version__", "1.5.0")
    a, b = _tile(0, 0), _tile(-40, 0)
    with pytest.raises(PlanarGeometryError, match=r"follows spherical-geometry 1\.4\.x"):
        exact_intersection(a.footprint, b.footprint)


def test_malformed_spherical_intersection_keeps_jwsts_fallback(monkeypatch):
    # A pair the exact path refuses goes to spherical-geometry; when that
    # fails, each image falls back to its whole footprint, as in jwst.
    from spherical_geometry.polygon import MalformedPolygonError

    def fail(fp_a, fp_b):
        raise MalformedPolygonError("test")

    monkeypatch.setattr(_overlaps, "_intersection", fail)
    left, right = _tile(0, 0), _tile(-60, 0)
    both = SphericalPolygon([left.footprint.polygons[0], right.footprint.polygons[0]])
    cover = _tile(-50, -5, (30, 80)).footprint
    got = intersect_pair(both, cover)
    assert got.failed == ("i", "j")
    assert got.first[0] == pytest.approx(abs(both.area()))
    assert got.second[0] == pytest.approx(abs(cover.area()))


def _pair_pixels(overlap, images):
    """The pixels each image selects (the geometry benchmark's check)."""
    return load_benchmark("bench_geometry").pair_pixels(overlap, images)
