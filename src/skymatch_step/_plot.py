"""The diagnostics plot, drawn from the two tables alone.

`build_figure` draws the figure from the pair and image tables of
`skymatch_step._diagnostics.diagnostics_tables` (or the same tables read
back from their ECSV files); `plot_diagnostics` writes it as a PNG file.
The figure has two panels: the footprints on the sky with the links
between overlapping groups, and the histogram of the normalized residuals.

matplotlib is an optional dependency (the ``plot`` extra); it is imported
only here, when a plot is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .exceptions import MissingDependencyError

__all__ = ["build_figure", "plot_diagnostics", "require_matplotlib", "save_png"]

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


# --------------------------------------------------------------------------- sky geometry
# (`_centre` also gives the footprint centres of the image table)


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


# --------------------------------------------------------------------------- plane helpers


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


@dataclass
class _Sky:
    """What the sky panel draws, from the image table, in tangent-plane degrees."""

    centre: tuple  # (ra, dec) of the tangent point, degrees (NaN without outlines)
    outlines: list  # per image: list of (n, 2) vertex arrays
    stacked: np.ndarray | None  # all vertices together (None without any)
    factor: float  # degrees to the plot's angle unit
    angle: str  # name of that unit
    levels: np.ndarray
    skipped: np.ndarray  # (nimg,) bool: no level to colour by
    gidx: np.ndarray  # (nimg,) group index of each image
    ngroups: int
    size: float  # scale of line widths and marks
    label_groups: bool  # write the group indices


def _project_outlines(images):
    """Tangent point and projected outline pieces of every image."""
    all_ra = np.concatenate([np.asarray(r, float) for r in images["ra_outline"]] or [[]])
    all_dec = np.concatenate([np.asarray(d, float) for d in images["dec_outline"]] or [[]])
    centre = _centre(all_ra, all_dec) if all_ra.size else (float("nan"), float("nan"))
    outlines = []
    for r, d in zip(images["ra_outline"], images["dec_outline"], strict=True):
        x, y = _tangent_plane(np.asarray(r, float), np.asarray(d, float), centre)
        outlines.append(_split_nan(x, y))
    return centre, outlines


def _sky_layout(images):
    """Project the image table for the sky panel."""
    centre, outlines = _project_outlines(images)
    finite = [v for polys in outlines for v in polys]
    if finite:
        stacked = np.concatenate(finite)
        extent = float(np.ptp(stacked, axis=0).max())
    else:
        stacked = None
        extent = 0.0
    factor, angle = _angle_unit(extent)

    levels = np.asarray(images["level"], dtype=float)
    status = _text_column(images["status"])
    gidx = np.asarray(images["group_index"], dtype=int)
    ngroups = int(gidx.max()) + 1 if len(images) else 0
    # Thinner lines and smaller marks as the mosaic grows, so that a
    # thousand images stay readable; group numbers only for small mosaics.
    return _Sky(
        centre=centre,
        outlines=outlines,
        stacked=stacked,
        factor=factor,
        angle=angle,
        levels=levels,
        skipped=(status != "COMPLETE") | ~np.isfinite(levels),
        gidx=gidx,
        ngroups=ngroups,
        size=float(np.clip(np.sqrt(40.0 / max(ngroups, 1)), 0.25, 1.0)),
        label_groups=ngroups <= 40,
    )


def _level_range(levels):
    """Colour range of the sky levels (widened when they are all equal)."""
    if not levels.size:
        return 0.0, 1.0
    vmin, vmax = float(levels.min()), float(levels.max())
    if vmin == vmax:
        pad = max(abs(vmin) * 1e-3, 1e-6)
        vmin, vmax = vmin - pad, vmax + pad
    return vmin, vmax


def _group_centres(sky):
    """Centre of each group: area-weighted centroid of its images' outlines."""
    gsum = np.zeros((sky.ngroups, 2))
    gw = np.zeros(sky.ngroups)
    gmean = np.zeros((sky.ngroups, 2))
    gcount = np.zeros(sky.ngroups)
    for k, pieces in enumerate(sky.outlines):
        for v in pieces:
            c, a = _polygon_centroid(v * sky.factor)
            gsum[sky.gidx[k]] += c * a
            gw[sky.gidx[k]] += a
            gmean[sky.gidx[k]] += c
            gcount[sky.gidx[k]] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        gcen = np.where(gw[:, None] > 0, gsum / gw[:, None], gmean / np.maximum(gcount, 1)[:, None])
    gcen[gcount == 0] = np.nan
    return gcen


