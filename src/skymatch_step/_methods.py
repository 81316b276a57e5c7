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
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ._differences import DifferenceCollector
from ._footprints import image_footprint, union_footprint
from ._overlaps import PairIntersector, overlap_regions, region_mask
from ._pairs import PairRecord
from ._progress import Progress
from ._solver import connected_sets, fit_offsets
from ._statistics import SkyStatistics, StatsError, StatsOverflowError, sorted_values

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["COMPARISONS", "SKYMETHODS", "ImageInput", "SkyResult", "match"]

log = logging.getLogger(__name__)

#: Sky methods computed by the engine ('user' is handled by the step).
SKYMETHODS = ("local", "global", "match", "global+match")

#: How overlapping groups are compared (see `match`).
COMPARISONS = ("statistics", "differences")


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
    footprint : SphericalPolygon, optional
        The image's footprint, when already known (``forward`` is then
        not called for it).
    source : callable, optional
        ``source()`` returns a context manager yielding a complete
        `ImageInput` of this image (transforms and pixels). When given,
        the pixel pass opens the image through it instead of using this
        description, and, with ``compare='statistics'``, the engine keeps
        only the footprint once it is known: ``forward``, ``inverse`` and
        ``pixels`` may then be None. With a `~skymatch_step._distributed.DaskRunner`,
        sources must be picklable; they are opened on the workers.
    """

    id: Any
    shape: tuple[int, int]
    forward: Callable | None
    inverse: Callable | None
    pixels: Callable | None
    group: Any = None
    footprint: Any = None
    source: Callable | None = None

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
    problems: list = field(default_factory=list)  # messages for the log


@dataclass
class _Layout:
    """The images, their groups, footprints and overlapping pairs."""

    images: list
    names: list
    groups: list
    group_labels: list
    footprints: list
    pairs: list
    pair_overlaps: dict

    @property
    def ngroups(self):
        return len(self.group_labels)

    def members(self):
        out = [[] for _ in range(self.ngroups)]
        for k, g in enumerate(self.groups):
            out[g].append(k)
        return out

    def neighbours(self):
        out = [[] for _ in self.images]
        for i, j in self.pairs:
            out[i].append(j)
            out[j].append(i)
        for nb in out:
            nb.sort()
        return out


def match(
    images: Iterable[ImageInput],
    *,
    skymethod: str = "match",
    match_down: bool = True,
    stats: SkyStatistics | None = None,
    stepsize: int | None = None,
    workers: int = 1,
    compare: str = "statistics",
    anchor_sets: bool = False,
    min_pair_pixels: int = 1,
    reject_sigma: float | None = None,
    reject_iterations: int = 10,
    runner: Any = None,
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
    compare : {'statistics', 'differences'}
        How two overlapping groups are compared. ``statistics`` (jwst's
        way): each group's sky statistic over the overlap polygon.
        ``differences``: the pixel differences of the two groups at the
        same sky positions (robust median, with an error that weights the
        pair in the fit).
    anchor_sets : bool
        Match each set of mutually overlapping groups on its own: with
        ``match`` each set's lowest (or highest) offset is zero, with
        ``global+match`` each set gets its own global level.
    min_pair_pixels : int
        Pairs measured on fewer usable pixels (on either side) are left out
        of the fit.
    reject_sigma : float or None
        Leave out of the fit, iteratively, pairs whose normalized residual
        exceeds this; `None` keeps every pair.
    reject_iterations : int
        Largest number of rejection rounds.
    runner : DaskRunner, optional
        Measure the images on a Dask cluster: each image is opened on a
        worker through its ``source``, and only the overlap polygons and
        the measurements travel. Used with ``compare='statistics'`` when
        every image has a source; otherwise the images are measured here.

    Returns
    -------
    SkyResult
    """
    _check_options(skymethod, compare, min_pair_pixels, reject_sigma, reject_iterations)
    stats = SkyStatistics() if stats is None else stats
    do_match = "match" in skymethod
    do_local = skymethod != "match"

    keep_transforms = do_match and compare == "differences"
    layout = _read_layout(images, stepsize, workers if do_match else 1, do_match, keep_transforms)
    log.info(
        "Sky method %r on %d image(s) in %d group(s)%s.",
        skymethod,
        len(layout.images),
        layout.ngroups,
        f", matching {'down' if match_down else 'up'} by {compare}" if do_match else "",
    )
    differences = None
    if do_match and compare == "differences":
        differences = DifferenceCollector(
            layout.images,
            layout.pairs,
            layout.pair_overlaps,
            layout.groups,
            nclip=stats.nclip,
            lsigma=stats.lsigma,
            usigma=stats.usigma,
            lower=stats.lower,
            upper=stats.upper,
            names=layout.names,
        )
    measurements = _measure_all(layout, stats, do_local, do_match, differences, workers, runner)

    valid = np.array([m.usable for m in measurements], dtype=bool)
    reasons = ["" if ok else "it has no usable pixels (all NaN, flagged or masked)" for ok in valid]
    members = layout.members()
    group_local = _group_local(measurements, members) if do_local else [None] * layout.ngroups

    sets = np.zeros(0, dtype=int)
    deltas = np.zeros(layout.ngroups)
    records = []
    if do_match:
        if differences is not None:
            records = _difference_records(differences.results())
        else:
            records = _statistics_records(measurements, members, layout.groups)
        started = time.perf_counter()
        deltas, sets = _fit(records, layout, min_pair_pixels, reject_sigma, reject_iterations)
        log.info(
            "Fitted %d group offset(s) to %d pair(s) in %.2f s.",
            layout.ngroups,
            len(records),
            time.perf_counter() - started,
        )
        _report_sets(sets, deltas, members, layout.names, anchor_sets)
        _anchor(deltas, sets if anchor_sets else None, match_down)

    group_terms, group_ok = _group_terms(
        skymethod, group_local, deltas, sets if anchor_sets else None
    )
    left_out = _groups_left_out(records, layout.ngroups)
    terms = []
    for k, g in enumerate(layout.groups):
        terms.append(group_terms[g])
        if valid[k] and not group_ok[g]:
            valid[k] = False
            reasons[k] = _group_reason(skymethod, left_out[g])
    for k in np.flatnonzero(~valid):
        log.warning("Image %s: sky not computed because %s.", layout.names[k], reasons[k])
    return SkyResult(
        method=skymethod,
        terms=terms,
        valid=valid,
        reasons=reasons,
        groups=layout.groups,
        sets=sets,
        footprints=layout.footprints,
        names=layout.names,
        group_labels=layout.group_labels,
        pairs=records,
    )


