"""stpipe integration: registration, strun, parameter files, logging."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from stdatamodels.jwst import datamodels
from stpipe import Pipeline, Step
from stpipe.entry_points import get_steps as all_registered_steps
from stpipe.utilities import resolve_step_class_alias

from skymatch_step._integration import get_steps

CONFIG = Path(__file__).parent.parent / "config"


def _offline_env():
    env = dict(os.environ)
    for name in ("STPIPE_DISABLE_CRDS_STEPPARS", "CRDS_SERVER_URL", "CRDS_PATH"):
        env.pop(name, None)
    return env


def _strun(args, cwd):
    strun = Path(sys.executable).with_name("strun")
    return subprocess.run(
        [str(strun), *args],
        cwd=cwd,
        env=_offline_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_get_steps_matches_the_classes():
    for class_name, alias, is_pipeline in get_steps():
        module, name = class_name.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, Step)
        assert issubclass(cls, Pipeline) == is_pipeline
        assert alias.startswith("skymatch")


def test_aliases_are_unique_and_jwst_keeps_skymatch():
    mine = {alias for _, alias, _ in get_steps()}
    others = [
        info.class_alias for info in all_registered_steps() if info.package_name != "skymatch-step"
    ]
    assert not mine & set(others)
    assert resolve_step_class_alias("skymatch") == "jwst.step.SkyMatchStep"
    assert resolve_step_class_alias("skymatch_step") == "skymatch_step.step.SkymatchStep"


def test_strun_on_association(mosaic_on_disk, tmp_path):
    proc = _strun(
        ["skymatch_step", str(mosaic_on_disk.asn_path), "--skymethod=global+match"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # our INFO messages are shown under strun
    assert "skymatch_step._engine - INFO - Sky method 'global+match'" in proc.stderr
    outputs = sorted(tmp_path.glob("data_asn_*_skymatchstep.fits")) or sorted(
        tmp_path.glob("*_skymatchstep.fits")
    )
    assert len(outputs) == 8
    with datamodels.open(outputs[0]) as model:
        assert model.meta.background.method == "global+match"
        assert model.meta.cal_step.skymatch == "COMPLETE"


def test_strun_with_parameter_file(mosaic_on_disk, tmp_path):
    cfg = CONFIG / "skymatch_step_sparse_local.asdf"
    proc = _strun([str(cfg), str(mosaic_on_disk.asn_path)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outputs = sorted(tmp_path.glob("*.fits"))
    assert len(outputs) == 8
    with datamodels.open(outputs[0]) as model:
        assert model.meta.background.method == "local"


@pytest.mark.parametrize("cfg", sorted(CONFIG.glob("*.asdf")), ids=lambda p: p.name)
def test_config_files_load(cfg):
    from skymatch_step import SkymatchStep

    step = Step.from_config_file(str(cfg))
    assert isinstance(step, SkymatchStep)
