"""From data models to engine inputs: checks, usable pixels, WCS, sources.

What the step needs from one data model: its name, shape and unit, the
checks done before any model changes, the level already subtracted, its
usable pixels and its WCS transforms (`describe`, `usable_image`).
`ModelInputs` reads an open library's models one at a time and yields the
engine's inputs (`ImageInput`); on Dask, workers read the files themselves
(`FileSource`, `describe_file`). `model_input` turns one model into an
engine input, for scripts that call the engine directly.

An on-disk library's members whose FITS files are known are opened here
straight from their files (`open_member_file`), without reading the
arrays that are not needed: none in the WCS pass, the science and DQ
arrays only in the pixel pass.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.nddata.bitmask import interpret_bit_flags
from jwst.lib.exposure_types import SPEC_TYPES
from stdatamodels import filetype
from stdatamodels.jwst import datamodels
from stdatamodels.jwst.datamodels import JwstDataModel
from stdatamodels.jwst.datamodels.dqflags import pixel as _dq_flags

from ._engine import ImageInput
from ._footprints import image_footprint
from ._library import LEDGER_LOCK, borrow, is_on_disk, member_files, reread
from ._masks import read_skymask
from ._memory import release, trim_heap
from ._progress import Progress

__all__ = [
    "FileSource",
    "Member",
    "ModelInputs",
    "SkyMaskSet",
    "check_model",
    "check_subtractable",
    "data_unit",
    "describe",
    "describe_file",
    "good_pixels",
    "model_input",
    "model_name",
    "open_member_file",
    "parse_dqbits",
    "start_level",
    "usable_image",
    "wcs_callables",
]

log = logging.getLogger(__name__)

#: dqbits of jwst's step: pixels flagged DO_NOT_USE or NON_SCIENCE are not used.
DEFAULT_DQBITS = "~DO_NOT_USE+NON_SCIENCE"


def data_unit(model):
    """Return the unit of the model's data (``meta.bunit_data``), or None."""
    unit = getattr(model.meta, "bunit_data", None)
    return str(unit) if unit else None


def model_name(model, index):
    """Return the model's file name, or ``model #<index>``."""
    return model.meta.filename or f"model #{index}"


def check_model(model, name, dqbits):
    """Check that ``model`` is a 2-D image with a WCS; return its shape.

    With ``dqbits`` set, its DQ array must have the shape of the data; a
    model without a DQ array is measured on its finite pixels.
    """
    data = getattr(model, "data", None)
    kind = type(model).__name__
    if data is None:
        raise ValueError(
            f"Image {name!r}: data must be a 2-D image, but this {kind} has no data array."
        )
    if np.ndim(data) != 2:
        raise ValueError(
            f"Image {name!r}: data must be a 2-D image, got shape {np.shape(data)} ({kind})."
        )
    if getattr(model.meta, "wcs", None) is None:
        raise ValueError(f"Image {name!r} has no WCS (meta.wcs); run assign_wcs on it first.")
    shape = tuple(int(n) for n in data.shape)
    if dqbits is not None:
        dq = getattr(model, "dq", None)
        if dq is None:
            log.info("Image %r has no DQ array: all its finite pixels are usable.", name)
        elif np.shape(dq) != shape:
            raise ValueError(
                f"Image {name!r}: its DQ array has shape {np.shape(dq)} but its data "
                f"have shape {shape}; they must be the same."
            )
    return shape


def check_subtractable(model, name):
    """Check, before any model changes, that the sky can be subtracted in place."""
    data = getattr(model, "data", None)
    if data is None:
        raise ValueError(
            f"Image {name!r}: the sky cannot be subtracted: this "
            f"{type(model).__name__} has no data array."
        )
    if not np.issubdtype(data.dtype, np.floating):
        raise ValueError(
            f"Image {name!r}: the sky cannot be subtracted from data of type "
            f"{data.dtype}; subtract=True needs floating-point data."
        )
    if not data.flags.writeable:
        raise ValueError(
            f"Image {name!r}: its data array is read-only, so the sky cannot be "
            "subtracted (subtract=True); make it writeable or use subtract=False."
        )


