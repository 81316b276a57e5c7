"""Exact footprint intersections in a tangent plane common to the pair.

A great-circle arc shorter than a half circle is a straight segment in a
gnomonic (tangent-plane) projection, whatever the tangent point, as long as
the arc lies in the open hemisphere around that point. Two footprints whose
vertices all lie in such a hemisphere are therefore intersected *exactly*
as planar polygons in that plane (by GEOS, through shapely, in
microseconds), and the vertices of the result are projected back to the
sphere. spherical-geometry, which intersects the same polygons arc by arc
(a graph in pure Python, its arithmetic in quad-double precision), takes
tens of milliseconds per pair.

When the decisions spherical-geometry takes with finite precision (its
tolerances, its sign tests) cannot provably be replayed in the plane --
shared, collinear or nearly parallel edges, corners on edges or on
corners, as in mosaics of aligned tiles -- `exact_intersection` replays
spherical-geometry's own graph algorithm instead (`_graph_replay`), with
its own arithmetic where double precision cannot decide, in about a tenth
of its time.

The result follows the conventions of spherical-geometry's
``SphericalPolygon.intersection`` followed by ``to_radec``, so that the
overlap polygons select the same pixels once mapped into each image:

* a vertex of the result that is a vertex of either footprint is returned
  bit for bit as spherical-geometry returns it (the normalised unit vector
  of the footprint's vertex, converted with spherical-geometry's
  ``vector_to_lonlat``: ra in [0, 360) degrees);
* vertices of the two footprints closer than ``2**-32`` in every
  Cartesian component are merged into the first one (those of ``fp_a``
  first), and a crossing point that close to a footprint vertex is that
  vertex, as spherical-geometry merges the nodes of its graph;
* every polygon is closed (its last vertex repeats the first) and has at
  least 4 vertices; the polygons are oriented as spherical-geometry
  orients them (clockwise in its sense: a positive area).

The area is the spherical area of the result, computed from the planar
coordinates with the solid angle of each triangle (tangent point, two
consecutive vertices) given by Van Oosterom & Strackee's formula, which
stays accurate for tiny polygons (spherical-geometry's sum of angles loses
about ``1e-15 / area`` in relative precision).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
import spherical_geometry
from spherical_geometry import great_circle_arc
from spherical_geometry.vector import lonlat_to_vector, normalize_vector, vector_to_lonlat

from .exceptions import GeometryError

__all__ = ["PlanarGeometryError", "exact_intersection", "intersect_footprints"]

# spherical-geometry merges graph nodes closer than this in every component.
_MERGE = 2.0**-32
# Largest angle allowed between the tangent point and a vertex. The
# gnomonic projection is exact up to 90 degrees; beyond 60 degrees the
# plane is stretched by more than a factor 4 and footprints that large are
# better left to spherical-geometry.
MAX_ANGLE = 60.0
_MIN_COS = np.cos(np.deg2rad(MAX_ANGLE))
# Extended precision (x86 80-bit long double) for `_normalize`; elsewhere
# spherical-geometry's own (slower) normalisation is called.
_EXTENDED = np.finfo(np.longdouble).nmant >= 63
# A normalised component closer than this (relative) to a rounding tie is
# left to spherical-geometry; the extended-precision error is below 2**-61.
_TIE = 2.0**-60


class PlanarGeometryError(GeometryError):
    """The planar intersection cannot be trusted; use spherical-geometry.

    Raised with the reason (footprints too far apart or too large for one
    tangent plane, an invalid or self-intersecting footprint, a GEOS
    failure, a result with a hole). Callers fall back to the spherical
    intersection; the result is never replaced by a whole footprint here.
    """


def intersect_footprints(fp_a, fp_b):
    """Intersect two footprints in a tangent plane common to both.

    Parameters
    ----------
    fp_a, fp_b : SphericalPolygon, SingleSphericalPolygon, ndarray or tuple
        The footprints. Besides spherical-geometry polygons (of one or
        several parts), each may be an ``(N, 3)`` array of vertex unit
        vectors or an ``(ra, dec)`` pair of 1-D arrays in degrees; the last
        vertex may repeat the first. A plain array describes the smaller of
        the two regions its outline bounds (spherical-geometry polygons
        carry their own inside point, which is checked).

    Returns
    -------
    area : float
        Spherical area of the intersection, in steradians; exactly ``0.0``
        when the footprints do not overlap or only touch (at a point or
        along an edge).
    pieces : list of tuple of ndarray
        Closed ``(ra, dec)`` polygons (degrees, ra in [0, 360)) of at least
        4 vertices; empty when ``area`` is 0. A footprint inside the other
        gives that footprint's own vertices. As in spherical-geometry, the
        parts of multi-part footprints are intersected pair by pair and all
        the pieces are returned.

    Raises
    ------
    PlanarGeometryError
        When the planar method does not apply, with the reason: the
        footprints do not fit in a hemisphere (within `MAX_ANGLE` degrees
        of their mean direction), a spherical-geometry polygon's inside
        point is outside its outline (it describes the larger region), a
        footprint is not a valid polygon in the plane (self-intersecting),
        GEOS fails, or the intersection has a hole. The caller should then
        use spherical-geometry.
    """
    parts_a = _parts(fp_a, "fp_a")
    parts_b = _parts(fp_b, "fp_b")
    if not parts_a or not parts_b:
        return 0.0, []

    # Vertices as spherical-geometry's graph holds them: normalised, with
    # near-coincident vertices merged into the first one.
    sizes = [len(p) for p, _ in parts_a + parts_b]
    verts = _merge_close(_normalize(np.concatenate([p for p, _ in parts_a + parts_b])))

    # Mean direction of the vertices (closing vertices counted once).
    tangent = verts.sum(axis=0) - verts[np.cumsum(sizes) - 1].sum(axis=0)
    norm = np.sqrt(tangent @ tangent)
    if not norm > 0.0:
        raise PlanarGeometryError("the footprints' vertices have no mean direction")
    tangent = tangent / norm
    cosang = verts @ tangent
    if cosang.min() <= _MIN_COS:
        angle = np.rad2deg(np.arccos(np.clip(cosang.min(), -1.0, 1.0)))
        raise PlanarGeometryError(
            f"a vertex lies {angle:.1f} degrees from the pair's mean direction "
            f"(at most {MAX_ANGLE:g} degrees fit one tangent plane)"
        )
    basis = _basis(tangent)
    plane = (verts @ basis[1:].T) / cosang[:, None]

    polys = []
    start = 0
    for (_, inside), n in zip(parts_a + parts_b, sizes, strict=True):
        span = slice(start, start + n)
        start += n
        poly = _planar_polygon(plane[span], inside, tangent, basis)
        if poly is not None:
            polys.append((poly, span))
    polys_a = [p for p in polys if p[1].start < sum(sizes[: len(parts_a)])]
    polys_b = [p for p in polys if p[1].start >= sum(sizes[: len(parts_a)])]

    area = 0.0
    pieces = []
    for pa, span_a in polys_a:
        for pb, span_b in polys_b:
            try:
                inter = shapely.intersection(pa, pb)
            except shapely.errors.GEOSException as err:
                raise PlanarGeometryError(
                    f"GEOS could not intersect the footprints: {err}"
                ) from err
            for ring in _rings(inter):
                piece_area = _solid_angle(ring)
                if piece_area <= 0.5 * _MERGE * _perimeter(ring):
                    continue  # a sliver along a shared edge: the footprints touch
                piece = _to_sphere(ring, plane, verts, (span_a, span_b), tangent, basis)
                if piece is None:
                    continue
                area += piece_area
                pieces.append(piece)
    if not pieces:
        return 0.0, []
    return area, pieces


def _parts(fp, name):
    """Return ``[(closed (N, 3) vertex array, inside vector or None), ...]``."""
    if hasattr(fp, "polygons"):
        singles = fp.polygons
    elif hasattr(fp, "points"):
        singles = [fp]
    else:
        singles = None
    if singles is not None:
        out = []
        for s in singles:
            pts = np.asarray(s.points, dtype=float)
            if len(pts) >= 4:
                inside = s.inside
                out.append((pts, None if inside is None else np.asarray(inside, dtype=float)))
        return out
    if isinstance(fp, tuple) and len(fp) == 2:
        ra = np.asarray(fp[0], dtype=float).ravel()
        dec = np.asarray(fp[1], dtype=float).ravel()
        if ra.shape != dec.shape:
            raise ValueError(
                f"{name}: ra and dec must have the same length, got {ra.size} and {dec.size}"
            )
        pts = np.stack(lonlat_to_vector(ra, dec), axis=-1)
    else:
        pts = np.asarray(fp, dtype=float)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(
                f"{name}: expected a SphericalPolygon, an (N, 3) array of unit vectors or an "
                f"(ra, dec) pair of arrays, got an array of shape {pts.shape}"
            )
    if not np.all(np.isfinite(pts)):
        raise ValueError(f"{name}: the vertices are not all finite")
    if len(pts) and not np.array_equal(pts[0], pts[-1]):
        pts = np.vstack([pts, pts[:1]])
    return [(pts, None)] if len(pts) >= 4 else []


def _merge_close(verts):
    """Replace each vertex by the first one within ``_MERGE`` in every component."""
    close = np.all(np.abs(verts[:, None, :] - verts[None, :, :]) < _MERGE, axis=-1)
    first = np.argmax(close, axis=1)  # the diagonal guarantees a match
    return verts[first]


def _basis(tangent):
    """Rows: the tangent point and two unit vectors spanning its tangent plane."""
    tx, ty, tz = (float(c) for c in tangent)
    # e1 = (axis of the smallest component) x tangent, normalised
    if abs(tx) <= abs(ty) and abs(tx) <= abs(tz):
        e1 = (0.0, -tz, ty)
    elif abs(ty) <= abs(tz):
        e1 = (tz, 0.0, -tx)
    else:
        e1 = (-ty, tx, 0.0)
    n = (e1[0] * e1[0] + e1[1] * e1[1] + e1[2] * e1[2]) ** 0.5
    ex, ey, ez = e1[0] / n, e1[1] / n, e1[2] / n
    e2 = (ty * ez - tz * ey, tz * ex - tx * ez, tx * ey - ty * ex)
    return np.array([[tx, ty, tz], [ex, ey, ez], e2])


def _planar_polygon(xy, inside, tangent, basis):
    """Shapely polygon of one footprint part; None for a part of zero area."""
    poly = shapely.polygons(xy)
    if not shapely.is_valid(poly):
        reason = shapely.is_valid_reason(poly)
        if poly.area == 0.0:
            return None  # all vertices on one great circle: spherical-geometry skips it too
        raise PlanarGeometryError(f"a footprint is not a valid polygon in the plane ({reason})")
    if inside is not None:
        w = inside @ tangent
        ok = w > 0.0
        if ok:
            ix, iy = (inside @ basis[1:].T) / w
            ok = shapely.contains_xy(poly, ix, iy)
        if not ok:
            raise PlanarGeometryError(
                "a footprint's inside point is outside its outline in the tangent plane "
                "(the polygon describes the larger of the two regions it bounds)"
            )
    return poly


def _rings(geom):
    """Exterior rings (closed ``(M, 2)`` arrays) of the polygons in ``geom``."""
    rings = []
    for part in shapely.get_parts(geom):
        kind = shapely.get_type_id(part)
        if kind == 7:  # GeometryCollection
            rings.extend(_rings(part))
            continue
        if kind not in (3, 6):  # points and lines: touching, zero area
            continue
        for poly in shapely.get_parts(part):
            if shapely.get_num_interior_rings(poly):
                raise PlanarGeometryError("the intersection of the footprints has a hole")
            if poly.area > 0.0:
                rings.append(shapely.get_coordinates(shapely.get_exterior_ring(poly)))
    return rings


def _to_sphere(ring, plane, verts, spans, tangent, basis):
    """Return the closed ``(ra, dec)`` polygon of a planar ring (None if it collapses)."""
    ring = ring[:-1]
    # Footprint vertices keep their exact unit vectors.
    same = np.all(ring[:, None, :] == plane[None, :, :], axis=-1)
    known = same.any(axis=1)
    vec = np.empty((len(ring), 3))
    vec[known] = verts[np.argmax(same[known], axis=1)]
    new = ~known
    if new.any():
        v = _crossings(ring[new], plane, verts, spans, tangent, basis)
        # A crossing this close to a footprint vertex is that vertex.
        close = np.all(np.abs(v[:, None, :] - verts[None, :, :]) < _MERGE, axis=-1)
        snap = close.any(axis=1)
        v[snap] = verts[np.argmax(close[snap], axis=1)]
        vec[new] = v
    # Drop repeated consecutive vertices (cyclically), as merged nodes do.
    keep = np.any(vec != vec[np.arange(-1, len(vec) - 1)], axis=1)
    vec = vec[keep]
    if len(vec) < 3:
        return None
    # spherical-geometry's orientation: counter-clockwise seen from outside
    # the sphere (east to the left of north) gives a positive area there,
    # which is clockwise in the (e1, e2) plane of `_basis` with this
    # right-handed frame.
    xy = ring[keep]
    nxt = np.arange(1, len(xy) + 1) % len(xy)
    signed = (xy[:, 0] * xy[nxt, 1] - xy[nxt, 0] * xy[:, 1]).sum()
    if signed > 0.0:
        vec = vec[::-1]
    vec = np.vstack([vec, vec[:1]])
    ra, dec = vector_to_lonlat(vec[:, 0], vec[:, 1], vec[:, 2])
    return ra, dec


def _crossings(points, plane, verts, spans, tangent, basis):
    """Return the unit vectors of crossing points of the two footprints' edges.

    Each point is recomputed as spherical-geometry computes the crossing
    of two arcs (its extended-precision ``great_circle_arc.intersection``
    of the two footprint edges the point lies on, normalised again as its
    graph does), so that the vertex is bit for bit the same whenever
    spherical-geometry crossed the two original edges. Where that
    function finds no crossing (a point at the end of an arc), the
    back-projected planar point is used.
    """
    ends = []
    for span in spans:
        p0 = plane[span][:-1]
        d = plane[span][1:] - p0
        rel = points[:, None, :] - p0[None, :, :]
        len2 = np.sum(d * d, axis=1)
        t = np.clip(np.sum(rel * d, axis=2) / np.where(len2 > 0, len2, 1.0), 0.0, 1.0)
        dist = np.sum((rel - t[:, :, None] * d) ** 2, axis=2)
        edge = np.argmin(dist, axis=1) + span.start
        ends.append((verts[edge], verts[edge + 1]))
    with np.errstate(invalid="ignore"):
        cross = great_circle_arc.intersection(ends[0][0], ends[0][1], ends[1][0], ends[1][1])
    planar = tangent + points @ basis[1:]
    planar /= np.sqrt(np.sum(planar * planar, axis=1))[:, None]
    found = np.all(np.isfinite(cross), axis=1)
    return np.where(found[:, None], _normalize(np.where(found[:, None], cross, planar)), planar)


def _normalize(v):
    """Normalise vectors exactly as spherical-geometry's ``normalize_vector`` does.

    spherical-geometry normalises in quad-double precision and keeps the
    leading double, i.e. the correctly rounded result. The same is
    computed here in extended precision, ~20 times faster; the few
    components that land too close to a rounding tie to be decided that
    way are handed to spherical-geometry itself.
    """
    v = np.asarray(v, dtype=float)
    if not _EXTENDED:
        return normalize_vector(v)
    q = v.astype(np.longdouble)
    r = q / np.sqrt(np.sum(q * q, axis=-1))[..., None]
    out = r.astype(float)
    lo = (out.astype(np.longdouble) + np.nextafter(out, -np.inf)) / 2
    hi = (out.astype(np.longdouble) + np.nextafter(out, np.inf)) / 2
    tie = np.minimum(np.abs(r - lo), np.abs(r - hi)) <= _TIE * np.abs(r)
    rows = np.any(tie, axis=-1)
    if rows.any():
        out[rows] = normalize_vector(v[rows])
    return out


def _perimeter(ring):
    """Length of a closed planar ring (radians, to within the plane's stretch)."""
    d = np.diff(ring, axis=0)
    return float(np.sum(np.sqrt(np.sum(d * d, axis=1))))


def _solid_angle(ring):
    """Solid angle (sr) of a closed planar ring of the gnomonic projection.

    Sum over the edges of the signed solid angles of the triangles
    (tangent point, p, q), by Van Oosterom & Strackee's formula written
    for the non-unit vectors ``(0, 0, 1)``, ``(p, 1)``, ``(q, 1)``.
    """
    p = ring[:-1]
    q = ring[1:]
    cross = p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]
    rp = np.sqrt(1.0 + np.sum(p * p, axis=1))
    rq = np.sqrt(1.0 + np.sum(q * q, axis=1))
    denom = rp * rq + rp + rq + 1.0 + np.sum(p * q, axis=1)
    return float(abs(2.0 * np.sum(np.arctan2(cross, denom))))


