"""The survey-scale benchmark's helpers and a smoke run of it."""

from __future__ import annotations

import json
import logging
import math
import os

import numpy as np
import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_scale")


def test_step_args_are_key_value_pairs(bench):
    parsed = bench.parse_step_args(["dask_scheduler=local", " maximum_cores = 2 ", "x=a=b"])
    assert parsed == {"dask_scheduler": "local", "maximum_cores": "2", "x": "a=b"}
    assert bench.parse_step_args([]) == {}
    with pytest.raises(ValueError, match=r"--step-arg 'maximum_cores' is not of the form"):
        bench.parse_step_args(["maximum_cores"])
    with pytest.raises(ValueError, match=r"--step-arg '=2' is not of the form"):
        bench.parse_step_args(["=2"])


def test_power_law_fit_recovers_its_parameters(bench):
    points = [(n, 3e-7 * n**2.7) for n in (100, 400, 1024, 2025)]
    a, p = bench.fit_power_law(points)
    assert p == pytest.approx(2.7, rel=1e-9)
    assert a == pytest.approx(3e-7, rel=1e-9)


def test_growth_is_the_slope_from_the_smallest_to_the_largest_n(bench):
    def row(n, label, seconds):
        return {"n_images": n, "contender": label, "seconds": seconds}

    rows = [
        row(1000, "ours", 10.0),
        row(3000, "ours", 31.0),
        row(10000, "ours", 120.0),
        row(1000, "jwst", 2000.0),
        row(3000, "jwst", float("nan")),  # timed out: not a point
    ]
    grow = bench.growth(rows)
    assert grow["ours"] == (pytest.approx(math.log(12.0) / math.log(10.0)), 1000, 10000)
    assert "jwst" not in grow  # a single completed size gives no slope


def test_grid_overlaps_link_each_group_to_its_four_neighbours(bench):
    a, w = bench.grid_overlaps(16)
    assert a.shape == w.shape == (16, 16)
    linked = w > 0
    assert np.array_equal(linked, linked.T)
    assert np.array_equal(linked, a > 0)
    # a 4 x 4 grid has 2 * 4 * 3 links; corners have 2 neighbours, the centre 4
    assert linked.sum() == 2 * 24
    degree = linked.sum(axis=0).reshape(4, 4)
    assert degree[0, 0] == 2
    assert degree[1, 1] == 4
    assert linked[0, 1]
    assert linked[0, 4]
    assert not linked[0, 5]


def test_table_reports_a_timeout_as_a_lower_bound(bench):
    done = {"seconds": 50.0, "cpu_s": 40.0, "peak_mb": 900.0, "base_mb": 300.0}
    rows = [
        bench._row(1000, "ours", "ours", False, [done]),
        bench._row(1000, "jwst", "jwst", False, [{"timed_out": True, "seconds": 600.0}]),
    ]
    assert rows[0]["ms_per_image"] == pytest.approx(50.0)
    text = bench.table(rows, None, "machine", "cmd")
    assert "| 1000 | jwst | False | 0 | > 600 (timed out) |" in text
    assert "| 1000 | ours | False | 1 | 50.0 | 50.0 | 40.0 | 900 | 300 |" in text
    assert "not measured" in text  # no 10,000-image run


@pytest.mark.slow
def test_smoke_run_writes_the_results_and_reuses_the_cache(bench, tmp_path):
    logging_before = logging.root.manager.disable
    validate_before = os.environ.get("VALIDATE_ON_ASSIGNMENT")
    out = tmp_path / "out"
    argv = ["--smoke", "--workdir", str(tmp_path), "--outdir", str(out)]
    bench.main([*argv, "--step-arg", "maximum_cores=1"])
    # The driver leaves the logging and the environment as it found them.
    assert logging.root.manager.disable == logging_before
    assert os.environ.get("VALIDATE_ON_ASSIGNMENT") == validate_before

    payload = json.loads((out / "scale.json").read_text())
    assert payload["step_args"] == {"maximum_cores": "1"}
    rows = {(r["n_images"], r["contender"]): r for r in payload["rows"]}
    assert set(rows) == {(4, "ours"), (8, "ours"), (4, "jwst")}
    for r in rows.values():
        assert r["runs"] == 1
        assert r["seconds"] > 0
        assert r["peak_mb"] >= r["base_mb"] > 0
        assert r["cpu_s"] > 0
    assert payload["growth"]["ours"]["n_from"] == 4
    assert payload["growth"]["ours"]["n_to"] == 8
    solve = payload["solve"]
    assert [p["groups"] for p in solve["points"]] == [16, 36, 64]
    assert all(p["ok"] for p in solve["points"])
    assert [e["groups"] for e in solve["extrapolated"]] == [3000, 10000]
    text = (out / "scale.md").read_text()
    assert "t = " in text
    assert "extrapolated" in text

    # A second run finds the mosaics in the cache and does not rewrite them.
    files = sorted((tmp_path / "scale4").glob("*_cal.fits"))
    assert len(files) == 4
    stamps = [f.stat().st_mtime_ns for f in files]
    asn = bench.simulate(4, tmp_path)
    assert asn == tmp_path / "scale4" / "scale4_asn.json"
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_memory_owner_is_the_deepest_skymatch_step_line(bench):
    from types import SimpleNamespace

    step = bench.__file__.replace("benchmarks/bench_scale.py", "src/skymatch_step/step.py")
    site = "/venv/lib/python3.11/site-packages/"
    frames = [  # oldest first, as tracemalloc gives them
        SimpleNamespace(filename=site + "stpipe/step.py", lineno=10),
        SimpleNamespace(filename=step, lineno=1),
        SimpleNamespace(filename=site + "asdf/_asdf.py", lineno=5),
        SimpleNamespace(filename=site + "yaml/constructor.py", lineno=7),
    ]
    where, package = bench._owner(frames)
    assert where.startswith("skymatch_step.step:1 ")
    assert package == "yaml"
    # no skymatch_step frame: the outermost frame names the owner
    where, package = bench._owner(frames[2:])
    assert where.startswith("asdf:5")
    assert package == "yaml"


def test_memory_table_reports_bytes_per_image(bench):
    result = {
        "images": 1000,
        "pairs": 1900,
        "first_pass_s": 60.0,
        "rss_before_mb": 200.0,
        "rss_library_mb": 210.0,
        "rss_after_pass1_mb": 710.0,
        "rss_per_image_kb": 512.0,
        "traced_bytes": 400 * 2**20,
        "traced_per_image": 400 * 2**20 / 1000,
        "by_site": [{"owner": "skymatch_step.step:1 x", "bytes": 2**20, "bytes_per_image": 1048.6}],
        "by_package": [{"owner": "astropy", "bytes": 2**20, "bytes_per_image": 1048.6}],
        "unit_sizes": {"gwcs WCS object": 450000},
    }
    text = bench.memory_table(result, "cmd")
    assert "710 MB after the first pass: 512.0 kB per image" in text
    assert "| 1049 | 1.0 | `skymatch_step.step:1 x` |" in text
    assert "| gwcs WCS object | 450000 |" in text
