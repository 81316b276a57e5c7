"""The sky-matching engine: ``local``, ``global``, ``match``, ``global+match``.

The engine knows nothing of data models. It takes, for every image, its
shape, WCS callables, a sky-group label and a way to read its pixels
(`ImageInput`), and options (`MatchOptions`), and returns the sky terms of
every image (`SkyResult`). `match` reads as its phases:

1. the layout (`skymatch_step._layout`): footprints and overlapping pairs,
   from the image descriptions only;
2. the pixel pass (`skymatch_step._measure`): every image's pixels read
   once, for its own sky and the comparison's per-image work
   (`skymatch_step._comparisons`);
3. the fit (`skymatch_step._fit`): pair records to group offsets;
4. the levels (`skymatch_step._levels`): offsets and own skies to every
   image's terms.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ._comparisons import NO_COMPARISON
from ._fit import fit_sky
from ._footprints import union_footprint
from ._layout import read_layout
from ._levels import anchor, group_local, group_reason, group_terms, groups_left_out, report_sets
from ._measure import ImageTask, measure_all
from ._options import MatchOptions
from ._runners import Execution

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ._runners import Runners

__all__ = ["ImageInput", "SkyResult", "match"]

log = logging.getLogger(__name__)


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
        ``pixels`` may then be None. With a remote runner (`DaskRunner`),
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
    ids : list
        Each image's ``ImageInput.id``, as given.
    sky_model : str
        The sky model (``'constant'`` or ``'plane'``).
    uncertainties : ndarray
        For the matching methods, the 1-sigma uncertainty of each image's
        matched level (its group's), relative to the mean level of its
        connected set; NaN where unknown. Empty otherwise.
    planes : list or None
        With ``sky_model='plane'``: each image's sky plane ``(value at the
        tangent point, d/dxi, d/deta)`` (per degree; None where not valid),
        the first of its ``terms`` being the plane's mean over the image.
    tangent : TangentPlane or None
        The tangent plane of ``planes``.
    excess : float
        Standard deviation added to every pair's error because the pairs
        disagreed more than their errors allowed (0: none).
    chi2_pixel : float
        Chi-square per degree of freedom of the fit's residuals with the
        pixel-noise errors alone (NaN when not known).
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
    ids: list = field(default_factory=list)
    sky_model: str = "constant"
    uncertainties: np.ndarray = field(default_factory=lambda: np.zeros(0))
    planes: list | None = None
    tangent: Any = None
    excess: float = 0.0
    chi2_pixel: float = float("nan")

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


def match(
    images: Iterable[ImageInput],
    options: MatchOptions | None = None,
    *,
    runners: Runners | None = None,
    workers: int = 1,
    **changes: Any,
) -> SkyResult:
    """Compute or equalize the sky of overlapping images.

    Parameters
    ----------
    images : iterable of ImageInput
        The images; images with the same ``group`` share one sky level.
        It is iterated once, so it may be a generator that opens the
        images one after the other; no reference to an input is held after
        the next one is asked for, other than what the engine keeps (the
        footprint, and the input itself when it has no ``source``).
    options : MatchOptions, optional
        How to compute the levels; the defaults give jwst's results.
    runners : Runners, optional
        Where the work runs (`Execution.open`); by default ``workers``
        processes for the geometry and threads for the pixels. With a Dask
        pixel runner, every image needs a picklable ``source`` and the
        comparison must run remotely (``compare='statistics'``).
    workers : int, optional
        Number of workers when ``runners`` is not given. The results do not
        depend on it.
    **changes
        Options to change from ``options`` (or from the defaults), by name:
        ``match(images, skymethod='global')``.

    Returns
    -------
    SkyResult

    Raises
    ------
    ValueError
        For a bad option (naming it and the valid choices) or no images.
    """
    options = (options or MatchOptions()).replace(**changes)
    with _opened(runners, workers) as run:
        layout = read_layout(
            images,
            stepsize=options.stepsize,
            runner=run.geometry,
            intersect=options.matches,
            keep_transforms=options.matches and options.compare.keeps_transforms,
        )
        _log_start(options, layout)
        comparing = None
        if options.matches:
            comparing = options.compare.start(layout, options.stats, options.sky_model)
        tasks = _tasks(layout, options, comparing, run.pixels)
        measurements = measure_all(layout, tasks, run.pixels)
    members = layout.members()
    local = group_local(measurements, members) if options.measures_local else None
    fit = None
    records = []
    if options.matches:
        records = comparing.records(measurements, members)
        fit = fit_sky(records, layout, options)
        report_sets(fit.sets, fit.offsets, members, layout.names, options.anchor_sets)
        raw = fit.offsets.copy()
        anchor(fit.offsets, fit.sets if options.anchor_sets else None, options.match_down)
        if fit.planes is not None:
            fit.planes[:, 0] += fit.offsets - raw  # the anchoring shifts each plane's level
    return _result(options, layout, measurements, local, fit, records)


@contextlib.contextmanager
def _opened(runners, workers):
    if runners is not None:
        yield runners
        return
    with Execution(workers=workers).open() as run:
        yield run


def _log_start(options, layout):
    matching = ""
    if options.matches:
        way = "down" if options.match_down else "up"
        matching = f", matching {way} by {options.compare.name}"
    log.info(
        "Sky method %r on %d image(s) in %d group(s)%s.",
        options.skymethod,
        len(layout.images),
        layout.ngroups,
        matching,
    )


def _tasks(layout, options, comparing, runner):
    """Describe what measuring each image needs; check that a remote runner can do it."""
    if runner.remote:
        if comparing is not None and not options.compare.runs_remotely:
            raise ValueError(
                f"compare={options.compare.name!r} cannot run on remote workers: it needs "
                "both images of a pair in one process; measure in this process."
            )
        missing = [layout.names[k] for k, im in enumerate(layout.images) if im.source is None]
        if missing:
            raise ValueError(
                f"{len(missing)} image(s) have no source to open them on remote workers "
                f"(first: {missing[0]}); measure in this process."
            )
    stats = options.stats if options.measures_local else None
    return [
        ImageTask(
            index=k,
            name=layout.names[k],
            stats=stats,
            work=comparing.image_work(k) if comparing is not None else NO_COMPARISON,
            source=layout.images[k].source if runner.remote else None,
        )
        for k in range(len(layout.images))
    ]


def _result(options, layout, measurements, local, fit, records):
    """Every image's terms and validity, as a `SkyResult`."""
    offsets = np.zeros(layout.ngroups) if fit is None else fit.offsets
    sets = np.zeros(0, dtype=int) if fit is None else fit.sets
    valid = np.array([m.usable for m in measurements], dtype=bool)
    reasons = ["" if ok else "it has no usable pixels (all NaN, flagged or masked)" for ok in valid]
    anchored = sets if options.anchor_sets else None
    if local is None:
        local = [None] * layout.ngroups
    terms_of, group_ok = group_terms(options.skymethod, local, offsets, anchored)
    left_out = groups_left_out(records, layout.ngroups)
    terms = []
    for k, g in enumerate(layout.groups):
        terms.append(terms_of[g])
        if valid[k] and not group_ok[g]:
            valid[k] = False
            reasons[k] = group_reason(options.skymethod, left_out[g])
    for k in np.flatnonzero(~valid):
        log.warning("Image %s: sky not computed because %s.", layout.names[k], reasons[k])
    return SkyResult(
        method=options.skymethod,
        terms=terms,
        valid=valid,
        reasons=reasons,
        groups=layout.groups,
        sets=sets,
        footprints=layout.footprints,
        names=layout.names,
        group_labels=layout.group_labels,
        pairs=records,
        ids=[im.id for im in layout.images],
        sky_model=options.sky_model.name,
        **_fit_extras(fit, layout, valid),
    )


def _fit_extras(fit, layout, valid):
    """Give the fit's uncertainties, planes and excess, per image."""
    if fit is None:
        return {}
    groups = np.asarray(layout.groups)
    uncertainties = np.where(valid, fit.uncertainties[groups], np.nan)
    extras = {"uncertainties": uncertainties, "excess": fit.excess, "chi2_pixel": fit.chi2_pixel}
    if fit.planes is not None:
        extras["planes"] = [fit.planes[g] if valid[k] else None for k, g in enumerate(groups)]
        extras["tangent"] = layout.tangent
    return extras