# -- the exact path: the same vertices as spherical-geometry, or nothing -------------
#
# `exact_intersection` returns what spherical-geometry's
# ``SphericalPolygon.intersection`` followed by ``to_radec`` returns -- the
# same vertices bit for bit, hence the same pixels once mapped into an image
# -- or raises `PlanarGeometryError` when it cannot prove it. The proof rests
# on two points:
#
# * the vertices: a result vertex is either a footprint vertex (returned as
#   spherical-geometry normalises it) or a crossing of two edges, which
#   spherical-geometry computes with ``great_circle_arc.intersection`` of the
#   two *sub-arcs* that its graph holds at that moment (an edge crossed twice
#   is first split at one crossing, and the second crossing is computed on
#   the piece left). Its edge list is ordered by hashes of the vertex
#   coordinates and processed in a fixed order, which is replayed here
#   symbolically (which sub-arcs cross is decided in the plane), then the
#   crossings are computed with the same function on the same sub-arcs;
# * the decisions spherical-geometry takes with finite precision or
#   tolerances (merging nodes closer than 2**-32, splitting an arc at a node
#   whose length excess is below 3e-11, inside/outside tests by counting
#   crossings of an arc from the polygon's inside point, discarding
#   "degenerate" results) all go the exact way when no node, edge midpoint or
#   test arc comes within a tolerance of a place where they could go wrong.
#   Otherwise the pair is "sensitive" and left to spherical-geometry.

