"""Writing the results back into the models: all or nothing.

`updates_from_result` turns the engine's result into what to write into
each model (`Update`); `write_back` writes them, subtracting the sky when
asked, and, when something fails part-way in a library the caller will see
again, puts every model already changed back as it was (`Undo`).
`user_sky_updates` makes the updates of ``skymethod='user'``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass

import numpy as np

from ._library import borrow
from ._memory import quick_collections, release
from ._model_inputs import check_subtractable, model_name
from ._progress import Progress
from ._skylist import read_skylist
from ._tangent import TangentPlane

__all__ = [
    "PlaneTerm",
    "Update",
    "apply_update",
    "defer_write_back",
    "log_levels",
    "updates_from_result",
    "user_sky_updates",
    "write_back",
]

log = logging.getLogger(__name__)


@dataclass
class Update:
    """What to write into one model.

    ``terms`` are subtracted from the data one after the other (empty when
    nothing is subtracted); ``level`` is None for a skipped image. With a
    ``plane`` (``sky_model='plane'``), the plane is evaluated on the model's
    pixels when it is written: it is subtracted first (with ``subtract``),
    and its mean over the image is added to ``level``. ``uncertainty`` is
    the level's 1-sigma uncertainty from the fit (NaN: unknown).
    """

    name: str
    status: str
    method: str
    level: float | None = None
    terms: tuple = ()
    plane: PlaneTerm | None = None
    uncertainty: float = float("nan")
    plane_mean: float = 0.0

    @property
    def written_level(self):
        """The level recorded: ``level`` plus the plane's mean over the image."""
        return self.level + self.plane_mean


@dataclass(frozen=True)
class PlaneTerm:
    """One image's sky plane in the mosaic's tangent plane.

    ``value + slope_xi * xi + slope_eta * eta``, with ``(xi, eta)`` the
    tangent-plane coordinates (degrees) about ``tangent``.
    """

    value: float
    slope_xi: float
    slope_eta: float
    tangent: TangentPlane

    def image(self, wcs, shape):
        """Evaluate the plane at every pixel of an image (float64).

        The tangent-plane coordinates are computed through the WCS on a grid
        of nodes every ``_PLANE_STEP`` pixels (ends included) and the plane
        interpolated bilinearly in between: the plane is linear in them, and
        they are smooth.
        """
        ny, nx = shape
        xs = _grid_nodes(nx)
        ys = _grid_nodes(ny)
        gx, gy = np.meshgrid(xs, ys)
        xi, eta = self.tangent(*wcs.forward_transform(gx, gy, with_bounding_box=False))
        nodes = self.value + self.slope_xi * xi + self.slope_eta * eta
        return _bilinear(nodes, xs, ys, nx, ny)

    def metadata(self, mean):
        """Return what ``meta.background.plane`` records."""
        return {
            "tangent_ra": float(self.tangent.ra0),
            "tangent_dec": float(self.tangent.dec0),
            "value": float(self.value),
            "slope_xi": float(self.slope_xi),
            "slope_eta": float(self.slope_eta),
            "mean": float(mean),
        }


#: Spacing, in pixels, of the nodes where a plane's WCS positions are computed.
_PLANE_STEP = 16


def _grid_nodes(n):
    nodes = np.arange(0, n, _PLANE_STEP, dtype=float)
    if nodes[-1] != n - 1:
        nodes = np.r_[nodes, float(n - 1)]
    return nodes


