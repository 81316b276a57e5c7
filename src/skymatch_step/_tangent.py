"""The mosaic's tangent plane: where sky planes and positions on the sky live.

Sky models with a spatial part (``sky_model='plane'``) describe each sky
group's background as a function of position in one plane shared by the
whole mosaic: the gnomonic (TAN) projection about the mosaic's centre. Its
coordinates ``(xi, eta)`` are in degrees, ``xi`` towards increasing right
ascension (east) and ``eta`` towards the north pole, both 0 at the centre,
as FITS intermediate world coordinates. The detectors of one exposure share
one plane in it, whatever their own pixel grids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TangentPlane"]


@dataclass(frozen=True)
class TangentPlane:
    """Gnomonic projection about ``(ra0, dec0)`` (degrees).

    Attributes
    ----------
    ra0, dec0 : float
        The tangent point, degrees.
    """

    ra0: float
    dec0: float

    @classmethod
    def about(cls, footprints):
        """Make the tangent plane at the centre of a set of footprints.

        Parameters
        ----------
        footprints : list of SphericalPolygon

        Returns
        -------
        TangentPlane
            Tangent at the normalised mean of all footprint vertices.
        """
        points = np.concatenate([np.asarray(p.points) for fp in footprints for p in fp.polygons])
        centre = points.mean(axis=0)
        norm = np.linalg.norm(centre)
        if norm == 0:
            centre, norm = np.array([1.0, 0.0, 0.0]), 1.0
        x, y, z = centre / norm
        ra = float(np.degrees(np.arctan2(y, x)) % 360.0)
        dec = float(np.degrees(np.arcsin(np.clip(z, -1.0, 1.0))))
        return cls(ra, dec)

    def __call__(self, ra, dec):
        """Project sky positions (degrees) to ``(xi, eta)`` (degrees).

        Parameters
        ----------
        ra, dec : array_like

        Returns
        -------
        xi, eta : ndarray
            NaN for positions 90 degrees or more from the tangent point.
        """
        ra = np.radians(np.asarray(ra, dtype=float))
        dec = np.radians(np.asarray(dec, dtype=float))
        ra0, dec0 = np.radians(self.ra0), np.radians(self.dec0)
        cos_dec = np.cos(dec)
        dra = ra - ra0
        cos_c = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * cos_dec * np.cos(dra)
        with np.errstate(divide="ignore", invalid="ignore"):
            xi = cos_dec * np.sin(dra) / cos_c
            eta = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * cos_dec * np.cos(dra)) / cos_c
        bad = ~(cos_c > 0)
        if np.any(bad):
            xi = np.where(bad, np.nan, xi)
            eta = np.where(bad, np.nan, eta)
        return np.degrees(xi), np.degrees(eta)
