"""What the comparison of one pair of sky groups measured, and how the fit used it."""

from __future__ import annotations

from dataclasses import dataclass

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
        Estimated error of ``difference`` (``compare='differences'``); NaN
        when the comparison gives no error (``compare='statistics'``).
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