# Smallest distance (radians, in the tangent plane) between two nodes
# (vertices or crossings): spherical-geometry merges nodes closer than
# 2**-32 (2.3e-10) in every component, and decides whether an arc crosses
# another near its ends by sign tests.
_TOL = 1e-9
# Smallest distance between a point spherical-geometry tests for being
# inside a footprint (the other footprint's vertices, edge midpoints) and
# that footprint's boundary, and between a footprint's vertices and the
# arcs of those tests (from its inside point, counting crossings); far
# above the ~1e-16 rad resolution of its arithmetic.
_TOL_TEST = 1e-10
# spherical-geometry splits an arc AB at a node C when
# len(AC) + len(CB) - len(AB) < 1e-10 (``math_util.intersects_point``; its
# Python fallback says 3e-11); margin 3x.
_ON_ARC = 3e-10
# Smallest sine of the angle between two crossing edges.
_MIN_SIN = 1e-6
# spherical-geometry calls a polygon degenerate (area 0) when every
# ``triple_product`` orientation is below 1e-11 and the vertices lie on a
# great circle to 1e-16 (``_get_orient``, ``_is_on_great_circle``).
_SG_FLAT = 1e-11
_SG_GREAT_CIRCLE = 1e-16


def _sensitive(reason):
    return PlanarGeometryError(f"sensitive pair: {reason}")


def exact_intersection(fp_a, fp_b):
    """Intersect two footprints with exactly spherical-geometry's vertices.

    Gives what spherical-geometry's ``SphericalPolygon.intersection(fp_a,
    fp_b)`` gives once converted by ``to_radec``: the same polygons with the
    same vertices bit for bit (possibly from another starting vertex, and
    in another order of the pieces), hence the same pixels in any image, in
    two ways:

    * the planar clip of `intersect_footprints`, when its decisions provably
      are spherical-geometry's (no node, edge midpoint or inside-point test
      near a place where a tolerance or a sign could go either way);
    * otherwise (aligned mosaics: shared or collinear edges, corners on
      edges or on corners, nearly parallel crossings, tiny overlaps),
      spherical-geometry's own graph algorithm replayed on arrays with its
      own arithmetic for every decision (`_graph_replay`).

    The area is the exact spherical area, not spherical-geometry's (whose
    sum of angles is only accurate to about ``1e-14`` sr, or ``1e-12`` for
    large polygons), but it is zero exactly when spherical-geometry's is.

    Parameters
    ----------
    fp_a, fp_b : SphericalPolygon or SingleSphericalPolygon
        Footprints of a single part each.

    Returns
    -------
    area : float
        Spherical area of the intersection (sr); ``0.0`` when the
        footprints do not overlap.
    pieces : list of tuple of ndarray
        Closed ``(ra, dec)`` polygons (degrees), as spherical-geometry's
        ``to_radec`` gives them; empty when ``area`` is 0.

    Raises
    ------
    PlanarGeometryError
        When spherical-geometry must be used, with the reason (of the
        replay, which is tried last): a footprint of several parts, or not
        a ``SphericalPolygon``; a result that depends on the iteration order
        of spherical-geometry's sets, which varies from run to run (a point
        within ``2**-32`` of two nodes, tied sort keys, a node of more than
        two edges or a self-loop left in the result, an orientation,
        degeneracy, area sign or inside point that depends on where its
        trace starts); a result spherical-geometry returns inverted (the
        complement) or fails to build (its graph checks); an intersection
        too large for one tangent plane.
    """
    try:
        return _proved_planar(fp_a, fp_b)
    except PlanarGeometryError:
        pass
    return _graph_replay(fp_a, fp_b)


def _proved_planar(fp_a, fp_b):
    """Intersect in the plane when every decision provably is spherical-geometry's."""
    geo = _pair_geometry(fp_a, fp_b)
    ea, eb, ta, tb, xc = _edge_crossings(geo.rings)
    base = geo.na + geo.nb
    nodes_xy = np.vstack([geo.xy, xc])
    _check_crossings_apart(nodes_xy, base)
    vectors = np.vstack([geo.verts, np.empty((ea.size, 3))])
    vectors[base:] = _replay_crossings(geo.verts, geo.na, geo.nb, ea, eb, ta, tb)
    # the same on the sphere (the plane stretches distances a little)
    _check_crossings_apart(vectors, base)
    _check_sg_decisions(geo, vectors, _sub_arcs(geo.na, geo.nb, ea, eb, ta, tb))
    return _planar_clip(geo, nodes_xy, vectors, base + np.arange(ea.size))


@dataclass
class _PairGeometry:
    """Two single-part footprints as spherical-geometry's graph and in the plane."""

    verts: np.ndarray  # (na + nb, 3) normalised vertices: A's, then B's (not closed)
    na: int
    nb: int
    tangent: np.ndarray  # tangent point (unit vector)
    basis: np.ndarray  # `_basis` of the tangent point
    xy: np.ndarray  # (na + nb, 2) vertices in the plane
    rings: list  # closed (n + 1, 2) rings of A and B
    polys: list  # shapely polygons of A and B
    boundaries: list  # their exterior rings
    inside: list  # their inside points in the plane


def _pair_geometry(fp_a, fp_b):
    """Check two footprints and put them in the tangent plane about their mean direction."""
    (pts_a, in_a), (pts_b, in_b) = _single_parts(fp_a, fp_b)
    # spherical-geometry's graph nodes: the normalised vertices, closing one dropped.
    na, nb = len(pts_a) - 1, len(pts_b) - 1
    verts = _graph_vertices(pts_a, pts_b)
    tangent, basis = _tangent_frame(verts)
    xy = _project(verts, tangent, basis)
    rings = [np.vstack([xy[:na], xy[:1]]), np.vstack([xy[na:], xy[na : na + 1]])]
    polys = [shapely.polygons(r) for r in rings]
    boundaries = [shapely.get_exterior_ring(p) for p in polys]
    inside = [_project(in_a, tangent, basis)[0], _project(in_b, tangent, basis)[0]]
    _check_footprints(polys, boundaries, inside)
    return _PairGeometry(verts, na, nb, tangent, basis, xy, rings, polys, boundaries, inside)


def _single_parts(fp_a, fp_b):
    """Return ``(points, inside)`` of each footprint; raise unless one part with an inside."""
    parts_a = _parts(fp_a, "fp_a")
    parts_b = _parts(fp_b, "fp_b")
    if len(parts_a) != 1 or len(parts_b) != 1:
        raise _sensitive(
            f"footprints of {len(parts_a)} and {len(parts_b)} parts (the exact planar "
            "intersection takes one part each)"
        )
    (pts_a, in_a), (pts_b, in_b) = parts_a[0], parts_b[0]
    if in_a is None or in_b is None:
        raise _sensitive("a footprint has no inside point (not a spherical polygon)")
    return (pts_a, in_a), (pts_b, in_b)


def _graph_vertices(pts_a, pts_b):
    """Return the normalised vertices of both footprints; raise if two nearly coincide."""
    verts = _normalize(np.concatenate([pts_a[:-1], pts_b[:-1]]))
    chord = np.sqrt(np.sum((verts[:, None, :] - verts[None, :, :]) ** 2, axis=-1))
    np.fill_diagonal(chord, np.inf)
    if chord.min() < _TOL:
        raise _sensitive(f"two footprint vertices are within {_TOL:g} rad")
    return verts


