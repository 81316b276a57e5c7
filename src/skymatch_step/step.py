"""The ``skymatch`` step: sky levels of overlapping images, for stpipe."""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import threading
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from astropy.nddata.bitmask import interpret_bit_flags
from jwst.datamodels import ModelContainer, ModelLibrary
from jwst.stpipe import Step
from stdatamodels.jwst.datamodels import JwstDataModel
from stdatamodels.jwst.datamodels.dqflags import pixel as _dq_flags
from stpipe.library import BorrowError, ClosedLibraryError, NoGroupID

from ._diagnostics import check_diagnostics_prefix, write_diagnostics
from ._distributed import DaskRunner, check_scheduler
from ._masks import read_skymask
from ._members import FileSource, describe, describe_file, reread, usable_image
from ._members import check_subtractable as _check_subtractable
from ._members import model_name as _model_name
from ._members import wcs_callables as _wcs_callables
from ._methods import ImageInput, match
from ._progress import Progress
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
    on it) and options that go beyond jwst's step (``compare``,
    ``anchor_sets``, ``grouping``, pair rejection, ``skymask``,
    ``diagnostics``), whose defaults keep jwst's results. This step never
    reads a CRDS parameter reference file.
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
        maximum_cores = string(default='all') # cores to use: an integer, 'none', 'quarter', 'half' or 'all'

        # Sky matching beyond jwst's step (the defaults give jwst's results):
        compare = option('statistics', 'differences', default='statistics') # compare overlaps by each image's sky statistic (jwst) or by pixel differences at the same sky positions
        anchor_sets = boolean(default=False) # give each set of overlapping images its own zero (match) or global level (global+match)
        grouping = option('exposure', 'image', default='exposure') # one sky level per exposure (group_id) or per image
        min_pair_pixels = integer(min=1, default=1) # leave out of the fit pairs measured on fewer usable pixels
        reject_sigma = float(min=0.0, default=None) # leave out of the fit, one at a time, pairs whose normalized residual exceeds this (None: keep all)
        reject_iterations = integer(min=1, default=10) # most pairs rejected as outliers
        skymask = string(default=None) # file of (image name, FITS mask) pairs; nonzero mask pixels are usable
        diagnostics = string(default=None) # file prefix for fit diagnostics: <prefix>_pairs.ecsv, <prefix>_images.ecsv, <prefix>.png
        diagnostics_plot = boolean(default=True) # with diagnostics, also write the PNG plot (needs the 'plot' extra)

        # Scale-out (not in jwst's step):
        dask_scheduler = string(default=None) # measure the images on Dask: 'local' (a cluster of maximum_cores workers), a scheduler address (tcp://host:8786) or a scheduler file; None runs in this process
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
        _check_stepsize(self.stepsize)
        workers = _n_workers(self.maximum_cores)
        scheduler = check_scheduler(self.dask_scheduler)
        diagnostics = self._diagnostics_prefix() if self.skymethod != "user" else None
        if self.skymask and not os.path.isfile(os.path.expanduser(self.skymask)):
            raise ValueError(f"skymask file {self.skymask!r} does not exist.")
        library = self._open_library(input_models)
        if len(library) == 0:
            raise ValueError("No images to process: the input is empty.")
        # Only models the caller holds are seen again after an error; a
        # library of copies or of files this step opened is dropped.
        undo = library is input_models or getattr(library, "holds_callers_models", False)
        if self.skymethod == "user":
            if self.diagnostics:
                log.warning("No fit diagnostics with skymethod='user': nothing is fitted.")
            return self._apply_user_sky(library, undo=undo)

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
        members = []
        on_disk = _is_on_disk(library)
        with _quick_collections(on_disk), contextlib.ExitStack() as dask:
            files = self._dask_files(library, scheduler)
            runner = None
            if files is not None:
                runner = dask.enter_context(DaskRunner(scheduler, workers))
                inputs = self._file_inputs(runner, library, files, dqbits, members)
            else:
                inputs = self._engine_inputs(library, dqbits, members, on_disk)
            with library:
                result = match(
                    inputs,
                    runner=runner,
                    skymethod=self.skymethod,
                    match_down=self.match_down,
                    stats=stats,
                    stepsize=self.stepsize,
                    workers=workers,
                    compare=self.compare,
                    anchor_sets=self.anchor_sets,
                    min_pair_pixels=self.min_pair_pixels,
                    reject_sigma=self.reject_sigma,
                    reject_iterations=self.reject_iterations,
                )
            dask.close()
            updates = self._updates(result, members)
            if diagnostics:
                # Before any model changes: a failure here changes nothing.
                unit = next((m.unit for m in members if m.unit), None)
                write_diagnostics(result, diagnostics, plot=self.diagnostics_plot, unit=unit)
            _write_back(library, updates, subtract=self.subtract, on_disk=on_disk, undo=undo)
        _log_levels(updates)
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
        if on_disk and isinstance(output, (list, tuple)):
            # stpipe's library keeps only an association's members on disk.
            output = _association_of(output)
        library = _Library(output, on_disk=on_disk)
        # Not copied (the step runs in a pipeline): the caller sees them.
        library.holds_callers_models = _shares_models(input_models, output)
        return library

    def _engine_inputs(self, library, dqbits, members, on_disk):
        """Check each model and describe it to the engine, one at a time.

        A generator: the engine computes each footprint (and starts the
        intersections) while the next model is read. Pixels are not
        touched here. It raises, before any model is modified, if a model
        cannot be read, has no WCS, is not a 2-D image, has a DQ array of
        another shape, has background metadata inconsistent with
        ``subtract``, or (with ``subtract``) data that cannot be changed
        in place; the name and start level of each model are appended to
        ``members``. ``on_disk``: whether the library keeps its models in
        files (each is then freed as soon as it is read). The library
        must be open.
        """
        group_of = self._group_of(library)
        masks = _Masks(self.skymask)
        n = len(library)
        progress = Progress(log, "Read the WCS of", n, "models")
        for index in range(n):
            with _LEDGER_LOCK:
                model = _borrow(library, index)
            try:
                member = describe(model, index, dqbits, self.subtract)
                members.append(member)
                forward, inverse = _wcs_callables(model.meta.wcs)
            finally:
                with _LEDGER_LOCK:
                    library.shelve(model, index, modify=False)
            del model
            _release(on_disk)
            progress.advance()
            # On disk, the engine keeps only the footprint and re-opens the
            # model (WCS and pixels) through the source when measuring it.
            source = _LibrarySource(library, index, dqbits, on_disk, masks)
            yield ImageInput(
                id=member.name,
                shape=member.shape,
                forward=forward,
                inverse=inverse,
                pixels=None if on_disk else source.pixels,
                group=group_of.get(index),
                source=source if on_disk else None,
            )
            # The engine has taken the footprint (and, on disk, dropped
            # the transforms): nothing of this model is held here now.
            del forward, inverse, source
            _release(on_disk, settle=True)
        progress.finish()
        # Every model was read for its name and shape: check the masks
        # before the engine reads any pixel (and before any model changes).
        masks.read([m.name for m in members], [m.shape for m in members])

    def _group_of(self, library):
        """Sky group label of each model index (empty with grouping='image')."""
        group_of = {}
        if self.grouping == "exposure":
            for label, indices in library.group_indices.items():
                for index in indices:
                    group_of[index] = label
        else:
            log.info("grouping='image': every image gets its own sky level.")
        return group_of

    def _dask_files(self, library, scheduler):
        """Return the members' files for Dask workers (None: run in this process)."""
        if scheduler is None:
            return None
        if self.compare == "differences":
            log.warning(
                "dask_scheduler=%r is not used with compare='differences': pixel "
                "differences need both images of a pair in one process; running here.",
                scheduler,
            )
            return None
        files = _member_files(library)
        if files is None:
            log.warning(
                "dask_scheduler=%r is not used: some images exist only in memory (models "
                "passed from Python or changed since they were read), so workers cannot "
                "open them; running in this process.",
                scheduler,
            )
        return files

    def _file_inputs(self, runner, library, files, dqbits, members):
        """First pass on the Dask workers: each reads its member's file.

        Yields the engine's inputs (footprint and `FileSource`, no
        transforms or pixels); appends each model's name and start level
        to ``members``. The checks are those of `_engine_inputs`.
        """
        group_of = self._group_of(library)
        masks = _Masks(self.skymask)
        sources = [FileSource(path, k, dqbits, masks) for k, path in enumerate(files)]
        progress = Progress(log, "Read the WCS of", len(sources), "models")
        described = runner.map(
            functools.partial(
                describe_file, dqbits=dqbits, subtract=self.subtract, stepsize=self.stepsize
            ),
            sources,
            on_result=lambda k, r: progress.advance(),
        )
        progress.finish(" on Dask")
        members.extend(member for member, _ in described)
        masks.read([m.name for m in members], [m.shape for m in members])
        for index, (member, footprint) in enumerate(described):
            yield ImageInput(
                id=member.name,
                shape=member.shape,
                forward=None,
                inverse=None,
                pixels=None,
                group=group_of.get(index),
                footprint=footprint,
                source=sources[index],
            )

    def _diagnostics_prefix(self):
        """Where to write the fit diagnostics (None: nowhere), checked up front.

        A relative prefix is taken in ``output_dir`` when that is set.
        """
        if not self.diagnostics:
            return None
        prefix = os.path.expanduser(self.diagnostics)
        if self.output_dir and not os.path.isabs(prefix):
            prefix = os.path.join(self.output_dir, prefix)
        check_diagnostics_prefix(prefix, plot=self.diagnostics_plot)
        return prefix

    def _updates(self, result, members):
        """Turn the engine's result into what to write into each model."""
        updates = []
        for index, member in enumerate(members):
            if not result.valid[index]:
                updates.append(_Update(member.name, "SKIPPED", str(self.skymethod)))
                continue
            level = member.start_level
            for term in result.terms[index]:
                level += term
            terms = tuple(result.terms[index]) if self.subtract else ()
            updates.append(_Update(member.name, "COMPLETE", str(self.skymethod), level, terms))
        return updates

    def _apply_user_sky(self, library, *, undo):
        if not self.skylist:
            raise ValueError("skymethod='user' needs a sky value file: set 'skylist'.")
        log.info("Setting the sky of each image to the values in %s.", self.skylist)
        with library:
            names = []
            for index in range(len(library)):
                model = _borrow(library, index)
                try:
                    names.append(_model_name(model, index))
                    if self.subtract:
                        _check_subtractable(model, names[-1])
                finally:
                    library.shelve(model, index, modify=False)
        values = read_skylist(self.skylist, names)
        terms = [(level,) if self.subtract else () for level in values]
        updates = [
            _Update(name, "COMPLETE", "user", level, t)
            for name, level, t in zip(names, values, terms, strict=True)
        ]
        _write_back(
            library, updates, subtract=self.subtract, on_disk=_is_on_disk(library), undo=undo
        )
        _log_levels(updates)
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

    def finalize_result(self, step, reference_files_used):
        """Run stpipe's last pass over the models (metadata, logs), re-reading quietly.

        An on-disk library's models are, by then, the temporary files this
        step wrote (validated as they were saved) or inputs it read and
        validated, so they are opened without validating them again
        (`_members.reread`).
        """
        with reread():
            super().finalize_result(step, reference_files_used)

    def _filename_to_group_id(self, filename):
        # Members without a group_id in the association are read when the
        # library is created; a file that cannot be read is named.
        try:
            return super()._filename_to_group_id(filename)
        except NoGroupID:
            raise
        except Exception as err:
            raise OSError(f"Cannot read {filename!r}: {type(err).__name__}: {err}") from err


