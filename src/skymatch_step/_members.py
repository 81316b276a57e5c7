"""Reading the members of the input: checks, usable pixels, WCS, sources.

What the step needs from one data model: its name, shape and unit, the
checks done before any model changes, the level already subtracted, its
usable pixels and its WCS transforms. `FileSource` re-opens a member from
its file; it is picklable, so Dask workers read the images themselves
(`describe_file` is their first pass).
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

import asdf
import numpy as np
from stdatamodels.jwst import datamodels

from ._footprints import image_footprint
from ._methods import ImageInput

__all__ = [
    "FileSource",
    "Member",
    "check_model",
    "check_subtractable",
    "data_unit",
    "describe",
    "describe_file",
    "good_pixels",
    "model_name",
    "start_level",
    "usable_image",
    "wcs_callables",
]

log = logging.getLogger(__name__)


def data_unit(model):
    unit = getattr(model.meta, "bunit_data", None)
    return str(unit) if unit else None


def model_name(model, index):
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
    """What the first pass learned about one model."""

    name: str
    start_level: float
    shape: tuple = ()
    unit: str | None = None


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


@contextlib.contextmanager
def reread():
    """Open, in this thread, files already read and validated in this run.

    The step reads each model up to three times (its WCS, its pixels, the
    write-back), and stpipe's last pass over a library the step created
    reads it once more. The first read validates the file against its
    schemas, as `stdatamodels` always does; the later reads (of the same
    unchanged file, or of the temporary copy validated as the write-back
    saved it) skip that validation, which is about half the time of
    opening a small model (asdf reloads the schemas for each file). asdf's
    configuration is per thread, so other threads are unaffected.
    """
    with asdf.config_context() as config:
        config.validate_on_read = False
        yield


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
    return Member(name, start_level(model, name, subtract), shape, data_unit(model))


def usable_image(model, index, dqbits, masks, *, with_wcs=True):
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

    Returns
    -------
    ImageInput
    """
    data = model.data
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