def _tangent_frame(verts):
    """Return the mean direction of the vertices and its `_basis`; raise if too far out."""
    tangent = verts.sum(axis=0)
    tangent = tangent / np.sqrt(tangent @ tangent)
    cosang = verts @ tangent
    if cosang.min() <= _MIN_COS:
        raise _sensitive(
            f"the footprints do not fit in one tangent plane (a vertex more than "
            f"{MAX_ANGLE:g} degrees from their mean direction)"
        )
    return tangent, _basis(tangent)


def _project(v, tangent, basis):
    """Return the tangent-plane coordinates of unit vectors (raise if one is behind)."""
    v = np.atleast_2d(v)
    w = v @ tangent
    if np.any(w <= 0.0):
        raise _sensitive("a point lies outside the tangent plane's hemisphere")
    return (v @ basis[1:].T) / w[:, None]


def _check_footprints(polys, boundaries, inside):
    """Raise unless both footprints are valid polygons, well around their inside points."""
    for k in range(2):
        if not shapely.is_valid(polys[k]) or polys[k].area == 0.0:
            raise _sensitive("a footprint is not a valid polygon in the tangent plane")
        ipt = shapely.points(inside[k])
        if not shapely.contains(polys[k], ipt) or shapely.distance(ipt, boundaries[k]) < _TOL_TEST:
            raise _sensitive("a footprint's inside point is not well inside it")