#: jwst's name for the step class, for scripts that switch imports.
SkyMatchStep = SkymatchStep


def _n_workers(maximum_cores):
    """Return the number of workers for ``maximum_cores`` (jwst's convention)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        available = os.cpu_count() or 1
    value = str(maximum_cores).strip().lower()
    if value in ("none", "one"):  # stcal's words for "no parallel processing"
        return 1
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
            "'none', 'one', 'quarter', 'half' or 'all'."
        )
    return min(n, available)


def _check_stepsize(stepsize):
    """Reject a ``stepsize`` that is neither None nor a positive integer.

    The spec keeps jwst's ``integer(default=None)`` so that jwst parameter
    files load unchanged; the sign is checked here.
    """
    if stepsize is None:
        return
    is_int = isinstance(stepsize, (int, np.integer)) and not isinstance(stepsize, bool)
    if is_int and stepsize > 0:
        return
    raise ValueError(
        f"stepsize={stepsize!r} is not valid: use None (image corners only) or a "
        "positive integer (maximum spacing of footprint vertices, in pixels)."
    )


class _Masks:
    """The user's sky masks (``skymask``), known once every model was read."""

    def __init__(self, path):
        self.path = path
        self._masks = None

    def read(self, names, shapes):
        """Check the mask list against the images (errors name the problem)."""
        if self.path:
            self._masks = read_skymask(self.path, names, shapes)

    def apply(self, index, good):
        """Leave usable in ``good`` only what the image's mask allows (in place)."""
        if self._masks is not None:
            mask = self._masks.mask(index)
            if mask is not None:
                good &= mask


