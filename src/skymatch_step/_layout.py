"""The engine's first pass: the images, their groups, footprints and overlaps.

Only the image descriptions are read here (shape, WCS, group), never the
pixels. The footprints are small and stay in memory; the intersections of
overlapping footprints run on the geometry runner while the next images
are read.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from ._footprints import image_footprint
from ._overlaps import OverlapFinder, intersect_task
from ._tangent import TangentPlane

__all__ = ["Layout", "read_layout"]

log = logging.getLogger(__name__)


@dataclass
class Layout:
    """The images, their sky groups, footprints and overlapping pairs.

    Attributes
    ----------
    images : list of ImageInput
        The inputs as kept for the pixel pass.
    names : list of str
        ``str(image.id)`` of each image.
    groups : list of int
        Group index of each image (order of first appearance).
    group_labels : list
        Each group's label (an image's ``group``, or its name).
    footprints : list of SphericalPolygon
        Each image's footprint.
    pairs : list of tuple of int
        Overlapping candidate image pairs ``(i, j)``, ``i < j``, sorted.
    pair_overlaps : dict
        ``{(i, j): PairOverlap}``.
    """

    images: list
    names: list
    groups: list
    group_labels: list
    footprints: list
    pairs: list
    pair_overlaps: dict

    @property
    def ngroups(self):
        """Number of sky groups."""
        return len(self.group_labels)

    def members(self):
        """Image indices of every group."""
        out = [[] for _ in range(self.ngroups)]
        for k, g in enumerate(self.groups):
            out[g].append(k)
        return out

    @cached_property
    def tangent(self):
        """The mosaic's tangent plane (`TangentPlane`), at its footprints' centre."""
        return TangentPlane.about(self.footprints)

    @cached_property
    def image_positions(self):
        """``(n, 2)`` tangent-plane centre ``(xi, eta)`` of every image (degrees).

        The mean of its footprint's vertices: the mean position of its
        pixels, to the footprint's curvature.
        """
        out = np.empty((len(self.footprints), 2))
        for k, fp in enumerate(self.footprints):
            ra, dec = zip(*((r[:-1], d[:-1]) for r, d in fp.to_radec()), strict=True)
            xi, eta = self.tangent(np.concatenate(ra), np.concatenate(dec))
            out[k] = np.mean(xi), np.mean(eta)
        return out

    @cached_property
    def group_positions(self):
        """``(ngroups, 2)`` mean tangent-plane position of every group's images."""
        out = np.zeros((self.ngroups, 2))
        for g, members in enumerate(self.members()):
            out[g] = self.image_positions[members].mean(axis=0)
        return out

    @cached_property
    def plane_scale(self):
        """A length (degrees) of the mosaic's size, to scale plane slopes."""
        pos = self.image_positions
        spread = float(np.sqrt(np.mean(np.sum((pos - pos.mean(axis=0)) ** 2, axis=1))))
        return spread if spread > 0 else 1.0 / 60.0

    @cached_property
    def neighbours(self):
        """For every image, the images it overlaps (ascending)."""
        out = [[] for _ in self.images]
        for i, j in self.pairs:
            out[i].append(j)
            out[j].append(i)
        for nb in out:
            nb.sort()
        return out


def read_layout(images, *, stepsize, runner, intersect, keep_transforms):
    """Read the image descriptions: groups, footprints and, if asked, overlaps.

    Parameters
    ----------
    images : iterable of ImageInput
        Iterated once; may be a generator that reads the images. No
        reference to an input is held after the next one is asked for,
        other than what the layout keeps.
    stepsize : int or None
        Footprint vertex spacing, in pixels.
    runner : Runner
        Where the intersections run; its workers are stopped at the end.
    intersect : bool
        Find and intersect the overlapping pairs (for the matching methods).
        Like jwst, every method builds the footprints, so that a broken WCS
        is always reported.
    keep_transforms : bool
        Keep the transforms and pixel reader of an image that has a
        ``source`` (otherwise only its footprint is kept and the pixel pass
        re-opens it).

    Returns
    -------
    Layout

    Raises
    ------
    ValueError
        If there are no images.
    """
    started = time.perf_counter()
    reading = _Reading(stepsize, keep_transforms)
    finder = OverlapFinder()

    def tasks():
        for image in images:
            k = reading.add(image)
            del image  # held by nothing here while the next image is read
            if intersect:
                yield from finder.add(reading.footprints[k], reading.groups[k])

    try:
        results = runner.map(intersect_task, tasks())
    finally:
        runner.close()
    if not reading.inputs:
        raise ValueError("No images to match: the input is empty.")
    pairs, overlaps = finder.overlaps(results, reading.names)
    log.info(
        "Footprints of %d image(s)%s in %.1f s.",
        len(reading.inputs),
        f" and intersections of {len(pairs)} candidate pair(s)" if intersect else "",
        time.perf_counter() - started,
    )
    return Layout(
        reading.inputs,
        reading.names,
        reading.groups,
        reading.group_labels,
        reading.footprints,
        pairs,
        overlaps,
    )


class _Reading:
    """What the first pass has learned so far."""

    def __init__(self, stepsize, keep_transforms):
        self.stepsize = stepsize
        self.keep_transforms = keep_transforms
        self.inputs = []
        self.names = []
        self.groups = []
        self.group_labels = []
        self.footprints = []
        self._labels = {}

    def add(self, image):
        """File one image; return its index."""
        k = len(self.names)
        name = str(image.id)
        self.names.append(name)
        key = ("__own__", k) if image.group is None else image.group
        if key not in self._labels:
            self._labels[key] = len(self._labels)
            self.group_labels.append(name if image.group is None else image.group)
        self.groups.append(self._labels[key])
        footprint = image.footprint
        if footprint is None:
            footprint = image_footprint(image.shape, image.forward, self.stepsize, name=name)
        self.footprints.append(footprint)
        if image.source is not None and not self.keep_transforms:
            image = replace(image, forward=None, inverse=None, pixels=None, footprint=None)
        self.inputs.append(image)
        return k