def good_pixels(model, dqbits):
    """Pixels usable for sky statistics: finite and free of rejected DQ flags.

    ``dqbits`` is the integer of flags to *ignore* (astropy's
    ``interpret_bit_flags`` convention); a pixel with any other flag set
    is rejected; a model without DQ array has only its finite pixels
    checked. Computed with one integer temporary, not the several of
    ``bitfield_to_boolean_mask``, to keep the memory per image small.
    """
    good = np.isfinite(model.data)
    dq = getattr(model, "dq", None)
    if dqbits is None or dq is None:
        return good
    dq = np.asarray(dq)
    if dq.dtype.kind != "u":
        dq = dq.astype(np.uint32)  # as astropy interprets a signed bit field
    bad = dq.dtype.type(~int(dqbits) & np.iinfo(dq.dtype).max)
    flagged = np.bitwise_and(dq, bad)
    good &= flagged == 0
    return good


def wcs_callables(wcs):
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


@dataclass
class Member:
    """What the first pass learned about one model (the engine input's ``id``).

    Attributes
    ----------
    name : str
        The model's file name (or ``model #<index>``); ``str(member)``.
    start_level : float
        Sky level already subtracted from it (jwst's re-run rules).
    shape : tuple of int
        Shape of its data.
    unit : str or None
        Unit of its data (``meta.bunit_data``).
    exp_type : str or None
        Its exposure type (``meta.exposure.type``).
    """

    name: str
    start_level: float
    shape: tuple = ()
    unit: str | None = None
    exp_type: str | None = None

    def __str__(self):
        return self.name


def start_level(model, name, subtract):
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
    if bool(bkg.subtracted) != bool(subtract):
        raise ValueError(
            f"'subtract' ({subtract}) is inconsistent with the background "
            f"already recorded in image {name!r} "
            f"(meta.background.subtracted={bkg.subtracted})."
        )
    level = float(bkg.level)
    if math.isfinite(level):
        return level if subtract else 0.0
    if subtract:
        raise ValueError(
            f"Image {name!r}: the sky level recorded as already subtracted "
            f"(meta.background.level={level}) is not finite, so the total sky "
            "cannot be known. Correct or remove meta.background before running "
            "with subtract=True."
        )
    log.warning(
        "Image %r: the earlier meta.background.level (%s) is not finite; it is "
        "not used (subtract=False) and is replaced by the new level.",
        name,
        level,
    )
    return 0.0


@dataclass(frozen=True)
class FileSource:
    """One member re-opened from its file (picklable).

    Calling it returns a context manager yielding the member as an
    `ImageInput` with its transforms and usable pixels; the model itself
    is closed before the pixels are used.

    Attributes
    ----------
    path : str
        Absolute path of the member's file.
    index : int
        Its index in the input.
    dqbits : int or None
        DQ flags to ignore (see `good_pixels`).
    masks : object
        The user's sky masks, with ``apply(index, good)``; picklable.
    """

    path: str
    index: int
    dqbits: int | None
    masks: object

    @contextlib.contextmanager
    def __call__(self):
        # describe_file read and validated the file in the first pass.
        with reread():
            model = datamodels.open(self.path)
        try:
            image = usable_image(model, self.index, self.dqbits, self.masks)
        finally:
            model.close()
        del model
        yield image


def describe(model, index, dqbits, subtract):
    """Check one open model before any model changes; return what the step keeps.

    Parameters
    ----------
    model : DataModel
    index : int
        Its index in the input (names an unnamed model).
    dqbits : int or None
        DQ flags to ignore.
    subtract : bool
        Whether the sky will be subtracted (checked; rules the start level).

    Returns
    -------
    Member

    Raises
    ------
    ValueError
        If the model fails a check (see `check_model`, `check_subtractable`,
        `start_level`).
    """
    name = model_name(model, index)
    shape = check_model(model, name, dqbits)
    if subtract:
        check_subtractable(model, name)
    exp_type = getattr(getattr(model.meta, "exposure", None), "type", None)
    return Member(
        name, start_level(model, name, subtract), shape, data_unit(model), exp_type or None
    )