def _parse_dqbits(dqbits):
    """DQ flags to ignore as an integer (None: use every finite pixel)."""
    try:
        return interpret_bit_flags(dqbits, flag_name_map=_dq_flags)
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"Cannot interpret dqbits={dqbits!r}: {err}. Use an integer, flag names such as "
            "'~DO_NOT_USE+NON_SCIENCE', or None."
        ) from err


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
    _FREEZING[:] = [True, 0]
    try:
        yield
    finally:
        _FREEZING[0] = False
        gc.unfreeze()


#: Whether `_quick_collections` froze the objects of the process, and how
#: many models `_release` has settled since.
_FREEZING = [False, 0]

#: Models settled between two full collections of everything frozen.
_SWEEP_EVERY = 100


def _release(on_disk, *, settle=False):
    """Free what a model released by an on-disk library held.

    Data models contain reference cycles, so a model dropped by an on-disk
    library is only freed by the cyclic garbage collector, which runs on
    object counts, not bytes: left to itself, several models' arrays
    (about 100 MB each for NIRCam) could pile up. Collecting right away
    keeps one model per worker in memory. Nothing to do in memory.

    ``settle``: the caller holds no other model (a pass over the models
    in one thread), so what survives the collection is kept for the rest
    of the step; it is frozen too, so that each collection walks only what
    was made since, not everything read so far (which made a pass over N
    models take time in N^2). A frozen object that later becomes cyclic
    garbage is never collected while frozen (asdf keeps the schema
    resolvers of the last 128 files read and drops the oldest one for
    each new file), so every `_SWEEP_EVERY` settled models everything is
    unfrozen and collected once: a bounded amount of such garbage at any
    time, for a full walk per `_SWEEP_EVERY` models.
    """
    if on_disk:
        gc.collect()
        if settle and _FREEZING[0]:
            _FREEZING[1] += 1
            if _FREEZING[1] % _SWEEP_EVERY == 0:
                gc.unfreeze()
                gc.collect()
            gc.freeze()
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


