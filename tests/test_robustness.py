"""The step under bad input and odd environments: clear errors, nothing half-done."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os

import numpy as np
import pytest
from astropy.io import fits
from jwst.datamodels import ModelLibrary
from stdatamodels.jwst import datamodels

from conftest import TABLE1, TABLE1_POS, TABLE1_SKY, constant_model, library_results
from skymatch_step import SkymatchStep
from skymatch_step.simulate import MosaicSpec, write_mosaic


def _levels(library):
    return [r[1] for r in library_results(library)]


def _noisy_table1(seed=0):
    """Table 1 models with noise and a few awkward values.

    Subtracting a level from such data and adding it back does not give
    the same float32 bits everywhere, so restoring them is a real test.
    """
    rng = np.random.default_rng(seed)
    models = []
    for k, (sky, pos) in enumerate(zip(TABLE1_SKY, TABLE1_POS, strict=True)):
        model = constant_model(sky, pos, exposure=k + 1)
        model.data += rng.normal(0.0, 30.0, model.data.shape).astype(np.float32)
        model.data[0, :4] = [1e-7, -0.0, np.inf, np.nan]
        models.append(model)
    return models


def _snapshot(library):
    """(data, background metadata, status) of every model of ``library``."""
    out = []
    with library:
        for index in range(len(library)):
            model = library.borrow(index)
            bkg = model.meta.background
            out.append(
                (
                    np.array(model.data, copy=True),
                    (bkg.method, bkg.level, bkg.subtracted),
                    model.meta.cal_step.skymatch,
                )
            )
            library.shelve(model, index, modify=False)
    return out


def _assert_unchanged(library, before):
    after = _snapshot(library)  # borrowing and shelving works again
    for (data0, meta0, status0), (data1, meta1, status1) in zip(before, after, strict=True):
        assert data1.tobytes() == data0.tobytes()
        assert (meta1, status1) == (meta0, status0)


# -- item 2: the level of every image is logged ----------------------------


def test_levels_are_logged_per_image(table1_models, caplog):
    table1_models[4].data[...] = np.nan
    with caplog.at_level(logging.INFO, logger="skymatch_step"):
        SkymatchStep.call(table1_models, skymethod="local")
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("skymatch_step")]
    for k, level in enumerate(TABLE1["local"]):
        name = f"img{k + 1:03d}_cal.fits"
        expected = f"{name}: no sky level (SKIPPED)" if k == 4 else f"{name}: sky level {level:.7g}"
        assert any(line.startswith(expected) for line in lines), expected


def test_many_levels_are_summarized(caplog):
    levels = [float(10 + k) for k in range(25)]
    models = [constant_model(s, (50 * k, 0), exposure=k + 1) for k, s in enumerate(levels)]
    models[3].data[...] = np.nan
    with caplog.at_level(logging.INFO, logger="skymatch_step"):
        SkymatchStep.call(models, skymethod="local")
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("skymatch_step")]
    assert not [line for line in lines if ": sky level " in line]
    kept = levels[:3] + levels[4:]
    summary = (
        f"Sky levels of 25 images: 24 COMPLETE, 1 SKIPPED; level min {min(kept):.7g}, "
        f"median {np.median(kept):.7g}, max {max(kept):.7g}; skipped: img004_cal.fits."
    )
    assert summary in lines


# -- item 7: inside a multiprocessing.Pool worker --------------------------


def _run_table1(maximum_cores):
    models = [
        constant_model(s, p, exposure=k + 1)
        for k, (s, p) in enumerate(zip(TABLE1_SKY, TABLE1_POS, strict=True))
    ]
    result = SkymatchStep.call(models, skymethod="global+match", maximum_cores=maximum_cores)
    return _levels(result)


def _intersect_in_worker(workers):
    from skymatch_step._footprints import image_footprint
    from skymatch_step._model_inputs import wcs_callables
    from skymatch_step._overlaps import intersect_footprints
    from skymatch_step._runners import ProcessRunner

    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("skymatch_step._runners")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        footprints = []
        for pos in TABLE1_POS:
            forward, _ = wcs_callables(constant_model(1.0, pos).meta.wcs)
            footprints.append(image_footprint((40, 40), forward))
        with ProcessRunner(workers) as runner:
            pairs, overlaps = intersect_footprints(footprints, range(6), runner=runner)
    finally:
        logger.removeHandler(handler)
    areas = [overlaps[p].first[0] for p in pairs]
    return pairs, areas, messages, multiprocessing.current_process().daemon


def test_step_runs_in_a_pool_worker():
    expected = _run_table1("all")
    with multiprocessing.get_context("fork").Pool(1) as pool:
        in_worker = pool.apply(_run_table1, ("all",))
    assert in_worker == expected
    np.testing.assert_allclose(expected, TABLE1["global+match"], atol=1e-9)


def test_pair_intersector_falls_back_in_a_daemonic_process():
    pairs, areas, messages, daemon = _intersect_in_worker(1)
    assert not daemon
    assert not messages
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply(_intersect_in_worker, (2,))
    assert got[3] is True
    assert got[0] == pairs
    # spherical-geometry's areas of such tiny polygons vary by ~1e-6
    # relative from run to run even in one process
    np.testing.assert_allclose(got[1], areas, rtol=1e-5)
    assert any("daemonic process" in m for m in got[2])


@pytest.mark.parametrize("value", ["none", "one", "None", " ONE "])
def test_maximum_cores_none_means_one_process(value, table1_models):
    from skymatch_step._runners import n_workers as _n_workers

    assert _n_workers(value) == 1
    result = SkymatchStep.call(table1_models, skymethod="match", maximum_cores=value)
    np.testing.assert_allclose(_levels(result), TABLE1["match"], atol=1e-9)


# -- item 8: DQ arrays ------------------------------------------------------


def _without_dq(model):
    bare = datamodels.ImageModel(data=model.data.copy())
    bare.meta.wcs = model.meta.wcs
    bare.meta.filename = "nodq_cal.fits"
    bare.meta.group_id = "nodq"
    return bare


def test_model_without_dq_uses_finite_pixels(table1_models, caplog):
    table1_models[1] = _without_dq(table1_models[1])
    assert table1_models[1].dq is None  # what stdatamodels gives: no default array
    table1_models[1].data[:10] = np.nan
    with caplog.at_level(logging.INFO, logger="skymatch_step"):
        result = SkymatchStep.call(table1_models, skymethod="local")
    np.testing.assert_allclose(_levels(result), TABLE1["local"], atol=1e-9)
    assert "'nodq_cal.fits' has no DQ array" in caplog.text


def test_model_without_dq_read_from_a_file(table1_models, tmp_path):
    path = tmp_path / "nodq_cal.fits"
    _without_dq(table1_models[2]).save(path)
    with datamodels.open(path) as reread:
        assert reread.dq is None
        table1_models[2] = reread.copy()
    result = SkymatchStep.call(table1_models, skymethod="match")
    np.testing.assert_allclose(_levels(result), TABLE1["match"], atol=1e-9)


def test_dq_of_another_shape_is_an_error(table1_models):
    table1_models[2].dq = np.zeros((5, 7), dtype=np.uint32)
    library = ModelLibrary(table1_models)
    before = _snapshot(library)
    with pytest.raises(
        ValueError,
        match=r"'img003_cal.fits': its DQ array has shape \(5, 7\) but its data have "
        r"shape \(40, 40\)",
    ):
        SkymatchStep.call(library, subtract=True)
    _assert_unchanged(library, before)
    # the DQ array is not used with dqbits=None
    result = SkymatchStep.call(table1_models, skymethod="local", dqbits=None)
    np.testing.assert_allclose(_levels(result), TABLE1["local"], atol=1e-9)


# -- item 9: stepsize, members that are not images --------------------------


@pytest.mark.parametrize("stepsize", [0, -3])
def test_bad_stepsize(stepsize, table1_models):
    message = rf"stepsize={stepsize} is not valid: use None .* positive"
    with pytest.raises(ValueError, match=message):
        SkymatchStep.call(table1_models, stepsize=stepsize)


def test_positive_stepsize_runs(table1_models):
    result = SkymatchStep.call(table1_models, skymethod="match", stepsize=7)
    np.testing.assert_allclose(_levels(result), TABLE1["match"], atol=1e-9)


@pytest.mark.parametrize("kind", ["MultiSpecModel", "SlitModel"])
def test_member_that_is_not_an_image(kind, table1_models):
    other = getattr(datamodels, kind)()
    other.meta.filename = "spec_x1d.fits"
    with pytest.raises(
        ValueError,
        match=rf"'spec_x1d.fits': data must be a 2-D image, but this {kind} has no data array",
    ):
        SkymatchStep.call([*table1_models, other])


# -- item 10: writing back is all or nothing --------------------------------


@pytest.mark.parametrize("method", ["local", "user"])
def test_read_only_data_is_rejected_before_any_change(method, tmp_path):
    models = _noisy_table1()
    models[3].data.flags.writeable = False
    library = ModelLibrary(models)
    before = _snapshot(library)
    skylist = tmp_path / "sky.txt"
    skylist.write_text("".join(f"img{k:03d}_cal.fits 1.5\n" for k in range(1, 7)))
    with pytest.raises(ValueError, match=r"'img004_cal.fits': its data array is read-only"):
        SkymatchStep.call(library, skymethod=method, subtract=True, skylist=str(skylist))
    _assert_unchanged(library, before)
    # without subtracting, read-only data are fine
    SkymatchStep.call(library, skymethod=method, skylist=str(skylist))
    assert [r[4] for r in library_results(library)] == ["COMPLETE"] * 6


def test_integer_data_cannot_be_subtracted(table1_models):
    from skymatch_step._model_inputs import check_subtractable as _check_subtractable

    model = table1_models[0]
    model._instance["data"] = model.data.astype(np.int32)
    with pytest.raises(ValueError, match=r"data of type int32; subtract=True needs floating"):
        _check_subtractable(model, "img001_cal.fits")


@pytest.mark.parametrize("where", ["borrow", "shelve"])
@pytest.mark.parametrize("method", ["global+match", "user"])
def test_failure_while_writing_back_restores_every_model(where, method, monkeypatch, tmp_path):
    # The third model fails to load ("borrow") or to be stored after its sky
    # was subtracted ("shelve", as when a disk fills up): the two models
    # already updated are restored bit for bit and the library stays usable.
    library = ModelLibrary(_noisy_table1())
    before = _snapshot(library)
    updated = []
    failed = []
    real_borrow, real_shelve = library.borrow, library.shelve

    def borrow(index):
        if where == "borrow" and index == 2 and len(updated) == 2 and not failed:
            failed.append(index)
            raise OSError("injected read failure")
        return real_borrow(index)

    def shelve(model, index=None, modify=True):
        if where == "shelve" and modify and index == 2 and not failed:
            failed.append(index)
            raise OSError("injected write failure")
        if modify and not failed:
            updated.append(index)
        return real_shelve(model, index, modify=modify)

    monkeypatch.setattr(library, "borrow", borrow)
    monkeypatch.setattr(library, "shelve", shelve)
    skylist = tmp_path / "sky.txt"
    skylist.write_text("".join(f"img{k:03d}_cal.fits {k}.25\n" for k in range(1, 7)))
    with pytest.raises(OSError, match="injected"):
        SkymatchStep.call(library, skymethod=method, subtract=True, skylist=str(skylist))
    assert updated == [0, 1]
    assert failed == [2]
    _assert_unchanged(library, before)
    # the library works: the same run now succeeds
    SkymatchStep.call(library, skymethod=method, subtract=True, skylist=str(skylist))
    rows = library_results(library)
    assert [r[4] for r in rows] == ["COMPLETE"] * 6
    assert all(r[2] is True for r in rows)


@pytest.mark.parametrize("in_pipeline", [False, True])
def test_models_of_the_caller_are_restored_after_a_failure(in_pipeline, monkeypatch):
    # Run by a pipeline, the step does not copy a list of models: the
    # caller's models are changed, so they are restored after a failure.
    from skymatch_step import _writeback
    from skymatch_step._library import open_library

    models = _noisy_table1()
    before = [m.data.copy() for m in models]
    step = SkymatchStep(skymethod="local", subtract=True)
    if in_pipeline:
        monkeypatch.setattr(step, "parent", object())
    library = open_library(step, models, in_memory=step.in_memory)
    assert library.holds_callers_models is in_pipeline
    real = _writeback._update_model
    calls = []

    def update_model(library, index, *args, **kwargs):
        calls.append(index)
        if index == 2:
            raise MemoryError("injected")
        return real(library, index, *args, **kwargs)

    monkeypatch.setattr(_writeback, "_update_model", update_model)
    with pytest.raises(MemoryError, match="injected"):
        step.run(models)
    assert calls == [0, 1, 2]
    for model, data in zip(models, before, strict=True):
        assert model.data.tobytes() == data.tobytes()
        assert model.meta.background.level is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("terms", [(0.3,), (-17.25, 1e-3), (1e30,), (float("nan"),)])
def test_undo_restores_data_bit_for_bit(dtype, terms):
    from types import SimpleNamespace

    from skymatch_step._writeback import Undo as _Undo

    rng = np.random.default_rng(4)
    data = (rng.normal(0.2, 1.0, (50, 60)) * 10.0 ** rng.integers(-8, 8, (50, 60))).astype(dtype)
    data[0, :5] = [np.nan, np.inf, -np.inf, -0.0, 0.0]
    data = np.asfortranarray(data)  # the flat index must follow the array, not its memory
    original = data.copy()
    model = SimpleNamespace(data=data, instance={"meta": {}})
    record = _Undo.of(model)
    record.subtract(data, terms)
    assert data.tobytes() != original.tobytes()
    record.restore(model)
    assert data.tobytes() == original.tobytes()
    assert model.instance["meta"] == {}


# -- item 11: a non-finite level from an earlier run -------------------------


def test_non_finite_earlier_level_with_subtract(table1_models):
    for model in table1_models:
        model.meta.background.level = 0.0
        model.meta.background.subtracted = True
    table1_models[2].meta.background.level = np.inf
    library = ModelLibrary(table1_models)
    before = _snapshot(library)
    with pytest.raises(ValueError, match=r"'img003_cal.fits'.*level=inf\) is not finite"):
        SkymatchStep.call(library, skymethod="local", subtract=True)
    _assert_unchanged(library, before)


def test_non_finite_earlier_level_without_subtract(table1_models, caplog):
    table1_models[2].meta.background.level = np.nan
    table1_models[2].meta.background.subtracted = False
    with caplog.at_level(logging.WARNING, logger="skymatch_step"):
        result = SkymatchStep.call(table1_models, skymethod="local")
    np.testing.assert_allclose(_levels(result), TABLE1["local"], atol=1e-9)
    assert "'img003_cal.fits': the earlier meta.background.level (nan) is not finite" in (
        caplog.text
    )


# -- item 12: unreadable members, lists of files on disk --------------------


@pytest.mark.filterwarnings("ignore:File may have been truncated")
@pytest.mark.parametrize("group_ids", [True, False])
def test_truncated_member_is_named(group_ids, tmp_path):
    # With group ids in the association the member is first read when the
    # step borrows it; without, when the library reads its group id.
    truth = write_mosaic(MosaicSpec(n_exposures=3, shape=(64, 64), seed=3), tmp_path)
    asn = json.loads(truth.asn_path.read_text())
    if group_ids:
        for k, member in enumerate(asn["products"][0]["members"]):
            member["group_id"] = f"exposure{k}"
    truth.asn_path.write_text(json.dumps(asn))
    victim = truth.files[1]
    with fits.open(victim) as hdul:
        start = hdul.fileinfo(hdul.index_of("SCI"))["datLoc"]
        cut = start + hdul["SCI"].data.nbytes // 2
    with open(victim, "r+b") as f:
        f.truncate(cut)  # in the middle of the science array
    if group_ids:
        message = rf"Cannot read image 2 of 3 \('.*{victim.name}'\): ValueError: cannot reshape"
    else:
        message = rf"Cannot read '.*{victim.name}': KeyError"
    with pytest.raises(OSError, match=message) as info:
        SkymatchStep.call(str(truth.asn_path))
    assert info.value.__cause__ is not None
    assert str(info.value.__cause__) in str(info.value)


def test_list_of_files_on_disk(mosaic_on_disk, monkeypatch):
    files = [str(p) for p in mosaic_on_disk.files]
    memory = library_results(SkymatchStep.call(files, skymethod="global+match"))
    # relative paths resolve against the working directory of the call
    monkeypatch.chdir(mosaic_on_disk.files[0].parent)
    relative = [os.path.basename(p) for p in files]
    disk = SkymatchStep.call(relative, skymethod="global+match", in_memory=False)
    assert disk.on_disk
    rows = library_results(disk)
    assert [r[:5] for r in rows] == [r[:5] for r in memory]
    assert len({r[1] for r in rows}) == 4  # 4 exposures of 2 detectors: groups kept
