"""Running the per-image passes on Dask (``dask_scheduler``)."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from conftest import constant_model, library_results
from skymatch_step import SkymatchStep
from skymatch_step._runners import check_scheduler
from skymatch_step.exceptions import MissingDependencyError

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.filterwarnings(
    # distributed's own shutdown chatter is not this package's concern
    "ignore::ResourceWarning",
    "ignore::DeprecationWarning",
    "ignore::UserWarning:distributed",
)


@pytest.fixture(scope="module")
def cluster():
    """A running local cluster of two worker processes."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cl:
        yield cl


def _levels(library):
    return [r[:5] for r in library_results(library)]


def _run(asn, caplog, **kwargs):
    """Levels and statuses of every model (and a copy of its data last)."""
    with caplog.at_level(logging.INFO, logger="skymatch_step"):
        return [(*r[:5], r[5]) for r in library_results(SkymatchStep.call(asn, **kwargs))]


@pytest.mark.parametrize(("method", "in_memory"), [("match", True), ("global+match", False)])
def test_scheduler_address_gives_identical_levels(
    cluster, mosaic_on_disk, caplog, in_memory, method
):
    asn = str(mosaic_on_disk.asn_path)
    here = _run(asn, caplog, skymethod=method, in_memory=in_memory)
    caplog.clear()
    there = _run(
        asn,
        caplog,
        skymethod=method,
        in_memory=in_memory,
        dask_scheduler=cluster.scheduler_address,
    )
    assert [r[:5] for r in there] == [r[:5] for r in here]
    assert all(r[4] == "COMPLETE" for r in there)
    # both passes ran on the workers
    assert "Read the WCS of 8 models on Dask" in caplog.text
    assert "Measured 8 images on Dask" in caplog.text


def test_scheduler_file_and_local_cluster(cluster, mosaic_on_disk, tmp_path, caplog):
    asn = str(mosaic_on_disk.asn_path)
    here = _run(asn, caplog, skymethod="global+match", subtract=True)
    path = tmp_path / "scheduler.json"
    with distributed.Client(cluster, set_as_default=False) as client:
        client.write_scheduler_file(str(path))
    caplog.clear()
    by_file = _run(asn, caplog, skymethod="global+match", subtract=True, dask_scheduler=str(path))
    assert "Measured 8 images on Dask" in caplog.text
    caplog.clear()
    local = _run(
        asn,
        caplog,
        skymethod="global+match",
        subtract=True,
        dask_scheduler="local",
        maximum_cores="2",
    )
    assert "a local cluster with 2 worker(s)" in caplog.text
    for a, b, c in zip(here, by_file, local, strict=True):
        assert a[:5] == b[:5] == c[:5]
    # the pixels subtracted by the driver are the same too
    assert all(
        np.array_equal(a[5], b[5], equal_nan=True) for a, b in zip(here, by_file, strict=True)
    )


def test_models_in_memory_run_here_with_a_warning(cluster, caplog):
    models = [constant_model(1.0 + k, (30.0 * k, 0.0)) for k in range(3)]
    here = _levels(SkymatchStep.call(models))
    models = [constant_model(1.0 + k, (30.0 * k, 0.0)) for k in range(3)]
    with caplog.at_level(logging.INFO, logger="skymatch_step"):
        there = _levels(SkymatchStep.call(models, dask_scheduler=cluster.scheduler_address))
    assert there == here
    assert "exist only in memory" in caplog.text
    assert "on Dask" not in caplog.text


def test_differences_run_here_with_a_warning(cluster, mosaic_on_disk, caplog):
    asn = str(mosaic_on_disk.asn_path)
    here = _run(asn, caplog, compare="differences")
    caplog.clear()
    there = _run(asn, caplog, compare="differences", dask_scheduler=cluster.scheduler_address)
    assert [r[:5] for r in there] == [r[:5] for r in here]
    assert "is not used with compare='differences'" in caplog.text


def test_worker_errors_reach_the_caller(cluster, mosaic_on_disk):
    # a check failing on a worker is reported as in this process
    _bad_member(mosaic_on_disk)
    with pytest.raises(ValueError, match="is inconsistent with the background already recorded"):
        SkymatchStep.call(
            str(mosaic_on_disk.asn_path),
            subtract=True,
            dask_scheduler=cluster.scheduler_address,
        )


def _bad_member(mosaic):
    """Make one member's recorded background inconsistent with subtract=True."""
    from stdatamodels.jwst import datamodels

    path = mosaic.files[0]
    with datamodels.open(path) as model:
        model.meta.background.level = 1.0
        model.meta.background.subtracted = False
        model.save(path)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("local", "local"),
        ("tcp://host:8786", "tcp://host:8786"),
        ("host:8786", "host:8786"),
    ],
)
def test_check_scheduler_accepts(value, expected):
    assert check_scheduler(value) == expected


def test_check_scheduler_takes_a_file(tmp_path):
    path = tmp_path / "scheduler.json"
    path.write_text("{}")
    assert check_scheduler(str(path)) == str(path)


@pytest.mark.parametrize("value", ["nowhere", "host:port", "./missing.json"])
def test_check_scheduler_rejects(value):
    with pytest.raises(ValueError, match=r"is not valid: use None .* 'local'"):
        check_scheduler(value)


def test_unreachable_scheduler_is_a_clear_error(mosaic_on_disk, monkeypatch):
    from skymatch_step import _runners

    monkeypatch.setattr(_runners, "_CONNECT_TIMEOUT", "1s")
    with pytest.raises(OSError, match=r"Cannot reach the Dask scheduler 'tcp://127\.0\.0\.1:9'"):
        SkymatchStep.call(str(mosaic_on_disk.asn_path), dask_scheduler="tcp://127.0.0.1:9")


def test_missing_dask_names_the_extra(mosaic_on_disk, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(MissingDependencyError, match=r"'dask' extra: pip install \"\.\[dask\]\""):
        SkymatchStep.call(str(mosaic_on_disk.asn_path), dask_scheduler="local")
    # without it nothing changes
    assert check_scheduler(None) is None


def test_scheduler_without_workers_is_a_clear_error(mosaic_on_disk, monkeypatch):
    from skymatch_step import _runners

    monkeypatch.setattr(_runners, "_CONNECT_TIMEOUT", "1s")
    with (
        distributed.LocalCluster(n_workers=0, dashboard_address=None) as empty,
        pytest.raises(OSError, match=r"has no workers \(waited 1s\)"),
    ):
        SkymatchStep.call(str(mosaic_on_disk.asn_path), dask_scheduler=empty.scheduler_address)
