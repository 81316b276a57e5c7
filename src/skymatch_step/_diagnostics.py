"""Fit diagnostics: what every overlap measured and how the fit used it.

Diagnostics are data first and a picture second. `diagnostics_tables`
turns a `SkyResult` into two `astropy.table.Table` objects (one row per
overlapping pair of sky groups, one row per image) that are written as
ECSV; `plot_diagnostics` (from `skymatch_step._plot`) draws the picture
from those two tables alone, so it can be redrawn later from the files::

    from astropy.table import Table
    pairs = Table.read("run_pairs.ecsv", format="ascii.ecsv")
    images = Table.read("run_images.ecsv", format="ascii.ecsv")
    plot_diagnostics(pairs, images, "run.png")

matplotlib is an optional dependency (the ``plot`` extra); it is imported
only by `skymatch_step._plot`, when a plot is drawn.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from astropy import units as u
from astropy.table import Table

from ._plot import _centre, build_figure, plot_diagnostics, require_matplotlib, save_png

if TYPE_CHECKING:
    from ._engine import SkyResult

__all__ = [
    "build_figure",
    "check_diagnostics_prefix",
    "diagnostics_paths",
    "diagnostics_tables",
    "plot_diagnostics",
    "require_matplotlib",
    "write_diagnostics",
]

log = logging.getLogger(__name__)

#: Suffixes of the files written for a prefix: pair table, image table, plot.
SUFFIXES = ("_pairs.ecsv", "_images.ecsv", ".png")


def diagnostics_paths(prefix, *, plot=True):
    """Return the files written for a diagnostics prefix.

    Parameters
    ----------
    prefix : str or os.PathLike
        Path prefix, e.g. ``'out/run1'``.
    plot : bool
        Whether the plot is written too.

    Returns
    -------
    list of pathlib.Path
        ``<prefix>_pairs.ecsv``, ``<prefix>_images.ecsv`` and, when
        ``plot`` is true, ``<prefix>.png``.
    """
    base = os.fspath(Path(prefix).expanduser())
    suffixes = SUFFIXES if plot else SUFFIXES[:2]
    return [Path(base + s) for s in suffixes]


def check_diagnostics_prefix(prefix, *, plot=True):
    """Check, before any work, that diagnostics can be written at ``prefix``.

    Parameters
    ----------
    prefix : str or os.PathLike
        Path prefix of the diagnostics files: a file name start in an
        existing, writable directory (``'run1'``, ``'out/run1'``).
    plot : bool
        Whether the plot will be written: matplotlib must then be
        installed.

    Returns
    -------
    list of pathlib.Path
        The files that will be written (see `diagnostics_paths`).

    Raises
    ------
    ValueError
        If the prefix is empty or names a directory, its directory does
        not exist or is not writable, or one of the files to write is a
        directory.
    MissingDependencyError
        If ``plot`` is true and matplotlib is not installed.
    """
    text = os.fspath(prefix) if prefix is not None else ""
    if not str(text).strip():
        raise ValueError(
            "The diagnostics prefix is empty; give a path prefix such as 'out/run1' "
            "(files out/run1_pairs.ecsv, out/run1_images.ecsv, out/run1.png)."
        )
    path = Path(text).expanduser()
    if str(text).endswith(("/", os.sep)) or path.is_dir():
        raise ValueError(
            f"The diagnostics prefix {str(text)!r} names a directory; give a file name "
            f"prefix inside it, such as {os.path.join(str(text), 'skymatch')!r}."
        )
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(
            f"The directory {str(parent)!r} of the diagnostics prefix {str(text)!r} does "
            f"not exist; create it first."
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(
            f"The directory {str(parent)!r} of the diagnostics prefix {str(text)!r} is "
            f"not writable."
        )
    paths = diagnostics_paths(path, plot=plot)
    for p in paths:
        if p.is_dir():
            raise ValueError(f"Cannot write diagnostics file {str(p)!r}: it is a directory.")
    if plot:
        require_matplotlib()
    return paths


# --------------------------------------------------------------------------- tables


def _image_names(result):
    n = len(result.terms)
    if len(result.names) == n:
        return [str(s) for s in result.names]
    return [f"image {k}" for k in range(n)]


def _group_names(result, image_names):
    """Name of each group: its label, or its image's name for a one-image group."""
    ngroups = max(result.groups) + 1 if result.groups else 0
    members = [[] for _ in range(ngroups)]
    for k, g in enumerate(result.groups):
        members[g].append(k)
    names = []
    for g, idx in enumerate(members):
        if len(idx) == 1:
            names.append(image_names[idx[0]])
        elif len(result.group_labels) == ngroups:
            names.append(str(result.group_labels[g]))
        else:
            names.append(f"group {g}")
    return names


