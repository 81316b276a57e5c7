"""The parameter files shipped with the package and the skymatch-config command."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from stpipe import Step

import skymatch_step
from skymatch_step import SkymatchStep
from skymatch_step import config as shipped

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"
NAMES = sorted(p.stem for p in CONFIG.glob("*.asdf"))


def test_every_file_of_config_is_shipped():
    assert NAMES  # the repository's config/ holds the parameter files
    assert shipped.config_names() == NAMES
    for name in NAMES:
        path = shipped.config_path(name)
        assert path.read_bytes() == (CONFIG / f"{name}.asdf").read_bytes()
        assert shipped.config_path(f"{name}.asdf") == path
        assert isinstance(Step.from_config_file(str(path)), SkymatchStep)


def test_unknown_name_lists_the_files():
    with pytest.raises(ValueError, match=r"No parameter file named 'nope'; available: skymatch"):
        shipped.config_path("nope")


def test_command_lists_prints_and_copies(tmp_path, capsys, monkeypatch):
    assert shipped.main([]) == 0
    listing = capsys.readouterr().out
    for name in NAMES:
        assert name in listing
        assert str(shipped.config_path(name)) in listing

    assert shipped.main(["skymatch_step_sparse_local"]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed == shipped.config_path("skymatch_step_sparse_local")

    monkeypatch.chdir(tmp_path)
    assert shipped.main(["skymatch_step_sparse_local", "--copy"]) == 0
    copy = tmp_path / "skymatch_step_sparse_local.asdf"
    assert Path(capsys.readouterr().out.strip()) == copy
    assert copy.read_bytes() == printed.read_bytes()
    assert step_method(copy) == "local"
    # no silent overwrite; no temporary file left behind
    copy.write_text("edited")
    assert shipped.main(["skymatch_step_sparse_local", "--copy"]) == 2
    assert "exists (use --force to overwrite)" in capsys.readouterr().err
    assert copy.read_text() == "edited"
    assert shipped.main(["skymatch_step_sparse_local", "--copy", "--force"]) == 0
    assert copy.read_bytes() == printed.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["skymatch_step_sparse_local.asdf"]

    assert shipped.main(["nope"]) == 2
    assert "No parameter file named 'nope'" in capsys.readouterr().err


def step_method(path):
    return Step.from_config_file(str(path)).skymethod


def _env():
    source = str(Path(skymatch_step.__file__).resolve().parents[1])
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])),
    }


def test_module_prints_the_path(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "skymatch_step.config", "skymatch_step_default"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert Path(proc.stdout.strip()) == shipped.config_path("skymatch_step_default")


@pytest.mark.slow
def test_wheel_contains_the_parameter_files(tmp_path):
    # Builds the wheel as a user would (pip fetches the build backend).
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("skymatch_step-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        for name in NAMES:
            member = f"skymatch_step/parameter_files/{name}.asdf"
            assert member in names
            assert archive.read(member) == (CONFIG / f"{name}.asdf").read_bytes()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    for script in ("skymatch-config", "skymatch-simulate", "skymatch-demo"):
        assert f"{script} = skymatch_step." in scripts
