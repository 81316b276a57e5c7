"""Helpers for tests that exercise engine internals on a few images."""

from __future__ import annotations

from skymatch_step._differences import DifferenceCollector
from skymatch_step._footprints import image_footprint
from skymatch_step._layout import Layout
from skymatch_step._overlaps import intersect_pair
from skymatch_step._statistics import SkyStatistics

_GRID_KEYS = ("grid_step", "grid_tolerance")


def layout_of(images, pairs, overlaps, groups, names=None):
    """A `Layout` of ``images`` with the given geometry."""
    names = [str(im.id) for im in images] if names is None else list(names)
    labels = sorted(set(groups))
    return Layout(list(images), names, list(groups), labels, [], list(pairs), dict(overlaps))


def collector(images, pairs, overlaps, groups, *, names=None, **options):
    """A `DifferenceCollector`; ``options`` are SkyStatistics fields or grid options."""
    grid = {k: options.pop(k) for k in _GRID_KEYS if k in options}
    stats = SkyStatistics(**options)
    return DifferenceCollector(layout_of(images, pairs, overlaps, groups, names), stats, **grid)


def pair_difference(image_i, data_i, mask_i, image_j, data_j, mask_j, overlap=None, **options):
    """Sky difference of two images, ``sky(i) - sky(j)``, at the same positions.

    One `DifferenceCollector` over the two images, each its own group.
    Returns the `PairDifference` (``a = 0``, ``b = 1``) or None.
    """
    if overlap is None:
        fp_i = image_footprint(image_i.shape, image_i.forward)
        fp_j = image_footprint(image_j.shape, image_j.forward)
        overlap = intersect_pair(fp_i, fp_j)
    found = collector([image_i, image_j], [(0, 1)], {(0, 1): overlap}, [0, 1], **options)
    found.visit(0, data_i, mask_i)
    found.visit(1, data_j, mask_j)
    results = found.results()
    return results[0] if results else None
