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

__all__ = [
    "SKYSTATS",
    "SkyStatistics",
    "SortedValues",
    "StatsError",
    "StatsOverflowError",
    "sorted_values",
    "try_statistic",
]

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


class SortedValues:
    """Pixel values as float32, sorted once for every statistic computed from them.

    Every quantity the statistics need (the values inside clipping
    limits, their range, the median, the histogram's values) is then a
    contiguous slice found by binary search, instead of a filtered copy
    per clipping iteration. Build it with `sorted_values`; `compute` and
    `SkyStatistics` accept it in place of an array.

    Attributes
    ----------
    values : ndarray of float32
        The values in increasing order (native byte order).
    first : numpy.float32 or None
        The first value in the original order (``ImageStats`` starts its
        running minimum and maximum from it); None when there are none.
    """

    __slots__ = ("first", "values")

    def __init__(self, values, first):
        self.values = values
        self.first = first

    @property
    def size(self):
        """Number of values."""
        return self.values.size


def try_statistic(stats, values, problems=None):
    """Return the statistic of ``values``, or None when it cannot be computed.

    Parameters
    ----------
    stats : SkyStatistics
    values : ndarray or SortedValues
    problems : set of str, optional
        Overflow messages are added to it, for the caller to report with
        the image's name.

    Returns
    -------
    tuple or None
        ``(value, npix)``, the value keeping the statistic's scalar type
        (see `SkyStatistics.__call__`); None for no values, no values inside
        the limits, an overflow or a non-finite result.
    """
    if values.size == 0:
        return None
    try:
        value, npix = stats(values)
    except StatsOverflowError as err:
        if problems is not None:
            problems.add(str(err))
        return None
    except StatsError:
        return None
    if not np.isfinite(value):
        return None
    return value, int(npix)


