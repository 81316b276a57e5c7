"""Smoke run of the whole-image statistic benchmark."""

from __future__ import annotations

import re

import pytest

from conftest import load_benchmark
from skymatch_step._statistics import SkyStatistics
from skymatch_step.simulate import MosaicSpec, write_mosaic


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_statistics")


def test_times_each_stage_of_the_statistic_the_step_computes(bench, tmp_path, capsys):
    spec = MosaicSpec(n_exposures=2, detectors_per_exposure=1, shape=(96, 96), diffuse=0.0, seed=3)
    truth = write_mosaic(spec, tmp_path, product_name="tiny")
    stages, shape, value = bench.time_image(truth.files[0], 2, SkyStatistics())
    assert shape == (96, 96)
    assert len(stages) == 3
    assert all(s > 0 for s in stages)
    # The statistic timed is the step's: the image's true sky within its noise.
    assert value[0] == pytest.approx(truth.sky[truth.files[0].name], abs=5 * spec.noise)

    assert bench.main([str(truth.asn_path), "--images", "2", "--repeats", "1"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("2 image(s) of 96x96, 1 rounds each")
    found = re.search(r"mask ([\d.]+), sort ([\d.]+), statistic ([\d.]+), total ([\d.]+)", line)
    parts = [float(v) for v in found.groups()]
    assert parts[3] == pytest.approx(sum(parts[:3]), abs=0.2)