def _check_options(skymethod, compare, min_pair_pixels, reject_sigma, reject_iterations):
    if skymethod not in SKYMETHODS:
        raise ValueError(
            f"Unknown skymethod {skymethod!r}; valid choices are {', '.join(SKYMETHODS)}."
        )
    if compare not in COMPARISONS:
        raise ValueError(
            f"Unknown compare {compare!r}; valid choices are {', '.join(COMPARISONS)}."
        )
    if not _is_positive_int(min_pair_pixels):
        raise ValueError(f"min_pair_pixels={min_pair_pixels!r} must be a positive integer.")
    if reject_sigma is not None and not _is_positive_number(reject_sigma):
        raise ValueError(f"reject_sigma={reject_sigma!r} must be a positive number or None.")
    if not _is_positive_int(reject_iterations):
        raise ValueError(f"reject_iterations={reject_iterations!r} must be a positive integer.")


def _is_positive_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def _is_positive_number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return bool(np.isfinite(value) and value > 0)


def _read_layout(images, stepsize, workers, do_match, keep_transforms):
    """First pass, over the image descriptions only.

    ``images`` may be a generator that reads them. The footprints are
    small and stay in memory; the intersections of overlapping footprints
    run in worker processes while the next images are read. Like jwst,
    every method builds the footprints, so a broken WCS is always
    reported. An image with a ``source`` is kept without its transforms
    and pixel reader unless ``keep_transforms`` (the pixel differences use
    other images' transforms).
    """
    inputs = []
    names = []
    labels: dict = {}
    group_labels = []
    groups = []
    footprints = []
    started = time.perf_counter()
    with PairIntersector(workers) as intersector:
        # No enumerate(): it reuses one result tuple, which the step's
        # garbage-collector freezing (step._release) would keep holding
        # each image's transforms after the engine has dropped them.
        for im in images:
            k = len(names)
            names.append(str(im.id))
            key = ("__own__", k) if im.group is None else im.group
            if key not in labels:
                labels[key] = len(labels)
                group_labels.append(names[k] if im.group is None else im.group)
            groups.append(labels[key])
            fp = im.footprint
            if fp is None:
                fp = image_footprint(im.shape, im.forward, stepsize, name=names[k])
            footprints.append(fp)
            if im.source is not None and not keep_transforms:
                im = replace(im, forward=None, inverse=None, pixels=None, footprint=None)
            inputs.append(im)
            if do_match:
                intersector.add(footprints[k], groups[k])
        if not inputs:
            raise ValueError("No images to match: the input is empty.")
        pairs, pair_overlaps = intersector.results(names) if do_match else ([], {})
    log.info(
        "Footprints of %d image(s)%s in %.1f s.",
        len(inputs),
        f" and intersections of {len(pairs)} candidate pair(s)" if do_match else "",
        time.perf_counter() - started,
    )
    return _Layout(inputs, names, groups, group_labels, footprints, pairs, pair_overlaps)