class _LibrarySource:
    """Borrow one model of an open library for its pixels (and WCS).

    The model is returned to the library as soon as its science array,
    good-pixel mask and transforms are taken, so that, for an on-disk
    library, its other arrays are freed while the statistics are
    computed. The user's sky mask (`_Masks`), if any, is read then too.
    Calling the object is a context manager yielding a complete
    `ImageInput` (an engine ``source``); `pixels` yields only the arrays.
    """

    def __init__(self, library, index, dqbits, on_disk, masks):
        self._library = library
        self._index = index
        self._dqbits = dqbits
        self._on_disk = on_disk
        self._masks = masks

    def _read(self, with_wcs):
        with _LEDGER_LOCK:
            model = _borrow(self._library, self._index, again=True)
        try:
            image = usable_image(model, self._index, self._dqbits, self._masks, with_wcs=with_wcs)
        finally:
            with _LEDGER_LOCK:
                self._library.shelve(model, self._index, modify=False)
        del model
        _release(self._on_disk)
        return image

    @contextlib.contextmanager
    def pixels(self):
        """Yield ``(data, good)``."""
        try:
            with self._read(False).pixels() as arrays:
                yield arrays
        finally:
            if self._on_disk:
                _trim_heap()

    @contextlib.contextmanager
    def __call__(self):
        try:
            yield self._read(True)
        finally:
            if self._on_disk:
                _trim_heap()


