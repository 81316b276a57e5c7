"""The sky-matching engine: ``local``, ``global``, ``match``, ``global+match``.

The engine knows nothing of data models. It takes, for every image, its
shape, WCS callables, a sky-group label and a way to read its pixels, and
returns the sky terms of every image. Pixels are read once per image: all
statistics an image contributes (its own sky and its sky in the overlap
with every other group) need only its own pixels and the other images'
footprints, which are small and stay in memory.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ._footprints import image_footprint, union_footprint
from ._overlaps import PairIntersector, overlap_regions, region_mask
from ._solver import connected_sets, solve_offsets
from ._statistics import SkyStatistics, StatsError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["SKYMETHODS", "ImageInput", "SkyResult", "match"]

log = logging.getLogger(__name__)

#: Sky methods computed by the engine ('user' is handled by the step).
SKYMETHODS = ("local", "global", "match", "global+match")


@dataclass(frozen=True)
class ImageInput:
    """One image as the engine sees it.

    Parameters
    ----------
    id : object
        Opaque identifier, used in messages (a file name, say).
    shape : tuple of int
        Image shape ``(ny, nx)``.
    forward : callable
        ``forward(x, y) -> (ra, dec)`` in degrees for pixel arrays.
    inverse : callable
        ``inverse(ra, dec) -> (x, y)``.
    pixels : callable
        ``pixels()`` returns a context manager yielding ``(data, mask)``:
        the 2-D science array and a boolean array, True where a pixel may
        be used for sky statistics. It is entered once per image.
    group : object, optional
        Images with equal ``group`` share one sky level; by default each
        image is its own group.
    """

    id: Any
    shape: tuple[int, int]
    forward: Callable
    inverse: Callable
    pixels: Callable
    group: Any = None

    @classmethod
    def from_arrays(cls, data, mask, forward, inverse, *, id=None, group=None):
        """Build an input from in-memory arrays.

        Parameters
        ----------
        data : ndarray
            2-D science array.
        mask : ndarray of bool or None
            Usable pixels; `None` for all finite pixels.
        forward, inverse : callable
            WCS transforms, see `ImageInput`.
        id : object, optional
            Identifier for messages.
        group : object, optional
            Sky group label.

        Returns
        -------
        ImageInput
        """
        data = np.asarray(data)
        if data.ndim != 2:
            raise ValueError(f"image {id!r}: data must be 2-D, got {data.ndim} dimensions")
        good = np.isfinite(data)
        if mask is not None:
            mask = np.asarray(mask, bool)
            if mask.shape != data.shape:
                raise ValueError(
                    f"image {id!r}: mask shape {mask.shape} != data shape {data.shape}"
                )
            good &= mask

        @contextlib.contextmanager
        def pixels():
            yield data, good

        return cls(
            id=id, shape=data.shape, forward=forward, inverse=inverse, pixels=pixels, group=group
        )


@dataclass
class SkyResult:
    """Sky levels found by `match`.

    Attributes
    ----------
    method : str
        The sky method.
    terms : list of tuple of float
        For each image, the sky terms in the order they were found (the
        ``match`` offset, then the ``global`` level, for
        ``global+match``). The image's sky level is their sum; subtracting
        the sky subtracts them one after the other.
    valid : ndarray of bool
        Whether each image's sky could be determined.
    reasons : list of str
        Why an image's sky could not be determined ('' when valid).
    groups : list of int
        Index of each image's sky group (order of first appearance).
    sets : ndarray of int
        For the matching methods, the connected set of overlapping groups
        each group belongs to; empty otherwise.
    footprints : list of SphericalPolygon
        The footprint of each image on the sky.
    names : list of str
        Each image's identifier (``str(ImageInput.id)``).
    group_labels : list
        Each group's label (the ``group`` of its images; for an image
        without a group, its own name).
    pairs : list of PairRecord
        For the matching methods, every overlapping pair of groups: what
        was measured and how the fit used it (see `PairRecord`).
    """

    method: str
    terms: list[tuple[float, ...]]
    valid: np.ndarray
    reasons: list[str]
    groups: list[int]
    sets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    footprints: list = field(default_factory=list)
    names: list = field(default_factory=list)
    group_labels: list = field(default_factory=list)
    pairs: list = field(default_factory=list)

    def group_footprint(self, group):
        """Footprint of a sky group: the union of its images' footprints.

        Parameters
        ----------
        group : int
            Group index (see ``groups``).

        Returns
        -------
        SphericalPolygon
        """
        members = [fp for fp, g in zip(self.footprints, self.groups, strict=True) if g == group]
        if not members:
            raise ValueError(f"no group {group!r}; groups are 0 to {max(self.groups)}")
        return union_footprint(members)

    @property
    def levels(self):
        """Sky level of each image (NaN where not valid)."""
        out = np.full(len(self.terms), np.nan)
        for i, terms in enumerate(self.terms):
            if self.valid[i]:
                level = 0.0
                for t in terms:
                    level += t
                out[i] = float(level)
        return out


@dataclass
class _Measurement:
    """What one image contributes: its own sky and its overlap skies."""

    usable: bool = False
    local: tuple[float, int] | None = None
    overlaps: dict = field(default_factory=dict)  # group -> (value|None, npix, area)


def match(
    images: Iterable[ImageInput],
    *,
    skymethod: str = "match",
    match_down: bool = True,
    stats: SkyStatistics | None = None,
    stepsize: int | None = None,
    workers: int = 1,
) -> SkyResult:
    """Compute or equalize the sky of overlapping images.

    Parameters
    ----------
    images : iterable of ImageInput
        The images; images with the same ``group`` share one sky level.
        It is iterated once, so it may be a generator that opens the
        images one after the other.
    skymethod : {'local', 'global', 'match', 'global+match'}
        ``local``: the sky of each group on its own (lowest of its
        members). ``global``: the lowest ``local`` sky, for every group.
        ``match``: offsets that equalise the sky in the overlaps, relative
        to the lowest (``match_down``) or highest. ``global+match``: the
        ``match`` offsets plus the lowest sky left after applying them.
    match_down : bool
        Match to the lowest (True) or the highest (False) sky.
    stats : SkyStatistics, optional
        The sky statistic; `SkyStatistics` defaults if omitted.
    stepsize : int or None
        Spacing of footprint vertices along image edges, in pixels.
    workers : int
        Number of worker processes intersecting footprints and of threads
        measuring images. The results do not depend on it.

    Returns
    -------
    SkyResult
    """
    if skymethod not in SKYMETHODS:
        raise ValueError(
            f"Unknown skymethod {skymethod!r}; valid choices are {', '.join(SKYMETHODS)}."
        )
    stats = SkyStatistics() if stats is None else stats
    do_match = "match" in skymethod
    do_local = skymethod != "match"

    # First pass, over the image descriptions only (``images`` may be a
    # generator that reads them): footprints, which are small and stay in
    # memory, and the intersections of overlapping footprints, which run
    # in worker processes while the next images are read. Like jwst, every
    # method builds the footprints, so a broken WCS is always reported.
    inputs = []
    names = []
    labels: dict = {}
    groups = []
    footprints = []
    with PairIntersector(workers if do_match else 1) as intersector:
        for k, im in enumerate(images):
            inputs.append(im)
            names.append(str(im.id))
            key = ("__own__", k) if im.group is None else im.group
            groups.append(labels.setdefault(key, len(labels)))
            footprints.append(image_footprint(im.shape, im.forward, stepsize, name=names[k]))
            if do_match:
                intersector.add(footprints[k], groups[k])
        if not inputs:
            raise ValueError("No images to match: the input is empty.")
        images = inputs
        ngroups = len(labels)
        log.info(
            "Sky method %r on %d image(s) in %d group(s)%s.",
            skymethod,
            len(images),
            ngroups,
            f", matching {'down' if match_down else 'up'}" if do_match else "",
        )
        pairs, pair_overlaps = intersector.results(names) if do_match else ([], {})
    members = [[] for _ in range(ngroups)]
    for k, g in enumerate(groups):
        members[g].append(k)
    neighbours = [[] for _ in images]
    for i, j in pairs:
        neighbours[i].append(j)
        neighbours[j].append(i)
    for nb in neighbours:
        nb.sort()
    if do_match:
        log.info("%d pair(s) of images in different groups may overlap.", len(pairs))

    def measure(k):
        return _measure(images[k], k, stats, do_local, neighbours[k], pair_overlaps, groups, names)

    measurements = _run(measure, len(images), workers)

    valid = np.ones(len(images), dtype=bool)
    reasons = [""] * len(images)
    for k, m in enumerate(measurements):
        if not m.usable:
            valid[k] = False
            reasons[k] = "it has no usable pixels (all NaN, flagged or masked)"

    # Lowest sky among each group's members (None where unmeasurable).
    group_local = [None] * ngroups
    if do_local:
        for g, idx in enumerate(members):
            vals = [measurements[k].local[0] for k in idx if measurements[k].local is not None]
            if vals:
                group_local[g] = min(vals)

    sets = np.zeros(0, dtype=int)
    deltas = np.zeros(ngroups)
    if do_match:
        pairs = _pair_equations(measurements, members, groups)
        deltas = solve_offsets(pairs, ngroups)
        sets = connected_sets(pairs, ngroups)
        _report_sets(sets, deltas, members, names)
        finite = np.isfinite(deltas)
        if finite.any():
            ref = deltas[finite].min() if match_down else deltas[finite].max()
            deltas[finite] -= ref

    has_local = np.array([v is not None for v in group_local], dtype=bool)
    matched = np.isfinite(deltas)
    # Offsets as Python floats (jwst's type), so that sums and subtractions
    # round as they do there.
    offsets = [float(d) if ok else 0.0 for d, ok in zip(deltas, matched, strict=True)]
    if skymethod == "local":
        group_terms = [(v,) for v in group_local]
        group_ok = has_local
    elif skymethod == "match":
        group_terms = [(d,) for d in offsets]
        group_ok = matched
    else:
        # 'global' and 'global+match': lowest sky left after the offsets
        # (a group left out of the matching keeps offset 0, as in jwst).
        remaining = [v - d for v, d in zip(group_local, offsets, strict=True) if v is not None]
        minsky = min(remaining) if remaining else None
        if minsky is not None:
            log.info("Global sky level: %.6g", minsky)
        else:
            log.warning("Unable to compute a global sky level: no image has a measurable sky.")
        if skymethod == "global":
            group_terms = [(minsky,)] * ngroups
            group_ok = has_local & (minsky is not None)
        elif minsky is not None:
            group_terms = [(d, minsky) for d in offsets]
            group_ok = has_local | matched
        else:
            group_terms = [(d,) for d in offsets]
            group_ok = matched

    terms = []
    for k, g in enumerate(groups):
        terms.append(group_terms[g])
        if valid[k] and not group_ok[g]:
            valid[k] = False
            reasons[k] = _group_reason(skymethod)
    for k in np.flatnonzero(~valid):
        log.warning("Image %s: sky not computed because %s.", names[k], reasons[k])
    return SkyResult(
        method=skymethod,
        terms=terms,
        valid=valid,
        reasons=reasons,
        groups=groups,
        sets=sets,
        footprints=footprints,
    )


def _run(func, n, workers):
    """Apply ``func`` to ``range(n)``, logging progress a few times."""
    every = max(1, math.ceil(n / 10)) if n >= 20 else n + 1
    out = [None] * n

    def done(k, result):
        out[k] = result
        finished = k + 1
        if finished % every == 0 and finished < n:
            log.info("Measured %d of %d images.", finished, n)

    if workers <= 1 or n < 2:
        for k in range(n):
            done(k, func(k))
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for k, result in enumerate(pool.map(func, range(n))):
                done(k, result)
    return out


def _stat(stats, values):
    """Return the statistic of ``values``, or None when it cannot be computed."""
    if values.size == 0:
        return None
    try:
        value, npix = stats(values)
    except StatsError:
        return None
    if not np.isfinite(value):
        return None
    # Keep the statistic's scalar type: see SkyStatistics.__call__.
    return value, int(npix)


_WHOLE_IMAGE_TURN = threading.Lock()


def _gather(data, mask, rows=256):
    """``data[mask]`` as native float32, without a full-size temporary."""
    out = np.empty(int(np.count_nonzero(mask)), dtype=np.float32)
    pos = 0
    for r in range(0, data.shape[0], rows):
        block = data[r : r + rows][mask[r : r + rows]]
        out[pos : pos + block.size] = block
        pos += block.size
    return out


def _measure(image, k, stats, do_local, neighbours, pair_overlaps, groups, names):
    """Read one image's pixels once and compute all its statistics."""
    result = _Measurement()
    regions = overlap_regions(k, neighbours, pair_overlaps, image.inverse, groups)
    with image.pixels() as (data, mask):
        if data.shape != tuple(image.shape):
            raise ValueError(
                f"image {names[k]}: pixel array shape {data.shape} != declared {image.shape}"
            )
        result.usable = bool(mask.any())
        if not result.usable:
            return result
        if do_local:
            # One native float32 copy of the usable pixels (the statistics
            # work in float32; data read from FITS is big-endian). Whole-
            # image statistics need several image-sized temporaries, so
            # threads take turns for them: memory stays that of one.
            with _WHOLE_IMAGE_TURN:
                values = _gather(data, mask)
                result.local = _stat(stats, values)
                del values
        for g, region in regions.items():
            if region.area == 0.0:
                result.overlaps[g] = (None, 0, 0.0)
                continue
            where, sub = region_mask(region.polygons, data.shape, names[k])
            if where is None:
                result.overlaps[g] = (None, 0, region.area)
                continue
            sel = sub & mask[where]
            result.overlaps[g] = (*(_stat(stats, data[where][sel]) or (None, 0)), region.area)
    return result


