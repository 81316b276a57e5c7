"""benchmarks/ab_on_disk.py: two checkouts, alternating, on one association."""

from pathlib import Path

import pytest

import skymatch_step
from conftest import load_benchmark

SRC = Path(skymatch_step.__file__).resolve().parent.parent


def test_runs_each_checkout_in_turn_and_prints_the_ratios(mosaic_on_disk, tmp_path, capsys):
    ab = load_benchmark("ab_on_disk")
    # The same checkout under two labels: each run imports it from --src.
    code = ab.main(
        [
            str(mosaic_on_disk.asn_path),
            "--src",
            f"one={SRC}",
            "--src",
            f"two={SRC}",
            "--repeats",
            "2",
            "--cores",
            "1",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    rounds = [line for line in out.splitlines() if line.startswith("round")]
    # alternating: one, two, then two, one
    assert [line.split()[2].rstrip(":") for line in rounds] == ["one", "two", "two", "one"]
    assert all(str(SRC / "skymatch_step" / "__init__.py") in line for line in rounds)
    assert "wall ratio" in out
    assert out.count("CPU ratio") == 2


def test_needs_two_checkouts(mosaic_on_disk):
    ab = load_benchmark("ab_on_disk")
    with pytest.raises(SystemExit):
        ab.main([str(mosaic_on_disk.asn_path), "--src", f"one={SRC}"])