def _edge_crossings(rings):
    """Find the proper crossings of A's edges with B's edges in the plane.

    Returns the edge of A (``ea``) and of B (``eb``) of each crossing, the
    parameters ``ta`` and ``tb`` of the crossing along them, and the
    crossing points. Raises if two crossing edges are nearly parallel.
    """
    p, dp = rings[0][:-1], np.diff(rings[0], axis=0)
    q, dq = rings[1][:-1], np.diff(rings[1], axis=0)
    denom = dp[:, None, 0] * dq[None, :, 1] - dp[:, None, 1] * dq[None, :, 0]
    rel = q[None, :, :] - p[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (rel[..., 0] * dq[None, :, 1] - rel[..., 1] * dq[None, :, 0]) / denom
        s = (rel[..., 0] * dp[:, None, 1] - rel[..., 1] * dp[:, None, 0]) / denom
    crosses = (t > 0.0) & (t < 1.0) & (s > 0.0) & (s < 1.0)
    ea, eb = np.nonzero(crosses)
    ta, tb = t[ea, eb], s[ea, eb]
    if ea.size:
        sines = np.abs(denom[ea, eb]) / np.hypot(*dp[ea].T) / np.hypot(*dq[eb].T)
        if sines.min() < _MIN_SIN:
            raise _sensitive("two crossing edges are nearly parallel")
    xc = p[ea] + ta[:, None] * dp[ea]
    return ea, eb, ta, tb, xc


def _check_crossings_apart(nodes, first):
    """Raise if a crossing (``nodes[first:]``) lies within ``_TOL`` of another node."""
    ncross = len(nodes) - first
    if not ncross:
        return
    d = np.sqrt(np.sum((nodes[first:, None, :] - nodes[None, :, :]) ** 2, axis=-1))
    d[np.arange(ncross), first + np.arange(ncross)] = np.inf
    if d.min() < _TOL:
        raise _sensitive(f"a crossing lies within {_TOL:g} rad of another node")


def _sub_arcs(na, nb, ea, eb, ta, tb):
    """Return the footprint (0 or 1) and end nodes of the sub-arcs of every edge.

    Each edge is cut at its crossings (node ids ``na + nb + k``), in order
    along the edge.
    """
    crossing_ids = na + nb + np.arange(ea.size)
    subs = []  # (polygon, node0, node1)
    for k, (n, off, e_of, t_of) in enumerate(((na, 0, ea, ta), (nb, na, eb, tb))):
        for e in range(n):
            on = np.flatnonzero(e_of == e)
            chain = [off + e, *crossing_ids[on[np.argsort(t_of[on])]], off + (e + 1) % n]
            subs.extend((k, chain[i], chain[i + 1]) for i in range(len(chain) - 1))
    sub_poly = np.array([s_[0] for s_ in subs])
    sub_a = np.array([s_[1] for s_ in subs])
    sub_b = np.array([s_[2] for s_ in subs])
    return sub_poly, sub_a, sub_b


def _check_sg_decisions(geo, vectors, sub_arcs):
    """Raise unless spherical-geometry's tolerances and tests all go the exact way."""
    sub_poly, sub_a, sub_b = sub_arcs
    na, nb, xy = geo.na, geo.nb, geo.xy
    _check_not_on_arcs(vectors, sub_a, sub_b)
    mids = _project(_normalize(vectors[sub_a] + vectors[sub_b]), geo.tangent, geo.basis)
    for k in range(2):
        other = 1 - k
        mine = sub_poly == k
        dist = shapely.distance(shapely.points(mids[mine]), geo.boundaries[other])
        if dist.min() < _TOL_TEST:
            raise _sensitive("an edge midpoint lies near the other footprint's edge")
        # point-in-polygon tests of the other footprint: arcs from its inside
        # point to these vertices and midpoints must stay clear of its vertices
        own = slice(0, na) if k == 0 else slice(na, na + nb)
        tests = np.vstack([xy[own], mids[mine]])
        other_verts = xy[na:] if k == 0 else xy[:na]
        if _segment_distances(geo.inside[other], tests, other_verts).min() < _TOL_TEST:
            raise _sensitive("a point-in-polygon test arc passes near a vertex")


def _planar_clip(geo, nodes_xy, vectors, crossing_ids):
    """Return the area and pieces of the planar clip, whose vertices must be our nodes."""
    polys, xy, na = geo.polys, geo.xy, geo.na
    try:
        inter = shapely.intersection(polys[0], polys[1])
    except shapely.errors.GEOSException as err:
        raise _sensitive(f"GEOS could not intersect the footprints: {err}") from err
    expected = set(crossing_ids.tolist())
    expected.update(np.flatnonzero(shapely.contains_xy(polys[1], *xy[:na].T)).tolist())
    expected.update((na + np.flatnonzero(shapely.contains_xy(polys[0], *xy[na:].T))).tolist())
    seen = []
    area = 0.0
    pieces = []
    for ring in _rings(inter):
        d = np.sqrt(np.sum((ring[:-1, None, :] - nodes_xy[None, :, :]) ** 2, axis=-1))
        ids = np.argmin(d, axis=1)
        if np.any(d[np.arange(len(ids)), ids] > _TOL / 4):
            raise _sensitive("a vertex of the planar clip is not a node of the graph")
        seen.extend(ids.tolist())
        pieces.append(_sg_piece(vectors[ids]))
        area += _solid_angle(ring)
    if len(seen) != len(set(seen)) or set(seen) != expected:
        raise _sensitive("the planar clip's vertices are not the expected nodes")
    if not pieces:
        return 0.0, []
    return area, pieces


def _replay_crossings(verts, na, nb, ea, eb, ta, tb):
    """Compute the unit vectors of the crossings as spherical-geometry does.

    Replays ``Graph._find_arc_to_arc_intersections``: edges sorted by the
    hashes of their end points; the first edge is taken off the list and
    split with the first remaining edge it crosses, the four halves going
    to the end of the list. Which sub-arcs cross is known from the planar
    crossing parameters (``ta``/``tb`` along A's edge ``ea`` and B's edge
    ``eb``); edges that cross nothing are left out (they never change
    which edge is first to cross). The crossing of two sub-arcs is then
    ``great_circle_arc.intersection`` of their end points, normalised.
    """
    ncross = ea.size
    if ncross == 0:
        return np.empty((0, 3))
    keys = [hash(tuple(v)) for v in verts]
    edges = []  # [key, polygon, edge, node0, node1]
    for k, (n, off) in enumerate(((na, 0), (nb, na))):
        for e in range(n):
            n0, n1 = off + e, off + (e + 1) % n
            edges.append((keys[n0] + keys[n1], k, e, n0, n1))
    if len({ed[0] for ed in edges}) != len(edges):
        raise _sensitive("two edges tie in spherical-geometry's edge order")
    edges.sort(key=lambda ed: ed[0])
    # crossing id by (A edge, B edge); parameter of each node along each edge
    by_pair = {(int(a), int(b)): i for i, (a, b) in enumerate(zip(ea, eb, strict=True))}
    base = na + nb
    param = {}  # (polygon, edge, node) -> t
    for i in range(ncross):
        param[(0, int(ea[i]), base + i)] = ta[i]
        param[(1, int(eb[i]), base + i)] = tb[i]
    crossing_edges = [set(ea.tolist()), set(eb.tolist())]
    todo = [ed[1:] for ed in edges if ed[2] in crossing_edges[ed[1]]]

    def pos(k, e, node, n):
        off = 0 if k == 0 else na
        if node == off + e:
            return 0.0
        if node == off + (e + 1) % n:
            return 1.0
        return param[(k, e, node)]

    sizes = (na, nb)

    def crossing(ed1, ed2):
        if ed1[0] == ed2[0]:
            return None
        a, b = (ed1, ed2) if ed1[0] == 0 else (ed2, ed1)
        i = by_pair.get((a[1], b[1]))
        if i is None:
            return None
        for ed in (a, b):
            t0 = pos(ed[0], ed[1], ed[2], sizes[ed[0]])
            t1 = pos(ed[0], ed[1], ed[3], sizes[ed[0]])
            t = ta[i] if ed[0] == 0 else tb[i]
            if not min(t0, t1) < t < max(t0, t1):
                return None
        return i

    order = []  # (crossing id, (A, B, C, D) node ids as spherical-geometry passes them)
    while len(todo) > 1:
        ab = todo.pop(0)
        for j, cd in enumerate(todo):
            i = crossing(ab, cd)
            if i is None:
                continue
            node = base + i
            order.append((i, (ab[2], ab[3], cd[2], cd[3])))
            todo = todo[:j] + todo[j + 1 :]
            todo += [
                (ab[0], ab[1], ab[2], node),
                (ab[0], ab[1], node, ab[3]),
                (cd[0], cd[1], cd[2], node),
                (cd[0], cd[1], node, cd[3]),
            ]
            break
    if len(order) != ncross:
        raise _sensitive("replaying spherical-geometry's crossings failed")
    vectors = np.vstack([verts, np.full((ncross, 3), np.nan)])
    for i, (a, b, c, d) in order:
        v = great_circle_arc.intersection(
            vectors[a], vectors[b], vectors[c][None], vectors[d][None]
        )
        if not np.all(np.isfinite(v)):
            raise _sensitive("spherical-geometry's arithmetic finds no crossing")
        vectors[base + i] = _normalize(v)[0]
    return vectors[base:]


def _arc_length(u, v):
    """Angle (radians) between unit vectors, accurate for small angles."""
    return 2.0 * np.arcsin(np.minimum(np.sqrt(np.sum((u - v) ** 2, axis=-1)) / 2.0, 1.0))


def _check_not_on_arcs(vectors, ends_a, ends_b):
    """Raise if a node is on (or near) a sub-arc it does not end.

    spherical-geometry's ``_find_point_to_arc_intersections`` splits such
    an arc at the node, which the exact geometry never needs.
    """
    a = vectors[ends_a][:, None, :]
    b = vectors[ends_b][:, None, :]
    c = vectors[None, :, :]
    excess = _arc_length(a, c) + _arc_length(c, b) - _arc_length(a, b)
    ids = np.arange(len(vectors))
    excess[(ids[None, :] == ends_a[:, None]) | (ids[None, :] == ends_b[:, None])] = np.inf
    if excess.min() < _ON_ARC:
        raise _sensitive(
            "a vertex or crossing lies on an edge of the other footprint (touching or "
            "shared edges): spherical-geometry's point-on-arc tolerance applies"
        )


def _segment_distances(start, ends, points):
    """Distances from ``points`` (M, 2) to the segments ``start``-``ends[i]``: (N, M)."""
    d = ends - start
    rel = points[None, :, :] - start
    len2 = np.sum(d * d, axis=1)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.clip(np.sum(rel * d[:, None, :], axis=2) / len2, 0.0, 1.0)
    t = np.where(np.isfinite(t), t, 0.0)
    return np.sqrt(np.sum((rel - t[..., None] * d[:, None, :]) ** 2, axis=2))


def _sg_piece(vec):
    """Return the closed ``(ra, dec)`` of a result cycle, as spherical-geometry would.

    spherical-geometry builds each traced cycle into a
    ``SingleSphericalPolygon``: degenerate (dropped) when flat, reversed
    unless the vertex orientations sum to a positive value; its area (sum
    of the angles) must not be zero.
    """
    closed = np.vstack([vec, vec[:1]])
    ext = np.vstack([closed, closed[1]])
    orient = great_circle_arc.triple_product(ext[:-2] - ext[1:-1], ext[2:] - ext[1:-1], ext[1:-1])
    total = float(np.sum(orient))
    # The same orientations as spherical-geometry's, bit for bit (another
    # starting vertex or direction only permutes them or flips their signs).
    if np.max(np.abs(orient)) < _SG_FLAT:
        # spherical-geometry then calls it degenerate if the eigenvalue
        # ratio of the vertices' scatter matrix is below 1e-16; that ratio
        # depends on the starting vertex (counted twice): margin 100x.
        w = np.linalg.eigvalsh(closed.T @ closed)
        if w[2] < 100.0 * _SG_GREAT_CIRCLE or w[0] < 100.0 * _SG_GREAT_CIRCLE * w[2]:
            raise _sensitive("spherical-geometry could call the intersection degenerate (a sliver)")
    if total < 0.0:
        closed = closed[::-1]
        ext = np.vstack([closed, closed[1]])
    angles = great_circle_arc.angle(ext[:-2], ext[1:-1], ext[2:])
    n = len(angles)
    sg_area = float(np.sum(angles)) - (n - 2) * np.pi
    # the sum in another order differs by a few units in the last place
    if not sg_area > 8.0 * n * np.spacing(2.0 * np.pi * n):
        raise _sensitive("spherical-geometry's area of the intersection may be zero")
    ra, dec = vector_to_lonlat(closed[:, 0], closed[:, 1], closed[:, 2])
    return ra, dec


# -- the replay of spherical-geometry's graph: touching, collinear, shared edges -----
#
# Aligned mosaics put edges on (or within rounding of) each other's great
# circles, corners on edges and on each other: there the planar proof above
# fails. `_graph_replay` then runs spherical-geometry's own algorithm
# (``Graph.intersection``, and what ``SphericalPolygon.intersection`` does
# around it) on plain arrays: the same graph (nodes merged when closer than
# 2**-32, edges split at crossings and at nodes on them, self-loops where a
# crossing merges into an end of its arc, exterior edges and cut lines
# removed), built in the same order (its edge and node lists sorted by
# hashes of the coordinates, processed as it processes them), with the
# same decisions:
#
# * a decision is a sign or a comparison spherical-geometry computes in
#   quad-double precision (``math_util``), in effect exactly for its double
#   inputs: whether two arcs cross (the signs of four determinants), whether
#   a node lies on an arc (length excess below 1e-10), which side of a
#   polygon a point is on (crossings counted from its inside point). Each is
#   computed here in double precision with a rigorous error bound and, where
#   the bound cannot decide it (exactly or nearly degenerate configurations),
#   by spherical-geometry's own function on those arguments;
# * the new vertices (crossings) are computed by spherical-geometry's
#   ``intersection`` of the arcs its graph holds at that moment, normalised
#   as its graph does, so they are its vertices bit for bit;
# * the orientation, degeneracy, inside point and area sign of each traced
#   polygon are spherical-geometry's tests (``triple_product``, the
#   eigenvalue test), for every vertex its trace may start from.
#
# What remains are the decisions it takes from the iteration order of its
# sets of node and edge objects, which change from run to run. They are
# detected and the pair is refused (`PlanarGeometryError`): a point within
# 2**-32 of two nodes (it merges into either); two edges or nodes whose sort
# keys tie; a node with more than two edges, or a self-loop, left when the
# result is traced (which way the trace turns); a polygon whose orientation,
# degeneracy, area sign or inside point (the check that may invert the
# result) depends on the vertex the trace starts from. So is anything
# spherical-geometry would fail on (its graph checks).
#
# The replay follows spherical-geometry 1.4 (``graph.py``, ``polygon.py``,
# ``math_util.c``), against which the tests check it; with another version
# every pair the planar proof refuses is left to spherical-geometry.

_REPLAYED = "1.4."
_EPS = 2.0**-53
# ``math_util.intersects_point`` splits an arc AB at a node C when
# len(AC) + len(CB) - len(AB) < 1e-10 (its Python fallback says 3e-11).
_SG_ON_ARC = 1e-10


def _graph_replay(fp_a, fp_b):
    """Return spherical-geometry's ``fp_a.intersection(fp_b)`` as `exact_intersection` does.

    Raises `PlanarGeometryError` when spherical-geometry's result depends on
    the iteration order of its sets, or when it would fail.
    """
    if not spherical_geometry.__version__.startswith(_REPLAYED):
        raise _sensitive(
            f"the replay follows spherical-geometry {_REPLAYED}x, not "
            f"{spherical_geometry.__version__}"
        )
    _single_parts(fp_a, fp_b)  # one part each, or the reason
    polys = [_single_polygon(fp_a), _single_polygon(fp_b)]
    # SphericalPolygon.intersection: no result if either area is zero, or
    # if the polygons do not pass ``intersects_poly``.
    if any(_sg_area_is_zero(np.asarray(p._points, dtype=float), p) for p in polys):
        return 0.0, []
    if not _intersects_poly(*polys):
        return 0.0, []
    graph = _ReplayGraph(polys)
    graph.find_arc_to_arc_intersections()
    graph.find_point_to_arc_intersections()
    graph.remove_exterior_edges()
    graph.remove_cut_lines()
    cycles = graph.cycles()
    area = 0.0
    pieces = []
    for cycle in cycles:
        closed = _sg_polygon(graph.pts[cycle], polys if len(cycles) == 1 else None)
        if closed is None:
            continue  # degenerate from any start: spherical-geometry drops it
        area += _spherical_area(closed)
        pieces.append(vector_to_lonlat(closed[:, 0], closed[:, 1], closed[:, 2]))
    if not pieces:
        return 0.0, []
    if not area > 0.0:
        raise _sensitive("the area of a non-empty intersection rounds to zero")
    return area, pieces


def _single_polygon(fp):
    """Return the ``SingleSphericalPolygon`` of a one-part footprint."""
    if not hasattr(fp, "polygons") or not hasattr(fp.polygons[0], "_points"):
        raise _sensitive("a footprint is not a SphericalPolygon")
    poly = fp.polygons[0]
    if poly._degenerate or poly._inside is None or len(poly._points) < 4:
        raise _sensitive("a degenerate footprint")
    return poly


# -- spherical-geometry's predicates, decided in double precision when provable ---------


def _cross(a, b):
    """Cross products of the rows of ``a`` and ``b`` (broadcast)."""
    return np.stack(
        [
            a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1],
            a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
            a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0],
        ],
        axis=-1,
    )


