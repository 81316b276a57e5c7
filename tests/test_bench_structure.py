"""The structure benchmark's metrics (surface error, pulls), twin mosaic and outputs."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_structure")


def _grid(x0=0.0, y0=0.0, n=5, step=1e-3):
    """Tangent-plane positions (degrees) of an n x n grid about (x0, y0)."""
    offsets = (np.arange(n) - (n - 1) / 2) * step
    xi, eta = np.meshgrid(x0 + offsets, y0 + offsets)
    return xi.ravel(), eta.ravel()


def test_fit_plane_recovers_an_exact_plane(bench):
    xi, eta = _grid(0.01, -0.02)
    values = 0.3 - 12.0 * xi + 40.0 * eta
    assert bench.fit_plane(values, xi, eta) == pytest.approx([0.3, -12.0, 40.0], rel=1e-9)


def test_surface_error_leaves_zero_for_surfaces_off_by_a_common_plane(bench):
    # two images whose recovered surfaces differ from the truth by one and
    # the same plane (a common offset and gradient: no matching sees it)
    pos = [_grid(-0.002, 0.0), _grid(0.002, 0.001)]
    residuals = [0.7 + 25.0 * x - 8.0 * y for x, y in pos]
    err = bench.surface_error(residuals, [p[0] for p in pos], [p[1] for p in pos])
    assert err == pytest.approx(0.0, abs=1e-12)


def test_surface_error_is_the_rms_of_what_no_common_plane_explains(bench):
    # On the symmetric 3 x 3 grid, xi * eta is orthogonal to 1, xi and eta:
    # nothing of it is removed, and its RMS is sqrt(4/9) (four corners at
    # +-1, five zeros). Split over two images, plus a common plane.
    xi, eta = _grid(n=3, step=1.0)
    pattern = xi * eta + 2.0 + 0.5 * xi - 0.25 * eta
    parts = (slice(0, 4), slice(4, 9))
    err = bench.surface_error(
        [pattern[s] for s in parts], [xi[s] for s in parts], [eta[s] for s in parts]
    )
    assert err == pytest.approx(2.0 / 3.0, rel=1e-12)


def test_score_of_a_perfect_plane_recovery_is_zero(bench):
    # recovered planes = true planes + one common plane: surface error 0
    samples = []
    truths = [(0.2, 10.0, -5.0), (0.4, -3.0, 7.0), (0.1, 0.0, 0.0)]
    for k, (a, b, c) in enumerate(truths):
        xi, eta = _grid(0.003 * k, -0.001 * k)
        samples.append({"name": f"f{k}", "xi": xi, "eta": eta, "true": a + b * xi + c * eta})
    common = np.array([5.0, 1.0, 2.0])
    result = SimpleNamespace(planes=[np.array(t) + common for t in truths])
    err, missing = bench._score(("planes", result), samples)
    assert missing == 0
    assert err == pytest.approx(0.0, abs=1e-12)
    # constant levels: the truth's offsets plus a common 3.0 are exact on flat skies
    flat = [
        dict(s, true=np.full(s["xi"].shape, t[0])) for s, t in zip(samples, truths, strict=True)
    ]
    levels = {f"f{k}": t[0] + 3.0 for k, t in enumerate(truths)}
    levels["f2"] = math.nan  # an image without a sky is left out
    err, missing = bench._score(("levels", levels), flat)
    assert missing == 1
    assert err == pytest.approx(0.0, abs=1e-12)


def test_constant_pulls(bench):
    true = np.array([0.1, 0.3, 0.2])
    # a perfect recovery up to a common offset: pulls 0
    perfect = bench.constant_pulls(true + 7.0, true, [0.01, 0.02, 0.03])
    np.testing.assert_allclose(perfect, 0.0, atol=1e-9)
    # errors +1, -1, 0 relative to the mean, over sigmas 0.5, 0.5, 1
    pulls = bench.constant_pulls(true + np.array([1.0, -1.0, 0.0]) + 5.0, true, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(pulls, [2.0, -2.0, 0.0], atol=1e-12)
    # an image without a level or uncertainty: NaN, and out of the means
    pulls = bench.constant_pulls([1.1, 0.0, np.nan], [0.1, 0.0, 5.0], [0.5, 0.5, 0.5])
    np.testing.assert_allclose(pulls[:2], [1.0, -1.0], atol=1e-12)
    assert np.isnan(pulls[2])


def test_plane_pulls(bench):
    true = np.array([[0.2, 10.0, -5.0], [0.4, -3.0, 7.0]])
    centres = [(2.0, 0.0), (3.0, 1.0)]
    # a perfect recovery up to a common plane: pulls 0
    common = np.array([1.0, -4.0, 6.0])
    perfect = bench.plane_pulls(list(true + common), true, centres, [0.1, 0.1])
    np.testing.assert_allclose(perfect, 0.0, atol=1e-12)
    # level errors +-0.1 about the mean, sigma 0.05: +-2
    found = true + np.array([[0.2, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(
        bench.plane_pulls(list(found), true, centres, [0.05, 0.05]), [2.0, -2.0], atol=1e-12
    )
    # slope errors +-1 per degree of xi about the mean, at xi = 2 and 3: +2 and -3
    found = true + np.array([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
    np.testing.assert_allclose(
        bench.plane_pulls(list(found), true, centres, [1.0, 1.0]), [2.0, -3.0], atol=1e-12
    )
    # an image without a plane: NaN, and out of the gauge
    three = bench.plane_pulls(
        [true[0] + 0.5, None, true[1] + 0.5],
        [true[0], true[0], true[1]],
        [*centres, (0, 0)],
        [1, 1, 1],
    )
    assert np.isnan(three[1])
    np.testing.assert_allclose(three[[0, 2]], 0.0, atol=1e-12)


def test_pull_stats(bench):
    std, mean, n = bench.pull_stats([1.0, -1.0, 3.0, np.nan])
    assert (std, mean, n) == (pytest.approx(2.0), pytest.approx(1.0), 3)
    std, mean, n = bench.pull_stats([np.nan, 0.5])
    assert math.isnan(std)
    assert (mean, n) == (0.5, 1)


def test_twin_keeps_skies_and_noise_only(bench):
    spec = bench.make_spec("all", 3, size=64, exposures=4)
    assert (spec.sky_gradient, spec.striping, spec.seeing_scatter) == (0.05, 0.01, 0.2)
    assert spec.diffuse_step == 1
    twin = bench.twin_spec(spec)
    assert (twin.seed, twin.sky_gradient, twin.noise, twin.shape) == (3, 0.05, spec.noise, (64, 64))
    # stripes are noise: the twin keeps them
    assert twin.striping == spec.striping
    off = (
        "diffuse",
        "n_stars",
        "cosmic_ray_fraction",
        "bad_fraction",
        "seeing_scatter",
    )
    assert [getattr(twin, name) for name in off] == [0] * len(off)
    flat = bench.make_spec("flat", 1, size=64, exposures=4)
    assert (flat.sky_gradient, flat.striping, flat.seeing_scatter) == (0, 0, 0)


def test_bad_arguments_are_refused(bench, tmp_path):
    with pytest.raises(SystemExit, match="2"):
        bench.main(["--seeds", "0", "--outdir", str(tmp_path)])
    with pytest.raises(SystemExit, match="2"):
        bench.main(["--cases", "no-such-case", "--outdir", str(tmp_path)])


def _check_outputs(outdir, cases, contenders):
    text = (outdir / "structure.json").read_text()
    assert "NaN" not in text  # strict JSON: missing numbers are null
    payload = json.loads(text)
    summary = payload["summary"]
    assert [(s["case"], s["contender"]) for s in summary] == [
        (c, k) for c in cases for k in contenders
    ]
    for s in summary:
        for key in ("surface", "floor", "ratio", "seconds"):
            assert s[key] > 0, (s["case"], s["contender"], key)
            assert np.isfinite(s[key]), (s["case"], s["contender"], key)
        if s["contender"] != "jwst":
            assert np.all(np.isfinite([s["pull_std"], s["pull_mean"]]))
            assert s["pull_n"] > 0
    md = (outdir / "structure.md").read_text()
    assert md.startswith("Command: ``python benchmarks/bench_structure.py --smoke")
    assert "commit" in md.splitlines()[0]
    for suffix in ("rst", "png"):
        assert (outdir / f"structure.{suffix}").stat().st_size > 0


def test_smoke_run_writes_every_output(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("STPIPE_DISABLE_CRDS_STEPPARS", "true")
    bench.main(["--smoke", "--no-jwst", "--cases", "flat", "gradient", "--outdir", str(tmp_path)])
    _check_outputs(tmp_path, ["flat", "gradient"], ["constant", "plane"])


@pytest.mark.slow
def test_smoke_run_of_every_case_with_jwst(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("STPIPE_DISABLE_CRDS_STEPPARS", "true")
    bench.main(["--smoke", "--outdir", str(tmp_path)])
    _check_outputs(tmp_path, list(bench.CASES), ["constant", "plane", "jwst"])
