"""Sky statistics of a set of pixel values (mean, median, mode, midpt).

The numbers reproduce those of the ``ImageStats`` class of
``stsci.imagestats`` (the statistics jwst's skymatch uses), computed with
numpy instead of C:

* values are converted to float32 first;
* ``lower``/``upper`` limit the usable values; each of the ``nclip``
  clipping iterations recomputes mean and standard deviation of the values
  inside the current limits and narrows the limits to
  ``[mean - lsigma * std, mean + usigma * std]`` (never beyond
  ``lower``/``upper``);
* ``median`` is the median of the values inside the final limits (of all
  values when ``nclip == 0``, as ``ImageStats`` does);
* ``mode`` and ``midpt`` come from a histogram with bins of
  ``binwidth * std``, filled from all values between the clipped minimum
  and maximum; the mode is the parabolic interpolation of the histogram
  peak and the midpt the interpolated 50% point of its cumulative sum.

Where ``ImageStats`` degenerates we return a sensible value instead
(documented in ``docs/description.rst``):

* a single value: its standard deviation is undefined, and ``ImageStats``
  returns NaN for the mode; we return the value itself;
* all values in one histogram bin (e.g. a constant image): ``ImageStats``
  returns the *count* of the bin (0 for a constant image) as midpt; we
  return the centre of the occupied value range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SKYSTATS", "SkyStatistics", "StatsError"]

#: Names of the supported statistics.
SKYSTATS = ("mean", "median", "mode", "midpt")

_F32_TINY = 10.0 * float(np.finfo(np.float32).eps)


class StatsError(ValueError):
    """The statistics cannot be computed (no usable values)."""


@dataclass(frozen=True)
class SkyStatistics:
    """Settings of the sky statistic; calling it computes the statistic.

    Parameters
    ----------
    skystat : {'mode', 'median', 'mean', 'midpt'}
        The statistic to report.
    lower, upper : float or None
        Usable range of pixel values; `None` for no limit.
    nclip : int
        Number of sigma-clipping iterations (>= 0).
    lsigma, usigma : float
        Lower and upper clipping limits, in standard deviations (> 0).
    binwidth : float
        Histogram bin width for ``mode`` and ``midpt``, in standard
        deviations (> 0).
    """

    skystat: str = "mode"
    lower: float | None = None
    upper: float | None = None
    nclip: int = 5
    lsigma: float = 4.0
    usigma: float = 4.0
    binwidth: float = 0.1

    def __post_init__(self):
        if self.skystat not in SKYSTATS:
            raise ValueError(
                f"Unknown skystat {self.skystat!r}; valid choices are {', '.join(SKYSTATS)}."
            )
        if int(self.nclip) != self.nclip or self.nclip < 0:
            raise ValueError(f"nclip must be a non-negative integer, not {self.nclip!r}.")
        for name in ("lsigma", "usigma", "binwidth"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be a positive number, not {value!r}.")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(f"lower ({self.lower}) must not be larger than upper ({self.upper}).")

    def __call__(self, values):
        """Compute the statistic of ``values``.

        Parameters
        ----------
        values : array-like
            Pixel values (any shape); they must all be finite.

        Returns
        -------
        value : float
            The statistic. Its scalar type (Python float, numpy float32 or
            float64) is the one ``ImageStats`` gives, so that arithmetic
            with it (e.g. subtracting it from a float32 image) rounds the
            same way as in jwst.
        npix : int
            Number of values used (inside the final clipping limits).

        Raises
        ------
        StatsError
            If there are no values, or none inside ``lower``/``upper`` or
            the clipping limits.
        """
        return compute(values, self)


class _Moments:
    """Count, mean, std and range of the values within clipping limits."""

    __slots__ = ("first", "hi32", "lo32", "max", "mean", "min", "n", "reused", "std")


def _clipped_moments(x, lo, hi, prev=None, *, xmin=None, xmax=None):
    """Moments of the values of ``x`` within ``[lo, hi]``.

    Follows ``computeMean`` of stsci.imagestats (float32 limits, double
    sums, float32 results). Two shortcuts change no number: when the
    limits hold every value of ``x`` (``xmin``, ``xmax``: its range) the
    values are used without a copy, and when the selection cannot differ
    from ``prev`` (the previous iteration's) its moments are reused. The
    selected copy is squared in place for the variance, so one image-sized
    temporary is needed, not two.
    """
    m = _Moments()
    m.lo32 = np.float32(lo)
    m.hi32 = np.float32(hi)
    m.reused = False
    nested = prev is not None and prev.lo32 <= m.lo32 and m.hi32 <= prev.hi32
    # The previous selection is kept whole when the new limits hold all of
    # it and either lie inside the previous limits or it was every value.
    if (
        prev is not None
        and (nested or prev.n == x.size)
        and m.lo32 <= prev.min
        and prev.max <= m.hi32
    ):
        for name in ("first", "n", "mean", "std", "min", "max"):
            setattr(m, name, getattr(prev, name))
        m.reused = True
        return m
    if xmin is not None and m.lo32 <= xmin and xmax <= m.hi32:
        good, owned = x, False
    else:
        keep = x >= m.lo32
        np.logical_and(keep, x <= m.hi32, out=keep)
        good, owned = x[keep], True
        del keep
    m.n = good.size
    if m.n == 0:
        m.first = m.mean = m.std = m.min = m.max = 0.0
        return m
    m.first = good[0]
    m.min = good.min()
    m.max = good.max()
    mean = np.float32(np.sum(good, dtype=np.float64) / m.n)
    if m.n > 1:
        if owned:
            d = good
            np.subtract(d, mean, out=d)
        else:
            d = good - mean
        np.multiply(d, d, out=d)
        m.std = float(np.float32(np.sqrt(np.sum(d, dtype=np.float64) / (m.n - 1))))
    else:
        m.std = float("nan")
    m.mean = float(mean)
    return m


def _range(m, first):
    """Return the data range as ``computeMean`` reports it.

    Its running minimum and maximum start from the array's first element
    and the limits, so they can differ from the selected values' range.
    """
    vmin = min(m.lo32 if m.lo32 > first else first, m.min)
    vmax = max(m.hi32 if m.hi32 < first else first, m.max)
    return float(vmin), float(vmax)


def compute(values, settings):
    """Compute the sky statistic of ``values``; see `SkyStatistics`.

    Parameters
    ----------
    values : array-like
        Finite pixel values.
    settings : SkyStatistics
        What to compute.

    Returns
    -------
    value : float
        The statistic.
    npix : int
        Number of values inside the final clipping limits.
    """
    x = np.ravel(np.asarray(values))
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    if x.size == 0:
        raise StatsError("no pixel values to compute statistics from")

    dmin = x.min()
    dmax = x.max()
    lower = dmin if settings.lower is None else settings.lower
    upper = dmax if settings.upper is None else settings.upper
    if settings.lower is not None and lower > dmax:
        raise StatsError(f"lower limit {lower} is above all pixel values (max {dmax})")
    if settings.upper is not None and upper < dmin:
        raise StatsError(f"upper limit {upper} is below all pixel values (min {dmin})")

    clipmin, clipmax = lower, upper
    moments = None
    for it in range(settings.nclip + 1):
        moments = _clipped_moments(x, clipmin, clipmax, moments, xmin=dmin, xmax=dmax)
        if moments.n <= 0:
            raise StatsError("no pixel values left inside the clipping limits")
        if it < settings.nclip:
            # Python's max/min keep the limit when the candidate is NaN
            # (a single value has an undefined standard deviation).
            clipmin = max(lower, moments.mean - settings.lsigma * moments.std)
            clipmax = min(upper, moments.mean + settings.usigma * moments.std)
    npix, mean, std = moments.n, moments.mean, moments.std
    vmin, vmax = _range(moments, x[0])

    stat = settings.skystat
    if stat == "mean":
        return mean, npix
    if stat == "median":
        if settings.nclip > 0:
            x = x[(x <= clipmax) & (x >= clipmin)]
        return np.median(x), npix

    if npix == 1:
        # Degenerate: a single value (see module docstring).
        return float(moments.first), npix
    hwidth = settings.binwidth * std
    drange = vmax - vmin
    if drange == 0.0:
        # Degenerate: a constant (see module docstring).
        return vmin, npix
    if hwidth < _F32_TINY or abs(drange) < _F32_TINY or hwidth > drange:
        nbins = 1
        dz = drange
    else:
        nbins = int(drange / hwidth) + 1
        dz = drange / (nbins - 1)
    hist = _histogram(x, nbins, dz, vmin)

    if stat == "mode":
        return _mode(hist, nbins, vmin, hwidth), npix
    return _midpt(hist, vmin, vmax, hwidth), npix


_HIST_CHUNK = 1 << 20


def _histogram(x, nbins, dz, vmin):
    """Histogram as ``populate1DHist`` of stsci.imagestats (1.8.2 and later) fills it.

    float32 throughout: values in ``[start, stop)`` go to bin
    ``int((1 / width) * (value - start))``; an index that rounds up to
    ``nbins`` is dropped. Counted in chunks, to bound the temporaries.
    """
    width = np.float32(dz)
    start = np.float32(vmin)
    inv = np.float32(1.0) / width
    # The smaller of the Python-side upper value and the C-side edge, both
    # float32 (numpy 1.x would promote the first to float64).
    stop = min(np.float32(start + width * nbins), np.float32(start + width * np.float32(nbins)))
    counts = np.zeros(nbins, dtype=np.int64)
    for first in range(0, x.size, _HIST_CHUNK):
        chunk = x[first : first + _HIST_CHUNK]
        inside = chunk >= start
        np.logical_and(inside, chunk < stop, out=inside)
        scaled = chunk[inside]
        scaled -= start
        scaled *= inv
        counts += np.bincount(scaled.astype(np.intp), minlength=nbins)[:nbins]
    return counts.astype(np.uint32)


def _mode(hist, nbins, vmin, hwidth):
    if nbins == 1:
        return vmin + 0.5 * hwidth
    if nbins == 2:
        if hist[0] > hist[1]:
            return vmin + 0.5 * hwidth
        if hist[0] < hist[1]:
            return vmin + 1.5 * hwidth
        return vmin + hwidth
    peak = int(np.argmax(hist))
    if peak == 0:
        return vmin + 0.5 * hwidth
    if peak == nbins - 1:
        return vmin + (nbins - 0.5) * hwidth
    dh1 = int(hist[peak]) - int(hist[peak - 1])
    dh2 = int(hist[peak]) - int(hist[peak + 1])
    denom = dh1 + dh2
    if denom == 0:
        return vmin + (peak + 0.5) * hwidth
    pos = np.float64(peak + 1 + 0.5 * (dh1 - dh2) / denom)
    return vmin + (pos - 0.5) * hwidth


def _midpt(hist, vmin, vmax, hwidth):
    if hist.size == 1:
        # Degenerate single bin (see module docstring): centre of range.
        return 0.5 * (vmin + vmax)
    csum = np.cumsum(hist).astype(np.float32)
    csum = csum / csum[-1]
    lo = int(np.flatnonzero(csum >= 0.5)[0])
    h1 = np.float64(vmin + lo * hwidth)  # float64, so float32 terms promote
    hdiff = csum[0] if lo == 0 else csum[lo] - csum[lo - 1]
    if hdiff == 0:
        return h1
    if lo == 0:
        return h1 + 0.5 / hdiff * hwidth
    return h1 + (0.5 - csum[lo - 1]) / hdiff * hwidth
