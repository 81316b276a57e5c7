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

Where float32 arithmetic overflows (values near the float32 limit, e.g.
1e30, whose squared deviations overflow: the standard deviation is
infinite), ``ImageStats`` returns an infinite mode, a meaningless midpt,
or a mean or median that ignores the clipping (its limits become
infinite). We raise ``StatsOverflowError`` instead, whose message says
what overflowed and how large the values are.

The histogram counts only its occupied bins, so its memory grows with the
number of values, never with the number of bins (the value range divided
by the bin width, which outliers can make huge).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["SKYSTATS", "SkyStatistics", "StatsError", "StatsOverflowError"]

#: Names of the supported statistics.
SKYSTATS = ("mean", "median", "mode", "midpt")

_F32_TINY = 10.0 * float(np.finfo(np.float32).eps)


class StatsError(ValueError):
    """The statistics cannot be computed (no usable values, or values too large)."""


class StatsOverflowError(StatsError):
    """The statistics cannot be computed: float32 arithmetic overflows.

    Unlike an empty selection (an ordinary event, e.g. an overlap whose
    pixels are all masked), this points at the data: pixel values near
    the float32 limit. Its message says what overflowed and how large the
    values are, for the caller to report.
    """


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
        StatsOverflowError
            If the values are too large for float32 arithmetic (a
            ``StatsError`` too).
        """
        return compute(values, self)


class _Moments:
    """Count, mean, std and range of the values within clipping limits."""

    __slots__ = ("first", "hi32", "lo32", "max", "mean", "min", "n", "reused", "std")


def _clipped_moments(x, lo, hi, prev=None, *, xmin=None, xmax=None, need_std=True):
    """Moments of the values of ``x`` within ``[lo, hi]``.

    Follows ``computeMean`` of stsci.imagestats (float32 limits, double
    sums, float32 results). Two shortcuts change no number: when the
    limits hold every value of ``x`` (``xmin``, ``xmax``: its range) the
    values are used without a copy, and when the selection cannot differ
    from ``prev`` (the previous iteration's) its moments are reused. The
    selected copy is squared in place for the variance, so one image-sized
    temporary is needed, not two. Without ``need_std`` the standard
    deviation is not computed (NaN). Overflow is silent here: a limit
    beyond the float32 range is no limit, and a standard deviation that
    overflows is infinite (the caller reports it).
    """
    m = _Moments()
    with np.errstate(over="ignore"):
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
    with np.errstate(over="ignore"):
        mean = np.float32(np.sum(good, dtype=np.float64) / m.n)
    m.std = float("nan")
    if m.n > 1 and need_std:
        # Squares of differences above ~1.8e19 overflow float32 (as in
        # computeMean): the standard deviation is then infinite.
        with np.errstate(over="ignore", invalid="ignore"):
            if owned:
                d = good
                np.subtract(d, mean, out=d)
            else:
                d = good - mean
            np.multiply(d, d, out=d)
            m.std = float(np.float32(np.sqrt(np.sum(d, dtype=np.float64) / (m.n - 1))))
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


def _overflow(what, dmin, dmax):
    """Return the error for a quantity that overflows float32."""
    biggest = max(abs(float(dmin)), abs(float(dmax)))
    return StatsOverflowError(
        f"pixel values too large for float32 statistics (overflow): {what} is not "
        f"finite; max |value| = {biggest:.3g} (exclude such values with lower/upper "
        "or dqbits)"
    )


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

    Raises
    ------
    StatsError
        If there are no values, or none inside ``lower``/``upper`` or the
        clipping limits, or a value is not finite.
    StatsOverflowError
        If a quantity the statistic needs (standard deviation, histogram
        range, the statistic itself) overflows float32.
    """
    x = np.ravel(np.asarray(values))
    if x.dtype != np.float32:
        with np.errstate(over="ignore"):
            x = x.astype(np.float32)
    if x.size == 0:
        raise StatsError("no pixel values to compute statistics from")

    dmin = x.min()
    dmax = x.max()
    if not (np.isfinite(dmin) and np.isfinite(dmax)):
        raise StatsError(
            "pixel values must be finite as float32 (magnitudes above 3.4e38 overflow); "
            f"found min {dmin}, max {dmax}"
        )
    lower = dmin if settings.lower is None else settings.lower
    upper = dmax if settings.upper is None else settings.upper
    # Compared as float32 (as in ImageStats); a limit beyond the float32
    # range is no limit.
    with np.errstate(over="ignore"):
        if settings.lower is not None and np.float32(lower) > dmax:
            raise StatsError(f"lower limit {lower} is above all pixel values (max {dmax})")
        if settings.upper is not None and np.float32(upper) < dmin:
            raise StatsError(f"upper limit {upper} is below all pixel values (min {dmin})")

    stat = settings.skystat
    histogram = stat in ("mode", "midpt")
    clipmin, clipmax = lower, upper
    moments = None
    for it in range(settings.nclip + 1):
        # The last iteration's standard deviation only sets the bin width.
        need_std = it < settings.nclip or histogram
        moments = _clipped_moments(
            x, clipmin, clipmax, moments, xmin=dmin, xmax=dmax, need_std=need_std
        )
        if moments.n <= 0:
            raise StatsError("no pixel values left inside the clipping limits")
        if not math.isfinite(moments.mean):
            raise _overflow(f"the mean of {moments.n} values", dmin, dmax)
        if need_std and moments.n > 1 and not math.isfinite(moments.std) and not histogram:
            # mean/median: as in stsci.imagestats (and so jwst), limits of
            # infinite width leave only lower/upper; say why.
            log.warning(
                "Sigma clipping skipped for the sky %s of %d values: their standard "
                "deviation overflows float32 (max |value| = %.3g); exclude such values "
                "with lower/upper or dqbits.",
                stat,
                moments.n,
                max(abs(float(dmin)), abs(float(dmax))),
            )
            moments.std = math.inf
        elif need_std and moments.n > 1 and not math.isfinite(moments.std):
            use = "the sigma clipping" if it < settings.nclip else "the histogram bin width"
            raise _overflow(
                f"the standard deviation of the {moments.n} values inside the clipping "
                f"limits, needed for {use},",
                dmin,
                dmax,
            )
        if it < settings.nclip:
            # Python's max/min keep the limit when the candidate is NaN
            # (a single value has an undefined standard deviation).
            clipmin = max(lower, moments.mean - settings.lsigma * moments.std)
            clipmax = min(upper, moments.mean + settings.usigma * moments.std)
    npix, mean, std = moments.n, moments.mean, moments.std
    vmin, vmax = _range(moments, x[0])

    if stat == "mean":
        return mean, npix
    if stat == "median":
        with np.errstate(over="ignore"):  # limits beyond float32: no limits
            if settings.nclip > 0:
                x = x[(x <= clipmax) & (x >= clipmin)]
            median = np.median(x)
        if not np.isfinite(median):
            raise _overflow(f"the median of {x.size} values", dmin, dmax)
        return median, npix

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
    if nbins > _MAX_BINS:
        raise StatsOverflowError(
            f"too many histogram bins for the {stat} (overflow): the values span "
            f"{drange:.3g}, {nbins:.3g} bins of {hwidth:.3g}; at most 2**62 bins are supported"
        )

    if stat == "mode":
        value = _mode(x, nbins, dz, vmin, hwidth)
    else:
        value = _midpt(x, nbins, dz, vmin, vmax, hwidth)
    if not np.isfinite(value):
        raise _overflow(f"the {stat}", dmin, dmax)
    return value, npix


_HIST_CHUNK = 1 << 20

#: The histogram is counted in a dense array up to this many bins (8 MiB),
#: or up to this many bins per value (16 bytes per bin with its temporary:
#: 4 per float32 value); beyond, only the occupied bins are counted, by
#: sorting bin indices (at most about 32 bytes per value).
_DENSE_BINS = 1 << 20
_DENSE_BINS_PER_VALUE = 1.0

#: Bin indices are int64; float32 scaled values below 2**63 convert exactly.
_MAX_BINS = 1 << 62


def _scaled_chunks(x, nbins, dz, vmin):
    """Yield, chunk by chunk, the float32 bin coordinates of the histogram's values.

    As ``populate1DHist`` of stsci.imagestats (1.8.2 and later) computes
    them: float32 throughout, values in ``[start, stop)`` have coordinate
    ``(1 / width) * (value - start)``, whose integer part is the bin.
    """
    with np.errstate(over="ignore"):
        width = np.float32(dz)
        start = np.float32(vmin)
        inv = np.float32(1.0) / width
        # The smaller of the Python-side upper value and the C-side edge,
        # both float32 (numpy 1.x would promote the first to float64).
        stop = min(np.float32(start + width * nbins), np.float32(start + width * np.float32(nbins)))
        span = stop - start
    if not np.isfinite(span):
        raise StatsOverflowError(
            "pixel values too large for float32 statistics (overflow): the histogram "
            f"range from {vmin:.3g} ({nbins} bins of {dz:.3g}) does not fit float32"
        )
    for first in range(0, x.size, _HIST_CHUNK):
        chunk = x[first : first + _HIST_CHUNK]
        inside = chunk >= start
        np.logical_and(inside, chunk < stop, out=inside)
        scaled = chunk[inside]
        del inside
        scaled -= start
        scaled *= inv
        yield scaled


def _histogram(x, nbins, dz, vmin):
    """Occupied bins of the histogram of ``x``, as ``histogram1d`` fills it.

    A bin index that rounds up to ``nbins`` is dropped (the upper edge
    rule of stsci.imagestats 1.8.2 and later).

    Returns
    -------
    bins : ndarray of int
        Indices of the occupied bins, increasing.
    counts : ndarray of int64
        Their counts (all positive).
    """
    if nbins <= max(_DENSE_BINS, _DENSE_BINS_PER_VALUE * x.size):
        counts = np.zeros(nbins, dtype=np.int64)
        for scaled in _scaled_chunks(x, nbins, dz, vmin):
            counts += np.bincount(scaled.astype(np.intp), minlength=nbins)[:nbins]
        bins = np.flatnonzero(counts)
        return bins, counts[bins]
    # Many bins: memory in proportion to the values, not to the bins.
    parts_bins, parts_counts = [], []
    for scaled in _scaled_chunks(x, nbins, dz, vmin):
        index = scaled.astype(np.int64)
        del scaled
        index = index[index < nbins]
        b, c = np.unique(index, return_counts=True)
        parts_bins.append(b)
        parts_counts.append(c)
    if len(parts_bins) == 1:
        return parts_bins[0], parts_counts[0]
    if not parts_bins:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    bins = np.concatenate(parts_bins)
    counts = np.concatenate(parts_counts)
    del parts_bins, parts_counts
    order = np.argsort(bins, kind="stable")
    bins = bins[order]
    counts = counts[order]
    del order
    new = np.empty(bins.size, dtype=bool)
    new[0] = True
    np.not_equal(bins[1:], bins[:-1], out=new[1:])
    first = np.flatnonzero(new)
    return bins[first], np.add.reduceat(counts, first)


def _empty_histogram(nbins):
    """Return the error for a histogram left empty by float32 rounding.

    Values fall outside the bins only when the bin coordinates, float32
    numbers up to ``nbins``, are too coarse to resolve single bins (far
    more than 2**24 bins); ``ImageStats`` would report a meaningless value.
    """
    return StatsOverflowError(
        f"no pixel value falls inside the {nbins} histogram bins: float32 cannot resolve "
        "bins so narrow for the value range"
    )


def _mode(x, nbins, dz, vmin, hwidth):
    """Return the mode: the interpolated histogram peak, as ``ImageStats`` does."""
    if nbins == 1:
        return vmin + 0.5 * hwidth
    bins, counts = _histogram(x, nbins, dz, vmin)
    if nbins == 2:
        hist = np.zeros(2, dtype=np.int64)
        hist[bins] = counts
        if hist[0] > hist[1]:
            return vmin + 0.5 * hwidth
        if hist[0] < hist[1]:
            return vmin + 1.5 * hwidth
        return vmin + hwidth
    if counts.size == 0:
        raise _empty_histogram(nbins)
    # The first of the highest bins; its neighbours may be empty.
    j = int(np.argmax(counts))
    peak = int(bins[j])
    if peak == 0:
        return vmin + 0.5 * hwidth
    if peak == nbins - 1:
        return vmin + (nbins - 0.5) * hwidth
    top = int(counts[j])
    left = int(counts[j - 1]) if j > 0 and bins[j - 1] == peak - 1 else 0
    right = int(counts[j + 1]) if j + 1 < bins.size and bins[j + 1] == peak + 1 else 0
    dh1 = top - left
    dh2 = top - right
    denom = dh1 + dh2
    if denom == 0:
        return vmin + (peak + 0.5) * hwidth
    pos = np.float64(peak + 1 + 0.5 * (dh1 - dh2) / denom)
    return vmin + (pos - 0.5) * hwidth


def _midpt(x, nbins, dz, vmin, vmax, hwidth):
    """Return the midpt: where the cumulative histogram reaches one half.

    The cumulative sum is constant over empty bins, so that of the occupied
    bins gives the same numbers: the bin reaching one half is occupied, and
    the sum before it is that of the previous occupied bin (0 if none).
    """
    if nbins == 1:
        # Degenerate single bin (see module docstring): centre of range.
        return 0.5 * (vmin + vmax)
    bins, counts = _histogram(x, nbins, dz, vmin)
    if counts.size == 0:
        raise _empty_histogram(nbins)
    csum = np.cumsum(counts).astype(np.float32)
    csum = csum / csum[-1]
    j = int(np.flatnonzero(csum >= 0.5)[0])
    lo = int(bins[j])
    h1 = np.float64(vmin + lo * hwidth)  # float64, so float32 terms promote
    before = csum[j - 1] if j > 0 else np.float32(0.0)
    hdiff = csum[j] if lo == 0 else csum[j] - before
    if hdiff == 0:
        return h1
    if lo == 0:
        return h1 + 0.5 / hdiff * hwidth
    return h1 + (0.5 - before) / hdiff * hwidth