def usable_image(model, index, dqbits, masks, *, with_wcs=True, detach=False):
    """Make the engine's view of one open model: usable pixels and transforms.

    The returned input holds the science array and good-pixel mask (DQ,
    finite values and the user's mask), not the model, so the model can be
    released right after.

    Parameters
    ----------
    model : DataModel
    index : int
        Its index in the input.
    dqbits : int or None
        DQ flags to ignore.
    masks : object
        The user's sky masks, with ``apply(index, good)``.
    with_wcs : bool, optional
        Also prepare the WCS transforms (None otherwise).
    detach : bool, optional
        Copy the science array (the model's is a view of a memory-mapped
        file, `open_member_file`), so that the file can be closed at once.

    Returns
    -------
    ImageInput
    """
    data = model.data
    if detach:
        data = np.array(data)  # same dtype and values, in memory
        good = good_pixels(_Arrays(data, getattr(model, "dq", None)), dqbits)
    else:
        good = good_pixels(model, dqbits)
    masks.apply(index, good)
    forward, inverse = wcs_callables(model.meta.wcs) if with_wcs else (None, None)

    @contextlib.contextmanager
    def pixels():
        yield data, good

    return ImageInput(
        id=model_name(model, index),
        shape=data.shape,
        forward=forward,
        inverse=inverse,
        pixels=pixels,
    )


@dataclass(frozen=True)
class _Arrays:
    """A model's science and DQ arrays (what `good_pixels` reads)."""

    data: object
    dq: object


#: How `open_member_file` opens a file for its metadata: arrays memory-mapped
#: and left unscaled, so that none is read (a scaled one, such as a DQ array
#: with BZERO, would be read in full to be converted).
_METADATA_ONLY = {"memmap": True, "do_not_scale_image_data": True}


def _model_class(hdulist):
    """Return the data model class named by a FITS file (``DATAMODL``), or None."""
    name = hdulist[0].header.get("DATAMODL")
    cls = getattr(datamodels, name, None) if isinstance(name, str) else None
    if isinstance(cls, type) and issubclass(cls, JwstDataModel):
        return cls
    return None


@contextlib.contextmanager
def open_member_file(path, *, pixels, again=False):
    """Open a member's FITS file as its data model, reading few of its arrays.

    What ``datamodels.open(path)`` does (the same class, from the file's
    ``DATAMODL``; the same validation of its metadata), but on a
    memory-mapped file: an array is read only when it is used. With
    ``pixels=False`` no array is read (their shapes are known, unscaled
    arrays keep the type they have in the file); with ``pixels=True``
    arrays are scaled as usual (the DQ array read and converted) and the
    caller copies the science array (`usable_image` with ``detach``) before
    the file is closed. The model and the file are closed on exit; the
    memory map goes with the last array that uses it (`release` collects
    the model).

    Yields None, after closing anything it opened, when the file cannot
    be opened this way (not FITS, no known ``DATAMODL``, or any error
    while opening it): the caller then opens it as the library does, which
    gives the usual model or raises the usual error.

    Parameters
    ----------
    path : str
        The member's file.
    pixels : bool
        Whether its science and DQ arrays will be used.
    again : bool, optional
        The file was read and validated before in this run (`reread`).
    """
    hdulist = model = None
    failed = False
    try:
        if filetype.check(path) == "fits":
            hdulist = fits.open(path, **({} if pixels else _METADATA_ONLY))
            cls = _model_class(hdulist)
            if cls is not None:
                with reread() if again else contextlib.nullcontext():
                    model = cls(hdulist)
    except MemoryError:
        raise
    except Exception as err:  # the library's open gives the error, if any
        log.debug("Opening %r from its file failed (%s); opening it as usual.", path, err)
        failed = True
    if model is None and hdulist is not None:
        hdulist.close()
        hdulist = None
    if failed:
        gc.collect()  # what the failed open had mapped
    try:
        yield model
    finally:
        if model is not None:
            model.close()
        if hdulist is not None:
            hdulist.close()
        del model, hdulist


def _on_disk_files(library):
    """Return the files of an on-disk library's models, for `open_member_file`, or None.

    None (every model opened through the library) for a library in
    memory, one whose files are unknown, or one opening its files with
    options of its own.
    """
    if not is_on_disk(library) or getattr(library, "_datamodels_open_kwargs", None):
        return None
    return member_files(library)