def _group_overlap(g, h, members, measurements):
    """Sky of group ``g`` where it overlaps group ``h``: (value, weight) or None.

    A single image reports its own statistic; a group reports the
    pixel-count-weighted mean of its members' statistics (as jwst does).
    """
    area = 0.0
    entries = []
    for k in members[g]:
        entry = measurements[k].overlaps.get(h)
        if entry is None:
            continue
        value, npix, a = entry
        area += a
        if value is not None and npix > 0:
            entries.append((value, npix))
    if area == 0.0 or not entries:
        return None
    if len(members[g]) == 1:
        return entries[0]
    wsum = 0.0
    weight = 0
    for value, npix in entries:
        wsum += value * npix
        weight += npix
    return wsum / weight, weight


def _pair_equations(measurements, members, groups):
    """Equations ``(i, j, s_i, s_j, w)`` for overlapping group pairs, i < j."""
    linked = set()
    for k, m in enumerate(measurements):
        for h in m.overlaps:
            g = groups[k]
            linked.add((min(g, h), max(g, h)))
    pairs = []
    for i, j in sorted(linked):
        a = _group_overlap(i, j, members, measurements)
        b = _group_overlap(j, i, members, measurements)
        if a is None or b is None:
            continue
        w = 0.5 * (float(b[1]) + float(a[1]))
        pairs.append((i, j, a[0], b[0], w))
    return pairs


def _report_sets(sets, deltas, members, names):
    """Warn when the overlapping groups form several disconnected sets."""
    solved = np.isfinite(deltas)
    labels = sorted(set(sets[solved].tolist()))
    if len(labels) > 1:
        desc = []
        for lab in labels:
            imgs = [names[k] for g in np.flatnonzero((sets == lab) & solved) for k in members[g]]
            shown = ", ".join(imgs[:3]) + (", ..." if len(imgs) > 3 else "")
            desc.append(f"[{shown}] ({len(imgs)} images)")
        log.warning(
            "The images form %d sets that do not overlap each other: %s. Sky levels are "
            "matched within each set only; the sets may be offset from each other.",
            len(labels),
            "; ".join(desc),
        )


def _group_reason(skymethod):
    if skymethod == "match":
        return "its group does not overlap any other group with usable pixels"
    return "no sky statistic could be computed from its group's usable pixels"
