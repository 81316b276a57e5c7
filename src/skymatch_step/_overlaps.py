"""Which images overlap on the sky, and where, in each image's pixels."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree
from spherical_geometry.polygon import MalformedPolygonError

from ._raster import fill_polygon
from .exceptions import GeometryError

__all__ = ["OverlapRegion", "candidate_pairs", "overlap_regions", "region_mask"]

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


def overlap_regions(index, footprints, inverse, neighbours, groups, names):
    """Overlap polygons of image ``index`` with each neighbouring group.

    The spherical intersection of image ``index``'s footprint with each
    neighbour's footprint (in that order, as jwst computes it) is mapped
    into the image with its inverse WCS.

    Parameters
    ----------
    index : int
        The image.
    footprints : list of SphericalPolygon
        Footprints of all images.
    inverse : callable
        ``inverse(ra, dec) -> (x, y)`` of image ``index``.
    neighbours : iterable of int
        Images (in other groups) whose caps touch this image's cap.
    groups : sequence of int
        Group label of every image.
    names : sequence of str
        Image names, for messages.

    Returns
    -------
    dict
        ``{group label: OverlapRegion}`` for every neighbouring group.
    """
    own = footprints[index]
    regions = {}
    for j in neighbours:
        try:
            inter = own.intersection(footprints[j])
        except MalformedPolygonError as err:
            # jwst falls back to the whole image; keep its result but say so.
            log.warning(
                "Intersection of the footprints of %s and %s failed (%s); "
                "using the whole footprint of %s as the overlap, as jwst does.",
                names[index],
                names[j],
                err,
                names[index],
            )
            inter = own.copy()
        area = abs(inter.area())
        region = regions.setdefault(groups[j], OverlapRegion())
        if area == 0.0:
            continue
        region.area += area
        for ra, dec in inter.to_radec():
            if len(ra) < 4:
                continue
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