# --------------------------------------------------------------------------- sky panel


def _draw_footprints(fig, ax, sky, unit):
    """Draw the footprints coloured by level (colour bar left), skipped ones hatched.

    Returns the legend handles to add (the skipped footprints').
    """
    from matplotlib import colormaps
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    # One polygon per image (several if the outline has pieces).
    polys, poly_img = [], []
    for k, pieces in enumerate(sky.outlines):
        for v in pieces:
            polys.append(v * sky.factor)
            poly_img.append(k)
    poly_img = np.asarray(poly_img, dtype=int)
    good = ~sky.skipped[poly_img] if poly_img.size else np.zeros(0, bool)
    if good.any():
        pc = PolyCollection(
            [p for p, g in zip(polys, good, strict=True) if g],
            array=sky.levels[poly_img[good]],
            cmap=colormaps["viridis"],
            norm=Normalize(*_level_range(sky.levels[~sky.skipped])),
            edgecolor="0.25",
            linewidth=0.6 * sky.size,
            alpha=0.75,
            zorder=1,
        )
        ax.add_collection(pc)
        cb = fig.colorbar(pc, ax=ax, location="left", shrink=0.85, pad=0.02)
        cb.set_label(f"sky level{f' ({unit})' if unit else ''}")
    if not (~good).any():
        return []
    ax.add_collection(
        PolyCollection(
            [p for p, g in zip(polys, good, strict=True) if not g],
            facecolor="0.85",
            edgecolor="0.4",
            hatch="//",
            linewidth=0.6 * sky.size,
            zorder=1,
        )
    )
    return [Patch(facecolor="0.85", edgecolor="0.4", hatch="//", label="skipped")]


def _draw_links(fig, ax, pairs, gcen, size):
    """Draw links between the centres of overlapping groups.

    Returns the legend handles to add (links without a residual, rejected
    links).
    """
    from matplotlib import patheffects

    ia = np.asarray(pairs["index_a"], dtype=int)
    ib = np.asarray(pairs["index_b"], dtype=int)
    absn = np.abs(np.asarray(pairs["normalized"], dtype=float))
    rejected = _text_column(pairs["rejected"])
    used = rejected == ""
    segs = np.stack([gcen[ia], gcen[ib]], axis=1)
    # A white halo keeps the links visible over any footprint colour.
    halo = patheffects.withStroke(linewidth=4.0 * size, foreground="white")
    legend = _draw_used_links(fig, ax, segs, absn, used, size, halo)
    if (~used).any():
        legend.append(_draw_rejected_links(ax, segs[~used], rejected[~used], size, halo))
    return legend


def _draw_used_links(fig, ax, segs, absn, used, size, halo):
    """Draw the used links, coloured by ``|normalized|`` (colour bar right), grey without one."""
    from matplotlib import colormaps
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    # Colour scale from the used pairs (rejected ones are drawn apart).
    finite_n = absn[used & np.isfinite(absn)]
    top = max(3.0, float(finite_n.max())) if finite_n.size else 3.0
    ok = used & np.isfinite(absn)
    if ok.any():
        lc = LineCollection(
            segs[ok],
            array=absn[ok],
            cmap=colormaps["plasma"],
            norm=Normalize(0.0, top),
            linewidth=2.2 * size,
            zorder=3,
            path_effects=[halo],
        )
        ax.add_collection(lc)
        cb2 = fig.colorbar(lc, ax=ax, location="right", shrink=0.85, pad=0.02)
        cb2.set_label("|normalized residual| of the pair")
    nofit = used & ~np.isfinite(absn)
    if not nofit.any():
        return []
    ax.add_collection(
        LineCollection(
            segs[nofit], colors="0.45", linewidth=1.5 * size, zorder=3, path_effects=[halo]
        )
    )
    return [Line2D([], [], color="0.45", lw=1.5, label="pair, no residual")]


def _draw_rejected_links(ax, segs, reasons, size, halo):
    """Draw the rejected links dashed, crossed at their middle; return their legend handle."""
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    ax.add_collection(
        LineCollection(
            segs,
            colors="crimson",
            linestyles="--",
            linewidth=1.8 * size,
            zorder=4,
            path_effects=[halo],
        )
    )
    mid = segs.mean(axis=1)
    ax.plot(
        mid[:, 0],
        mid[:, 1],
        "x",
        color="crimson",
        ms=8 * np.sqrt(size),
        mew=2 * np.sqrt(size),
        zorder=5,
    )
    return Line2D(
        [],
        [],
        color="crimson",
        ls="--",
        marker="x",
        mew=2,
        label=f"rejected ({', '.join(sorted(set(reasons.tolist())))})",
    )


