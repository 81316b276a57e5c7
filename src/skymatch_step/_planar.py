"""Exact footprint intersections in a tangent plane common to the pair.

A great-circle arc shorter than a half circle is a straight segment in a
gnomonic (tangent-plane) projection, whatever the tangent point, as long as
the arc lies in the open hemisphere around that point. Two footprints whose
vertices all lie in such a hemisphere are therefore intersected *exactly*
as planar polygons in that plane (by GEOS, through shapely, in
microseconds), and the vertices of the result are projected back to the
sphere. spherical-geometry, which intersects the same polygons arc by arc
in pure Python, takes tens of milliseconds per pair.

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

import numpy as np
import shapely
from spherical_geometry import great_circle_arc
from spherical_geometry.vector import lonlat_to_vector, normalize_vector, vector_to_lonlat

from .exceptions import GeometryError

__all__ = ["PlanarGeometryError", "intersect_footprints"]

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