def describe_file(source, *, dqbits, subtract, stepsize):
    """First pass over one member, on a worker: checks and footprint.

    Parameters
    ----------
    source : FileSource
        The member.
    dqbits : int or None
        DQ flags to ignore.
    subtract : bool
        Whether the sky will be subtracted (checked, and rules the start level).
    stepsize : int or None
        Footprint vertex spacing.

    Returns
    -------
    member : Member
    footprint : SphericalPolygon

    Raises
    ------
    OSError
        If the file cannot be read (the message names it).
    ValueError
        If the member fails a check (see `check_model`).
    """
    try:
        model = datamodels.open(source.path)
    except Exception as err:
        raise OSError(
            f"Cannot read image {source.index + 1} ({source.path!r}): {type(err).__name__}: {err}"
        ) from err
    try:
        member = describe(model, source.index, dqbits, subtract)
        forward, _ = wcs_callables(model.meta.wcs)
        footprint = image_footprint(member.shape, forward, stepsize, name=member.name)
    finally:
        model.close()
    return member, footprint


def parse_dqbits(dqbits):
    """DQ flags to ignore as an integer (None: use every finite pixel).

    Parameters
    ----------
    dqbits : str, int or None
        Flag names such as ``'~DO_NOT_USE+NON_SCIENCE'``, an integer, or None.

    Returns
    -------
    int or None

    Raises
    ------
    ValueError
        If the value cannot be interpreted (the message gives the forms).
    """
    try:
        return interpret_bit_flags(dqbits, flag_name_map=_dq_flags)
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"Cannot interpret dqbits={dqbits!r}: {err}. Use an integer, flag names such as "
            "'~DO_NOT_USE+NON_SCIENCE', or None."
        ) from err


def model_input(model, *, dqbits=DEFAULT_DQBITS, group=None):
    """Make the engine's input for one image model, as the step makes it.

    Its usable pixels are those the step would use (finite and not flagged
    by ``dqbits``); the model's arrays are referenced, not copied.

    Parameters
    ----------
    model : ImageModel
        A 2-D image with a WCS (``meta.wcs``).
    dqbits : str, int or None, optional
        DQ flags to ignore (the step's ``dqbits``).
    group : object, optional
        Sky group label (the step uses the model's exposure group).

    Returns
    -------
    ImageInput

    Raises
    ------
    ValueError
        If the model is not a 2-D image with a WCS, or ``dqbits`` is not valid.
    """
    bits = parse_dqbits(dqbits)
    name = model_name(model, 0)
    check_model(model, name, bits)
    image = usable_image(model, 0, bits, SkyMaskSet(None))
    return ImageInput(
        id=name,
        shape=image.shape,
        forward=image.forward,
        inverse=image.inverse,
        pixels=image.pixels,
        group=group,
    )


class SkyMaskSet:
    """The user's sky masks (``skymask``), checked once every model was read.

    Picklable: it travels to Dask workers with the sources.

    Parameters
    ----------
    path : str or None
        The mask list file (None: no masks).
    """

    def __init__(self, path):
        self.path = path
        self._masks = None

    def read(self, names, shapes):
        """Check the mask list against the images (errors name the problem).

        Parameters
        ----------
        names : list of str
        shapes : list of tuple of int
        """
        if self.path:
            self._masks = read_skymask(self.path, names, shapes)

    def apply(self, index, good):
        """Leave usable in ``good`` only what the image's mask allows (in place).

        Parameters
        ----------
        index : int
            Image index (input order).
        good : ndarray of bool
        """
        if self._masks is not None:
            mask = self._masks.mask(index)
            if mask is not None:
                good &= mask