def _draw_group_marks(ax, gcen, sky):
    """Mark the group centres, numbered for small mosaics."""
    ax.plot(gcen[:, 0], gcen[:, 1], "o", color="k", ms=3 * sky.size, zorder=6)
    if not sky.label_groups:
        return
    for g in range(sky.ngroups):
        if np.isfinite(gcen[g]).all():
            ax.annotate(
                str(g),
                gcen[g],
                xytext=(3, 3),
                textcoords="offset points",
                fontsize=7,
                zorder=7,
            )


def _finish_sky_axes(ax, sky, title, npairs, legend):
    """Set the sky panel's limits (east to the left), labels, title, legend and grid."""
    if sky.stacked is not None:
        ax.update_datalim(sky.stacked * sky.factor)
    ax.set_aspect("equal", adjustable="datalim")
    ax.margins(0.05)
    ax.autoscale_view()
    # East (increasing RA) to the left.
    ax.invert_xaxis()
    ax.set_xlabel(f"RA offset, east to the left ({sky.angle})")
    ax.set_ylabel(f"Dec offset ({sky.angle})")
    centre = sky.centre
    where = f" about RA {centre[0]:.4f}, Dec {centre[1]:+.4f}" if np.isfinite(centre[0]) else ""
    numbers = "; numbers are group indices" if sky.label_groups else ""
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


def _draw_sky(fig, ax, pairs, images, method, unit):
    """Draw the sky panel: footprints by level, links by residual, group centres."""
    sky = _sky_layout(images)
    legend = _draw_footprints(fig, ax, sky, unit)
    gcen = _group_centres(sky)
    npairs = len(pairs)
    if npairs:
        legend += _draw_links(fig, ax, pairs, gcen, sky.size)
    _draw_group_marks(ax, gcen, sky)
    title = f"{method}: {len(images)} image(s), {sky.ngroups} group(s), {npairs} pair(s)"
    _finish_sky_axes(ax, sky, title, npairs, legend)


# --------------------------------------------------------------------------- residuals panel


def _draw_residuals(hx, pairs, method):
    """Draw the panel of the pairs' normalized residuals (or say why it is empty)."""
    hx.set_title("Normalized residuals of the pairs", fontsize=10)
    hx.set_xlabel("normalized residual")
    hx.set_ylabel("pairs")
    npairs = len(pairs)
    norm_all = np.asarray(pairs["normalized"], dtype=float) if npairs else np.zeros(0)
    rej = (_text_column(pairs["rejected"]) != "") if npairs else np.zeros(0, bool)
    fin = np.isfinite(norm_all)
    if fin.any():
        _draw_histogram(hx, norm_all, fin, rej)
        return
    msg = (
        f"no pairs (method {method!r} compares no overlaps)"
        if not npairs
        else "no normalized residuals (the pairs were not fitted)"
    )
    hx.text(0.5, 0.5, msg, transform=hx.transAxes, ha="center", va="center", fontsize=10)
    hx.set_yticks([])
    hx.set_xticks([])


def _draw_histogram(hx, norm_all, fin, rej):
    """Draw the stacked histogram of used and rejected residuals, with N(0, 1) and notes."""
    from matplotlib.ticker import MaxNLocator

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


# --------------------------------------------------------------------------- figure


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
    from matplotlib.figure import Figure

    method = str(images.meta.get("method", pairs.meta.get("method", "")))
    unit = str(images.meta.get("unit", "") or "")
    fig = Figure(figsize=(13.0, 5.6), dpi=100, layout="constrained")
    ax, hx = fig.subplots(1, 2, width_ratios=[1.35, 1.0])
    _draw_sky(fig, ax, pairs, images, method, unit)
    _draw_residuals(hx, pairs, method)
    return fig


def save_png(fig, path):
    """Render a figure with the Agg backend and save it as PNG.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure (from `build_figure`).
    path : str or os.PathLike
        Output file.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, format="png")


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
    # The files side imports this module: import its writer only when called.
    from ._diagnostics import _commit

    path = Path(path)
    _commit([(path, lambda tmp: save_png(build_figure(pairs, images), tmp))])
    return path