def _measure_all(layout, stats, do_local, do_match, differences, workers, runner=None):
    """Second pass: read every image's pixels once, in ``workers`` threads or on Dask."""
    neighbours = layout.neighbours()
    overlap_stats = do_match and differences is None
    n = len(layout.images)
    progress = Progress(log, "Measured", n)

    def report(k, result):
        for problem in result.problems:
            log.warning("Image %s: %s.", layout.names[k], problem)
        progress.advance()

    remote = runner is not None and differences is None
    if remote and not all(im.source is not None for im in layout.images):
        log.info("Measuring the images in this process: some exist only in memory.")
        remote = False
    if remote:
        tasks = [
            _task(layout, k, stats, do_local, neighbours[k] if overlap_stats else [])
            for k in range(n)
        ]
        out = runner.map(_measure_task, tasks, on_result=report)
        progress.finish(" on Dask")
        return out

    def measure(k):
        try:
            return _measure(
                layout.images[k],
                k,
                stats,
                do_local,
                neighbours[k] if overlap_stats else [],
                layout.pair_overlaps,
                layout.groups,
                layout.names,
                differences,
            )
        except BaseException:
            if differences is not None:
                differences.abort(k)
            raise

    out = _run(measure, n, workers, report)
    progress.finish()
    return out


@dataclass(frozen=True)
class _Task:
    """What a Dask worker needs to measure one image (all picklable)."""

    source: Callable
    index: int
    name: str
    stats: SkyStatistics
    do_local: bool
    neighbours: list
    pair_overlaps: dict
    groups: dict


def _task(layout, k, stats, do_local, neighbours):
    """Build the task measuring image ``k`` (its neighbours' overlaps only)."""
    pairs = {(min(k, j), max(k, j)) for j in neighbours}
    return _Task(
        source=layout.images[k].source,
        index=k,
        name=layout.names[k],
        stats=stats,
        do_local=do_local,
        neighbours=list(neighbours),
        pair_overlaps={p: layout.pair_overlaps[p] for p in pairs},
        groups={j: layout.groups[j] for j in neighbours},
    )


def _measure_task(task):
    """Measure one image on a worker (see `_measure_all`)."""
    with task.source() as image:
        return _measure(
            image,
            task.index,
            task.stats,
            task.do_local,
            task.neighbours,
            task.pair_overlaps,
            task.groups,
            {task.index: task.name},
            None,
        )


def _group_local(measurements, members):
    """Lowest sky among each group's members (None where unmeasurable)."""
    out = []
    for idx in members:
        vals = [measurements[k].local[0] for k in idx if measurements[k].local is not None]
        out.append(min(vals) if vals else None)
    return out


def _fit(records, layout, min_pair_pixels, reject_sigma, reject_iterations):
    """Fit the group offsets to the pair records; fill in their fit columns.

    Returns the offsets (NaN for groups left out of every used pair) and
    the connected set of every group through the pairs used.
    """
    equations = [(r.a, r.b, r.difference, 0.0, r.weight) for r in records]
    errors = None
    if records and all(np.isfinite(r.error) for r in records):
        errors = [r.error for r in records]
    fit = fit_offsets(
        equations,
        layout.ngroups,
        npix=[min(r.npix_a, r.npix_b) for r in records],
        errors=errors,
        min_pixels=min_pair_pixels,
        reject_sigma=reject_sigma,
        max_iterations=reject_iterations,
    )
    for k, r in enumerate(records):
        r.fitted = float(fit.fitted[k])
        r.residual = float(fit.residuals[k])
        r.normalized = float(fit.normalized[k])
        r.rejected = fit.rejected[k]
    _report_rejections(records, layout.group_labels)
    used = [eq for eq, r in zip(equations, records, strict=True) if not r.rejected]
    return np.array(fit.offsets, dtype=float), connected_sets(used, layout.ngroups)


