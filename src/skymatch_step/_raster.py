"""Pixels inside a polygon, selected with the rule of ``gwcs.region.Polygon.scan``.

jwst's skymatch turns each overlap polygon (vertices in pixel coordinates)
into a pixel mask with the scan-line fill of ``gwcs.region.Polygon``. To
select exactly the same pixels, `fill_polygon` applies the same rule, with
numpy instead of a Python loop per scan line:

* vertices are rounded to integers (round half to even), after shifting
  the polygon so that its lower-left corner is non-negative;
* scan lines run over the integer rows of the rounded polygon's bounding
  box; a non-horizontal edge is active on rows ``ymin <= y < ymax``, except
  on the top row, where edges ending there stay active;
* on each row the crossings of the active edges are rounded up
  (``ceil``), sorted and taken in pairs, and the pixels from the first to
  the second crossing of a pair (inclusive) are selected;
* a polygon whose rounded bounding box has zero width or height selects
  nothing.

The mask is returned only for the bounding box of the selected pixels, so
the cost is proportional to the overlap, not to the image.
"""

from __future__ import annotations

import numpy as np

from .exceptions import GeometryError

__all__ = ["fill_polygon"]


def fill_polygon(x, y, shape):
    """Select the pixels of an image inside a polygon.

    Parameters
    ----------
    x, y : array-like
        Pixel coordinates of the polygon vertices; the last vertex repeats
        the first. At least 4 vertices (a triangle) are needed.
    shape : tuple of int
        Image shape ``(ny, nx)``.

    Returns
    -------
    origin : tuple of int
        ``(row, column)`` of the first element of ``mask`` in the image.
    mask : ndarray of bool
        Selected pixels in the box starting at ``origin``; an empty
        ``(0, 0)`` array when no pixel is selected.

    Raises
    ------
    GeometryError
        If there are fewer than 4 vertices or a vertex is not finite.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.size < 4 or x.shape != y.shape:
        raise GeometryError(f"a polygon needs at least 4 vertices, got {x.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise GeometryError("polygon vertices are not finite (the inverse WCS failed)")
    ny, nx = shape
    empty = ((0, 0), np.zeros((0, 0), dtype=bool))

    shift_x = min(0.0, float(x.min()))
    shift_y = min(0.0, float(y.min()))
    vx = np.rint(x - shift_x).astype(np.int64)
    vy = np.rint(y - shift_y).astype(np.int64)
    off_x = int(np.rint(shift_x))
    off_y = int(np.rint(shift_y))

    bx = int(vx.min())
    width = int(vx.max()) - bx
    y_first = int(vy.min())
    y_last = int(vy.max())
    if width <= 0 or y_last == y_first:
        return empty

    sx, sy, ex, ey = vx[:-1], vy[:-1], vx[1:], vy[1:]
    keep = sy != ey
    sx, sy, ex, ey = sx[keep], sy[keep], ex[keep], ey[keep]
    ylo = np.minimum(sy, ey)
    yhi = np.maximum(sy, ey)
    # rows on which each edge is active (see module docstring)
    counts = yhi - ylo + (yhi == y_last)
    if counts.sum() == 0:
        return empty
    edge = np.repeat(np.arange(sx.size), counts)
    starts = np.cumsum(counts) - counts
    rows = ylo[edge] + (np.arange(edge.size) - starts[edge])

    # Crossing of each active edge with its row, evaluated as gwcs does:
    # t = det(v, w) / det(u, v) for the scan line v = (width, 0).
    ux = (ex - sx)[edge]
    uy = (ey - sy)[edge]
    t = (width * (sy[edge] - rows)) / (-(uy * width))
    xc = np.ceil(t * ux + sx[edge]).astype(np.int64)

    order = np.lexsort((xc, rows))
    rows = rows[order]
    xc = xc[order]
    first = np.r_[0, np.flatnonzero(np.diff(rows)) + 1]
    run_len = np.diff(np.r_[first, rows.size])
    rank = np.arange(rows.size) - np.repeat(first, run_len)
    is_start = (rank % 2 == 0) & (rank + 1 < np.repeat(run_len, run_len))
    i_start = np.flatnonzero(is_start)
    span_row = rows[i_start] + off_y
    a = np.maximum(0, xc[i_start] + off_x)
    stop = np.minimum(xc[i_start + 1] + off_x, nx - 1) + 1
    # Python slice semantics of data[row][a:stop] (a negative stop counts
    # from the end of the row), as in gwcs.
    stop = np.where(stop < 0, np.maximum(0, nx + stop), np.minimum(stop, nx))
    ok = (span_row >= 0) & (span_row < ny) & (stop > a)
    if not ok.any():
        return empty
    span_row, a, stop = span_row[ok], a[ok], stop[ok]

    r0 = int(span_row.min())
    c0 = int(a.min())
    h = int(span_row.max()) - r0 + 1
    w = int(stop.max()) - c0
    return (r0, c0), _span_mask(span_row - r0, a - c0, stop - c0, (h, w))


def _span_mask(rows, starts, stops, shape):
    """Mask of the union of the row spans ``[starts, stops)`` (rows non-decreasing).

    Filled by comparing column indices with each row's span limits, one
    pass per span rank within a row (one pass for a convex polygon).
    """
    h, w = shape
    cols = np.arange(w)
    new_row = np.r_[True, rows[1:] != rows[:-1]]
    first = np.flatnonzero(new_row)
    rank = np.arange(rows.size) - np.repeat(first, np.diff(np.r_[first, rows.size]))
    mask = None
    for r in range(int(rank.max()) + 1):
        sel = rank == r
        lo = np.full(h, w)
        hi = np.zeros(h, dtype=lo.dtype)
        lo[rows[sel]] = starts[sel]
        hi[rows[sel]] = stops[sel]
        inside = cols >= lo[:, None]
        inside &= cols < hi[:, None]
        if mask is None:
            mask = inside
        else:
            mask |= inside
    return mask
