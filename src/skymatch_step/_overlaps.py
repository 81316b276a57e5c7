"""Which images overlap on the sky, and where, in each image's pixels."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from spherical_geometry.polygon import MalformedPolygonError

from ._footprints import bounding_cap
from ._planar import PlanarGeometryError, exact_intersection
from ._raster import fill_polygon
from .exceptions import GeometryError

__all__ = [
    "CapIndex",
    "OverlapFinder",
    "OverlapRegion",
    "PairOverlap",
    "candidate_pairs",
    "intersect_footprints",
    "intersect_pair",
    "intersect_task",
    "overlap_regions",
    "region_mask",
]

log = logging.getLogger(__name__)

# Margin (radians) added to cap radii when looking for candidate pairs.
_CAP_MARGIN = 1e-9


class CapIndex:
    """Bounding caps filed in a grid of cells over their centre unit vectors.

    Adding a cap returns the earlier caps it touches. A query looks only
    at the grid cells within reach of the new cap, so the cost grows with
    the number of neighbours, not with the number of caps.
    """

    def __init__(self):
        self._centres = []
        self._radii = []
        self._cells = {}
        self._cell = None
        self._rmax = 0.0

    def __len__(self):
        return len(self._centres)

    def add(self, cap):
        """File ``cap`` and return the earlier caps that touch it.

        Parameters
        ----------
        cap : Cap

        Returns
        -------
        list of int
            Indices (order of addition) of the touching caps, ascending.
        """
        if self._cell is None:
            # Cells about one cap across: neighbours lie a few cells away.
            self._cell = max(2.0 * np.sin(min(cap.radius, np.pi / 2)), 1e-6)
        touching = []
        if self._centres:
            candidates = self._nearby(cap)
            if candidates.size:
                centres = np.asarray(self._centres)[candidates]
                radii = np.asarray(self._radii)[candidates]
                ang = np.arccos(np.clip(centres @ cap.centre, -1.0, 1.0))
                touching = np.sort(candidates[ang <= radii + cap.radius + _CAP_MARGIN]).tolist()
        index = len(self._centres)
        self._centres.append(np.asarray(cap.centre, dtype=float))
        self._radii.append(float(cap.radius))
        self._rmax = max(self._rmax, float(cap.radius))
        self._cells.setdefault(self._key(cap.centre), []).append(index)
        return touching

    def _key(self, v):
        return tuple(int(np.floor(c / self._cell)) for c in v)

    def _nearby(self, cap):
        reach = min(np.pi, cap.radius + self._rmax + _CAP_MARGIN)
        chord = 2.0 * np.sin(reach / 2.0) + 1e-12
        lo = self._key(cap.centre - chord)
        hi = self._key(cap.centre + chord)
        ncells = np.prod([b - a + 1 for a, b in zip(lo, hi, strict=True)], dtype=float)
        if ncells > len(self._centres):
            # A cap wider than the layout: checking every cap is cheaper.
            return np.arange(len(self._centres))
        found = []
        for a in range(lo[0], hi[0] + 1):
            for b in range(lo[1], hi[1] + 1):
                for c in range(lo[2], hi[2] + 1):
                    found.extend(self._cells.get((a, b, c), ()))
        return np.asarray(found, dtype=int)


def candidate_pairs(caps, groups):
    """Pairs of images, in different groups, whose bounding caps touch.

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
    index = CapIndex()
    pairs = []
    for j, cap in enumerate(caps):
        pairs.extend((i, j) for i in index.add(cap) if groups[i] != groups[j])
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
    the same object unless an intersection failed (see `intersect_pair`).
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


def intersect_pair(fp_i, fp_j):
    """Intersect two footprints as the engine does; one intersection serves both images.

    jwst intersects ``i`` with ``j`` for image ``i`` and ``j`` with ``i``
    for image ``j``; the two polygons select the same pixels (checked in
    the parity tests), so one is computed. It is computed by
    `exact_intersection` (6 to 10 times faster than spherical-geometry)
    whenever that provably gives spherical-geometry's vertices bit for
    bit, hence its pixels: in a tangent plane, or, for the degenerate
    configurations of aligned mosaics (shared, collinear or nearly
    parallel edges, corners on edges or on corners, one-pixel overlaps),
    by replaying spherical-geometry's graph with its own arithmetic. The
    few pairs whose result depends on the iteration order of
    spherical-geometry's sets, or on which it fails, go to
    spherical-geometry itself. When spherical-geometry fails, jwst's
    fallback is followed for each image: ``j`` tries its own order, and an
    image whose intersection fails uses its whole footprint.
    """
    try:
        both = exact_intersection(fp_i, fp_j)
    except PlanarGeometryError as err:
        log.debug("Footprint intersection by spherical-geometry: %s.", err)
    else:
        return PairOverlap(both, both)
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


