"""The accuracy benchmark's metric, noise floor and outputs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import load_benchmark, scale_shift_wcs
from skymatch_step.simulate import MosaicTruth, make_image_model


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_accuracy")


def _truth(skies, exposures):
    names = [f"f{k}" for k in range(len(skies))]
    return names, MosaicTruth(
        sky=dict(zip(names, skies, strict=True)), exposure=dict(zip(names, exposures, strict=True))
    )


def test_relative_rms_ignores_a_common_offset_and_averages_groups(bench):
    names, truth = _truth([0.1, 0.1, 0.3, 0.5], [1, 1, 2, 3])
    # group errors +0.01, -0.02, +0.01 after an arbitrary common offset of 7
    found = dict(zip(names, [7.11, 7.11, 7.28, 7.51], strict=True))
    errors = np.array([0.01, -0.02, 0.01])
    expected = np.sqrt(np.mean((errors - errors.mean()) ** 2))
    assert bench._relative_rms(found, truth) == pytest.approx(expected, rel=1e-9)
    exact = {n: truth.sky[n] + 3.0 for n in names}
    assert bench._relative_rms(exact, truth) == pytest.approx(0.0, abs=1e-12)


def test_relative_rms_is_nan_when_a_level_is_missing(bench):
    names, truth = _truth([0.1, 0.3], [1, 2])
    assert np.isnan(bench._relative_rms({names[0]: 0.1, names[1]: np.nan}, truth))


def _models(errs):
    out = []
    for k, err in enumerate(errs):
        var = np.full((20, 20), err**2, dtype=np.float32)
        data = np.zeros((20, 20), dtype=np.float32)
        out.append(make_image_model(data, scale_shift_wcs(0, 0), var=var, exposure=k + 1))
    return out


def test_noise_floor_of_one_pair(bench):
    # two groups, one pair of n differences: the zero-mean levels are
    # +-(d/2), each with variance v/4, v = (err_a**2 + err_b**2) / n
    models = _models([0.01, 0.03])
    pair = SimpleNamespace(a=0, b=1, npix_a=250, rejected="")
    result = SimpleNamespace(group_labels=[1, 2], groups=[0, 1], pairs=[pair])
    floor, npairs = bench._noise_floor(models, result)
    assert npairs == 1
    assert floor == pytest.approx(np.sqrt((0.01**2 + 0.03**2) / 250) / 2, rel=1e-6)


def test_noise_floor_of_a_triangle_leaves_out_rejected_pairs(bench):
    # three groups joined by three equal pairs: the normal matrix is
    # (3 I - 1 1^T) / v, its pseudo-inverse v/3 times the projection on
    # zero-mean levels, whose diagonal is 2/3: floor = sqrt(2 v / 9).
    models = _models([0.02, 0.02, 0.02])
    v = 2 * 0.02**2 / 100
    pairs = [
        SimpleNamespace(a=a, b=b, npix_a=100, rejected="") for a, b in ((0, 1), (1, 2), (0, 2))
    ]
    result = SimpleNamespace(group_labels=[1, 2, 3], groups=[0, 1, 2], pairs=pairs)
    floor, _ = bench._noise_floor(models, result)
    assert floor == pytest.approx(np.sqrt(2 * v / 9), rel=1e-6)
    pairs[2].rejected = "outlier"
    chain, npairs = bench._noise_floor(models, result)
    # chain 0-1-2: Laplacian eigenvalues 1 and 3 (times 1/v) on the zero-mean space
    assert npairs == 2
    assert chain == pytest.approx(np.sqrt(v * (1 + 1 / 3) / 3), rel=1e-6)


@pytest.mark.slow
def test_smoke_run_writes_every_output(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("STPIPE_DISABLE_CRDS_STEPPARS", "true")
    bench.main(["--smoke", "--outdir", str(tmp_path)])
    payload = json.loads((tmp_path / "accuracy.json").read_text())
    (row,) = payload["rows"]
    for key in ("jwst_mode", "jwst_median", "ours_statistics", "ours_differences", "floor"):
        assert np.isfinite(row[key])
        assert row[key] > 0
    # ours with compare='statistics' is jwst's way and gives jwst's numbers
    assert row["ours_statistics"] == pytest.approx(row["jwst_mode"], rel=1e-5)
    assert row["step_matches_engine"]
    for suffix in ("md", "rst", "png"):
        assert (tmp_path / f"accuracy.{suffix}").stat().st_size > 0
