"""Writing the results back into the models: all or nothing.

`updates_from_result` turns the engine's result into what to write into
each model (`Update`); `write_back` writes them, subtracting the sky when
asked, and, when something fails part-way in a library the caller will see
again, puts every model already changed back as it was (`Undo`).
`user_sky_updates` makes the updates of ``skymethod='user'``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np

from ._library import borrow
from ._memory import release
from ._model_inputs import check_subtractable, model_name
from ._progress import Progress
from ._skylist import read_skylist

__all__ = ["Update", "log_levels", "updates_from_result", "user_sky_updates", "write_back"]

log = logging.getLogger(__name__)


@dataclass
class Update:
    """What to write into one model.

    ``terms`` are subtracted from the data one after the other (empty when
    nothing is subtracted); ``level`` is None for a skipped image.
    """

    name: str
    status: str
    method: str
    level: float | None = None
    terms: tuple = ()


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
        if update.status == "COMPLETE":
            if update.terms:
                if record is not None:
                    record.subtract(model.data, update.terms)
                else:
                    for term in update.terms:
                        model.data -= term
            bkg = model.meta.background
            bkg.method = update.method
            bkg.level = float(update.level)
            bkg.subtracted = bool(subtract)
        model.meta.cal_step.skymatch = update.status
        library.shelve(model, index)
    except BaseException:
        if record is not None:
            record.restore(model)
        _give_back(library, model, index, restored=record is not None)
        raise
    return record


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
                log.info("%s: sky level %.7g (%s)", update.name, update.level, update.status)
            else:
                log.info("%s: no sky level (%s)", update.name, update.status)
        return
    levels = np.array([u.level for u in updates if u.status == "COMPLETE"], dtype=float)
    skipped = [u.name for u in updates if u.status != "COMPLETE"]
    text = f"Sky levels of {len(updates)} images: {levels.size} COMPLETE, {len(skipped)} SKIPPED"
    if levels.size:
        text += (
            f"; level min {levels.min():.7g}, median {np.median(levels):.7g}, "
            f"max {levels.max():.7g}"
        )
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
    updates = []
    for index, member in enumerate(result.ids):
        if not result.valid[index]:
            updates.append(Update(member.name, "SKIPPED", str(method)))
            continue
        level = member.start_level
        for term in result.terms[index]:
            level += term
        terms = tuple(result.terms[index]) if subtract else ()
        updates.append(Update(member.name, "COMPLETE", str(method), level, terms))
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