def _outline(footprint):
    """RA and Dec of a footprint's outline(s), polygons separated by NaN."""
    ras, decs = [], []
    for ra, dec in footprint.to_radec():
        if ras:
            ras.append([np.nan])
            decs.append([np.nan])
        ras.append(np.asarray(ra, float))
        decs.append(np.asarray(dec, float))
    if not ras:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(ras), np.concatenate(decs)


def _column_unit(unit):
    if unit is None:
        return None
    try:
        return u.Unit(unit)
    except (ValueError, TypeError):
        log.warning("Unit %r of the data is not understood by astropy; not recorded.", unit)
        return None


def diagnostics_tables(result: SkyResult, *, unit=None):
    """Tables of the pairs and images of a sky-matching result.

    Parameters
    ----------
    result : SkyResult
        What `match` returned.
    unit : str or astropy.units.Unit, optional
        Unit of the image data (e.g. ``'MJy/sr'``), recorded on the sky
        columns.

    Returns
    -------
    pairs : astropy.table.Table
        One row per `PairRecord` (empty for ``local`` and ``global``):
        ``group_a``, ``group_b`` (group names: the group's label, or the
        image's name for a one-image group), ``index_a``, ``index_b``
        (group indices), ``npix_a``, ``npix_b``, ``value_a``, ``value_b``,
        ``difference``, ``error``, ``fitted``, ``residual`` (data units),
        ``normalized``, ``weight`` and ``rejected`` (``''`` for a pair
        the fit used; astropy reads empty strings back as masked values
        unless ``fill_values=[]`` is passed to ``Table.read``).
    images : astropy.table.Table
        One row per image: ``image``, ``group`` (its group's name),
        ``group_index``, ``set`` (connected set of its group, -1 when the
        method does not match), ``level`` (NaN when skipped), ``status``
        (``COMPLETE`` or ``SKIPPED``), ``reason`` (why skipped), ``ra``,
        ``dec`` (footprint centre, degrees) and ``ra_outline``,
        ``dec_outline`` (footprint outline, degrees, polygons separated
        by NaN).
    """
    names = _image_names(result)
    gnames = _group_names(result, names)
    data_unit = _column_unit(unit)
    unit_note = f", in {data_unit}" if data_unit is not None else ", in data units"
    meta = {
        "method": result.method,
        "unit": "" if data_unit is None else str(data_unit),
        "n_images": len(names),
        "n_groups": len(gnames),
        "n_pairs": len(result.pairs),
        "n_rejected": sum(1 for p in result.pairs if p.rejected),
        "sky_model": result.sky_model,
        "excess": float(result.excess),
        "chi2_pixel": float(result.chi2_pixel),
    }
    if result.tangent is not None:
        meta["tangent_ra"] = float(result.tangent.ra0)
        meta["tangent_dec"] = float(result.tangent.dec0)
    pairs = _pairs_table(result.pairs, gnames, meta, data_unit, unit_note)
    images = _images_table(result, names, gnames, meta, data_unit, unit_note)
    _add_fit_columns(result, pairs, images, data_unit, unit_note)
    return pairs, images