class ModelInputs:
    """The engine inputs of the models of an open library, read one at a time.

    Iterating reads the models in order and yields an `ImageInput` for
    each (its ``id`` the model's `Member`), checking each model before any
    model is modified: it raises if a model cannot be read, has no WCS, is
    not a 2-D image, has a DQ array of another shape, has background
    metadata inconsistent with ``subtract``, or (with ``subtract``) data
    that cannot be changed in place. Once every model was read, the user's
    sky masks are checked against them, before the engine reads any pixel.

    Parameters
    ----------
    library : ModelLibrary
        The open library.
    options : StepOptions
        ``dqbits``, ``subtract``, ``grouping``, ``skymask`` and the engine's
        ``stepsize``.
    runner : Runner, optional
        A remote runner reads the files on its workers (`files` must be
        given); otherwise the models are read here.
    files : list of str, optional
        The members' files, for a remote runner.
    """

    def __init__(self, library, options, runner=None, files=None):
        self._library = library
        self._options = options
        self._masks = SkyMaskSet(options.skymask)
        self._remote = runner if runner is not None and runner.remote else None
        self._files = files
        if self._remote is not None and files is None:
            raise ValueError("reading the models on remote workers needs their files")

    def __iter__(self):
        if self._remote is not None:
            return self._from_files()
        return self._from_library()

    def _group_of(self):
        """Sky group label of each model index (empty with grouping='image')."""
        group_of = {}
        if self._options.grouping == "exposure":
            for label, indices in self._library.group_indices.items():
                for index in indices:
                    group_of[index] = label
        else:
            log.info("grouping='image': every image gets its own sky level.")
        return group_of

    def _from_library(self):
        """Read the models here; the engine works on each while the next is read."""
        library, options = self._library, self._options
        on_disk = is_on_disk(library)
        group_of = self._group_of()
        # On disk, each model is opened from its file when the file is known,
        # without reading its arrays; otherwise it is borrowed from the library.
        files = _on_disk_files(library)
        seen = []
        progress = Progress(log, "Read the WCS of", len(library), "models")
        for index in range(len(library)):
            path = None if files is None else files[index]
            member, forward, inverse = self._describe(index, path)
            seen.append(member)
            pixels = int(np.prod(member.shape))
            release(on_disk, pixels=pixels)
            progress.advance()
            # On disk, the engine keeps only the footprint and re-opens the
            # model (WCS and pixels) through the source when measuring it.
            source = _LibrarySource(library, index, options.dqbits, on_disk, self._masks, path)
            yield ImageInput(
                id=member,
                shape=member.shape,
                forward=forward,
                inverse=inverse,
                pixels=None if on_disk else source.pixels,
                group=group_of.get(index),
                source=source if on_disk else None,
            )
            # The engine has taken the footprint (and, on disk, dropped
            # the transforms): nothing of this model is held here now.
            del forward, inverse, source, member
            release(on_disk, settle=True, pixels=pixels)
        progress.finish()
        self._check(seen)

    def _describe(self, index, path):
        """Check model ``index`` (`describe`); return it and its WCS transforms.

        From its file (``path``, none of its arrays read) when it can be
        opened that way and the file gives the answers the library's model
        would: the shapes are the same, but, with ``subtract``, the type
        and writeability of data left unscaled are not those the library's
        model has, so data that are not floating-point (or not writeable)
        are checked on the library's model.
        """
        library, options = self._library, self._options
        if path is not None:
            described = self._describe_file(index, path)
            if described is not None:
                return described
        with LEDGER_LOCK:
            model = borrow(library, index)
        try:
            member = describe(model, index, options.dqbits, options.subtract)
            forward, inverse = wcs_callables(model.meta.wcs)
        finally:
            with LEDGER_LOCK:
                library.shelve(model, index, modify=False)
        return member, forward, inverse

    def _describe_file(self, index, path):
        """`_describe` from the member's file, or None to borrow the model instead.

        A model failing a check is borrowed too, which raises the error (so
        that no traceback holds on to the memory-mapped file).
        """
        options = self._options
        with open_member_file(path, pixels=False) as model:
            if model is None:
                return None
            if _checkable(model, options.subtract):
                try:
                    member = describe(model, index, options.dqbits, options.subtract)
                except ValueError:
                    pass
                else:
                    return (member, *wcs_callables(model.meta.wcs))
        del model
        gc.collect()  # the model's memory map, before the library's open
        return None

    def _from_files(self):
        """Read the models on the remote workers, each from its file.

        The inputs carry the footprint and a `FileSource`, no transforms
        or pixels.
        """
        options = self._options
        group_of = self._group_of()
        sources = [
            FileSource(path, k, options.dqbits, self._masks) for k, path in enumerate(self._files)
        ]
        progress = Progress(log, "Read the WCS of", len(sources), "models")
        described = self._remote.map(
            functools.partial(
                describe_file,
                dqbits=options.dqbits,
                subtract=options.subtract,
                stepsize=options.match.stepsize,
            ),
            sources,
            on_result=lambda k, r: progress.advance(),
        )
        progress.finish(" on Dask")
        self._check([member for member, _ in described])
        for index, (member, footprint) in enumerate(described):
            yield ImageInput(
                id=member,
                shape=member.shape,
                forward=None,
                inverse=None,
                pixels=None,
                group=group_of.get(index),
                footprint=footprint,
                source=sources[index],
            )

    def _check(self, members):
        """After the last model: the sky masks, and a word on spectroscopic data."""
        self._masks.read([m.name for m in members], [m.shape for m in members])
        spectral = Counter(
            m.exp_type for m in members if m.exp_type and m.exp_type.lower() in SPEC_TYPES
        )
        if spectral:
            kinds = ", ".join(f"{t} ({n})" for t, n in sorted(spectral.items()))
            log.warning(
                "%d of %d image(s) have a spectroscopic exposure type (EXP_TYPE %s): sky "
                "matching measures the sky of imaging data, and dispersed images give "
                "levels that mean little.",
                sum(spectral.values()),
                len(members),
                kinds,
            )