def _bits_equal(a, b):
    """Whether rows are equal bit for bit (spherical-geometry's ``memcmp``)."""
    a, b = np.broadcast_arrays(np.ascontiguousarray(a), np.ascontiguousarray(b))
    return np.all(a.view(np.uint64) == b.view(np.uint64), axis=-1)


def _det_sign(p, c, d):
    """Sign of the determinant ``p . (c x d)``; 0 where double precision cannot tell.

    The vectors have components of at most 1 in magnitude. The determinant
    is computed as ``p . (c x (d - c))`` and, where that is not provably of
    the right sign, as ``(p - d) . ((c - d) x d)`` (small differences,
    computed to a relative ``2**-53``), with error bounds from the usual
    rounding-error analysis (with a margin of 2 or more).
    """
    p, c, d = np.broadcast_arrays(p, c, d)
    w = d - c
    n = _cross(c, w)
    val = np.sum(p * n, axis=-1)
    bound = 32.0 * _EPS * (np.sum(np.abs(w), axis=-1) + np.sum(np.abs(n), axis=-1))
    out = np.where(np.abs(val) > bound, np.sign(val), 0.0)
    unsure = out == 0.0
    if unsure.any():
        du = d[unsure]
        u = p[unsure] - du
        v = c[unsure] - du
        val = np.sum(u * _cross(v, du), axis=-1)
        bound = 32.0 * _EPS * np.sum(np.abs(u), axis=-1) * np.sum(np.abs(v), axis=-1)
        out[unsure] = np.where(np.abs(val) > bound, np.sign(val), 0.0)
    return out


def _crossing_verdict(s1, s2, s3, s4):
    """True/False/None (undecided) from the four signs of spherical-geometry's test.

    ``math_util.intersection`` of arcs AB and CD computes, exactly for its
    inputs, ``T = (A x B) x (C x D)`` and the signs of ``((A x B) x A) . T``,
    ``(B x (A x B)) . T``, ``((C x D) x C) . T`` and ``(D x (C x D)) . T``,
    which are those of ``det(A, C, D)``, ``-det(B, C, D)``, ``-det(C, A, B)``
    and ``det(D, A, B)``: the arcs cross when the four agree. A sign 0 (a
    determinant too small to tell, or exactly zero, when the qd arithmetic
    may go either way) leaves the verdict open unless the others disagree.
    """
    known = [s for s in (s1, s2, s3, s4) if s != 0.0]
    if known and (min(known) < 0.0 < max(known)):
        return False
    if len(known) < 4:
        return None
    return True


def _crosses(a, b, c, d):
    """spherical-geometry's ``great_circle_arc.intersects(a, b, c, d)``, decided fast."""
    a, b, c, d = np.broadcast_arrays(a, b, c, d)
    never = np.any(_bits_equal(np.stack([a, a, b, b, a, c]), np.stack([c, d, c, d, b, d])), axis=0)
    s = _det_sign(np.stack([a, b, c, d]), np.stack([c, c, a, a]), np.stack([d, d, b, b]))
    s[1:3] *= -1.0
    known = s != 0.0
    agree = np.all(~known | (s > 0.0), axis=0) | np.all(~known | (s < 0.0), axis=0)
    out = ~never & agree & np.all(known, axis=0)
    unsure = ~never & agree & ~np.all(known, axis=0)
    if unsure.any():
        out[unsure] = great_circle_arc.intersects(a[unsure], b[unsure], c[unsure], d[unsure])
    return out


def _angle_between(x, y):
    """Angle (radians) between vectors, accurate to a few ``2**-53`` relative."""
    cr = _cross(x, y - x)
    return np.arctan2(np.sqrt(np.sum(cr * cr, axis=-1)), np.sum(x * y, axis=-1))


def _on_arc(a, b, c):
    """spherical-geometry's ``great_circle_arc.intersects_point(a, b, c)``, decided fast.

    It compares ``len(a, c) + len(c, b) - len(a, b)`` (quad-double) with
    1e-10; the lengths here are accurate to ``16 * 2**-53`` of their sum.
    """
    a, b, c = np.broadcast_arrays(a, b, c)
    lab, lac, lcb = _angle_between(a, b), _angle_between(a, c), _angle_between(c, b)
    excess = np.abs(lac + lcb - lab)
    out = excess < _SG_ON_ARC
    unsure = np.abs(excess - _SG_ON_ARC) <= 16.0 * _EPS * (lab + lac + lcb)
    if unsure.any():
        out[unsure] = great_circle_arc.intersects_point(a[unsure], b[unsure], c[unsure])
    return out


def _contains(poly, points):
    """``poly.contains_point`` of each row of ``points`` (spherical-geometry's test)."""
    pts = np.asarray(poly._points, dtype=float)
    r = np.asarray(poly._inside, dtype=float)
    points = np.atleast_2d(points)
    crossings = _crosses(pts[None, :-1], pts[None, 1:], r, points[:, None, :])
    return (np.sum(crossings, axis=-1) % 2 == 0) | np.all(points == r, axis=-1)


def _intersects_poly(poly_a, poly_b):
    """spherical-geometry's ``poly_a.intersects_poly(poly_b)``."""
    pa = np.asarray(poly_a._points, dtype=float)
    pb = np.asarray(poly_b._points, dtype=float)
    if _contains(poly_a, pb).any() or _contains(poly_b, pa).any():
        return True
    return bool(np.any(_crosses(pa[:-1, None], pa[1:, None], pb[None, :-1], pb[None, 1:])))


def _sg_area_bound(n):
    """Bound on the rounding of spherical-geometry's area of an ``n``-gon.

    Its area is the sum of the ``n`` angles (each the double nearest to
    the quad-double angle, below ``2 pi``), summed in double, minus
    ``(n - 2) * np.pi``.
    """
    big = max(n, 4) * np.pi
    return n * (np.spacing(2.0 * np.pi) + np.spacing(big)) + 2.0 * np.spacing(big)


def _sg_area_is_zero(points, poly):
    """Whether spherical-geometry's ``area()`` of a footprint is exactly 0."""
    try:
        area = _spherical_area(points)
    except PlanarGeometryError:
        area = 0.0
    if area > 4.0 * _sg_area_bound(len(points) - 1):
        return False
    return poly.area() == 0.0


