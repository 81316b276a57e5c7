"""Which images overlap on the sky, and where, in each image's pixels."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree
from spherical_geometry.polygon import MalformedPolygonError

from ._raster import fill_polygon
from .exceptions import GeometryError

__all__ = [
    "OverlapRegion",
    "PairOverlap",
    "candidate_pairs",
    "intersect_pairs",
    "overlap_regions",
    "region_mask",
]

log = logging.getLogger(__name__)

# Margin (radians) added to cap radii when looking for candidate pairs.
_CAP_MARGIN = 1e-9


def candidate_pairs(caps, groups):
    """Pairs of images, in different groups, whose bounding caps touch.

    Uses a k-d tree on the cap centres, so the cost grows with the number
    of neighbours rather than with all pairs.

    Parameters
    ----------
    caps : list of Cap
        Bounding cap of each image.
    groups : sequence of int
        Group label of each image; pairs within a group are not returned.

    Returns
    -------
    list of tuple of int
        Sorted pairs ``(i, j)`` with ``i < j``.
    """
    n = len(caps)
    if n < 2:
        return []
    centres = np.array([c.centre for c in caps])
    radii = np.array([c.radius for c in caps])
    tree = cKDTree(centres)
    rmax = radii.max()
    pairs = set()
    for i in range(n):
        reach = min(np.pi, radii[i] + rmax + _CAP_MARGIN)
        chord = 2.0 * np.sin(reach / 2.0)
        for j in tree.query_ball_point(centres[i], chord + 1e-12):
            if j <= i or groups[i] == groups[j]:
                continue
            ang = np.arccos(np.clip(centres[i] @ centres[j], -1.0, 1.0))
            if ang <= radii[i] + radii[j] + _CAP_MARGIN:
                pairs.add((i, j))
    return sorted(pairs)


@dataclass
class OverlapRegion:
    """The part of one image that overlaps another group of images.

    Attributes
    ----------
    area : float
        Total spherical area (sr) of the intersections (0: no overlap).
    polygons : list of tuple of ndarray
        Closed polygons ``(x, y)`` in the image's pixel coordinates.
    """

    area: float = 0.0
    polygons: list = field(default_factory=list)


@dataclass
class PairOverlap:
    """Intersection of two footprints, as each of the two images uses it.

    ``first`` is what image ``i`` of the pair ``(i, j)`` uses, ``second``
    what image ``j`` uses: ``(area, pieces)`` with the spherical area (sr)
    and the closed ``(ra, dec)`` polygons of at least 4 vertices. They are
    the same object unless an intersection failed (see `intersect_pairs`).
    """

    first: tuple
    second: tuple
    failed: tuple = ()


def _intersection(fp_a, fp_b):
    inter = fp_a.intersection(fp_b)
    area = abs(inter.area())
    if area == 0.0:
        return 0.0, []
    pieces = [(np.asarray(ra), np.asarray(dec)) for ra, dec in inter.to_radec() if len(ra) >= 4]
    return area, pieces


def _whole(fp):
    return abs(fp.area()), [(np.asarray(ra), np.asarray(dec)) for ra, dec in fp.to_radec()]


def _intersect_pair(fp_i, fp_j):
    """One spherical intersection serves both images.

    jwst intersects ``i`` with ``j`` for image ``i`` and ``j`` with ``i``
    for image ``j``; the two polygons select the same pixels (checked in
    the parity tests), so one is computed. When it fails, jwst's fallback
    is followed for each image: ``j`` tries its own order, and an image
    whose intersection fails uses its whole footprint.
    """
    try:
        both = _intersection(fp_i, fp_j)
    except MalformedPolygonError:
        pass
    else:
        return PairOverlap(both, both)
    first = _whole(fp_i)
    try:
        second = _intersection(fp_j, fp_i)
        failed = ("i",)
    except MalformedPolygonError:
        second = _whole(fp_j)
        failed = ("i", "j")
    return PairOverlap(first, second, failed)


_WORKER_FOOTPRINTS = None


def _init_worker(footprints):
    global _WORKER_FOOTPRINTS
    _WORKER_FOOTPRINTS = footprints


def _intersect_chunk(pairs):
    fps = _WORKER_FOOTPRINTS
    return [_intersect_pair(fps[i], fps[j]) for i, j in pairs]


def intersect_pairs(pairs, footprints, names, *, workers=1):
    """Intersect the footprints of each candidate pair, once per pair.

    Parameters
    ----------
    pairs : list of tuple of int
        Candidate pairs ``(i, j)``.
    footprints : list of SphericalPolygon
        Footprints of all images.
    names : sequence of str
        Image names, for warnings.
    workers : int, optional
        Processes to spread the intersections over (spherical-geometry is
        pure Python, so threads would not help).

    Returns
    -------
    dict
        ``{(i, j): PairOverlap}``.
    """
    if workers > 1 and len(pairs) >= 4 * workers:
        from concurrent.futures import ProcessPoolExecutor

        size = max(1, len(pairs) // (4 * workers))
        chunks = [pairs[k : k + size] for k in range(0, len(pairs), size)]
        with ProcessPoolExecutor(
            max_workers=workers, initializer=_init_worker, initargs=(footprints,)
        ) as pool:
            results = [r for chunk in pool.map(_intersect_chunk, chunks) for r in chunk]
    else:
        results = [_intersect_pair(footprints[i], footprints[j]) for i, j in pairs]
    out = {}
    for (i, j), result in zip(pairs, results, strict=True):
        for who in result.failed:
            own, other = (i, j) if who == "i" else (j, i)
            # jwst falls back to the whole image; keep its result but say so.
            log.warning(
                "Intersection of the footprints of %s and %s failed; using the whole "
                "footprint of %s as the overlap, as jwst does.",
                names[own],
                names[other],
                names[own],
            )
        out[(i, j)] = result
    return out


def overlap_regions(index, neighbours, pair_overlaps, inverse, groups):
    """Overlap polygons of image ``index`` with each neighbouring group.

    Parameters
    ----------
    index : int
        The image.
    neighbours : iterable of int
        Images (in other groups) whose caps touch this image's cap.
    pair_overlaps : dict
        Result of `intersect_pairs`.
    inverse : callable
        ``inverse(ra, dec) -> (x, y)`` of image ``index``.
    groups : sequence of int
        Group label of every image.

    Returns
    -------
    dict
        ``{group label: OverlapRegion}`` for every neighbouring group, with
        the polygons in this image's pixel coordinates.
    """
    regions = {}
    for j in neighbours:
        if index < j:
            area, pieces = pair_overlaps[(index, j)].first
        else:
            area, pieces = pair_overlaps[(j, index)].second
        region = regions.setdefault(groups[j], OverlapRegion())
        if area == 0.0:
            continue
        region.area += area
        for ra, dec in pieces:
            x, y = inverse(ra, dec)
            region.polygons.append((np.asarray(x, float), np.asarray(y, float)))
    return regions


def region_mask(polygons, shape, name=""):
    """Union of the pixels inside ``polygons``, as a mask on its bounding box.

    Parameters
    ----------
    polygons : list of tuple of ndarray
        Polygons ``(x, y)`` in pixel coordinates.
    shape : tuple of int
        Image shape.
    name : str, optional
        Image name for warnings.

    Returns
    -------
    slices : tuple of slice or None
        Where the mask sits in the image; `None` when no pixel is selected.
    mask : ndarray of bool or None
    """
    parts = []
    for x, y in polygons:
        try:
            origin, m = fill_polygon(x, y, shape)
        except GeometryError as err:
            log.warning("Skipping an overlap polygon of %s: %s", name, err)
            continue
        if m.size:
            parts.append((origin, m))
    if not parts:
        return None, None
    r0 = min(o[0] for o, _ in parts)
    c0 = min(o[1] for o, _ in parts)
    r1 = max(o[0] + m.shape[0] for o, m in parts)
    c1 = max(o[1] + m.shape[1] for o, m in parts)
    if len(parts) == 1:
        return (slice(r0, r1), slice(c0, c1)), parts[0][1]
    mask = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    for (r, c), m in parts:
        mask[r - r0 : r - r0 + m.shape[0], c - c0 : c - c0 + m.shape[1]] |= m
    return (slice(r0, r1), slice(c0, c1)), mask
