"""The ``skymatch`` step: sky levels of overlapping images, for stpipe."""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import threading
from typing import ClassVar

import numpy as np
from astropy.nddata.bitmask import interpret_bit_flags
from jwst.datamodels import ModelContainer, ModelLibrary
from jwst.stpipe import Step
from stdatamodels.jwst.datamodels import JwstDataModel
from stdatamodels.jwst.datamodels.dqflags import pixel as _dq_flags

from ._methods import ImageInput, match
from ._skylist import read_skylist
from ._statistics import SkyStatistics

__all__ = ["SkyMatchStep", "SkymatchStep"]

log = logging.getLogger(__name__)


class SkymatchStep(Step):
    """Compute, equalize or subtract the sky background of overlapping images.

    The parameters, their defaults and the results written to each model
    (``meta.background.method/level/subtracted`` and
    ``meta.cal_step.skymatch``) are those of ``jwst.skymatch.SkyMatchStep``,
    plus ``maximum_cores`` for parallel processing (results do not depend
    on it). This step never reads a CRDS parameter reference file.
    """

    class_alias = "skymatch"

    spec = """
        # General sky matching parameters:
        skymethod = option('local', 'global', 'match', 'global+match', 'user', default='match') # sky computation method
        match_down = boolean(default=True) # adjust sky to lowest measured value?
        subtract = boolean(default=False) # subtract computed sky from image data?
        skylist = string(default=None) # Filename pointing to list of (imagename skyval) pairs

        # Image's bounding polygon parameters:
        stepsize = integer(default=None) # Max vertex separation

        # Sky statistics parameters:
        skystat = option('median', 'midpt', 'mean', 'mode', default='mode') # sky statistics
        dqbits = string(default='~DO_NOT_USE+NON_SCIENCE') # "good" DQ bits
        lower = float(default=None) # Lower limit of "good" pixel values
        upper = float(default=None) # Upper limit of "good" pixel values
        nclip = integer(min=0, default=5) # number of sky clipping iterations
        lsigma = float(min=0.0, default=4.0) # Lower clipping limit, in sigma
        usigma = float(min=0.0, default=4.0) # Upper clipping limit, in sigma
        binwidth = float(min=0.0, default=0.1) # Bin width for 'mode' and 'midpt' `skystat`, in sigma

        # Memory management:
        in_memory = boolean(default=True) # If False, preserve memory using temporary files

        # Parallel processing (not in jwst's step):
        maximum_cores = string(default='all') # cores to use: an integer, 'quarter', 'half' or 'all'
    """  # noqa: E501

    reference_file_types: ClassVar[list] = []

    # -- stpipe integration ------------------------------------------------
    @classmethod
    def get_config_from_reference(cls, dataset, disable=None, crds_observatory=None):
        """Return no parameters: this step has no CRDS parameter reference.

        A class named ``SkymatchStep`` would otherwise look up
        ``pars-skymatchstep``, which belongs to jwst's step.
        """
        log.debug("%s has no CRDS parameter reference file; using defaults.", cls.__name__)
        return cls._empty_config()

    @classmethod
    def _get_config_from_parameters(cls, crds_parameters, crds_observatory):
        return cls._empty_config()

    @classmethod
    def _get_crds_parameters(cls, dataset):
        # stpipe asks for these before every run even though no CRDS lookup
        # follows; jwst's version opens a library on an association just to
        # read the first member's metadata. Nothing is read here.
        return {}, "jwst"

    @staticmethod
    def get_stpipe_loggers():
        """Name the loggers whose messages stpipe shows, this package's included.

        Returns
        -------
        tuple of str
        """
        return ("skymatch_step", *Step.get_stpipe_loggers())

    # -- processing --------------------------------------------------------
    def process(self, input_models):
        """Compute the sky of the input images and record or subtract it.

        Parameters
        ----------
        input_models : str, Path, list, ModelContainer, ModelLibrary or DataModel
            An association file, a list of models or files, a container or
            a library of 2-D images with WCSs.

        Returns
        -------
        ModelLibrary
            The models with ``meta.background`` and
            ``meta.cal_step.skymatch`` set (and the sky subtracted when
            ``subtract`` is True). A `ModelLibrary` input is updated in
            place; other inputs are copied first.
        """
        library = self._open_library(input_models)
        if len(library) == 0:
            raise ValueError("No images to process: the input is empty.")
        if self.skymethod == "user":
            return self._apply_user_sky(library)

        stats = SkyStatistics(
            skystat=self.skystat,
            lower=self.lower,
            upper=self.upper,
            nclip=self.nclip,
            lsigma=self.lsigma,
            usigma=self.usigma,
            binwidth=self.binwidth,
        )
        dqbits = _parse_dqbits(self.dqbits)
        start_levels = []
        on_disk = _is_on_disk(library)
        with _quick_collections(on_disk):
            with library:
                result = match(
                    self._engine_inputs(library, dqbits, start_levels, on_disk),
                    skymethod=self.skymethod,
                    match_down=self.match_down,
                    stats=stats,
                    stepsize=self.stepsize,
                    workers=_n_workers(self.maximum_cores),
                )
            self._write_results(library, result, start_levels, on_disk)
        return library

    def _open_library(self, input_models):
        if isinstance(input_models, JwstDataModel):
            input_models = [input_models]
        output = self.prepare_output(input_models, open_models=False)
        if isinstance(output, ModelLibrary):
            return output
        on_disk = not self.in_memory
        if on_disk and isinstance(output, (ModelContainer, list, tuple)):
            is_models = isinstance(output, ModelContainer) or any(
                isinstance(m, JwstDataModel) for m in output
            )
            if is_models:
                log.info("in_memory=False has no effect on models already in memory.")
                on_disk = False
        if isinstance(output, (list, tuple)) and not output:
            raise ValueError("No images to process: the input is empty.")
        return _Library(output, on_disk=on_disk)

    def _engine_inputs(self, library, dqbits, start_levels, on_disk):
        """Check each model and describe it to the engine, one at a time.

        A generator: the engine computes each footprint (and starts the
        intersections) while the next model is read. Pixels are not
        touched here. It raises, before any model is modified, if a model
        has no WCS, is not 2-D, or has background metadata inconsistent
        with ``subtract``; the start level of each model is appended to
        ``start_levels``. ``on_disk``: whether the library keeps its
        models in files (each is then freed as soon as it is read). The
        library must be open.
        """
        group_of = {}
        for label, indices in library.group_indices.items():
            for index in indices:
                group_of[index] = label
        n = len(library)
        every = max(1, math.ceil(n / 5)) if n >= 20 else n + 1
        for index in range(n):
            with _LEDGER_LOCK:
                model = library.borrow(index)
            try:
                name = _model_name(model, index)
                shape = _check_model(model, name)
                start_levels.append(self._start_level(model, name))
                forward, inverse = _wcs_callables(model.meta.wcs)
            finally:
                with _LEDGER_LOCK:
                    library.shelve(model, index, modify=False)
            del model
            _release(on_disk)
            if (index + 1) % every == 0 and index + 1 < n:
                log.info("Read the WCS of %d of %d images.", index + 1, n)
            yield ImageInput(
                id=name,
                shape=shape,
                forward=forward,
                inverse=inverse,
                pixels=_library_pixels(library, index, dqbits, on_disk),
                group=group_of[index],
            )

    def _start_level(self, model, name):
        """Sky level already subtracted from ``model`` (jwst's re-run rules)."""
        bkg = model.meta.background
        if bkg.subtracted is None:
            if bkg.level is not None:
                raise ValueError(
                    f"Image {name!r}: meta.background.level is set but "
                    "meta.background.subtracted is undefined."
                )
            return 0.0
        if bkg.level is None:
            raise ValueError(
                f"Image {name!r}: meta.background.subtracted is set but "
                "meta.background.level is undefined."
            )
        if bool(bkg.subtracted) != bool(self.subtract):
            raise ValueError(
                f"'subtract' ({self.subtract}) is inconsistent with the background "
                f"already recorded in image {name!r} "
                f"(meta.background.subtracted={bkg.subtracted})."
            )
        return float(bkg.level) if self.subtract else 0.0

    def _write_results(self, library, result, start_levels, on_disk):
        with library:
            for index in range(len(library)):
                model = library.borrow(index)
                if result.valid[index]:
                    level = start_levels[index]
                    for term in result.terms[index]:
                        level += term
                        if self.subtract:
                            model.data -= term
                    model.meta.background.method = str(self.skymethod)
                    model.meta.background.level = float(level)
                    model.meta.background.subtracted = bool(self.subtract)
                    model.meta.cal_step.skymatch = "COMPLETE"
                else:
                    model.meta.cal_step.skymatch = "SKIPPED"
                library.shelve(model, index)
                del model
                _release(on_disk)

    def _apply_user_sky(self, library):
        if not self.skylist:
            raise ValueError("skymethod='user' needs a sky value file: set 'skylist'.")
        log.info("Setting the sky of each image to the values in %s.", self.skylist)
        with library:
            names = []
            for index in range(len(library)):
                model = library.borrow(index)
                names.append(_model_name(model, index))
                library.shelve(model, index, modify=False)
        values = read_skylist(self.skylist, names)
        with library:
            for index, level in enumerate(values):
                model = library.borrow(index)
                model.meta.background.level = level
                model.meta.background.subtracted = bool(self.subtract)
                model.meta.background.method = "user"
                if self.subtract:
                    model.data -= level
                model.meta.cal_step.skymatch = "COMPLETE"
                library.shelve(model, index)
        return library