class _ReplayGraph:
    """spherical-geometry's ``Graph`` of two polygons, on arrays.

    Nodes are indices into ``pts`` (normalised unit vectors), with the
    polygons they come from (``src``: bit 1 for the first, 2 for the
    second) and their edges (``adj``; a self-loop counts once, as in the
    node's ``WeakSet``). Edges are ``[node0, node1, src]`` by id (never
    reused), the nodes in the order spherical-geometry stores them.
    ``side`` caches the sign of ``det(node, edge)`` (`_det_sign`) and ``on``
    whether a node is on an edge (`_on_arc`).
    """

    def __init__(self, polys):
        self.polys = polys
        n = sum(len(p._points) for p in polys)
        self.pts = np.empty((2 * n + 16, 3))
        self.n = 0
        self.src = []
        self.adj = []
        self.alive = []
        self.keys = []
        self.edges = {}
        self.ends = {}
        self.next_edge = 0
        self.side = {}
        self.on = {}
        self.splitting = False  # no node may go while edges are split
        for bit, poly in ((1, polys[0]), (2, polys[1])):
            self._add_polygon(np.asarray(poly._points, dtype=float), bit)

    # -- Graph's primitive operations ------------------------------------------

    def _add_polygon(self, points, bit):
        normalised = _normalize(points[:-1])
        start = node_a = self.add_node(normalised[0], bit)
        for point in normalised[1:]:
            node_b = self.add_node(point, bit)
            if node_b != node_a:
                self.add_edge(node_a, node_b, bit)
                node_a = node_b
        self.add_edge(node_a, start, bit)

    def add_node(self, point, src):
        """Merge into the node within 2**-32 in every component, or add a node."""
        if self.n:
            close = np.all(np.abs(point - self.pts[: self.n]) < _MERGE, axis=-1)
            hits = np.flatnonzero(close & np.asarray(self.alive))
            if hits.size > 1:
                raise _sensitive(
                    "a point is within 2**-32 of two nodes (spherical-geometry merges it "
                    "into either, by set order)"
                )
            if hits.size:
                k = int(hits[0])
                self.src[k] |= src
                return k
        if self.n == len(self.pts):
            self.pts = np.vstack([self.pts, np.empty_like(self.pts)])
        self.pts[self.n] = point
        self.src.append(src)
        self.adj.append(set())
        self.alive.append(True)
        self.keys.append(hash(tuple(self.pts[self.n])))
        self.n += 1
        return self.n - 1

    def add_edge(self, a, b, src):
        key = (a, b) if a <= b else (b, a)
        e = self.ends.get(key)
        if e is not None:
            self.edges[e][2] |= src
            return e
        e = self.next_edge
        self.next_edge += 1
        self.edges[e] = [a, b, src]
        self.ends[key] = e
        self.adj[a].add(e)
        self.adj[b].add(e)
        return e

    def _forget_edge(self, e):
        a, b, _ = self.edges.pop(e)
        del self.ends[(a, b) if a <= b else (b, a)]

    def remove_edge(self, e):
        a, b, _ = self.edges[e]
        self._forget_edge(e)
        self.adj[a].discard(e)
        if not self.adj[a]:
            self.remove_node(a)
        if a != b:
            self.adj[b].discard(e)
            if not self.adj[b]:
                self.remove_node(b)

    def remove_node(self, v):
        if self.splitting:
            raise _sensitive("a node lost its edges while spherical-geometry splits them")
        for e in list(self.adj[v]):
            if e not in self.edges:
                continue
            a, b, _ = self.edges[e]
            other = b if a == v else a
            self.adj[other].discard(e)
            if not self.adj[other]:
                self.alive[other] = False
            self._forget_edge(e)
        self.adj[v] = set()
        self.alive[v] = False

    def split_edge(self, e, v):
        a, b, src = self.edges[e]
        edge_a = self.add_edge(a, v, src)
        edge_b = self.add_edge(v, b, src)
        if e not in (edge_a, edge_b):
            self.remove_edge(e)
        return edge_a, edge_b

    def _sorted_edges(self):
        keyed = sorted((self.keys[a] + self.keys[b], e) for e, (a, b, _) in self.edges.items())
        if len({k for k, _ in keyed}) != len(keyed):
            raise _sensitive("two edges tie in spherical-geometry's edge order")
        return [e for _, e in keyed]

    def _alive_nodes(self):
        return [v for v in range(self.n) if self.alive[v]]

    def _check_degrees(self, even=False):
        for v in self._alive_nodes():
            if len(self.adj[v]) < 2 or (even and len(self.adj[v]) % 2):
                raise _sensitive("spherical-geometry's graph check fails (a malformed polygon)")

    def _cache_sides(self, nodes, edges):
        """Compute the missing ``side[(node, edge)]`` for all the nodes and edges."""
        pairs = [(v, e) for e in edges for v in nodes if (v, e) not in self.side]
        if pairs:
            ends = np.array([self.edges[e][:2] for _, e in pairs])
            nodes = [v for v, _ in pairs]
            signs = _det_sign(self.pts[nodes], self.pts[ends[:, 0]], self.pts[ends[:, 1]])
            self.side.update(zip(pairs, signs.tolist(), strict=True))

    def _cache_on(self, edges, nodes):
        """Compute the missing ``on[(edge, node)]`` for all the edges and nodes."""
        pairs = [(e, v) for e in edges for v in nodes if (e, v) not in self.on]
        if pairs:
            ends = np.array([self.edges[e][:2] for e, _ in pairs])
            nodes = [v for _, v in pairs]
            found = _on_arc(self.pts[ends[:, 0]], self.pts[ends[:, 1]], self.pts[nodes])
            self.on.update(zip(pairs, found.tolist(), strict=True))

    # -- Graph.intersection --------------------------------------------------------

    def _first_crossing(self, ab, todo):
        """``math_util.intersection`` of edge ``ab`` with the first edge it crosses."""
        a, b, _ = self.edges[ab]
        if a == b:
            return None
        side = self.side
        for j, cd in enumerate(todo):
            c, d, _ = self.edges[cd]
            if c == d or c in (a, b) or d in (a, b):
                continue  # shared end points (nodes are never equal bit for bit)
            verdict = _crossing_verdict(
                side[(a, cd)], -side[(b, cd)], -side[(c, ab)], side[(d, ab)]
            )
            if verdict is False:
                continue
            with np.errstate(invalid="ignore"):
                point = great_circle_arc.intersection(
                    self.pts[a], self.pts[b], self.pts[c], self.pts[d]
                )
            if np.all(np.isfinite(point)):
                return j, point
            if verdict:
                raise _sensitive("spherical-geometry's arithmetic finds no crossing")
        return None

    def find_arc_to_arc_intersections(self):
        """``Graph._find_arc_to_arc_intersections``."""
        self.splitting = True
        todo = self._sorted_edges()
        self._cache_sides(self._alive_nodes(), todo)
        while len(todo) > 1:
            ab = todo.pop(0)
            found = self._first_crossing(ab, todo)
            if found is None:
                continue
            j, point = found
            cd = todo[j]
            first_new = self.next_edge
            node = self.add_node(_normalize(point[None])[0], self.edges[ab][2] | self.edges[cd][2])
            new = (*self.split_edge(ab, node), *self.split_edge(cd, node))
            new = [e for e in new if e not in todo]
            todo = todo[:j] + todo[j + 1 :] + new
            alive_edges = list(self.edges)
            self._cache_sides(self._alive_nodes(), [e for e in alive_edges if e >= first_new])
            self._cache_sides([node], alive_edges)
        self.splitting = False

    def find_point_to_arc_intersections(self):
        """``Graph._find_point_to_arc_intersections``, then its graph check."""
        self.splitting = True
        todo = self._sorted_edges()
        nodes = sorted(self._alive_nodes(), key=lambda v: self.keys[v])
        if len({self.keys[v] for v in nodes}) != len(nodes):
            raise _sensitive("two nodes tie in spherical-geometry's node order")
        self._cache_on(todo, nodes)
        while len(todo) > 1:
            ab = todo.pop(0)
            a, b, _ = self.edges[ab]
            for node in nodes:
                if node in (a, b) or not self.on[(ab, node)]:
                    continue
                new = [e for e in self.split_edge(ab, node) if e not in todo]
                self.src[node] |= self.src[a] | self.src[b]
                todo = todo + new
                self._cache_on(new, nodes)
                break
        self.splitting = False
        self._check_degrees()

    def remove_exterior_edges(self):
        """``Graph._remove_exterior_edges``: keep the edges inside both polygons."""
        count = dict.fromkeys(self.edges, 0)
        src = np.array(self.src)
        for bit, poly in ((1, self.polys[0]), (2, self.polys[1])):
            inside = [e for e, (_, _, s) in self.edges.items() if s & bit]
            rest = [e for e, (_, _, s) in self.edges.items() if not s & bit]
            if rest:
                ends = np.array([self.edges[e][:2] for e in rest])
                a, b = self.pts[ends[:, 0]], self.pts[ends[:, 1]]
                mids = great_circle_arc.midpoint(a, b)
                own = (src[ends] & bit) > 0
                # contains_point only where spherical-geometry calls it
                test = np.vstack([a[~own[:, 0]], b[~own[:, 1]], mids])
                found = _contains(poly, test) if len(test) else np.zeros(0, bool)
                ok_a = own[:, 0].copy()
                ok_a[~own[:, 0]] = found[: np.count_nonzero(~own[:, 0])]
                found = found[np.count_nonzero(~own[:, 0]) :]
                ok_b = own[:, 1].copy()
                ok_b[~own[:, 1]] = found[: np.count_nonzero(~own[:, 1])]
                ok_mid = found[np.count_nonzero(~own[:, 1]) :]
                inside.extend(e for e, ok in zip(rest, ok_a & ok_b & ok_mid, strict=True) if ok)
            for e in inside:
                count[e] += 1
        for e, c in count.items():
            if c < 2 and e in self.edges:
                self.remove_edge(e)
        self._remove_orphans()
        self._check_degrees()

    def _remove_orphans(self):
        while True:
            orphans = [v for v in self._alive_nodes() if len(self.adj[v]) < 2]
            if not orphans:
                return
            for v in orphans:
                if self.alive[v]:
                    self.remove_node(v)

    def remove_cut_lines(self):
        """``Graph._remove_cut_lines``, then the orphans, with spherical-geometry's checks."""
        cut = [
            e for e, (a, b, _) in self.edges.items() if len(self.adj[a]) == 3 == len(self.adj[b])
        ]
        for e in cut:
            if e in self.edges:
                self.remove_edge(e)
        self._check_degrees()
        self._remove_orphans()
        self._check_degrees(even=True)

    def cycles(self):
        """Return the node cycles ``_trace`` follows; raise if it has to choose its way."""
        if any(len(self.adj[v]) != 2 for v in self._alive_nodes()):
            raise _sensitive(
                "a node of the intersection has more than two edges (spherical-geometry's "
                "trace depends on set order)"
            )
        if any(a == b for a, b, _ in self.edges.values()):
            raise _sensitive("a self-loop is left in the intersection")
        seen = set()
        out = []
        for start in self._alive_nodes():
            if start in seen:
                continue
            cycle = [start]
            seen.add(start)
            prev, node = None, start
            while True:
                e1, e2 = self.adj[node]
                e = e1 if e1 != prev else e2
                a, b, _ = self.edges[e]
                nxt = b if a == node else a
                if nxt == start:
                    break
                cycle.append(nxt)
                seen.add(nxt)
                prev, node = e, nxt
            out.append(np.array(cycle))
        return out