# -- reading members ---------------------------------------------------------


def _shares_models(given, opened):
    """Whether ``opened`` holds the content of models of ``given``.

    A `ModelContainer` made from a list of models wraps each in a new model
    object over the same tree and arrays, so the trees are compared.
    """
    if not isinstance(given, (ModelContainer, list, tuple)):
        return False
    if not isinstance(opened, (ModelContainer, list, tuple)):
        return False
    trees = {id(m.instance) for m in given if isinstance(m, JwstDataModel)}
    return any(isinstance(m, JwstDataModel) and id(m.instance) in trees for m in opened)


def _borrow(library, index, *, again=False):
    """Borrow model ``index``; an error opening it names its file.

    ``library.borrow`` opens an association member on first use (and, for
    an on-disk library, on every use); a truncated or unreadable file
    otherwise surfaces as a bare numpy or FITS error. ``again``: the step
    read this model before in this run, so its file is not validated again
    (`_members.reread`).
    """
    try:
        if again:
            with reread():
                return library.borrow(index)
        return library.borrow(index)
    except (BorrowError, ClosedLibraryError, MemoryError):
        raise
    except Exception as err:
        raise OSError(
            f"Cannot read image {index + 1} of {len(library)} "
            f"({_member_path(library, index)}): {type(err).__name__}: {err}"
        ) from err


def _member_path(library, index):
    """Name the file of association member ``index`` (or its index)."""
    try:
        expname = library.asn["products"][0]["members"][index]["expname"]
    except (KeyError, IndexError, TypeError):
        return f"member #{index}"
    asn_dir = getattr(library, "asn_dir", None)
    if asn_dir in (None, "None") or os.path.isabs(expname):
        return repr(str(expname))
    return repr(os.path.join(asn_dir, expname))


def _member_files(library):
    """Absolute paths of the files holding the library's models, or None.

    A model already loaded in memory (a list of models, or an in-memory
    library that lent it out) may differ from its file, and so may
    anything not on a local path: then None. An on-disk library's
    temporary copy counts as the model's file. stpipe has no public
    accessor for these, so its attributes are read defensively.
    """
    temp = getattr(library, "_temp_filenames", None) or {}
    loaded = getattr(library, "_loaded_models", None)
    asn_dir = getattr(library, "_asn_dir", None)
    if loaded is None or asn_dir is None:
        return None
    try:
        members = library.asn["products"][0]["members"]
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    files = []
    for index in range(len(library)):
        if index in temp:
            path = temp[index]
        elif index in loaded:
            return None
        else:
            path = os.path.join(asn_dir, members[index]["expname"])
        path = os.path.abspath(os.fspath(path))
        if not os.path.isfile(path):
            return None
        files.append(path)
    return files


def _association_of(paths):
    """Make an association dictionary listing the files ``paths``.

    stpipe's library keeps models on disk only for an association; a list
    of file names becomes one, with absolute paths so that the members
    are found whatever the working directory. Group ids are read from the
    files by the library, as for an association file. A list holding
    anything but paths is returned unchanged (the library rejects it).
    """
    if not all(isinstance(p, (str, os.PathLike)) for p in paths):
        return paths
    members = [{"expname": os.path.abspath(os.fspath(p)), "exptype": "science"} for p in paths]
    return {"asn_id": "skymatch", "products": [{"name": "skymatch", "members": members}]}


# -- writing results back ----------------------------------------------------


@dataclass
class _Update:
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
class _Undo:
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


def _write_back(library, updates, *, subtract, on_disk, undo):
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
                _release(on_disk, settle=True)
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
    model = _borrow(library, index, again=True)
    record = _Undo.of(model) if undo else None
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


def _log_levels(updates, *, max_lines=20):
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
