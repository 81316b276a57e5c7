"""Sky statistics: agreement with stsci.imagestats, degenerate cases, errors."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
import zlib

import numpy as np
import pytest

from skymatch_step._statistics import SkyStatistics, StatsError, StatsOverflowError

imagestats = pytest.importorskip("stsci.imagestats")


def _reference(values, stat, **kw):
    """ImageStats, with its console chatter silenced; None when it refuses."""
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            ref = imagestats.ImageStats(values, fields=f"npix,{stat}", **kw)
        except ValueError:
            return None
    return getattr(ref, stat), ref.npix


def _samples(rng, kind, n):
    if kind == "gauss":
        return rng.normal(10.0, 2.0, n)
    if kind == "sky+sources":
        return rng.normal(0.3, 0.01, n) + (rng.random(n) < 0.05) * rng.uniform(1, 10, n)
    if kind == "skewed":
        return rng.exponential(1.0, n)
    return np.round(rng.normal(5.0, 1.0, n), 1)  # many ties


@pytest.mark.parametrize("stat", ["mean", "median", "mode", "midpt"])
@pytest.mark.parametrize("kind", ["gauss", "sky+sources", "skewed", "ties"])
def test_same_as_imagestats(stat, kind):
    # Same clipping sequence, float32 data and histogram: the values are
    # identical, not merely close.
    rng = np.random.default_rng(zlib.crc32(f"{stat}/{kind}".encode()))
    for trial in range(50):
        n = int(rng.integers(2, 4000))
        x = _samples(rng, kind, n).astype(rng.choice([np.float32, np.float64]))
        kw = {
            "nclip": int(rng.integers(0, 6)),
            "lsig": float(rng.uniform(1, 5)),
            "usig": float(rng.uniform(1, 5)),
            "binwidth": float(rng.choice([0.05, 0.1, 0.3])),
            "lower": None,
            "upper": None,
        }
        if trial % 5 == 0:
            kw["lower"] = float(np.quantile(x, 0.05))
            kw["upper"] = float(np.quantile(x, 0.9))
        ref = _reference(x, stat, **kw)
        settings = SkyStatistics(
            skystat=stat,
            lower=kw["lower"],
            upper=kw["upper"],
            nclip=kw["nclip"],
            lsigma=kw["lsig"],
            usigma=kw["usig"],
            binwidth=kw["binwidth"],
        )
        if ref is None:
            # ImageStats refuses (nothing left inside the limits): so do we.
            with pytest.raises(StatsError):
                settings(x)
            continue
        value, npix = settings(x)
        assert npix == ref[1]
        assert value == ref[0], (trial, kw)
        # same scalar type, so arithmetic with it rounds as in jwst
        assert type(value) is type(ref[0])


def test_single_value_is_its_own_sky():
    # ImageStats returns NaN as the mode of one value; we return the value.
    one = np.array([0.25], dtype=np.float32)
    for stat in ("mean", "median", "mode", "midpt"):
        value, npix = SkyStatistics(skystat=stat)(one)
        assert npix == 1
        assert value == pytest.approx(0.25)
    assert np.isnan(_reference(one, "mode", nclip=5, lsig=4.0, usig=4.0, binwidth=0.1)[0])


def test_constant_image():
    # ImageStats gives midpt = 0 (the count of an empty bin) for a constant.
    flat = np.full(1000, 3.5, dtype=np.float32)
    for stat in ("mean", "median", "mode", "midpt"):
        value, npix = SkyStatistics(skystat=stat)(flat)
        assert value == 3.5
        assert npix == 1000
    assert _reference(flat, "midpt", nclip=5, lsig=4.0, usig=4.0, binwidth=0.1)[0] == 0


def test_limits_outside_data_raise():
    x = np.linspace(0.0, 1.0, 100)
    with pytest.raises(StatsError, match="lower limit"):
        SkyStatistics(lower=2.0)(x)
    with pytest.raises(StatsError, match="upper limit"):
        SkyStatistics(upper=-1.0)(x)
    with pytest.raises(StatsError, match="no pixel values"):
        SkyStatistics()(np.array([], dtype=np.float32))


def test_lower_upper_exclude_sources():
    rng = np.random.default_rng(3)
    sky = rng.normal(1.0, 0.01, 5000)
    sky[:500] += 50.0  # bright sources
    value, npix = SkyStatistics(skystat="mean", upper=10.0, nclip=0)(sky)
    assert npix == 4500
    assert value == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"skystat": "average"}, "Unknown skystat 'average'; valid choices are mean, median"),
        ({"nclip": -1}, "nclip must be a non-negative integer"),
        ({"lsigma": 0.0}, "lsigma must be a positive number"),
        ({"binwidth": -0.1}, "binwidth must be a positive number"),
        ({"lower": 2.0, "upper": 1.0}, r"lower \(2.0\) must not be larger than upper \(1.0\)"),
    ],
)
def test_invalid_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SkyStatistics(**kwargs)


@pytest.mark.parametrize("nclip", [3, 30])
def test_converged_clipping_reuses_selection(monkeypatch, nclip):
    # Once the clipping limits stop changing which values are kept, later
    # iterations reuse the previous moments instead of filtering again;
    # the result is still ImageStats' to the bit.
    from skymatch_step import _statistics

    seen = []
    real = _statistics._clipped_moments

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(_statistics, "_clipped_moments", spy)
    rng = np.random.default_rng(11)
    x = rng.normal(0.25, 0.01, 200_000).astype(np.float32)
    for stat in ("mode", "mean", "midpt"):
        seen.clear()
        value, npix = SkyStatistics(skystat=stat, nclip=nclip)(x)
        assert (value, npix) == _reference(x, stat, nclip=nclip, lsig=4.0, usig=4.0, binwidth=0.1)
        assert len(seen) == nclip + 1
        assert not seen[0].reused
        if nclip == 30:
            assert seen[-1].reused


@pytest.mark.parametrize("stat", ["mean", "mode", "midpt"])
def test_updated_sums_and_blocks_same_as_imagestats(monkeypatch, stat):
    # Between clipping iterations the sum of the kept values is updated
    # from the previous one (values leaving the selection and, where the
    # limits widen, joining it), and the squared deviations are summed
    # block by block: still ImageStats' numbers to the bit, on mixtures
    # whose limits move both ways.
    from skymatch_step import _statistics

    monkeypatch.setattr(_statistics, "_BLOCK", 97)
    moves = set()
    real = _statistics._updated_sum

    def spy(s, m, prev):
        if m.i < prev.i or m.j > prev.j:
            moves.add("widen")
        if m.i > prev.i or m.j < prev.j:
            moves.add("narrow")
        return real(s, m, prev)

    monkeypatch.setattr(_statistics, "_updated_sum", spy)
    rng = np.random.default_rng(zlib.crc32(f"updated/{stat}".encode()))
    for _ in range(150):
        parts = [
            rng.normal(rng.uniform(-10, 10), rng.uniform(0.1, 3), int(rng.integers(10, 3000)))
            for _ in range(int(rng.integers(1, 4)))
        ]
        parts.append(rng.uniform(-20, 20, int(rng.integers(0, 500))))
        x = np.concatenate(parts).astype(np.float32)
        lsig, usig = (float(v) for v in rng.uniform(0.3, 4, 2))
        ref = _reference(x, stat, nclip=6, lsig=lsig, usig=usig, binwidth=0.1)
        settings = SkyStatistics(skystat=stat, nclip=6, lsigma=lsig, usigma=usig)
        if ref is None:
            # ImageStats refuses: nothing left inside the limits (we raise
            # too) or a single value left (its own sky, as documented).
            try:
                value, npix = settings(x)
            except StatsError:
                continue
            assert npix == 1
            continue
        value, npix = settings(x)
        assert (value, npix) == ref
        assert type(value) is type(ref[0])
    assert moves == {"widen", "narrow"}


# --- Values near the float32 limit ------------------------------------------


@pytest.fixture
def hot_pixels():
    """Sky values with a few pixels at 1e30 (their squares overflow float32)."""
    rng = np.random.default_rng(21)
    x = rng.normal(1.0, 0.1, 10_000).astype(np.float32)
    x[::1000] = 1e30
    return x


@pytest.mark.parametrize("nclip", [0, 5])
@pytest.mark.parametrize("stat", ["mode", "midpt", "mean", "median"])
def test_overflow_is_a_clear_error(hot_pixels, stat, nclip, caplog):
    # ImageStats' float32 squared deviations overflow: it reports an
    # infinite mode, a bin count as midpt, and silently unclipped
    # mean/median. We raise an error saying so for mode/midpt, and give
    # ImageStats' (jwst's) unclipped mean/median with a warning saying why
    # (and no numpy warning: warnings are errors here).
    settings = SkyStatistics(skystat=stat, nclip=nclip)
    if stat in ("mean", "median"):
        with caplog.at_level(logging.WARNING, logger="skymatch_step"):
            value, npix = settings(hot_pixels)
        assert (value, npix) == _reference(
            hot_pixels, stat, nclip=nclip, lsig=4.0, usig=4.0, binwidth=0.1
        )
        if nclip:
            assert "Sigma clipping skipped" in caplog.text
            assert "overflows float32 (max |value| = 1e+30)" in caplog.text
        else:
            # no standard deviation needed: nothing to say
            assert not caplog.records
        return
    use = "sigma clipping" if nclip else "histogram bin width"
    with pytest.raises(StatsOverflowError, match=r"too large for float32 statistics \(overflow\)"):
        settings(hot_pixels)
    with pytest.raises(StatsError, match=rf"standard deviation .* needed for the {use}"):
        settings(hot_pixels)
    with pytest.raises(StatsError, match=r"max \|value\| = 1e\+30 \(exclude such values"):
        settings(hot_pixels)
    if stat == "mode":
        assert np.isinf(_reference(hot_pixels, stat, nclip=nclip, lsig=4.0, usig=4.0)[0])


@pytest.mark.parametrize("stat", ["mode", "midpt", "mean", "median"])
def test_upper_excludes_overflowing_values(hot_pixels, stat):
    # What the error suggests: with an upper limit the statistics work,
    # and agree with ImageStats.
    value, npix = SkyStatistics(skystat=stat, upper=1e3)(hot_pixels)
    assert 9900 < npix <= 9990  # the hot pixels are excluded
    assert (value, npix) == _reference(
        hot_pixels, stat, nclip=5, lsig=4.0, usig=4.0, binwidth=0.1, upper=1e3, lower=None
    )
    assert value == pytest.approx(1.0, abs=0.05)


def test_median_overflow():
    # The mean of the two central float32 values overflows.
    x = np.array([3.0e38, 3.2e38], dtype=np.float32)
    with pytest.raises(StatsOverflowError, match=r"the median of 2 values is not finite"):
        SkyStatistics(skystat="median", nclip=0)(x)


def test_values_beyond_float32_or_not_finite():
    with pytest.raises(StatsError, match=r"must be finite as float32 .* max inf"):
        SkyStatistics()(np.array([1.0, 1e39]))
    with pytest.raises(StatsError, match=r"must be finite as float32 .* min nan"):
        SkyStatistics()(np.array([1.0, np.nan], dtype=np.float32))


@pytest.mark.parametrize("stat", ["mean", "mode", "median"])
def test_limits_beyond_float32_are_no_limits(stat):
    # As in ImageStats (C float conversion), but silently: ImageStats' own
    # comparison with the limits warns.
    x = np.random.default_rng(2).normal(5.0, 1.0, 1000)
    kw = {"lower": -1e40, "upper": 1e40, "nclip": 2}
    value, npix = SkyStatistics(skystat=stat, **kw)(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = _reference(x, stat, lsig=4.0, usig=4.0, binwidth=0.1, **kw)
    assert (value, npix) == ref
    # a single value keeps the limits through the clipping (its std is NaN)
    one = np.array([0.25], dtype=np.float32)
    assert SkyStatistics(skystat=stat, **kw)(one) == (0.25, 1)


def test_histogram_range_overflow():
    # The histogram starts at a lower limit near -float32 max (the first
    # value lies below it) and huge bins carry it beyond +float32 max.
    x = np.array([-3.4e38, -1e19, 0.0, 1e19], dtype=np.float32)
    settings = SkyStatistics(skystat="mode", lower=-3.35e38, nclip=0, binwidth=3e18)
    with pytest.raises(StatsOverflowError, match=r"histogram range from -3.35e\+38 .* float32"):
        settings(x)


# --- Histograms with many bins ------------------------------------------------


def _far_first_pixel(seed, n, far):
    """Sky noise whose first pixel is a far outlier.

    One clipping iteration removes the outlier, but the histogram starts
    at the clipping limit (ImageStats' range starts from the first pixel),
    hundreds of standard deviations from the sky: many, mostly empty, bins.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(0.25, 0.01, n).astype(np.float32)
    x[0] = -far
    return x


def _spy_bins(monkeypatch):
    from skymatch_step import _statistics

    seen = []
    real = _statistics._histogram

    def spy(x, nbins, dz, vmin, *args):
        seen.append(nbins)
        return real(x, nbins, dz, vmin, *args)

    monkeypatch.setattr(_statistics, "_histogram", spy)
    return seen


@pytest.mark.parametrize("stat", ["mode", "midpt"])
@pytest.mark.parametrize(("seed", "far"), [(1, 1e5), (2, 2e5), (3, 4e5)])
def test_many_bins_same_as_imagestats(monkeypatch, stat, seed, far):
    from skymatch_step._statistics import _DENSE_BINS

    seen = _spy_bins(monkeypatch)
    x = _far_first_pixel(seed, 20_000, far)
    value, npix = SkyStatistics(skystat=stat, nclip=1)(x)
    assert seen[-1] > max(_DENSE_BINS, x.size)  # only the occupied bins were counted
    assert (value, npix) == _reference(x, stat, nclip=1, lsig=4.0, usig=4.0, binwidth=0.1)


def _discrete(kind):
    """Values on a few levels: narrow bins leave most bins empty."""
    if kind == "gaps":
        levels, counts = [0.0, 1.0, 1.5, 4.0, 9.0, 10.0], [3, 5, 9, 2, 9, 1]
    elif kind == "tie":  # two equally high bins: the first one is the peak
        levels, counts = [0.0, 2.0, 2.1, 7.0, 10.0], [1, 6, 2, 6, 1]
    elif kind == "top":  # the peak at the upper edge
        levels, counts = [0.0, 5.0, 10.0], [2, 3, 7]
    else:  # "half": the cumulative sum reaches one half exactly
        levels, counts = [0.0, 3.0, 6.0, 10.0], [5, 5, 4, 6]
    return np.repeat(np.array(levels, dtype=np.float32), counts)


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("kind", ["gaps", "tie", "top", "half"])
@pytest.mark.parametrize("stat", ["mode", "midpt"])
def test_occupied_bins_edge_cases(monkeypatch, dense, kind, stat):
    # Empty neighbours of the peak, ties, the upper edge, empty bins before
    # the midpt's bin: counting only occupied bins changes no number.
    from skymatch_step import _statistics

    if not dense:
        monkeypatch.setattr(_statistics, "_DENSE_BINS", 0)
        monkeypatch.setattr(_statistics, "_DENSE_BINS_PER_VALUE", 0.0)
        monkeypatch.setattr(_statistics, "_HIST_CHUNK", 7)  # merge across chunks
    x = _discrete(kind)
    for start in range(3):  # the first value matters for the range
        y = np.roll(x, start)
        for binwidth in (0.001, 0.01, 0.05, 0.1, 0.3, 1.0):
            value, npix = SkyStatistics(skystat=stat, nclip=0, binwidth=binwidth)(y)
            ref = _reference(y, stat, nclip=0, lsig=4.0, usig=4.0, binwidth=binwidth)
            assert (value, npix) == ref, (start, binwidth)


@pytest.mark.parametrize("stat", ["mode", "midpt"])
def test_occupied_bins_same_as_imagestats(monkeypatch, stat):
    # The random trials of test_same_as_imagestats, every histogram counted
    # by occupied bins, in chunks of 97 values.
    from skymatch_step import _statistics

    monkeypatch.setattr(_statistics, "_DENSE_BINS", 0)
    monkeypatch.setattr(_statistics, "_DENSE_BINS_PER_VALUE", 0.0)
    monkeypatch.setattr(_statistics, "_HIST_CHUNK", 97)
    for kind in ("gauss", "sky+sources", "skewed", "ties"):
        test_same_as_imagestats(stat, kind)


def test_occupied_bins_match_histogram1d(monkeypatch):
    # Bin by bin, including the upper edge rule, against ImageStats' filler.
    from stsci.imagestats.histogram1d import histogram1d

    from skymatch_step import _statistics

    monkeypatch.setattr(_statistics, "_HIST_CHUNK", 1000)
    rng = np.random.default_rng(8)
    x = np.concatenate([rng.normal(0.0, 1.0, 5000), np.linspace(-3, 3, 301)]).astype(np.float32)
    for nbins in (3, 61, 62, 1000, 123_457):
        vmin, vmax = float(x.min()), float(x.max())
        dz = (vmax - vmin) / (nbins - 1)
        ref = histogram1d(x, nbins, dz, vmin).histogram
        for dense_limit in (0, 1 << 20):
            monkeypatch.setattr(_statistics, "_DENSE_BINS", dense_limit)
            monkeypatch.setattr(_statistics, "_DENSE_BINS_PER_VALUE", float(dense_limit))
            bins, counts = _statistics._histogram(x, nbins, dz, vmin)
            np.testing.assert_array_equal(bins, np.flatnonzero(ref))
            np.testing.assert_array_equal(counts, ref[ref > 0])


def test_many_bins_memory_bounded(monkeypatch):
    # About 9e8 bins: a dense histogram would take gigabytes (ImageStats
    # about 7 GB); counting the occupied bins takes a few chunks' worth.
    import tracemalloc

    seen = _spy_bins(monkeypatch)
    x = _far_first_pixel(4, 200_000, 1e8)
    tracemalloc.start()
    try:
        value, npix = SkyStatistics(skystat="mode", nclip=1)(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen[-1] > 5e8
    assert npix == x.size - 1
    assert peak < 20 * x.nbytes
    # float32 bin coordinates near 1e9 are coarse, yet the peak is found
    assert value == pytest.approx(0.25, abs=0.1)


def test_too_many_bins():
    # More than 2**62 bins: bin indices would overflow int64.
    x = _far_first_pixel(5, 1000, 3e38)
    with pytest.raises(StatsOverflowError, match=r"too many histogram bins for the mode"):
        SkyStatistics(lower=-1e16, nclip=0)(x)


def test_bins_too_narrow_for_float32():
    # Some 4e10 bins: float32 coordinates cannot resolve them and every
    # value rounds beyond the last bin (ImageStats cannot run this).
    x = _far_first_pixel(5, 10_000, 1e10)
    for stat in ("mode", "midpt"):
        with pytest.raises(StatsOverflowError, match=r"float32 cannot resolve bins so narrow"):
            SkyStatistics(skystat=stat, nclip=1)(x)


# --- Sorted values ---------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.2, 0.9])
@pytest.mark.parametrize("stat", ["mean", "median", "mode", "midpt"])
def test_sorted_values_of_a_mask_same_as_the_selection(stat, fraction):
    # Big-endian 2-D data and a mask (as the step reads FITS images): the
    # statistic of sorted_values(data, mask) is that of data[mask], to the bit.
    from skymatch_step._statistics import sorted_values

    rng = np.random.default_rng(31)
    data = (rng.normal(0.3, 0.01, (120, 90)) + (rng.random((120, 90)) < 0.03) * 5.0).astype(">f4")
    data[::17, ::5] = np.nan
    mask = np.isfinite(data) & (rng.random(data.shape) < fraction)
    view = data[10:100, 7:80]  # a non-contiguous box, as an overlap's
    for d, m in ((data, mask), (view, mask[10:100, 7:80])):
        settings = SkyStatistics(skystat=stat, nclip=3)
        sample = sorted_values(d, m)
        assert sample.size == np.count_nonzero(m)
        assert np.all(np.diff(sample.values) >= 0)
        ours = settings(sample)
        assert ours == settings(d[m])
        assert ours == _reference(
            d[m].astype(np.float32), stat, nclip=3, lsig=4.0, usig=4.0, binwidth=0.1
        )
    assert sorted_values(data, np.zeros(data.shape, bool)).size == 0
    with pytest.raises(ValueError, match=r"mask shape \(2, 2\) != data shape \(120, 90\)"):
        sorted_values(data, np.ones((2, 2), bool))


def test_sorted_values_leave_the_input_alone():
    from skymatch_step._statistics import sorted_values

    x = np.array([3.0, 1.0, 2.0], dtype=np.float32)
    assert sorted_values(x).first == 3.0
    np.testing.assert_array_equal(x, [3.0, 1.0, 2.0])
    sorted_values(x, overwrite=True)
    np.testing.assert_array_equal(x, [1.0, 2.0, 3.0])


@pytest.mark.parametrize("stat", ["mode", "midpt"])
def test_histogram_by_search_same_as_binning(monkeypatch, stat):
    # The bin edges found by binary search on sorted values give the counts
    # of binning every value (dense and occupied-bins paths), bin by bin.
    from skymatch_step import _statistics

    rng = np.random.default_rng(41)
    x = np.sort(
        np.concatenate([rng.normal(0.0, 1.0, 20_000), np.round(rng.normal(0, 1, 5000), 2)])
    ).astype(np.float32)
    for nbins in (3, 61, 1000):
        vmin = float(x[100])
        dz = (float(x[-100]) - vmin) / (nbins - 1)
        search = _statistics._sorted_histogram(x, nbins, dz, vmin)
        for dense in (True, False):
            monkeypatch.setattr(_statistics, "_DENSE_BINS", 1 << 20 if dense else 0)
            monkeypatch.setattr(_statistics, "_DENSE_BINS_PER_VALUE", 1.0 if dense else 0.0)
            binned = _statistics._histogram(x, nbins, dz, vmin)
            np.testing.assert_array_equal(search[0], binned[0])
            np.testing.assert_array_equal(search[1], binned[1])
    # and through compute: every path gives the same statistic
    y = rng.normal(0.3, 0.01, 30_000).astype(np.float32)
    values = set()
    for per_value in (16, 1 << 40):
        monkeypatch.setattr(_statistics, "_SEARCH_BINS_PER_VALUE", per_value)
        values.add(SkyStatistics(skystat=stat)(y))
    assert len(values) == 1
    assert values.pop() == _reference(y, stat, nclip=5, lsig=4.0, usig=4.0, binwidth=0.1)
