"""The speed benchmark's --loaded mode: its table and a smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_benchmark

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_skymatch.py"


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_skymatch")


def _run(seconds, peak=100.0, loaded=90.0):
    return {"seconds": seconds, "peak_mb": peak, "loaded_mb": loaded}


def test_loaded_rows_pair_jwst_and_ours(bench):
    runs = {
        "jwst": [_run(10.0), _run(12.0), _run(30.0)],
        "ours": [_run(2.0), _run(3.0), _run(5.0)],
        "floor": [],
        "open": [],
    }
    row = bench._row("nircam16", 16, 2048, "match", "loaded", runs)
    # median of the side-by-side ratios 5, 4 and 6
    assert row["speedup"] == 5.0
    assert row["jwst_s"] == 12.0
    assert row["ours_s"] == 3.0
    assert row["repeats"] == 3
    assert row["reference_repeats"] == 3
    assert row["ours_loaded_mb"] == 90.0
    table = bench._table([row], "machine", ["--loaded"])
    assert "step.run(library)" in table
    assert (
        "| nircam16 | 16 | 2048 | match | loaded | 3/3 | 12.00 | 3.00 | n/a | n/a | 5.00 |" in table
    )


def test_loaded_mode_runs_no_references(bench, monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "_spawn", lambda which, *a: calls.append(which) or _run(1.0))
    bench._measure("asn.json", "match", 2, "loaded", "all")
    assert calls == ["jwst", "ours", "jwst", "ours"]


@pytest.mark.slow
def test_smoke_loaded_writes_results(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(BENCH.parents[1] / "src"), *filter(None, [env.get("PYTHONPATH")])]
    )
    cmd = [sys.executable, str(BENCH), "--smoke", "--loaded"]
    cmd += ["--workdir", str(tmp_path / "data"), "--outdir", str(tmp_path / "out")]
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=600)
    rows = json.loads((tmp_path / "out" / "loaded.json").read_text())["rows"]
    assert [(r["case"], r["method"], r["in_memory"]) for r in rows] == [
        ("smoke", "match", "loaded")
    ]
    assert rows[0]["jwst_s"] > 0
    assert rows[0]["ours_s"] > 0
    assert rows[0]["ours_peak_mb"] >= rows[0]["ours_loaded_mb"] > 0
    assert not (tmp_path / "out" / "latest.json").exists()