def sorted_values(data, mask=None, *, overwrite=False):
    """Sort the usable pixels of ``data`` as float32, for `compute`.

    Parameters
    ----------
    data : array-like
        Pixel values (any shape, any real dtype, any byte order).
    mask : array-like of bool or None
        Usable pixels (same shape as ``data``); `None` for all. The values
        are taken in C order, as ``data[mask]`` would give them.
    overwrite : bool
        Whether ``data`` may be sorted in place when it already is a
        contiguous native float32 array without a mask (saves a copy).

    Returns
    -------
    SortedValues
    """
    data = np.asarray(data)
    if mask is None:
        x = np.ravel(data)
        if x.dtype != np.float32 or not x.dtype.isnative:
            with np.errstate(over="ignore"):
                x = x.astype(np.float32)
        elif not (overwrite and np.shares_memory(x, data)):
            x = x.copy()
        first = x[0] if x.size else None
        x.sort()
        return SortedValues(x, first)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != data.shape:
        raise ValueError(f"mask shape {mask.shape} != data shape {data.shape}")
    flat_mask = np.ravel(mask)
    n = int(np.count_nonzero(flat_mask))
    if n == 0:
        return SortedValues(np.zeros(0, dtype=np.float32), None)
    if 2 * n < flat_mask.size:
        # Few usable values: gathering them is cheaper than sorting all.
        with np.errstate(over="ignore"):
            x = np.ravel(data)[flat_mask].astype(np.float32)
        first = x[0]
        x.sort()
        return SortedValues(x, first)
    # Many: one converted copy, the unusable pixels set to NaN (sorted
    # last), instead of a slow boolean gather.
    x = np.empty(data.size, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        np.copyto(x.reshape(data.shape), data, casting="unsafe")
    first = x[int(np.argmax(flat_mask))]
    np.copyto(x, np.float32(np.nan), where=~flat_mask)
    x.sort()
    return SortedValues(x[:n], first)


def _span(s, lo32, hi32):
    """Slice ``(i, j)`` of the sorted ``s`` holding the values in ``[lo32, hi32]``."""
    return int(np.searchsorted(s, lo32, "left")), int(np.searchsorted(s, hi32, "right"))


def _bound(s, limit, side):
    """Index in ``s`` where values stop being below (``left``) or reach above ``limit``.

    The comparison is numpy's ``s >= limit`` (``left``) or ``s <= limit``
    (``right``) for a limit of any type (a float64 limit is compared in
    float64), as a mask over ``s`` would select.
    """
    n = s.size
    # A limit beyond the float32 range is no limit (as for a mask).
    with np.errstate(over="ignore"):
        i = int(np.searchsorted(s, np.float32(limit), side))
        if side == "left":
            while i < n and not (s[i] >= limit):
                i = int(np.searchsorted(s, s[i], "right"))
            while i > 0 and s[i - 1] >= limit:
                i = int(np.searchsorted(s, s[i - 1], "left"))
        else:
            while i > 0 and not (s[i - 1] <= limit):
                i = int(np.searchsorted(s, s[i - 1], "left"))
            while i < n and s[i] <= limit:
                i = int(np.searchsorted(s, s[i], "right"))
    return i


class _Moments:
    """Count, mean, std and range of the values within clipping limits."""

    __slots__ = ("hi32", "i", "j", "lo32", "max", "mean", "min", "n", "reused", "std", "sum")


#: Values per block of the squared deviations: the block and its
#: temporaries stay in the processor's cache instead of making three
#: passes over an image-sized array.
_BLOCK = 1 << 17


def _slice_sum(s, m, prev):
    """Double sum of ``s[m.i:m.j]``, from the previous slice's when it is close.

    The clipping limits usually move by a few values between iterations:
    adding and removing those few is much cheaper than a new sum. It is
    done only when few values change and the previous slice's values are
    no larger than this one's (then the update's rounding is that of a new
    sum; after outliers far from the sky leave, subtracting them would
    not be). Either way it is a sum in double precision, as
    ``computeMean``'s (the order of the additions differs, and so may the
    last bits of the double, never the float32 mean in practice).
    """
    close = (
        prev is not None
        and prev.n > 0
        and abs(m.i - prev.i) + abs(m.j - prev.j) <= m.n // 4
        and _magnitude(prev) <= 2.0 * _magnitude(m)
    )
    if not close:
        return float(np.sum(s[m.i : m.j], dtype=np.float64))
    return _updated_sum(s, m, prev)


def _magnitude(m):
    """Largest absolute value of a slice, from its range."""
    return max(abs(float(m.min)), abs(float(m.max)))


def _updated_sum(s, m, prev):
    """Sum of ``s[m.i:m.j]``: ``prev.sum`` plus the values joining, minus those leaving."""
    return prev.sum + _signed_sum(s, m.i, prev.i) + _signed_sum(s, prev.j, m.j)


def _signed_sum(s, a, b):
    """Double sum of ``s[a:b]`` when ``a <= b``, minus that of ``s[b:a]`` otherwise."""
    if a <= b:
        return float(np.sum(s[a:b], dtype=np.float64))
    return -float(np.sum(s[b:a], dtype=np.float64))


def _squared_deviations(good, mean, block):
    """Double sum of the float32 squares of the float32 ``good - mean``.

    As ``computeMean`` computes each term (float32 difference, float32
    square); the terms are summed block by block in ``block`` (float32).
    """
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for first in range(0, good.size, block.size):
            chunk = good[first : first + block.size]
            d = block[: chunk.size]
            np.subtract(chunk, mean, out=d)
            np.multiply(d, d, out=d)
            total += float(np.add.reduce(d, dtype=np.float64))
    return total


def _clipped_moments(s, lo, hi, prev=None, *, need_std=True, scratch=None):
    """Moments of the values of the sorted ``s`` within ``[lo, hi]``.

    Follows ``computeMean`` of stsci.imagestats (float32 limits, double
    sums, float32 results). The values inside the limits are the slice
    ``s[i:j]``; when it is the previous iteration's (``prev``), its
    moments are reused, and when it is close, its sum is updated from
    the previous one. ``scratch`` (float32, any length) holds the squared
    deviations block by block. Without ``need_std`` the standard
    deviation is not computed (NaN). Overflow is silent here: a limit
    beyond the float32 range is no limit, and a standard deviation that
    overflows is infinite (the caller reports it).
    """
    m = _Moments()
    with np.errstate(over="ignore"):
        m.lo32 = np.float32(lo)
        m.hi32 = np.float32(hi)
    m.i, m.j = _span(s, m.lo32, m.hi32)
    m.reused = False
    if prev is not None and (prev.i, prev.j) == (m.i, m.j):
        for name in ("n", "mean", "std", "min", "max", "sum"):
            setattr(m, name, getattr(prev, name))
        m.reused = True
        return m
    m.n = max(0, m.j - m.i)
    m.sum = 0.0
    if m.n == 0:
        m.mean = m.std = m.min = m.max = 0.0
        return m
    good = s[m.i : m.j]
    m.min = good[0]
    m.max = good[-1]
    m.sum = _slice_sum(s, m, prev)
    with np.errstate(over="ignore"):
        mean = np.float32(m.sum / m.n)
    m.std = float("nan")
    if m.n > 1 and need_std:
        m.std = _std(good, mean, scratch)
    m.mean = float(mean)
    return m


def _std(good, mean, scratch):
    """Float32 standard deviation of ``good`` about ``mean``, as ``computeMean``.

    Squares of differences above ~1.8e19 overflow float32 (as in
    computeMean): the standard deviation is then infinite.
    """
    block = np.empty(min(good.size, _BLOCK), dtype=np.float32) if scratch is None else scratch
    total = _squared_deviations(good, mean, block)
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.float32(np.sqrt(total / (good.size - 1))))


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
    if not isinstance(values, SortedValues):
        values = sorted_values(values)
    s = values.values
    if s.size == 0:
        raise StatsError("no pixel values to compute statistics from")

    dmin = s[0]
    dmax = s[-1]
    if np.isnan(dmax):
        dmin = dmax  # as the minimum of values with a NaN is
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
    scratch = None
    for it in range(settings.nclip + 1):
        # The last iteration's standard deviation only sets the bin width.
        need_std = it < settings.nclip or histogram
        if need_std and scratch is None and s.size > 1:
            scratch = np.empty(min(s.size, _BLOCK), dtype=np.float32)
        moments = _clipped_moments(s, clipmin, clipmax, moments, need_std=need_std, scratch=scratch)
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
    del scratch
    npix, mean, std = moments.n, moments.mean, moments.std
    vmin, vmax = _range(moments, values.first)

    if stat == "mean":
        return mean, npix
    if stat == "median":
        # Of the values inside the final limits compared as the limits'
        # types compare (of all values when nclip == 0, as ImageStats).
        i, j = 0, s.size
        if settings.nclip > 0:
            i, j = _bound(s, clipmin, "left"), _bound(s, clipmax, "right")
        with np.errstate(over="ignore"):  # as jwst: the mean of two huge values
            median = _sorted_median(s[i:j]) if j > i else np.median(s[i:i])
        if not np.isfinite(median):
            raise _overflow(f"the median of {max(0, j - i)} values", dmin, dmax)
        return median, npix

    if npix == 1:
        # Degenerate: a single value (see module docstring).
        return float(s[moments.i]), npix
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
        value = _mode(s, nbins, dz, vmin, hwidth, presorted=True)
    else:
        value = _midpt(s, nbins, dz, vmin, vmax, hwidth, presorted=True)
    if not np.isfinite(value):
        raise _overflow(f"the {stat}", dmin, dmax)
    return value, npix