def _add_fit_columns(result, pairs, images, data_unit, unit_note):
    """Errors, uncertainties and, for planes, the planes (see `diagnostics_tables`)."""
    recs = result.pairs

    def col(table, name, values, description, unit=data_unit):
        table[name] = np.asarray(values, dtype=float)
        table[name].description = description
        if unit is not None:
            table[name].unit = unit

    col(
        pairs,
        "pixel_error",
        [p.pixel_error for p in recs],
        "error from pixel noise alone" + unit_note,
    )
    col(
        pairs,
        "block_error",
        [p.block_error for p in recs],
        "error from the scatter between blocks of the overlap (NaN: not measured)" + unit_note,
    )
    nimg = len(images)
    uncertainty = np.asarray(result.uncertainties, dtype=float)
    if uncertainty.size != nimg:
        uncertainty = np.full(nimg, np.nan)
    col(
        images,
        "uncertainty",
        uncertainty,
        "1-sigma uncertainty of level relative to its set's mean (NaN: unknown)" + unit_note,
    )
    if result.planes is None:
        return
    slope = None if data_unit is None else data_unit / u.deg
    centre = np.array([p.centre if p.centre is not None else (np.nan, np.nan) for p in recs])
    centre = centre.reshape(len(recs), 2)
    col(pairs, "xi", centre[:, 0], "tangent-plane xi of the overlap's centre", u.deg)
    col(pairs, "eta", centre[:, 1], "tangent-plane eta of the overlap's centre", u.deg)
    plane = np.array([p.plane if p.plane is not None else (np.nan,) * 3 for p in recs])
    plane = plane.reshape(len(recs), 3)
    col(pairs, "slope_xi", plane[:, 1], "measured d(sky(a) - sky(b))/dxi", slope)
    col(pairs, "slope_eta", plane[:, 2], "measured d(sky(a) - sky(b))/deta", slope)
    planes = np.array([p if p is not None else (np.nan,) * 3 for p in result.planes])
    planes = planes.reshape(nimg, 3)
    col(images, "plane_value", planes[:, 0], "sky plane at the tangent point" + unit_note)
    col(images, "plane_slope_xi", planes[:, 1], "sky plane's d/dxi", slope)
    col(images, "plane_slope_eta", planes[:, 2], "sky plane's d/deta", slope)


def _pairs_table(recs, gnames, meta, data_unit, unit_note):
    """Return the pair table of `diagnostics_tables`: one row per `PairRecord`."""
    pairs = Table(meta=dict(meta))

    def col(name, values, dtype, description, unit=None):
        pairs[name] = np.asarray(values, dtype=dtype)
        pairs[name].description = description
        if unit is not None:
            pairs[name].unit = unit

    col("group_a", [gnames[p.a] for p in recs], str, "first group of the pair")
    col("group_b", [gnames[p.b] for p in recs], str, "second group of the pair")
    col("index_a", [p.a for p in recs], int, "index of group_a (order of first appearance)")
    col("index_b", [p.b for p in recs], int, "index of group_b")
    col("npix_a", [p.npix_a for p in recs], int, "usable pixels behind group_a's measurement")
    col("npix_b", [p.npix_b for p in recs], int, "usable pixels behind group_b's measurement")
    sky = [
        ("value_a", "value_a", "sky of group_a in the overlap"),
        ("value_b", "value_b", "sky of group_b in the overlap"),
        ("difference", "difference", "measured sky(a) - sky(b) in the overlap"),
        ("error", "error", "estimated error of difference"),
        ("fitted", "fitted", "offset(a) - offset(b) from the fit"),
        ("residual", "residual", "difference - fitted"),
    ]
    for name, attr, desc in sky:
        col(name, [getattr(p, attr) for p in recs], float, desc + unit_note, data_unit)
    pairs["error"].description += " (NaN when the comparison gives none)"
    col(
        "normalized",
        [p.normalized for p in recs],
        float,
        "residual divided by its expected spread (dimensionless)",
    )
    col(
        "weight",
        [p.weight for p in recs],
        float,
        "weight of the pair's equation in the fit (its weight in the sum of squares is weight**2)",
    )
    col(
        "rejected",
        [p.rejected for p in recs],
        str,
        "why the fit left the pair out ('few pixels', 'outlier'); empty when used",
    )
    return pairs


def _image_sets(result, nimg):
    """Return the connected set of each image's group (-1s when the method does not match)."""
    sets = np.asarray(result.sets, dtype=int)
    if sets.size and nimg:
        return sets[np.asarray(result.groups, dtype=int)]
    return np.full(nimg, -1, dtype=int)


def _image_outlines(result, nimg):
    """Outline RA and Dec (object arrays) and centre ``(nimg, 2)`` of each image."""
    ra_out = np.empty(nimg, dtype=object)
    dec_out = np.empty(nimg, dtype=object)
    centres = np.full((nimg, 2), np.nan)
    have_fp = len(result.footprints) == nimg
    for k in range(nimg):
        if have_fp:
            ra_out[k], dec_out[k] = _outline(result.footprints[k])
            # The closing vertex repeats the first: leave it out of the centre.
            centres[k] = _centre(ra_out[k][:-1], dec_out[k][:-1])
        else:
            ra_out[k], dec_out[k] = np.zeros(0), np.zeros(0)
    return ra_out, dec_out, centres