def _statistics_records(measurements, members, groups):
    """Pair records from each group's statistic in the overlaps (jwst's way)."""
    linked = set()
    for k, m in enumerate(measurements):
        for h in m.overlaps:
            g = groups[k]
            linked.add((min(g, h), max(g, h)))
    records = []
    for i, j in sorted(linked):
        a = _group_overlap(i, j, members, measurements)
        b = _group_overlap(j, i, members, measurements)
        if a is None or b is None:
            continue
        # jwst's equation: d_i - d_j = s_i - s_j, weighted by the mean pixel
        # count. The difference is taken in float64 whatever the scalar type.
        records.append(
            PairRecord(
                a=i,
                b=j,
                npix_a=int(a[1]),
                npix_b=int(b[1]),
                value_a=float(a[0]),
                value_b=float(b[0]),
                difference=float(a[0]) - float(b[0]),
                error=float("nan"),
                weight=0.5 * (float(b[1]) + float(a[1])),
            )
        )
    return records


def _difference_records(differences):
    """Pair records from pixel differences: weight 1/error."""
    return [
        PairRecord(
            a=d.a,
            b=d.b,
            npix_a=int(d.npix),
            npix_b=int(d.npix),
            value_a=float("nan"),
            value_b=float("nan"),
            difference=float(d.difference),
            error=float(d.error),
            weight=1.0 / float(d.error),
        )
        for d in differences
    ]


def _anchor(deltas, sets, match_down):
    """Shift the offsets so that the lowest (or highest) is zero.

    With ``sets`` (``anchor_sets``), each connected set is shifted on its
    own; otherwise one shift applies to all (jwst). In place.
    """
    finite = np.isfinite(deltas)
    if not finite.any():
        return
    pick = np.min if match_down else np.max
    if sets is None:
        deltas[finite] -= pick(deltas[finite])
        return
    for label in np.unique(sets[finite]):
        where = finite & (sets == label)
        deltas[where] -= pick(deltas[where])


def _group_terms(skymethod, group_local, deltas, sets):
    """Return the sky terms of every group and whether they could be determined."""
    has_local = np.array([v is not None for v in group_local], dtype=bool)
    matched = np.isfinite(deltas)
    # Offsets as Python floats (jwst's type), so that sums and subtractions
    # round as they do there.
    offsets = [float(d) if ok else 0.0 for d, ok in zip(deltas, matched, strict=True)]
    if skymethod == "local":
        return [(v,) for v in group_local], has_local
    if skymethod == "match":
        return [(d,) for d in offsets], matched
    # 'global' and 'global+match': lowest sky left after the offsets (a
    # group left out of the matching keeps offset 0, as in jwst), over all
    # groups or, with anchored sets, over each set.
    minsky = _global_levels(group_local, offsets, sets)
    if skymethod == "global":
        ok = has_local & np.array([m is not None for m in minsky], dtype=bool)
        return [(m,) for m in minsky], ok
    terms = []
    ok = np.zeros(len(offsets), dtype=bool)
    for g, (d, m) in enumerate(zip(offsets, minsky, strict=True)):
        if m is not None:
            terms.append((d, m))
            ok[g] = has_local[g] or matched[g]
        else:
            terms.append((d,))
            ok[g] = matched[g]
    return terms, ok


def _global_levels(group_local, offsets, sets):
    """Global level of each group: the lowest sky left after the offsets."""
    n = len(group_local)
    if sets is not None and len(sets) == 0:
        sets = None
    keys = [0] * n if sets is None else [int(s) for s in sets]
    lowest: dict = {}
    for key, v, d in zip(keys, group_local, offsets, strict=True):
        if v is not None:
            left = v - d
            lowest[key] = left if key not in lowest else min(lowest[key], left)
    if sets is None:
        if 0 in lowest:
            log.info("Global sky level: %.6g", lowest[0])
        else:
            log.warning("Unable to compute a global sky level: no image has a measurable sky.")
    else:
        for key in sorted(lowest):
            log.info("Global sky level of set %d: %.6g", key, lowest[key])
    return [lowest.get(key) for key in keys]


def _run(func, n, workers, report):
    """Apply ``func`` to ``range(n)``; ``report(k, result)`` as each is done."""
    out = [None] * n

    def done(k, result):
        out[k] = result
        report(k, result)

    if workers <= 1 or n < 2:
        for k in range(n):
            done(k, func(k))
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for k, result in enumerate(pool.map(func, range(n))):
                done(k, result)
    return out