def _sorted_median(s):
    """``np.median`` of the sorted ``s``, from its middle value(s) only."""
    half = s.size // 2
    if s.size % 2:
        return np.median(s[half : half + 1])
    return np.median(s[half - 1 : half + 1])


_HIST_CHUNK = 1 << 20

#: The histogram is counted in a dense array up to this many bins (8 MiB),
#: or up to this many bins per value (16 bytes per bin with its temporary:
#: 4 per float32 value); beyond, only the occupied bins are counted, by
#: sorting bin indices (at most about 32 bytes per value).
_DENSE_BINS = 1 << 20
_DENSE_BINS_PER_VALUE = 1.0

#: With sorted values, the bin edges are found by binary search when there
#: are at least this many values per bin (else every value is binned).
_SEARCH_BINS_PER_VALUE = 16

#: Bin indices are int64; float32 scaled values below 2**63 convert exactly.
_MAX_BINS = 1 << 62


def _frame(nbins, dz, vmin):
    """Return the histogram's float32 ``start``, ``stop`` and inverse bin width.

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
    return start, stop, inv


def _scaled_chunks(x, nbins, dz, vmin, presorted=False):
    """Yield, chunk by chunk, the float32 bin coordinates of the histogram's values.

    See `_frame`. With ``presorted`` (``x`` in increasing order) the
    coordinates come in increasing order, and each yielded array is
    overwritten by the next.
    """
    start, stop, inv = _frame(nbins, dz, vmin)
    if presorted:
        # The values in [start, stop) are a slice; no filtering needed.
        lo = int(np.searchsorted(x, start, "left"))
        hi = max(lo, int(np.searchsorted(x, stop, "left")))
        buffer = np.empty(min(_HIST_CHUNK, hi - lo), dtype=np.float32)
        for first in range(lo, hi, _HIST_CHUNK):
            chunk = x[first : min(hi, first + _HIST_CHUNK)]
            scaled = buffer[: chunk.size]
            np.subtract(chunk, start, out=scaled)
            scaled *= inv
            yield scaled
        return
    for first in range(0, x.size, _HIST_CHUNK):
        chunk = x[first : first + _HIST_CHUNK]
        inside = chunk >= start
        np.logical_and(inside, chunk < stop, out=inside)
        scaled = chunk[inside]
        del inside
        scaled -= start
        scaled *= inv
        yield scaled


def _histogram(x, nbins, dz, vmin, presorted=False):
    """Occupied bins of the histogram of ``x``, as ``histogram1d`` fills it.

    A bin index that rounds up to ``nbins`` is dropped (the upper edge
    rule of stsci.imagestats 1.8.2 and later). ``presorted``: ``x`` is in
    increasing order (only the values inside the histogram are read).

    Returns
    -------
    bins : ndarray of int
        Indices of the occupied bins, increasing.
    counts : ndarray of int64
        Their counts (all positive).
    """
    if presorted and nbins <= x.size // _SEARCH_BINS_PER_VALUE:
        return _sorted_histogram(x, nbins, dz, vmin)
    if nbins <= max(_DENSE_BINS, _DENSE_BINS_PER_VALUE * x.size):
        counts = np.zeros(nbins, dtype=np.int64)
        for scaled in _scaled_chunks(x, nbins, dz, vmin, presorted):
            counts += np.bincount(scaled.astype(np.intp), minlength=nbins)[:nbins]
        bins = np.flatnonzero(counts)
        return bins, counts[bins]
    # Many bins: memory in proportion to the values, not to the bins.
    parts_bins, parts_counts = [], []
    for scaled in _scaled_chunks(x, nbins, dz, vmin, presorted):
        index = scaled.astype(np.int64)
        del scaled
        index = index[index < nbins]
        b, c = _runs(index) if presorted else np.unique(index, return_counts=True)
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


def _sorted_histogram(s, nbins, dz, vmin):
    """`_histogram` of the sorted ``s`` by binary search of the bin edges.

    A value's bin (its float32 coordinate, rounded down) never decreases
    along ``s``, so bin ``k`` starts at the first value whose bin is at
    least ``k``: the search evaluates the coordinate of about
    ``nbins * log2(len(s))`` values, not of every value.
    """
    start, stop, inv = _frame(nbins, dz, vmin)
    lo = int(np.searchsorted(s, start, "left"))
    v = s[lo : max(lo, int(np.searchsorted(s, stop, "left")))]
    # first[k - 1]: first position in v whose bin is >= k, for k = 1..nbins
    want = np.arange(1, nbins + 1, dtype=np.intp)
    first = np.zeros(nbins, dtype=np.intp)
    last = np.full(nbins, v.size, dtype=np.intp)
    while v.size:
        active = first < last
        if not active.any():
            break
        mid = (first + last) // 2
        probe = v[np.minimum(mid, v.size - 1)]
        probe -= start
        probe *= inv
        above = probe.astype(np.intp) >= want
        last = np.where(active & above, mid, last)
        first = np.where(active & ~above, mid + 1, first)
    counts = np.diff(np.r_[0, first]).astype(np.int64)
    bins = np.flatnonzero(counts)
    return bins, counts[bins]


def _runs(index):
    """Distinct values of the sorted ``index`` and how often each occurs."""
    if index.size == 0:
        return index, np.zeros(0, dtype=np.int64)
    first = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
    return index[first], np.diff(np.r_[first, index.size])


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


def _mode(x, nbins, dz, vmin, hwidth, presorted=False):
    """Return the mode: the interpolated histogram peak, as ``ImageStats`` does."""
    if nbins == 1:
        return vmin + 0.5 * hwidth
    bins, counts = _histogram(x, nbins, dz, vmin, presorted)
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


def _midpt(x, nbins, dz, vmin, vmax, hwidth, presorted=False):
    """Return the midpt: where the cumulative histogram reaches one half.

    The cumulative sum is constant over empty bins, so that of the occupied
    bins gives the same numbers: the bin reaching one half is occupied, and
    the sum before it is that of the previous occupied bin (0 if none).
    """
    if nbins == 1:
        # Degenerate single bin (see module docstring): centre of range.
        return 0.5 * (vmin + vmax)
    bins, counts = _histogram(x, nbins, dz, vmin, presorted)
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
