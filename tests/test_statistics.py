"""Sky statistics: agreement with stsci.imagestats, degenerate cases, errors."""

from __future__ import annotations

import contextlib
import io
import zlib

import numpy as np
import pytest

from skymatch_step._statistics import SkyStatistics, StatsError

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