def _stat(stats, values, problems=None):
    """Return the statistic of ``values``, or None when it cannot be computed.

    Overflow messages are added to the set ``problems`` (when given), for
    the caller to report with the image's name.
    """
    if values.size == 0:
        return None
    try:
        value, npix = stats(values)
    except StatsOverflowError as err:
        if problems is not None:
            problems.add(str(err))
        return None
    except StatsError:
        return None
    if not np.isfinite(value):
        return None
    # Keep the statistic's scalar type: see SkyStatistics.__call__.
    return value, int(npix)


def _measure(image, k, stats, do_local, neighbours, pair_overlaps, groups, names, differences):
    """Read one image's pixels once and compute all its statistics.

    With ``differences`` (``compare='differences'``), the image is handed
    to the pixel-difference collector instead of measuring its overlaps.
    """
    if image.pixels is None:
        with image.source() as opened:
            return _measure(
                opened, k, stats, do_local, neighbours, pair_overlaps, groups, names, differences
            )
    result = _Measurement()
    regions = overlap_regions(k, neighbours, pair_overlaps, image.inverse, groups)
    problems = set()
    try:
        _measure_pixels(image, k, stats, do_local, regions, names, differences, result, problems)
    except BaseException:
        for problem in sorted(problems):
            log.warning("Image %s: %s.", names[k], problem)
        raise
    result.problems = sorted(problems)
    return result


def _measure_pixels(image, k, stats, do_local, regions, names, differences, result, problems):
    """Fill ``result`` from the pixels of image ``k`` (see `_measure`)."""
    with image.pixels() as (data, mask):
        if data.shape != tuple(image.shape):
            raise ValueError(
                f"image {names[k]}: pixel array shape {data.shape} != declared {image.shape}"
            )
        result.usable = bool(mask.any())
        if differences is not None:
            # Called even for an unusable image: its partners wait for it.
            differences.visit(k, data, mask)
        if not result.usable:
            return
        if do_local:
            # The usable pixels, sorted once in native float32 (the
            # statistics work in float32; data read from FITS is
            # big-endian): at most two image-sized copies per thread.
            values = sorted_values(data, mask)
            result.local = _stat(stats, values, problems)
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
            stat = _stat(stats, sorted_values(data[where], sel), problems)
            result.overlaps[g] = (*(stat or (None, 0)), region.area)


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


def _report_sets(sets, deltas, members, names, anchored=False):
    """Warn when the overlapping groups form several disconnected sets."""
    solved = np.isfinite(deltas)
    labels = sorted(set(sets[solved].tolist()))
    if len(labels) > 1:
        desc = []
        for lab in labels:
            imgs = [names[k] for g in np.flatnonzero((sets == lab) & solved) for k in members[g]]
            shown = ", ".join(imgs[:3]) + (", ..." if len(imgs) > 3 else "")
            desc.append(f"[{shown}] ({len(imgs)} images)")
        if anchored:
            log.info(
                "The images form %d sets that do not overlap each other: %s. Each set is "
                "anchored on its own (anchor_sets=True).",
                len(labels),
                "; ".join(desc),
            )
            return
        log.warning(
            "The images form %d sets that do not overlap each other: %s. Sky levels are "
            "matched within each set only; the sets may be offset from each other "
            "(anchor_sets=True gives each set its own reference level).",
            len(labels),
            "; ".join(desc),
        )


def _report_rejections(records, group_labels):
    """Name the pairs the fit left out, at WARNING."""
    rejected = [r for r in records if r.rejected]
    if not rejected:
        return
    shown = [
        f"{group_labels[r.a]} - {group_labels[r.b]} ({r.rejected}"
        + (f", normalized residual {r.normalized:.3g})" if r.rejected == "outlier" else ")")
        for r in rejected[:20]
    ]
    more = f"; and {len(rejected) - 20} more" if len(rejected) > 20 else ""
    log.warning(
        "%d of %d overlapping pair(s) left out of the fit: %s%s.",
        len(rejected),
        len(records),
        "; ".join(shown),
        more,
    )


def _groups_left_out(records, ngroups):
    """Why the fit left out every pair of a group ('' if it kept one or had none)."""
    used = np.zeros(ngroups, dtype=bool)
    why = [set() for _ in range(ngroups)]
    for r in records:
        for g in (r.a, r.b):
            if r.rejected:
                why[g].add(r.rejected)
            else:
                used[g] = True
    return [" and ".join(sorted(w)) if w and not u else "" for w, u in zip(why, used, strict=True)]


def _group_reason(skymethod, left_out=""):
    if left_out and "match" in skymethod:
        return f"the fit left out all its overlapping pairs ({left_out})"
    if skymethod == "match":
        return "its group does not overlap any other group with usable pixels"
    return "no sky statistic could be computed from its group's usable pixels"