def _bilinear(nodes, xs, ys, nx, ny):
    """Bilinear interpolation of ``nodes`` (on the grid ``xs``, ``ys``) to every pixel."""
    if xs.size == 1 or ys.size == 1:
        return np.broadcast_to(nodes.reshape(ys.size, xs.size), (ny, nx)).astype(float)
    cx = np.minimum(np.searchsorted(xs, np.arange(nx), side="right") - 1, xs.size - 2)
    cy = np.minimum(np.searchsorted(ys, np.arange(ny), side="right") - 1, ys.size - 2)
    fx = (np.arange(nx) - xs[cx]) / (xs[cx + 1] - xs[cx])
    fy = ((np.arange(ny) - ys[cy]) / (ys[cy + 1] - ys[cy]))[:, None]
    top = nodes[cy][:, cx] * (1.0 - fx) + nodes[cy][:, cx + 1] * fx
    bottom = nodes[cy + 1][:, cx] * (1.0 - fx) + nodes[cy + 1][:, cx + 1] * fx
    return top * (1.0 - fy) + bottom * fy


_BACKGROUND_KEYS = ("method", "level", "subtracted")


@dataclass
class Undo:
    """How to put one model back as it was before the write-back.

    The metadata are small and saved as they were. The data are restored
    by adding the subtracted terms back in reverse order, which is exact
    for most pixels; the original values of the pixels where it is not
    (by a bit-for-bit check done when subtracting) are kept, or a copy of
    the whole array when that is smaller.
    """

    background: dict | None
    skymatch: object
    had_cal_step: bool
    terms: tuple = ()
    index: np.ndarray | None = None
    values: np.ndarray | None = None

    @classmethod
    def of(cls, model):
        meta = model.instance.setdefault("meta", {})
        background = meta.get("background")
        cal_step = meta.get("cal_step")
        return cls(
            background=None if background is None else dict(background),
            skymatch=None if cal_step is None else cal_step.get("skymatch", _ABSENT),
            had_cal_step=cal_step is not None,
        )

    def subtract(self, data, terms):
        """Subtract ``terms`` from ``data`` in place and remember how to undo it."""
        original = data.copy()
        try:
            for term in terms:
                data -= term
            back = data.copy()
            for term in reversed(terms):
                back += term
        except BaseException:
            data[...] = original
            raise
        self.terms = tuple(terms)
        uint = {2: np.uint16, 4: np.uint32, 8: np.uint64}.get(original.dtype.itemsize)
        if uint is not None:
            index = np.flatnonzero(back.view(uint) != original.view(uint))
            del back
            if index.size * (index.itemsize + original.itemsize) < original.nbytes:
                self.index = index
                self.values = original.ravel()[index]
                return
        self.values = original

    def restore(self, model):
        """Put the data and metadata of ``model`` back as they were."""
        if self.values is not None:
            data = model.data
            if self.index is None:
                data[...] = self.values
            else:
                for term in reversed(self.terms):
                    data += term
                data.flat[self.index] = self.values
        meta = model.instance["meta"]
        if self.background is None:
            meta.pop("background", None)
        else:
            meta["background"] = dict(self.background)
        if not self.had_cal_step:
            meta.pop("cal_step", None)
        elif self.skymatch is _ABSENT:
            meta.get("cal_step", {}).pop("skymatch", None)
        else:
            meta.setdefault("cal_step", {})["skymatch"] = self.skymatch


_ABSENT = object()


def write_back(library, updates, *, subtract, on_disk, undo):
    """Write ``updates`` into the models of ``library``, all or nothing.

    Every borrowed model is returned on every path. When something fails
    and ``undo`` is True (a library the caller passed and will see
    again), the models already changed are put back as they were before
    the error is re-raised, so that no model is left subtracted while
    others are not.
    """
    done = []
    progress = Progress(log, "Wrote the results into", len(updates), "models")
    with library:
        try:
            for index, update in enumerate(updates):
                record = _update_model(library, index, update, subtract=subtract, undo=undo)
                if undo:
                    done.append((index, record))
                release(on_disk, settle=True)
                progress.advance()
            progress.finish()
        except BaseException:
            if done:
                log.error(
                    "Writing the sky levels failed at image %d of %d; restoring the %d "
                    "image(s) already updated.",
                    len(done) + 1,
                    len(updates),
                    len(done),
                )
            _undo_all(library, done)
            raise