def _images_table(result, names, gnames, meta, data_unit, unit_note):
    """Return the image table of `diagnostics_tables`: one row per image."""
    images = Table(meta=dict(meta))
    nimg = len(names)
    img_set = _image_sets(result, nimg)
    levels = np.asarray(result.levels, dtype=float)
    valid = np.asarray(result.valid, dtype=bool)
    ra_out, dec_out, centres = _image_outlines(result, nimg)
    images["image"] = np.asarray(names, dtype=str)
    images["image"].description = "image name"
    images["group"] = np.asarray([gnames[g] for g in result.groups], dtype=str)
    images["group"].description = "name of the image's sky group"
    images["group_index"] = np.asarray(result.groups, dtype=int)
    images["group_index"].description = "index of the image's sky group"
    images["set"] = img_set
    images["set"].description = "connected set of overlapping groups (-1: not matched)"
    images["level"] = levels
    images["level"].description = "sky level" + unit_note + " (NaN when skipped)"
    if data_unit is not None:
        images["level"].unit = data_unit
    images["status"] = np.where(valid, "COMPLETE", "SKIPPED") if nimg else np.zeros(0, str)
    images["status"].description = "COMPLETE or SKIPPED (sky not determined)"
    images["reason"] = np.asarray(list(result.reasons), dtype=str)
    images["reason"].description = "why the sky was not determined (empty when COMPLETE)"
    images["ra"] = centres[:, 0]
    images["ra"].unit = u.deg
    images["ra"].description = "right ascension of the footprint centre"
    images["dec"] = centres[:, 1]
    images["dec"].unit = u.deg
    images["dec"].description = "declination of the footprint centre"
    images["ra_outline"] = ra_out
    images["ra_outline"].unit = u.deg
    images["ra_outline"].description = "footprint outline RA (polygons separated by NaN)"
    images["dec_outline"] = dec_out
    images["dec_outline"].unit = u.deg
    images["dec_outline"].description = "footprint outline Dec (polygons separated by NaN)"
    return images


# --------------------------------------------------------------------------- files


def _commit(jobs):
    """Write every ``(path, writer)`` to a temporary name, then rename them all.

    Nothing is renamed unless every writer succeeded; temporary files are
    removed in every case.
    """
    staged = []
    try:
        for path, writer in jobs:
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            staged.append(tmp)
            writer(tmp)
        for tmp, (path, _) in zip(staged, jobs, strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in staged:
            if tmp.exists():
                tmp.unlink()


def write_diagnostics(result: SkyResult, prefix, *, plot=True, unit=None):
    """Write the diagnostics of a sky-matching result.

    Parameters
    ----------
    result : SkyResult
        What `match` returned.
    prefix : str or os.PathLike
        Path prefix of the files; its directory must exist. Existing files
        are overwritten.
    plot : bool
        Also draw ``<prefix>.png`` (needs matplotlib, the ``plot`` extra).
    unit : str or astropy.units.Unit, optional
        Unit of the image data, recorded in the tables.

    Returns
    -------
    list of pathlib.Path
        ``<prefix>_pairs.ecsv``, ``<prefix>_images.ecsv`` and, with
        ``plot``, ``<prefix>.png``. All are written to temporary names
        first and renamed only when all succeeded.

    Raises
    ------
    ValueError, MissingDependencyError
        See `check_diagnostics_prefix`.
    """
    paths = check_diagnostics_prefix(prefix, plot=plot)
    pairs, images = diagnostics_tables(result, unit=unit)
    jobs = [
        (paths[0], lambda tmp: pairs.write(tmp, format="ascii.ecsv")),
        (paths[1], lambda tmp: images.write(tmp, format="ascii.ecsv")),
    ]
    if plot:
        jobs.append((paths[2], lambda tmp: save_png(build_figure(pairs, images), tmp)))
    _commit(jobs)
    log.info(
        "Sky-matching diagnostics (%d pair(s), %d image(s)) written to %s.",
        len(pairs),
        len(images),
        ", ".join(str(p) for p in paths),
    )
    return paths
