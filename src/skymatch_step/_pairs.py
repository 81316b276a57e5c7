"""What the comparison of one pair of sky groups measured, and how the fit used it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PairRecord"]


@dataclass
class PairRecord:
    """One overlapping pair of sky groups, as measured and as fitted.

    The pair says that, in their common area, group ``a`` is brighter than
    group ``b`` by ``difference``; the fit looks for offsets ``d`` with
    ``d[a] - d[b] = difference``.

    Attributes
    ----------
    a, b : int
        Group indices, ``a < b`` (see `SkyResult.groups`).
    npix_a, npix_b : int
        Usable pixels behind the measurement of each side. With
        ``compare='differences'`` both are the number of pixel differences.
    value_a, value_b : float
        The sky each group measured in the overlap (``compare='statistics'``);
        NaN with ``compare='differences'``.
    difference : float
        Measured ``sky(a) - sky(b)`` in the overlap.
    error : float
        Estimated error of ``difference`` (``compare='differences'``): the
        larger of the pixel-noise error and the scatter between blocks of
        the overlap, and, after the fit, with the excess the pairs' residuals
        call for (`SkyResult.excess`); NaN when the comparison gives no
        error (``compare='statistics'``).
    weight : float
        Weight of the pair's equation in the least-squares fit: the
        equation is multiplied by it, so its weight in the sum of squares
        is ``weight**2``.
    fitted : float
        ``d[a] - d[b]`` from the fit (NaN until fitted).
    residual : float
        ``difference - fitted``.
    normalized : float
        ``residual`` divided by its expected spread (``error``, or a robust
        spread of the residuals when there is no error).
    rejected : str
        Why the fit left the pair out: ``''`` (used), ``'few pixels'`` or
        ``'outlier'``.
    pixel_error : float
        The error from pixel noise alone (NaN without errors).
    block_error : float
        The error from the scatter of the difference between blocks of the
        overlap (block jackknife); NaN when not measured.
    centre : tuple of float or None
        Tangent-plane centroid ``(xi, eta)`` of the pair's pixel
        differences (degrees), when measured.
    plane : ndarray or None
        The plane of ``sky(a) - sky(b)`` measured in the overlap, ``(value
        at centre, d/dxi, d/deta)`` (per degree); ``difference`` is its
        value at ``centre``. With ``sky_model='plane'`` it is fitted to
        block medians; with ``'constant'`` its slopes come from the means
        of the jackknife blocks and serve only the uncertainties (the
        gradients a constant cannot follow).
    plane_cov : ndarray or None
        3x3 covariance of ``plane``.
    moments : ndarray or None
        2x2 covariance of the pixel differences' positions about ``centre``
        (degrees squared): the overlap's extent (for the plane fit, and for
        the pixels that overlapping pairs share in the uncertainties).
    """

    a: int
    b: int
    npix_a: int
    npix_b: int
    value_a: float
    value_b: float
    difference: float
    error: float
    weight: float
    fitted: float = float("nan")
    residual: float = float("nan")
    normalized: float = float("nan")
    rejected: str = ""
    pixel_error: float = float("nan")
    block_error: float = float("nan")
    centre: tuple | None = None
    plane: np.ndarray | None = None
    plane_cov: np.ndarray | None = None
    moments: np.ndarray | None = None
