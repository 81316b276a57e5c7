"""Image footprints on the sky and their bounding caps."""

from __future__ import annotations

import numpy as np
from spherical_geometry.polygon import SphericalPolygon

from .exceptions import GeometryError

__all__ = ["Cap", "bounding_cap", "image_footprint", "union_footprint"]


def _border(shape, stepsize):
    """Pixel coordinates of the closed outline of an image.

    The outline follows pixel *edges* (the first pixel centre is at 0, so
    the lower-left corner is at -0.5): corners, plus points at most
    ``stepsize`` pixels apart along each side when ``stepsize`` is set.
    """
    ny, nx = shape
    if stepsize is None:
        n_x = n_y = 2
    else:
        n_x = max(2, int(np.ceil((nx + 1.0) / stepsize)))
        n_y = max(2, int(np.ceil((ny + 1.0) / stepsize)))
    xs = np.linspace(-0.5, nx - 0.5, n_x, dtype=float)
    ys = np.linspace(-0.5, ny - 0.5, n_y, dtype=float)[1:-1]
    right, top, left = nx - 0.5, ny - 0.5, -0.5
    bx = np.concatenate([xs, np.full(ys.size, right), xs[::-1], np.full(ys.size, left), xs[:1]])
    by = np.concatenate([np.full(xs.size, -0.5), ys, np.full(xs.size, top), ys[::-1], [-0.5]])
    return bx, by


def image_footprint(shape, forward, stepsize=None, *, name=None):
    """Spherical polygon outlining an image on the sky.

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(ny, nx)``.
    forward : callable
        ``forward(x, y) -> (ra, dec)`` in degrees, for arrays of pixel
        coordinates (no bounding-box filtering).
    stepsize : int or None, optional
        Maximum spacing, in pixels, of the outline vertices along each
        side; `None` uses only the four corners.
    name : str, optional
        Image name for error messages.

    Returns
    -------
    spherical_geometry.polygon.SphericalPolygon

    Raises
    ------
    GeometryError
        If the WCS gives non-finite sky coordinates on the outline or the
        polygon cannot be built.
    """
    bx, by = _border(shape, stepsize)
    ra, dec = forward(bx, by)
    ra = np.array(ra, dtype=float)
    dec = np.array(dec, dtype=float)
    if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec))):
        raise GeometryError(
            f"the WCS of image {name!r} gives non-finite sky coordinates on the image outline"
        )
    # Evaluating the closing vertex can differ from the first in the last
    # bits; the polygon must be exactly closed.
    ra[-1] = ra[0]
    dec[-1] = dec[0]
    try:
        return SphericalPolygon.from_radec(ra, dec)
    except Exception as err:  # spherical-geometry raises several types
        raise GeometryError(f"cannot build the footprint of image {name!r}: {err}") from err


def union_footprint(footprints):
    """Union of several footprints (the footprint of a group of images).

    Parameters
    ----------
    footprints : list of SphericalPolygon

    Returns
    -------
    SphericalPolygon
    """
    if len(footprints) == 1:
        return footprints[0]
    return SphericalPolygon.multi_union(list(footprints))


class Cap:
    """A spherical cap (centre unit vector, angular radius in radians)."""

    __slots__ = ("centre", "radius")

    def __init__(self, centre, radius):
        self.centre = centre
        self.radius = radius


def bounding_cap(polygon):
    """Smallest-effort cap containing a footprint.

    The centre is the normalised mean of the vertices and the radius the
    largest angle from it to a vertex. Because a cap narrower than a
    hemisphere contains the great-circle arcs between any two of its
    points, it contains the whole polygon; two footprints whose caps do
    not touch cannot overlap.

    Parameters
    ----------
    polygon : SphericalPolygon

    Returns
    -------
    Cap
    """
    pts = np.concatenate([np.asarray(p.points) for p in polygon.polygons])
    centre = pts.mean(axis=0)
    norm = np.linalg.norm(centre)
    if norm == 0:
        return Cap(np.array([0.0, 0.0, 1.0]), np.pi)
    centre = centre / norm
    cosang = np.clip(pts @ centre, -1.0, 1.0)
    radius = float(np.arccos(cosang.min()))
    if radius >= np.pi / 2:
        radius = np.pi  # too big to be convex: overlaps everything
    return Cap(centre, radius)