def _checkable(model, subtract):
    """Whether `describe` gives on ``model`` (metadata only) the library model's answer."""
    if not subtract:
        return True
    data = getattr(model, "data", None)
    if data is None:
        return True
    return bool(np.issubdtype(data.dtype, np.floating) and data.flags.writeable)


class _LibrarySource:
    """Borrow one model of an open library for its pixels (and WCS).

    The model is returned to the library as soon as its science array,
    good-pixel mask and transforms are taken, so that, for an on-disk
    library, its other arrays are freed while the statistics are
    computed. The user's sky mask (`SkyMaskSet`), if any, is read then too.
    Calling the object is a context manager yielding a complete
    `ImageInput` (an engine ``source``); `pixels` yields only the arrays.

    With ``path`` (an on-disk library's member file), the model is opened
    from its file instead (`open_member_file`), reading its science and DQ
    arrays only; the library is used if that fails.
    """

    def __init__(self, library, index, dqbits, on_disk, masks, path=None):
        self._library = library
        self._index = index
        self._dqbits = dqbits
        self._on_disk = on_disk
        self._masks = masks
        self._path = path
        self._pixels = None

    def _from_file(self, with_wcs):
        """Read the image from its file; None: open it through the library instead.

        On an error the model is borrowed from the library instead, which
        raises it (no traceback then holds on to the memory-mapped file).
        """
        with contextlib.ExitStack() as stack:
            with LEDGER_LOCK:
                model = stack.enter_context(open_member_file(self._path, pixels=True, again=True))
            if model is None:
                return None
            try:
                return usable_image(
                    model, self._index, self._dqbits, self._masks, with_wcs=with_wcs, detach=True
                )
            except MemoryError:
                raise
            except Exception:  # the library's model gives the error, if any
                pass
        del model
        gc.collect()  # the model's memory map, before the library's open
        return None

    def _read(self, with_wcs):
        image = None if self._path is None else self._from_file(with_wcs)
        if image is None:
            with LEDGER_LOCK:
                model = borrow(self._library, self._index, again=True)
            try:
                image = usable_image(
                    model, self._index, self._dqbits, self._masks, with_wcs=with_wcs
                )
            finally:
                with LEDGER_LOCK:
                    self._library.shelve(model, self._index, modify=False)
            del model
        self._pixels = int(np.prod(image.shape))
        release(self._on_disk, pixels=self._pixels)
        return image

    @contextlib.contextmanager
    def pixels(self):
        """Yield ``(data, good)``."""
        try:
            with self._read(False).pixels() as arrays:
                yield arrays
        finally:
            if self._on_disk:
                trim_heap(self._pixels)

    @contextlib.contextmanager
    def __call__(self):
        try:
            yield self._read(True)
        finally:
            if self._on_disk:
                trim_heap(self._pixels)