def _update_model(library, index, update, *, subtract, undo):
    model = borrow(library, index, again=True)
    record = Undo.of(model) if undo else None
    try:
        apply_update(model, update, subtract=subtract, record=record)
        library.shelve(model, index)
    except BaseException:
        if record is not None:
            record.restore(model)
        _give_back(library, model, index, restored=record is not None)
        raise
    return record


def apply_update(model, update, *, subtract, record=None):
    """Write one update into an open model (and subtract its terms when asked).

    Parameters
    ----------
    model : DataModel
    update : Update
    subtract : bool
    record : Undo, optional
        Remembers how to undo the subtraction.
    """
    if update.status == "COMPLETE":
        terms = _with_plane(model, update, subtract)
        if terms:
            if record is not None:
                record.subtract(model.data, terms)
            else:
                for term in terms:
                    model.data -= term
        bkg = model.meta.background
        bkg.method = update.method
        bkg.level = float(update.written_level)
        bkg.subtracted = bool(subtract)
    model.meta.cal_step.skymatch = update.status


def defer_write_back(library, updates, *, subtract):
    """Write the updates into an on-disk library in stpipe's last pass over it.

    stpipe's last pass (``finalize_result``) opens every model of a library
    and saves it again, to record the software version; for an on-disk
    library that is one full read and one full write per model. When the
    library is the step's own (no caller sees its models), the sky levels
    are written in that same pass instead of one of their own, which saves
    a read and a write of every model. Each update is also written whenever
    its model is borrowed before then (`StepLibrary.defer`), so a caller
    who reads the models first (a post hook, ``process`` called directly)
    sees the results too.

    Parameters
    ----------
    library : StepLibrary
    updates : list of Update
    subtract : bool
    """

    def finalize(step, reference_files_used):
        progress = Progress(log, "Wrote the results into", len(updates), "models")
        # One model at a time: each collection walks only what was made
        # since the last one (see `release`).
        with quick_collections(True), library:
            for index in range(len(updates)):
                # The library's borrow writes the update (``defer``).
                model = borrow(library, index, again=True)
                try:
                    step.finalize_result(model, reference_files_used)
                    pixels = model.data.size
                finally:
                    library.shelve(model, index)
                del model
                release(True, settle=True, pixels=pixels)
                progress.advance()
        progress.finish()
        log_levels(updates)

    writes = {
        index: functools.partial(apply_update, update=update, subtract=subtract)
        for index, update in enumerate(updates)
    }
    library.defer(writes, finalize)


def _with_plane(model, update, subtract):
    """Return the terms to subtract, the image's plane first; record the plane.

    Sets ``update.plane_mean``, the plane's mean over the image.
    """
    if update.plane is None:
        return update.terms
    plane = update.plane.image(model.meta.wcs, model.data.shape)
    update.plane_mean = float(np.mean(plane))
    model.meta.background.plane = update.plane.metadata(update.plane_mean)
    return (plane, *update.terms) if subtract else update.terms


def _give_back(library, model, index, *, restored):
    """Return a model still borrowed after an error (best effort)."""
    if restored:
        # An on-disk library may have half-written its temporary file.
        with contextlib.suppress(Exception):
            library.shelve(model, index, modify=True)
            return
    with contextlib.suppress(Exception):
        library.shelve(model, index, modify=False)


def _undo_all(library, done):
    for index, record in reversed(done):
        try:
            model = library.borrow(index)
        except Exception as err:  # report, and restore the others
            log.error("Could not restore image %d: %s", index + 1, err)
            continue
        try:
            record.restore(model)
        except Exception as err:
            log.error("Could not restore image %d: %s", index + 1, err)
        _give_back(library, model, index, restored=True)


