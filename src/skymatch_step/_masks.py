"""User sky masks (``skymask``): pixels an image may use for its sky.

A sky mask list is a two-column text file, like a ``skylist``: an image
name (matched by file stem without the pipeline suffix, see
``skymatch_step._skylist.image_key``) and a FITS mask file. A mask is a 2-D
image of the image's shape; a nonzero, finite pixel may be used for sky
statistics, a zero (or NaN) pixel may not. The step ANDs the mask with
the pixels it would use anyway (finite, not flagged by ``dqbits``), for
every sky method and comparison mode.

Everything about the list and the mask files (names, paths, HDU, shape) is
checked by `read_skymask` from the FITS headers, before any model
changes; the mask pixels are read only when `SkyMasks.mask` asks for them,
so that with many images the masks are not all in memory at once.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from ._skylist import image_key, read_name_list

__all__ = ["MaskFile", "SkyMasks", "read_skymask"]

log = logging.getLogger(__name__)

#: What `read_skymask` catches from astropy when a file is not usable FITS.
_FITS_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError, EOFError)


@dataclass(frozen=True)
class MaskFile:
    """Where one image's mask is.

    Attributes
    ----------
    path : pathlib.Path
        The FITS file.
    hdu : int
        Index of the HDU holding the mask.
    shape : tuple of int
        Its shape ``(ny, nx)``, from the header.
    """

    path: Path
    hdu: int
    shape: tuple[int, int]


class SkyMasks:
    """The sky masks of a set of images, read when asked for.

    Parameters
    ----------
    files : list of MaskFile or None
        For each image (in input order), its mask file, or `None` when the
        image has no mask (all its pixels may be used).

    Notes
    -----
    The object holds file names only; it can be pickled and sent to
    worker processes.
    """

    def __init__(self, files):
        self.files = list(files)

    def __len__(self):
        return len(self.files)

    @property
    def count(self):
        """Number of images that have a mask."""
        return sum(f is not None for f in self.files)

    def has_mask(self, index):
        """Whether image ``index`` has a mask.

        Parameters
        ----------
        index : int
            Image index (input order).

        Returns
        -------
        bool
        """
        return self.files[index] is not None

    def mask(self, index):
        """Load the mask of image ``index``.

        Parameters
        ----------
        index : int
            Image index (input order).

        Returns
        -------
        ndarray of bool or None
            True where the mask pixel is nonzero and finite (usable);
            `None` when the image has no mask.

        Raises
        ------
        ValueError
            If the mask file can no longer be read or changed shape since
            `read_skymask` checked it.
        """
        entry = self.files[index]
        if entry is None:
            return None
        try:
            with fits.open(entry.path, memmap=False, lazy_load_hdus=True) as hdul:
                data = hdul[entry.hdu].data
        except _FITS_ERRORS as err:
            raise ValueError(f"Cannot read sky mask {str(entry.path)!r}: {err}") from err
        if data is None or data.shape != entry.shape:
            got = None if data is None else data.shape
            raise ValueError(
                f"Sky mask {str(entry.path)!r} HDU {entry.hdu}: shape {got} is not the "
                f"{entry.shape} checked before; was the file changed?"
            )
        if data.dtype.kind == "f":
            return np.isfinite(data) & (data != 0)
        return data != 0


def _first_image(path):
    """Index, shape and data end of the first image HDU with data, or None."""
    with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
        for index, hdu in enumerate(hdul):
            if not isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU):
                continue
            shape = tuple(int(n) for n in hdu.shape)
            if not shape or 0 in shape:
                continue
            need = None
            if not isinstance(hdu, fits.CompImageHDU):
                nbytes = abs(int(hdu.header["BITPIX"])) // 8 * int(np.prod(shape))
                need = hdu.fileinfo()["datLoc"] + nbytes
            return index, shape, need
    return None


def _mask_hdu(path):
    """Index and shape of the mask HDU of a FITS file, from its headers.

    The mask is the first image HDU (primary or extension) that holds
    data; it must be 2-D.
    """
    try:
        size = os.path.getsize(path)
        with warnings.catch_warnings():
            # A truncated file is reported below as an error naming the HDU.
            warnings.filterwarnings(
                "ignore", message="File may have been truncated", category=AstropyUserWarning
            )
            found = _first_image(path)
    except _FITS_ERRORS as err:
        raise ValueError(f"Cannot read sky mask {str(path)!r} as FITS: {err}") from err
    if found is None:
        raise ValueError(
            f"Sky mask {str(path)!r} holds no image data: expected a 2-D image in the "
            f"primary HDU or in an image extension"
        )
    index, shape, need = found
    if len(shape) != 2:
        raise ValueError(
            f"Sky mask {str(path)!r}: the image in HDU {index} has {len(shape)} dimensions "
            f"{shape}; a mask must be 2-D (ny, nx)"
        )
    if need is not None and need > size:
        raise ValueError(
            f"Sky mask {str(path)!r}: the data of HDU {index} are truncated (the file has "
            f"{size} bytes, {need} are needed)"
        )
    return index, shape


def read_skymask(path, names, shapes):
    """Read and check a sky mask list.

    Parameters
    ----------
    path : str or os.PathLike
        Two-column text file: image name (matched like ``skylist``: file
        stem without the pipeline suffix), FITS mask file. Lines that are
        empty or start with ``#`` are ignored; file names cannot contain
        white space. A relative mask path is relative to the directory of
        the list file. Images the list does not name get no mask.
    names : list of str
        File names of the input images, in input order.
    shapes : list of tuple of int
        Shape ``(ny, nx)`` of each input image.

    Returns
    -------
    SkyMasks
        Where each image's mask is; nothing is read from the masks yet.

    Raises
    ------
    ValueError
        If the list cannot be read, a line does not have two columns, an
        image is listed twice or is not in the input, or a mask file is
        missing, is not FITS, holds no 2-D image (the mask is the first
        primary or extension image HDU with data) or its shape is not the
        image's.
    """
    path = Path(path).expanduser()
    base = path.parent

    def resolve(text, name, where):
        mask_path = Path(text).expanduser()
        return mask_path if mask_path.is_absolute() else base / mask_path, text

    entries = read_name_list(path, what="skymask", second="mask file", convert=resolve)
    if len(names) != len(shapes):
        raise ValueError(f"{len(names)} image names but {len(shapes)} shapes")
    keys = [image_key(n) for n in names]
    known = set(keys)
    extra = [entries[k][1] for k in entries if k not in known]
    if extra:
        raise ValueError(
            f"skymask {str(path)!r} lists images that are not in the input: {', '.join(extra)}"
        )
    files = []
    checked = {}
    for name, key, shape in zip(names, keys, shapes, strict=True):
        if key not in entries:
            files.append(None)
            continue
        (mask_path, text), listed, lineno = entries[key]
        where = f"skymask {str(path)!r} line {lineno} ({listed})"
        if not mask_path.is_file():
            note = (
                "" if Path(text).is_absolute() else f" ({text!r} relative to the list's directory)"
            )
            raise ValueError(f"{where}: mask file {str(mask_path)!r}{note} does not exist")
        if mask_path not in checked:
            checked[mask_path] = _mask_hdu(mask_path)
        hdu, mask_shape = checked[mask_path]
        expected = tuple(int(n) for n in shape)
        if mask_shape != expected:
            raise ValueError(
                f"{where}: mask {str(mask_path)!r} has shape {mask_shape}, but image {name} "
                f"has shape {expected}; the mask must have the image's shape"
            )
        files.append(MaskFile(mask_path, hdu, mask_shape))
    masks = SkyMasks(files)
    log.info(
        "Sky masks from %s: %d of %d image(s) have a mask.", str(path), masks.count, len(names)
    )
    return masks