def _sg_polygon(vec, sources):
    """Return the closed polygon spherical-geometry builds from a traced cycle, or None.

    ``vec`` are the cycle's vertices in either direction. spherical-geometry
    starts the trace at any vertex, in either direction, then builds a
    ``SingleSphericalPolygon``: degenerate (dropped: None) if flat, reversed
    if not "clockwise", with an inside point that ``Graph.intersection``
    checks against both ``sources`` when the result is a single polygon
    (inverting it if outside); its area must not be zero. Every start is
    considered; the outcome must not depend on it. Returns the closed
    clockwise vertex array.
    """
    n = len(vec)
    outcomes = set()
    insides = []
    clockwise_cycle = None
    for forward, direction in ((True, vec), (False, vec[::-1])):
        closed = np.vstack([direction, direction[:1]])
        ext = np.vstack([closed, closed[1]])
        orient = great_circle_arc.triple_product(
            ext[:-2] - ext[1:-1], ext[2:] - ext[1:-1], ext[1:-1]
        )
        # the trace starting at vertex s has the orientations np.roll(orient, -s)
        starts = _start_variants(orient)
        degenerate = np.zeros(n, dtype=bool)
        if np.max(np.abs(orient)) < _SG_FLAT:
            degenerate = _degenerate_starts(direction)
        for s in range(n):
            clockwise = starts.get(s, starts.get(0))
            if degenerate[s]:
                outcomes.add("degenerate")
                continue
            outcomes.add((forward, clockwise))
            if clockwise and clockwise_cycle is None:
                clockwise_cycle = np.roll(direction, -s, axis=0)
        if degenerate.all():
            continue
        if sources is not None:
            if n > 3:
                # the inside point: the midpoint of the neighbours of the first
                # vertex (from the start) of largest orientation
                mids = great_circle_arc.midpoint(ext[:-2], ext[2:])
                for clockwise in set(starts.values()):
                    orient2 = orient if clockwise else -1.0 * orient
                    best = np.flatnonzero(orient2 == orient2.max())
                    insides.extend(mids[best])
            else:
                for s in range(n):
                    traced = np.vstack([np.roll(direction, -s, axis=0), direction[s : s + 1]])
                    insides.append(normalize_vector(traced.mean(axis=0)))
    if outcomes == {"degenerate"}:
        return None
    if outcomes not in ({(True, True), (False, False)}, {(True, False), (False, True)}):
        raise _sensitive(
            "whether spherical-geometry calls the intersection degenerate, or how it orients "
            "it, depends on the vertex its trace starts from"
        )
    closed = np.vstack([clockwise_cycle, clockwise_cycle[:1]])
    if not _sg_area_positive(closed):
        raise _sensitive("spherical-geometry's area of the intersection may be zero")
    if sources is not None:
        insides = np.array(insides)
        if not (_contains(sources[0], insides) & _contains(sources[1], insides)).all():
            raise _sensitive(
                "the inside point spherical-geometry picks for the intersection may lie "
                "outside a footprint (it would return the complement)"
            )
    return closed


def _start_variants(orient):
    """``{start: np.sum(np.roll(orient, -start)) > 0}``, the "clockwise" test of each start.

    When the sum is far from zero compared with its rounding, one start
    stands for all.
    """
    total = float(np.sum(orient))
    if abs(total) > 4.0 * len(orient) * _EPS * float(np.sum(np.abs(orient))):
        return {0: total > 0.0}
    return {s: bool(np.sum(np.roll(orient, -s)) > 0.0) for s in range(len(orient))}


def _degenerate_starts(direction):
    """spherical-geometry's great-circle test of the closed trace from each start.

    ``_is_on_great_circle`` of the closed vertex list (its first vertex
    counted twice). That matrix is at least the one of the open list
    (plus a positive term), whose smallest eigenvalue, when well above the
    threshold and the rounding, settles every start at once.
    """
    n = len(direction)
    w = np.linalg.eigvalsh(direction.T @ direction)
    rounding = 8.0 * (n + 1) * (n + 1) * _EPS
    if w[0] > _SG_GREAT_CIRCLE * (w[2] + 1.0) + 2.0 * rounding:
        return np.zeros(n, dtype=bool)
    return np.array(
        [
            _on_great_circle(np.vstack([np.roll(direction, -s, axis=0), direction[s : s + 1]]))
            for s in range(n)
        ]
    )


def _sg_area_positive(closed):
    """Whether spherical-geometry's area of the clockwise polygon is > 0 from every start."""
    n = len(closed) - 1
    if _spherical_area(closed) > 2.0 * _sg_area_bound(n):
        return True
    ext = np.vstack([closed, closed[1]])
    angles = great_circle_arc.angle(ext[:-2], ext[1:-1], ext[2:])
    return all(np.sum(np.roll(angles, -s)) - (n - 2) * np.pi > 0.0 for s in range(n))


def _on_great_circle(points):
    """spherical-geometry's ``SingleSphericalPolygon._is_on_great_circle(points, 1e-16)``."""
    w = np.linalg.eigvalsh(points.T @ points)
    return bool(w[2] < _SG_GREAT_CIRCLE or w[0] < _SG_GREAT_CIRCLE * w[2])


def _spherical_area(closed):
    """Exact area (sr) of a closed spherical polygon, in its own tangent plane."""
    verts = closed[:-1]
    tangent = verts.sum(axis=0)
    norm = np.sqrt(tangent @ tangent)
    if not norm > 0.0:
        raise _sensitive("a polygon's vertices have no mean direction")
    tangent = tangent / norm
    if (verts @ tangent).min() <= _MIN_COS:
        raise _sensitive("a polygon does not fit in one tangent plane")
    basis = _basis(tangent)
    xy = (closed @ basis[1:].T) / (closed @ tangent)[:, None]
    return _solid_angle(xy)