class OverlapFinder:
    """Candidate pairs of overlapping footprints, found as the images arrive.

    Each footprint added is checked against the earlier ones' bounding
    caps (`CapIndex`); every candidate pair in different groups becomes one
    intersection task (`intersect_task`), to run on any runner. The tasks'
    results, in the order the tasks were made, give `overlaps`.
    """

    def __init__(self):
        self._index = CapIndex()
        self._footprints = []
        self._groups = []
        self._pairs = []

    def add(self, footprint, group):
        """Add the next image's footprint; return its intersection tasks.

        Parameters
        ----------
        footprint : SphericalPolygon
        group : hashable
            Sky group; images of one group are not intersected.

        Returns
        -------
        list of tuple
            ``(footprint_i, footprint_j)`` of each new candidate pair.
        """
        j = len(self._footprints)
        self._footprints.append(footprint)
        self._groups.append(group)
        tasks = []
        for i in self._index.add(bounding_cap(footprint)):
            if self._groups[i] != group:
                self._pairs.append((i, j))
                tasks.append((self._footprints[i], footprint))
        return tasks

    def overlaps(self, results, names):
        """Pair the tasks' results with their pairs; warn where jwst's fallback was used.

        Parameters
        ----------
        results : sequence of PairOverlap
            ``intersect_task`` of every task, in the order they were made.
        names : sequence of str
            Image names, for warnings.

        Returns
        -------
        pairs : list of tuple of int
            The candidate pairs ``(i, j)``, ``i < j``, sorted.
        overlaps : dict
            ``{(i, j): PairOverlap}``.
        """
        found = dict(zip(self._pairs, results, strict=True))
        pairs = sorted(found)
        for i, j in pairs:
            for who in found[(i, j)].failed:
                own, other = (i, j) if who == "i" else (j, i)
                # jwst falls back to the whole image; keep its result but say so.
                log.warning(
                    "Intersection of the footprints of %s and %s failed; using the whole "
                    "footprint of %s as the overlap, as jwst does.",
                    names[own],
                    names[other],
                    names[own],
                )
        return pairs, {pair: found[pair] for pair in pairs}


def intersect_task(task):
    """`intersect_pair` of a task ``(footprint_i, footprint_j)`` (for runners)."""
    return intersect_pair(*task)


def intersect_footprints(footprints, groups, names=None, runner=None):
    """Intersect every overlapping pair of footprints in different groups.

    Parameters
    ----------
    footprints : sequence of SphericalPolygon
    groups : sequence of hashable
        Sky group of each footprint.
    names : sequence of str, optional
        Names for warnings (default: the indices).
    runner : Runner, optional
        Where the intersections run (default: here).

    Returns
    -------
    pairs : list of tuple of int
    overlaps : dict
        See `OverlapFinder.overlaps`.
    """
    from ._runners import Runner

    finder = OverlapFinder()
    tasks = [t for fp, g in zip(footprints, groups, strict=True) for t in finder.add(fp, g)]
    results = (runner or Runner()).map(intersect_task, tasks)
    names = [str(k) for k in range(len(footprints))] if names is None else list(names)
    return finder.overlaps(results, names)


def overlap_regions(index, neighbours, pair_overlaps, inverse, groups):
    """Overlap polygons of image ``index`` with each neighbouring group.

    Parameters
    ----------
    index : int
        The image.
    neighbours : iterable of int
        Images (in other groups) whose caps touch this image's cap.
    pair_overlaps : dict
        Intersections from `OverlapFinder.overlaps`.
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
    owners = []  # the region of every polygon, in order
    sky = []
    for j in neighbours:
        if index < j:
            area, pieces = pair_overlaps[(index, j)].first
        else:
            area, pieces = pair_overlaps[(j, index)].second
        region = regions.setdefault(groups[j], OverlapRegion())
        if area == 0.0:
            continue
        region.area += area
        owners.extend([region] * len(pieces))
        sky.extend(pieces)
    if not sky:
        return regions
    # One call of the transform for all the vertices: its cost is mostly
    # per call (the transforms work value by value, so the numbers are
    # those of separate calls).
    ends = np.cumsum([len(ra) for ra, _ in sky])[:-1]
    x, y = inverse(np.concatenate([ra for ra, _ in sky]), np.concatenate([dec for _, dec in sky]))
    x = np.split(np.asarray(x, float), ends)
    y = np.split(np.asarray(y, float), ends)
    for region, px, py in zip(owners, x, y, strict=True):
        region.polygons.append((px, py))
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