def log_levels(updates, *, max_lines=20):
    """Log each image's level and status, or a summary when there are many."""
    if len(updates) <= max_lines:
        for update in updates:
            if update.status == "COMPLETE":
                error = ""
                if np.isfinite(update.uncertainty):
                    error = f" +- {update.uncertainty:.2g}"
                plane = " (plane mean)" if update.plane is not None else ""
                log.info(
                    "%s: sky level %.7g%s%s (%s)",
                    update.name,
                    update.written_level,
                    error,
                    plane,
                    update.status,
                )
            else:
                log.info("%s: no sky level (%s)", update.name, update.status)
        return
    levels = np.array([u.written_level for u in updates if u.status == "COMPLETE"], dtype=float)
    skipped = [u.name for u in updates if u.status != "COMPLETE"]
    text = f"Sky levels of {len(updates)} images: {levels.size} COMPLETE, {len(skipped)} SKIPPED"
    if levels.size:
        text += (
            f"; level min {levels.min():.7g}, median {np.median(levels):.7g}, "
            f"max {levels.max():.7g}"
        )
        errors = np.array([u.uncertainty for u in updates if u.status == "COMPLETE"], dtype=float)
        if np.isfinite(errors).any():
            text += f"; median uncertainty {np.nanmedian(errors):.2g}"
    if skipped:
        shown = ", ".join(skipped[:max_lines])
        more = f" and {len(skipped) - max_lines} more" if len(skipped) > max_lines else ""
        text += f"; skipped: {shown}{more}"
    log.info("%s.", text)


def updates_from_result(result, method, *, subtract):
    """Turn the engine's result into what to write into each model.

    Parameters
    ----------
    result : SkyResult
        The engine's result; its ``ids`` are the models' `Member` records.
    method : str
        The sky method (``meta.background.method``).
    subtract : bool
        Whether the sky terms are subtracted from the data.

    Returns
    -------
    list of Update
    """
    if result.planes is not None and not subtract:
        log.warning(
            "sky_model='plane' with subtract=False: BKGLEVEL holds each plane's mean over its "
            "image, which is all that outlier detection and resample read; the planes "
            "themselves (meta.background.plane) are recorded but not applied, so the seams "
            "their slopes remove stay in the data. Use subtract=True to remove the planes."
        )
    updates = []
    errors = result.uncertainties if len(result.uncertainties) else None
    for index, member in enumerate(result.ids):
        if not result.valid[index]:
            updates.append(Update(member.name, "SKIPPED", str(method)))
            continue
        terms = tuple(result.terms[index])
        plane = None
        if result.planes is not None:
            # The plane replaces its mean (the first term); evaluated when written.
            plane = PlaneTerm(*map(float, result.planes[index]), tangent=result.tangent)
            terms = terms[1:]
        level = member.start_level
        for term in terms:
            level += term
        update = Update(member.name, "COMPLETE", str(method), level, terms if subtract else ())
        update.plane = plane
        if errors is not None:
            update.uncertainty = float(errors[index])
        updates.append(update)
    return updates


def user_sky_updates(library, skylist, *, subtract):
    """Make the updates of ``skymethod='user'``: each image's level from ``skylist``.

    Parameters
    ----------
    library : ModelLibrary
        The models (their names are read; with ``subtract`` they are checked).
    skylist : str
        The sky value file.
    subtract : bool
        Whether the levels are subtracted.

    Returns
    -------
    list of Update

    Raises
    ------
    ValueError
        If ``skylist`` is not set or does not match the images.
    """
    if not skylist:
        raise ValueError("skymethod='user' needs a sky value file: set 'skylist'.")
    log.info("Setting the sky of each image to the values in %s.", skylist)
    with library:
        names = []
        for index in range(len(library)):
            model = borrow(library, index)
            try:
                names.append(model_name(model, index))
                if subtract:
                    check_subtractable(model, names[-1])
            finally:
                library.shelve(model, index, modify=False)
    values = read_skylist(skylist, names)
    terms = [(level,) if subtract else () for level in values]
    return [
        Update(name, "COMPLETE", "user", level, t)
        for name, level, t in zip(names, values, terms, strict=True)
    ]
