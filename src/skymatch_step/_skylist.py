"""User-supplied sky values (``skymethod='user'``)."""

from __future__ import annotations

import math
from pathlib import Path

from jwst.lib.suffix import remove_suffix

__all__ = ["image_key", "read_name_list", "read_skylist"]


def _stem(name):
    """File stem without the pipeline suffix (``x_cal.fits`` -> ``x``)."""
    return remove_suffix(Path(name).stem)[0]


def image_key(name):
    """Key by which list files match images: file stem without pipeline suffix.

    ``jw01_nrca1_cal.fits``, ``jw01_nrca1_skymatch.fits`` and
    ``dir/jw01_nrca1_cal.fits`` all give ``jw01_nrca1``.

    Parameters
    ----------
    name : str
        A file name (or model name).

    Returns
    -------
    str
    """
    return _stem(name)


def read_name_list(path, *, what, second, convert):
    """Read a two-column list keyed by image name (``skylist``, ``skymask``).

    Each non-empty line that does not start with ``#`` holds a file name
    and a second value, separated by white space.

    Parameters
    ----------
    path : str or pathlib.Path
        The list file.
    what : str
        The parameter's name, used in messages (``'skylist'``).
    second : str
        What the second column holds, used in messages (``'sky value'``).
    convert : callable
        ``convert(text, name, where)`` turns the second column into a
        value, raising `ValueError` with a message starting with ``where``
        (the file and line) when it cannot.

    Returns
    -------
    dict
        ``image_key(name) -> (value, name, lineno)`` in file order.

    Raises
    ------
    ValueError
        If the file cannot be read, a line does not have two columns, or
        an image is listed more than once.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"Cannot read {what} {str(path)!r}: {err}") from err

    by_stem = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cols = line.split()
        where = f"{what} {str(path)!r} line {lineno}"
        if len(cols) != 2:
            raise ValueError(
                f"{where}: expected 2 columns (file name, {second}), got {len(cols)}: {raw!r}"
            )
        name, text_value = cols
        value = convert(text_value, name, where)
        stem = _stem(name)
        if stem in by_stem:
            raise ValueError(f"{where}: image {stem!r} is listed more than once")
        by_stem[stem] = (value, name, lineno)
    return by_stem


def _sky_value(text_value, name, where):
    try:
        value = float(text_value)
    except ValueError:
        raise ValueError(
            f"{where}: sky value {text_value!r} for {name!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: sky value for {name!r} is not finite")
    return value


def read_skylist(path, image_names):
    """Read a two-column sky list and return the sky of each image.

    Each non-empty line that does not start with ``#`` holds a file name
    and a sky value, separated by white space. Images are matched by file
    stem with the pipeline suffix removed (as jwst does), so
    ``jw01_nrca1_cal.fits`` in the list matches a model named
    ``jw01_nrca1_skymatch.fits``.

    Parameters
    ----------
    path : str or pathlib.Path
        The sky list file.
    image_names : list of str
        File names of the input images, in library order.

    Returns
    -------
    list of float
        The sky value of each image, in the order of ``image_names``.

    Raises
    ------
    ValueError
        If the file cannot be read, a line does not have two columns, a
        value is not a finite number, an image appears more than once or
        not at all, or the list names an image that is not in the input.
    """
    path = Path(path)
    entries = read_name_list(path, what="skylist", second="sky value", convert=_sky_value)
    by_stem = {stem: entry[0] for stem, entry in entries.items()}

    stems = [_stem(n) for n in image_names]
    missing = [n for n, s in zip(image_names, stems, strict=True) if s not in by_stem]
    if missing:
        raise ValueError(f"skylist {str(path)!r} has no sky value for: {', '.join(missing)}")
    extra = sorted(set(by_stem) - set(stems))
    if extra:
        raise ValueError(
            f"skylist {str(path)!r} lists images that are not in the input: {', '.join(extra)}"
        )
    return [by_stem[s] for s in stems]
