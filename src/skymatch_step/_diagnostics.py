"""Fit diagnostics: what every overlap measured and how the fit used it.

Diagnostics are data first and a picture second. `diagnostics_tables`
turns a `SkyResult` into two `astropy.table.Table` objects (one row per
overlapping pair of sky groups, one row per image) that are written as
ECSV; `plot_diagnostics` draws the picture from those two tables alone,
so it can be redrawn later from the files::

    from astropy.table import Table
    pairs = Table.read("run_pairs.ecsv", format="ascii.ecsv")
    images = Table.read("run_images.ecsv", format="ascii.ecsv")
    plot_diagnostics(pairs, images, "run.png")

matplotlib is an optional dependency (the ``plot`` extra); it is imported
only when a plot is drawn.
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

from .exceptions import MissingDependencyError

if TYPE_CHECKING:
    from ._methods import SkyResult

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

_PLOT_EXTRA = 'pip install ".[plot]" in your skymatch_step checkout (or pip install matplotlib)'


def require_matplotlib():
    """Import matplotlib, or explain how to install it.

    Returns
    -------
    module
        The ``matplotlib`` module.

    Raises
    ------
    MissingDependencyError
        If matplotlib cannot be imported (it is the ``plot`` extra).
    """
    try:
        import matplotlib
    except ImportError as err:
        raise MissingDependencyError(
            f"Plotting the sky-matching diagnostics needs matplotlib, which is not "
            f"installed ({err}). Install the 'plot' extra: {_PLOT_EXTRA}, or turn the "
            f"plot off (diagnostics_plot=False) to write the tables only."
        ) from err
    return matplotlib


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


def _unit_vectors(ra, dec):
    ra, dec = np.deg2rad(ra), np.deg2rad(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def _radec(vec):
    vec = vec / np.linalg.norm(vec)
    ra = np.rad2deg(np.arctan2(vec[1], vec[0])) % 360.0
    dec = np.rad2deg(np.arcsin(np.clip(vec[2], -1.0, 1.0)))
    return float(ra), float(dec)


def _centre(ra, dec):
    """Mean direction of points (RA wrap-safe), as ``(ra, dec)`` degrees."""
    ok = np.isfinite(ra) & np.isfinite(dec)
    vec = _unit_vectors(ra[ok], dec[ok]).sum(axis=0)
    if not ok.any() or np.linalg.norm(vec) == 0.0:
        return float("nan"), float("nan")
    return _radec(vec)


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
    }

    pairs = Table(meta=dict(meta))
    recs = result.pairs

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

    images = Table(meta=dict(meta))
    nimg = len(names)
    sets = np.asarray(result.sets, dtype=int)
    img_set = (
        sets[np.asarray(result.groups, dtype=int)]
        if sets.size and nimg
        else np.full(nimg, -1, dtype=int)
    )
    levels = np.asarray(result.levels, dtype=float)
    valid = np.asarray(result.valid, dtype=bool)
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
    return pairs, images


# --------------------------------------------------------------------------- plot


def _tangent_plane(ra, dec, centre):
    """Gnomonic projection about ``centre`` in degrees (east, north).

    Works on unit vectors, so RA wrap at 0/360 needs no special case;
    points 90 degrees or more from the centre come out as NaN.
    """
    ra0, dec0 = np.deg2rad(centre[0]), np.deg2rad(centre[1])
    c = np.array([np.cos(dec0) * np.cos(ra0), np.cos(dec0) * np.sin(ra0), np.sin(dec0)])
    east = np.array([-np.sin(ra0), np.cos(ra0), 0.0])
    north = np.cross(c, east)
    p = _unit_vectors(np.asarray(ra, float), np.asarray(dec, float))
    dot = p @ c
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(dot > 1e-6, 1.0 / dot, np.nan)
    return np.rad2deg(p @ east * scale), np.rad2deg(p @ north * scale)


def _text_column(col):
    """Return a string column as plain str, masked entries as ''."""
    if hasattr(col, "filled"):
        col = col.filled("")
    return np.array([str(v) for v in col], dtype=object)


def _split_nan(x, y):
    """Split an outline at NaN separators into ``(n, 2)`` vertex arrays."""
    bad = ~(np.isfinite(x) & np.isfinite(y))
    pieces = []
    start = 0
    for stop in [*np.flatnonzero(bad).tolist(), x.size]:
        if stop - start >= 3:
            pieces.append(np.column_stack([x[start:stop], y[start:stop]]))
        start = stop + 1
    return pieces


def _polygon_centroid(v):
    """Area centroid of a planar polygon (vertex mean if degenerate)."""
    x, y = v[:, 0], v[:, 1]
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    cross = x * y1 - x1 * y
    area = cross.sum() / 2.0
    if abs(area) < 1e-30:
        return v.mean(axis=0), 0.0
    cx = ((x + x1) * cross).sum() / (6.0 * area)
    cy = ((y + y1) * cross).sum() / (6.0 * area)
    return np.array([cx, cy]), abs(area)


def _angle_unit(extent_deg):
    if extent_deg < 2.0 / 60.0:
        return 3600.0, "arcsec"
    if extent_deg < 2.0:
        return 60.0, "arcmin"
    return 1.0, "deg"


def build_figure(pairs, images):
    """Draw the diagnostics figure from the two tables.

    Parameters
    ----------
    pairs, images : astropy.table.Table
        Tables from `diagnostics_tables` (or read back from the ECSV files).

    Returns
    -------
    matplotlib.figure.Figure
        Left: footprints on the sky (tangent plane about the mosaic centre,
        east to the left) coloured by sky level, and links between the
        centres of overlapping groups coloured by the absolute normalized
        residual (rejected links dashed, marked with a cross). Right: the
        histogram of the normalized residuals.

    Raises
    ------
    MissingDependencyError
        If matplotlib is not installed.
    """
    require_matplotlib()
    from matplotlib import colormaps, patheffects
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    method = str(images.meta.get("method", pairs.meta.get("method", "")))
    unit = str(images.meta.get("unit", "") or "")
    nimg = len(images)

    # --- projected outlines
    all_ra = np.concatenate([np.asarray(r, float) for r in images["ra_outline"]] or [[]])
    all_dec = np.concatenate([np.asarray(d, float) for d in images["dec_outline"]] or [[]])
    centre = _centre(all_ra, all_dec) if all_ra.size else (float("nan"), float("nan"))
    outlines = []
    for r, d in zip(images["ra_outline"], images["dec_outline"], strict=True):
        x, y = _tangent_plane(np.asarray(r, float), np.asarray(d, float), centre)
        outlines.append(_split_nan(x, y))
    finite = [v for polys in outlines for v in polys]
    if finite:
        stacked = np.concatenate(finite)
        extent = float(np.ptp(stacked, axis=0).max())
    else:
        extent = 0.0
    factor, angle = _angle_unit(extent)

    levels = np.asarray(images["level"], dtype=float)
    status = _text_column(images["status"])
    skipped = (status != "COMPLETE") | ~np.isfinite(levels)

    gidx = np.asarray(images["group_index"], dtype=int)
    ngroups = int(gidx.max()) + 1 if nimg else 0
    # Thinner lines and smaller marks as the mosaic grows, so that a
    # thousand images stay readable; group numbers only for small mosaics.
    size = float(np.clip(np.sqrt(40.0 / max(ngroups, 1)), 0.25, 1.0))
    label_groups = ngroups <= 40

    fig = Figure(figsize=(13.0, 5.6), dpi=100, layout="constrained")
    ax, hx = fig.subplots(1, 2, width_ratios=[1.35, 1.0])

    # Image footprints: one polygon each (several if the outline has pieces).
    polys, poly_img = [], []
    for k, pieces in enumerate(outlines):
        for v in pieces:
            polys.append(v * factor)
            poly_img.append(k)
    poly_img = np.asarray(poly_img, dtype=int)
    good = ~skipped[poly_img] if poly_img.size else np.zeros(0, bool)
    lev_ok = levels[~skipped]
    if lev_ok.size:
        vmin, vmax = float(lev_ok.min()), float(lev_ok.max())
        if vmin == vmax:
            pad = max(abs(vmin) * 1e-3, 1e-6)
            vmin, vmax = vmin - pad, vmax + pad
    else:
        vmin, vmax = 0.0, 1.0
    lev_norm = Normalize(vmin, vmax)
    lev_cmap = colormaps["viridis"]
    if good.any():
        pc = PolyCollection(
            [p for p, g in zip(polys, good, strict=True) if g],
            array=levels[poly_img[good]],
            cmap=lev_cmap,
            norm=lev_norm,
            edgecolor="0.25",
            linewidth=0.6 * size,
            alpha=0.75,
            zorder=1,
        )
        ax.add_collection(pc)
        cb = fig.colorbar(pc, ax=ax, location="left", shrink=0.85, pad=0.02)
        cb.set_label(f"sky level{f' ({unit})' if unit else ''}")
    legend = []
    if (~good).any():
        ax.add_collection(
            PolyCollection(
                [p for p, g in zip(polys, good, strict=True) if not g],
                facecolor="0.85",
                edgecolor="0.4",
                hatch="//",
                linewidth=0.6 * size,
                zorder=1,
            )
        )
        legend.append(Patch(facecolor="0.85", edgecolor="0.4", hatch="//", label="skipped"))

    # Group centres: area-weighted centroid of their images' outlines.
    gsum = np.zeros((ngroups, 2))
    gw = np.zeros(ngroups)
    gmean = np.zeros((ngroups, 2))
    gcount = np.zeros(ngroups)
    for k, pieces in enumerate(outlines):
        for v in pieces:
            c, a = _polygon_centroid(v * factor)
            gsum[gidx[k]] += c * a
            gw[gidx[k]] += a
            gmean[gidx[k]] += c
            gcount[gidx[k]] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        gcen = np.where(gw[:, None] > 0, gsum / gw[:, None], gmean / np.maximum(gcount, 1)[:, None])
    gcen[gcount == 0] = np.nan

    # Links between overlapping groups.
    npairs = len(pairs)
    if npairs:
        ia = np.asarray(pairs["index_a"], dtype=int)
        ib = np.asarray(pairs["index_b"], dtype=int)
        absn = np.abs(np.asarray(pairs["normalized"], dtype=float))
        rejected = _text_column(pairs["rejected"])
        used = rejected == ""
        segs = np.stack([gcen[ia], gcen[ib]], axis=1)
        res_cmap = colormaps["plasma"]
        # A white halo keeps the links visible over any footprint colour.
        halo = patheffects.withStroke(linewidth=4.0 * size, foreground="white")
        # Colour scale from the used pairs (rejected ones are drawn apart).
        finite_n = absn[used & np.isfinite(absn)]
        top = max(3.0, float(finite_n.max())) if finite_n.size else 3.0
        res_norm = Normalize(0.0, top)
        ok = used & np.isfinite(absn)
        if ok.any():
            lc = LineCollection(
                segs[ok],
                array=absn[ok],
                cmap=res_cmap,
                norm=res_norm,
                linewidth=2.2 * size,
                zorder=3,
                path_effects=[halo],
            )
            ax.add_collection(lc)
            cb2 = fig.colorbar(lc, ax=ax, location="right", shrink=0.85, pad=0.02)
            cb2.set_label("|normalized residual| of the pair")
        nofit = used & ~np.isfinite(absn)
        if nofit.any():
            ax.add_collection(
                LineCollection(
                    segs[nofit], colors="0.45", linewidth=1.5 * size, zorder=3, path_effects=[halo]
                )
            )
            legend.append(Line2D([], [], color="0.45", lw=1.5, label="pair, no residual"))
        if (~used).any():
            ax.add_collection(
                LineCollection(
                    segs[~used],
                    colors="crimson",
                    linestyles="--",
                    linewidth=1.8 * size,
                    zorder=4,
                    path_effects=[halo],
                )
            )
            mid = segs[~used].mean(axis=1)
            ax.plot(
                mid[:, 0],
                mid[:, 1],
                "x",
                color="crimson",
                ms=8 * np.sqrt(size),
                mew=2 * np.sqrt(size),
                zorder=5,
            )
            reasons = sorted(set(rejected[~used].tolist()))
            legend.append(
                Line2D(
                    [],
                    [],
                    color="crimson",
                    ls="--",
                    marker="x",
                    mew=2,
                    label=f"rejected ({', '.join(reasons)})",
                )
            )
    ax.plot(gcen[:, 0], gcen[:, 1], "o", color="k", ms=3 * size, zorder=6)
    if label_groups:
        for g in range(ngroups):
            if np.isfinite(gcen[g]).all():
                ax.annotate(
                    str(g),
                    gcen[g],
                    xytext=(3, 3),
                    textcoords="offset points",
                    fontsize=7,
                    zorder=7,
                )
    if finite:
        ax.update_datalim(stacked * factor)
    ax.set_aspect("equal", adjustable="datalim")
    ax.margins(0.05)
    ax.autoscale_view()
    # East (increasing RA) to the left.
    ax.invert_xaxis()
    ax.set_xlabel(f"RA offset, east to the left ({angle})")
    ax.set_ylabel(f"Dec offset ({angle})")
    where = f" about RA {centre[0]:.4f}, Dec {centre[1]:+.4f}" if np.isfinite(centre[0]) else ""
    title = f"{method}: {nimg} image(s), {ngroups} group(s), {npairs} pair(s)"
    numbers = "; numbers are group indices" if label_groups else ""
    ax.set_title(f"{title}\ntangent plane{where}{numbers}", fontsize=10)
    if not npairs:
        ax.text(
            0.5,
            0.02,
            "no pairs: no overlaps compared",
            transform=ax.transAxes,
            ha="center",
            va="bottom",
            fontsize=9,
            color="0.3",
        )
    if legend:
        ax.legend(handles=legend, loc="upper right", fontsize=8, framealpha=0.85)
    ax.grid(True, lw=0.3, alpha=0.5)

    # Histogram of normalized residuals.
    hx.set_title("Normalized residuals of the pairs", fontsize=10)
    hx.set_xlabel("normalized residual")
    hx.set_ylabel("pairs")
    norm_all = np.asarray(pairs["normalized"], dtype=float) if npairs else np.zeros(0)
    rej = (_text_column(pairs["rejected"]) != "") if npairs else np.zeros(0, bool)
    fin = np.isfinite(norm_all)
    if not fin.any():
        msg = (
            f"no pairs (method {method!r} compares no overlaps)"
            if not npairs
            else "no normalized residuals (the pairs were not fitted)"
        )
        hx.text(0.5, 0.5, msg, transform=hx.transAxes, ha="center", va="center", fontsize=10)
        hx.set_yticks([])
        hx.set_xticks([])
    else:
        vals = norm_all[fin]
        span = max(float(np.abs(vals).max()), 3.0)
        bins = np.linspace(-span, span, int(np.clip(2 * np.sqrt(vals.size), 10, 60)) + 1)
        used_v = norm_all[fin & ~rej]
        rej_v = norm_all[fin & rej]
        notes = []
        hx.hist(
            [used_v, rej_v],
            bins=bins,
            stacked=True,
            color=["steelblue", "crimson"],
            label=[f"used ({used_v.size})", f"rejected ({rej_v.size})"],
        )
        if used_v.size:
            grid = np.linspace(-span, span, 400)
            width = bins[1] - bins[0]
            gauss = used_v.size * width * np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi)
            hx.plot(grid, gauss, color="k", lw=1, label="N(0, 1) for the used pairs")
            rms = float(np.sqrt(np.mean(used_v**2)))
            notes.append(f"rms (used): {rms:.3g}")
        if (~fin).any():
            notes.append(f"not shown: {int((~fin).sum())} (no residual)")
        hx.text(
            0.02,
            0.97,
            "\n".join(notes),
            transform=hx.transAxes,
            ha="left",
            va="top",
            fontsize=8,
        )
        hx.yaxis.set_major_locator(MaxNLocator(integer=True))
        hx.legend(fontsize=8, loc="upper right")
    return fig


def plot_diagnostics(pairs, images, path):
    """Write the diagnostics figure as a PNG file.

    Parameters
    ----------
    pairs, images : astropy.table.Table
        Tables from `diagnostics_tables` or read back from the ECSV files.
    path : str or os.PathLike
        Output file; written under a temporary name, then renamed.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    path = Path(path)
    _commit([(path, lambda tmp: _save_png(build_figure(pairs, images), tmp))])
    return path


def _save_png(fig, tmp):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(tmp, format="png")


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
        jobs.append((paths[2], lambda tmp: _save_png(build_figure(pairs, images), tmp)))
    _commit(jobs)
    log.info(
        "Sky-matching diagnostics (%d pair(s), %d image(s)) written to %s.",
        len(pairs),
        len(images),
        ", ".join(str(p) for p in paths),
    )
    return paths