class _Library(ModelLibrary):
    """A `ModelLibrary` whose read-only ``asn`` view is built once.

    The base class builds a read-only copy of the whole association each
    time ``asn`` is read, and reads it several times for every model it
    loads, so loading N models costs O(N^2) (minutes at N=1000). The
    association does not change after the library is created, so one copy
    serves every read. Used for the libraries this step creates.
    """

    @property
    def asn(self):
        """Association dictionary used to create the library (read-only)."""
        view = self.__dict__.get("_asn_view")
        if view is None:
            view = self.__dict__["_asn_view"] = super().asn
        return view


#: jwst's name for the step class, for scripts that switch imports.
SkyMatchStep = SkymatchStep


def _n_workers(maximum_cores):
    """Return the number of workers for ``maximum_cores`` (jwst's convention)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        available = os.cpu_count() or 1
    value = str(maximum_cores).strip().lower()
    fractions = {"all": 1.0, "half": 0.5, "quarter": 0.25}
    if value in fractions:
        return max(1, int(available * fractions[value]))
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(
            f"maximum_cores={maximum_cores!r} is not valid: use a positive integer, "
            "'quarter', 'half' or 'all'."
        )
    return min(n, available)


def _model_name(model, index):
    return model.meta.filename or f"model #{index}"


def _check_model(model, name):
    data = model.data
    if data is None or np.ndim(data) != 2:
        raise ValueError(f"Image {name!r}: data must be a 2-D image, got shape {np.shape(data)}.")
    if getattr(model.meta, "wcs", None) is None:
        raise ValueError(f"Image {name!r} has no WCS (meta.wcs); run assign_wcs on it first.")
    return tuple(int(n) for n in data.shape)


def _parse_dqbits(dqbits):
    """DQ flags to ignore as an integer (None: use every finite pixel)."""
    try:
        return interpret_bit_flags(dqbits, flag_name_map=_dq_flags)
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"Cannot interpret dqbits={dqbits!r}: {err}. Use an integer, flag names such as "
            "'~DO_NOT_USE+NON_SCIENCE', or None."
        ) from err


def _good_pixels(model, dqbits):
    """Pixels usable for sky statistics: finite and free of rejected DQ flags.

    ``dqbits`` is the integer of flags to *ignore* (astropy's
    ``interpret_bit_flags`` convention); a pixel with any other flag set
    is rejected. Computed with one integer temporary, not the several of
    ``bitfield_to_boolean_mask``, to keep the memory per image small.
    """
    good = np.isfinite(model.data)
    if dqbits is None:
        return good
    dq = np.asarray(model.dq)
    if dq.dtype.kind != "u":
        dq = dq.astype(np.uint32)  # as astropy interprets a signed bit field
    bad = dq.dtype.type(~int(dqbits) & np.iinfo(dq.dtype).max)
    flagged = np.bitwise_and(dq, bad)
    good &= flagged == 0
    return good


_LEDGER_LOCK = threading.Lock()


def _load_malloc_trim():
    try:
        import ctypes

        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _load_malloc_trim()


def _is_on_disk(library):
    """Whether ``library`` keeps its models in files (``on_disk=True``).

    stpipe has no public accessor for it; a library without the attribute
    is treated as in memory (nothing is lost but some memory headroom).
    """
    return bool(getattr(library, "_on_disk", False))


@contextlib.contextmanager
def _quick_collections(enabled):
    """Make the garbage collections of `_release` cheap while the step runs.

    A full collection walks every tracked object of the process (about
    70 ms after jwst is imported); freezing the objects that exist when
    the step starts leaves only the step's own to walk. Not done when the
    caller has frozen objects itself, since unfreezing would release
    theirs too.
    """
    if not enabled or gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _release(on_disk):
    """Free what a model released by an on-disk library held.

    Data models contain reference cycles, so a model dropped by an on-disk
    library is only freed by the cyclic garbage collector, which runs on
    object counts, not bytes: left to itself, several models' arrays
    (about 100 MB each for NIRCam) could pile up. Collecting right away
    keeps one model per worker in memory. Nothing to do in memory.
    """
    if on_disk:
        gc.collect()
        _trim_heap()


def _trim_heap():
    """Give the memory of freed arrays back to the operating system.

    Image arrays (16 MB each for 2048x2048 float32) fall under glibc's
    adaptive mmap threshold, so they are carved from the heap; once freed,
    small long-lived objects allocated in between keep the heap from
    shrinking, and with an on-disk library the process would grow by
    several MB per image read. ``malloc_trim`` releases the free pages.
    A no-op where the C library has no ``malloc_trim``.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _library_pixels(library, index, dqbits, on_disk):
    """Context manager factory that borrows one model's pixels.

    The model is returned to the library as soon as its science array and
    good-pixel mask are taken, so that, for an on-disk library, its other
    arrays are freed while the statistics are computed. The library must
    be open while the returned context is entered.
    """

    @contextlib.contextmanager
    def pixels():
        with _LEDGER_LOCK:
            model = library.borrow(index)
        try:
            data = model.data
            good = _good_pixels(model, dqbits)
        finally:
            with _LEDGER_LOCK:
                library.shelve(model, index, modify=False)
        del model
        _release(on_disk)
        try:
            yield data, good
        finally:
            del data, good
            if on_disk:
                _trim_heap()

    return pixels


def _wcs_callables(wcs):
    """Forward and inverse transforms of a gwcs, prepared once per image.

    ``gwcs.WCS.invert`` composes the backward transform on every call;
    taking it once gives the same numbers at a fraction of the cost.
    """
    forward_tr = wcs.forward_transform

    def forward(x, y):
        return forward_tr(x, y, with_bounding_box=False)

    try:
        backward_tr = wcs.backward_transform
    except NotImplementedError:
        backward_tr = None

    if backward_tr is None:

        def inverse(ra, dec):
            return wcs.invert(ra, dec, with_bounding_box=False)

    else:

        def inverse(ra, dec):
            return backward_tr(ra, dec, with_bounding_box=False)

    return forward, inverse
