"""SkymatchStep: results in the models, inputs, re-runs, user sky, bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from jwst.datamodels import ModelContainer, ModelLibrary
from stdatamodels.jwst import datamodels

from conftest import TABLE1, TABLE2, constant_model, library_results
from skymatch_step import SkyMatchStep, SkymatchStep
from skymatch_step.simulate import write_association

METHODS = ["local", "global", "match", "global+match"]


def _levels(library):
    return [r[1] for r in library_results(library)]


TABLES = {"table1": TABLE1, "table2": TABLE2}


def _on_disk(models, tmp_path):
    paths = []
    for model in models:
        path = tmp_path / model.meta.filename
        model.save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("route", ["models", "asn", "paths"])
@pytest.mark.parametrize("table", ["table1", "table2"])
@pytest.mark.parametrize("method", METHODS)
def test_documentation_tables(method, table, route, request, tmp_path):
    models = request.getfixturevalue(f"{table}_models")
    if route == "models":
        data = models
    elif route == "asn":
        data = str(write_association(_on_disk(models, tmp_path), tmp_path / "t_asn.json"))
    else:
        data = [str(p) for p in _on_disk(models, tmp_path)]
    result = SkymatchStep.call(data, skymethod=method)
    np.testing.assert_allclose(_levels(result), TABLES[table][method], atol=1e-9)
    for _, _, subtracted, meth, status, _ in library_results(result):
        assert (subtracted, meth, status) == (False, method, "COMPLETE")


def test_jwst_name_is_exported():
    assert SkyMatchStep is SkymatchStep
    assert SkymatchStep.class_alias == "skymatch"


def test_spec_matches_jwst():
    # every jwst parameter, with the same type and default; ours adds
    # maximum_cores and the options beyond jwst's step, whose defaults
    # keep jwst's results
    from jwst.skymatch import SkyMatchStep as JwstStep

    ours = dict(SkymatchStep.load_spec_file())
    theirs = dict(JwstStep.load_spec_file())
    assert set(ours) - set(theirs) == {
        "maximum_cores",
        "compare",
        "sky_model",
        "anchor_sets",
        "grouping",
        "min_pair_pixels",
        "reject_sigma",
        "reject_iterations",
        "skymask",
        "diagnostics",
        "diagnostics_plot",
        "dask_scheduler",
    }
    assert {k: ours[k] for k in theirs} == theirs


@pytest.mark.parametrize("value", ["1", "2", "half", "all", "quarter"])
def test_maximum_cores_gives_identical_levels(value, grouped_mosaic):
    models, _ = grouped_mosaic
    serial = _levels(SkymatchStep.call(models, skymethod="global+match", maximum_cores="1"))
    parallel = _levels(SkymatchStep.call(models, skymethod="global+match", maximum_cores=value))
    assert parallel == serial


def test_bad_maximum_cores(table1_models):
    with pytest.raises(ValueError, match="maximum_cores='many' is not valid"):
        SkymatchStep.call(table1_models, maximum_cores="many")


def test_input_models_are_not_modified(table1_models):
    before = [m.data.copy() for m in table1_models]
    result = SkymatchStep.call(table1_models, skymethod="local", subtract=True)
    for model, data in zip(table1_models, before, strict=True):
        np.testing.assert_array_equal(model.data, data)
        assert model.meta.background.level is None
        assert model.meta.cal_step.skymatch is None
    rows = library_results(result)
    assert all(r[2] is True for r in rows)
    np.testing.assert_allclose([r[5].mean() for r in rows], 0.0, atol=1e-5)


def test_container_input_is_not_modified(table1_models):
    container = ModelContainer(table1_models)
    SkymatchStep.call(container, skymethod="local", subtract=True)
    assert all(m.meta.background.level is None for m in container)


def test_library_input_is_updated_in_place(table1_models):
    library = ModelLibrary(table1_models)
    result = SkymatchStep.call(library, skymethod="local")
    assert result is library
    np.testing.assert_allclose(_levels(library), TABLE1["local"])


def test_single_model_input(table1_models):
    result = SkymatchStep.call(table1_models[0], skymethod="local")
    assert _levels(result) == [100.0]


def test_metadata_round_trip_through_fits(table1_models, tmp_path):
    result = SkymatchStep.call(table1_models, skymethod="global+match")
    with result:
        model = result.borrow(2)
        model.save(tmp_path / "out.fits")
        result.shelve(model, 2, modify=False)
    with datamodels.open(tmp_path / "out.fits") as reread:
        assert reread.meta.background.method == "global+match"
        assert reread.meta.background.level == pytest.approx(105.0)
        assert reread.meta.background.subtracted is False
        assert reread.meta.cal_step.skymatch == "COMPLETE"
    from astropy.io import fits

    header = fits.getheader(tmp_path / "out.fits")
    assert header["BKGMETH"] == "global+match"
    assert header["BKGLEVEL"] == pytest.approx(105.0)
    assert header["BKGSUB"] is False


def test_on_disk_library(mosaic_on_disk):
    result = SkymatchStep.call(str(mosaic_on_disk.asn_path), in_memory=False)
    rows = library_results(result)
    assert len(rows) == 8
    assert all(r[4] == "COMPLETE" for r in rows)
    # the input files are untouched
    for path in mosaic_on_disk.files:
        with datamodels.open(path) as model:
            assert model.meta.background.level is None


def test_on_disk_and_in_memory_agree(mosaic_on_disk):
    # The on-disk path releases each model as soon as it is read; the
    # levels must not depend on where the models live.
    asn = str(mosaic_on_disk.asn_path)
    disk = library_results(SkymatchStep.call(asn, in_memory=False, skymethod="global+match"))
    memory = library_results(SkymatchStep.call(asn, in_memory=True, skymethod="global+match"))
    assert [r[:5] for r in disk] == [r[:5] for r in memory]


def test_created_library_reads_its_association_once(mosaic_on_disk):
    # The step's own library serves one read-only association view; its
    # content is that of jwst's ModelLibrary.
    from skymatch_step._library import open_library

    step = SkymatchStep()
    library = open_library(step, str(mosaic_on_disk.asn_path), in_memory=step.in_memory)
    assert isinstance(library, ModelLibrary)
    assert library.asn is library.asn
    reference = ModelLibrary(str(mosaic_on_disk.asn_path)).asn
    members = library.asn["products"][0]["members"]
    assert [dict(m) for m in members] == [dict(m) for m in reference["products"][0]["members"]]
    with pytest.raises(TypeError):
        library.asn["products"][0]["members"][0]["expname"] = "other.fits"


@pytest.mark.parametrize(
    "dqbits", ["~DO_NOT_USE+NON_SCIENCE", "DO_NOT_USE", "~0", "0", "4", "~SATURATED,JUMP_DET"]
)
@pytest.mark.parametrize("dtype", [np.uint32, np.int32, np.uint16])
def test_good_pixels_follow_astropy_bit_flags(dqbits, dtype):
    # Same mask as astropy's bitfield_to_boolean_mask, with fewer temporaries.
    from types import SimpleNamespace

    from astropy.nddata.bitmask import bitfield_to_boolean_mask

    from skymatch_step._model_inputs import good_pixels as _good_pixels
    from skymatch_step._model_inputs import parse_dqbits as _parse_dqbits

    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    dq = rng.integers(info.min, info.max, size=(64, 64), endpoint=True, dtype=dtype)
    dq[rng.random(dq.shape) < 0.5] = 0
    data = rng.normal(size=dq.shape).astype(np.float32)
    data[0, :5] = np.nan
    bits = _parse_dqbits(dqbits)
    expected = bitfield_to_boolean_mask(dq, bits, good_mask_value=True, dtype=bool)
    expected &= np.isfinite(data)
    got = _good_pixels(SimpleNamespace(data=data, dq=dq), bits)
    assert np.array_equal(got, expected)


def test_rerun_accumulates_subtracted_sky(table1_models):
    first = SkymatchStep.call(table1_models, skymethod="local", subtract=True)
    second = SkymatchStep.call(first, skymethod="local", subtract=True)
    rows = library_results(second)
    np.testing.assert_allclose([r[1] for r in rows], TABLE1["local"], atol=1e-5)
    np.testing.assert_allclose([r[5].mean() for r in rows], 0.0, atol=1e-5)


def test_rerun_with_inconsistent_subtract_names_the_file(table1_models):
    first = SkymatchStep.call(table1_models, skymethod="local", subtract=False)
    with pytest.raises(ValueError, match=r"inconsistent.*img001_cal.fits"):
        SkymatchStep.call(first, skymethod="local", subtract=True)


def test_level_without_subtracted_flag_is_an_error(table1_models):
    table1_models[3].meta.background.level = 2.0
    with pytest.raises(ValueError, match=r"img004_cal\.fits.*subtracted is undefined"):
        SkymatchStep.call(table1_models, skymethod="local")


@pytest.mark.parametrize("method", METHODS)
def test_all_nan_image_is_skipped(method, table1_models, caplog):
    table1_models[4].data[...] = np.nan
    with caplog.at_level(logging.WARNING, logger="skymatch_step"):
        result = SkymatchStep.call(table1_models, skymethod=method)
    rows = library_results(result)
    assert rows[4][4] == "SKIPPED"
    assert rows[4][1] is None
    assert all(r[4] == "COMPLETE" for k, r in enumerate(rows) if k != 4)
    assert "img005_cal.fits" in caplog.text


def test_all_flagged_image_is_skipped(table1_models, caplog):
    table1_models[0].dq[...] = 1  # DO_NOT_USE
    with caplog.at_level(logging.WARNING, logger="skymatch_step"):
        result = SkymatchStep.call(table1_models, skymethod="global")
    rows = library_results(result)
    assert rows[0][4] == "SKIPPED"
    assert "img001_cal.fits" in caplog.text
    # dqbits=None ignores the DQ array: the image is measured again
    rows = library_results(SkymatchStep.call(table1_models, skymethod="global", dqbits=None))
    assert rows[0][4] == "COMPLETE"


def test_runs_offline_without_crds_variables(table1_models, monkeypatch):
    monkeypatch.delenv("STPIPE_DISABLE_CRDS_STEPPARS", raising=False)
    monkeypatch.delenv("CRDS_SERVER_URL", raising=False)
    config = SkymatchStep.get_config_from_reference(table1_models[0])
    assert dict(config) == {}
    result = SkymatchStep.call(table1_models, skymethod="match")
    np.testing.assert_allclose(_levels(result), TABLE1["match"], atol=1e-9)


def test_building_the_configuration_reads_no_member(tmp_path, caplog):
    # stpipe asks for CRDS parameters before each run; the step uses none,
    # so it must not open the association's members for them (jwst's step
    # reads the first member's metadata). The member here does not exist.
    asn = write_association([tmp_path / "absent_cal.fits"], tmp_path / "asn.json")
    with caplog.at_level(logging.WARNING):
        config, _ = SkymatchStep.build_config(str(asn))
    assert dict(config) == {}
    assert caplog.records == []


def test_jwst_parameter_file_runs_unchanged(table1_models, tmp_path):
    from jwst.skymatch import SkyMatchStep as JwstStep

    pars = tmp_path / "pars-skymatchstep.asdf"
    JwstStep(skymethod="local", skystat="median").export_config(pars)
    result = SkymatchStep.call(table1_models, config_file=str(pars))
    assert [r[3] for r in library_results(result)] == ["local"] * 6


# -- user sky values -------------------------------------------------------


def _skylist(tmp_path, lines):
    path = tmp_path / "sky.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_user_sky(table1_models, tmp_path):
    lines = [f"img{k:03d}_cal.fits {0.5 * k}" for k in range(1, 7)]
    # file names with another pipeline suffix match by stem
    lines[2] = "img003_skymatch.fits 1.5"
    skylist = _skylist(tmp_path, ["# name value", *lines])
    result = SkymatchStep.call(table1_models, skymethod="user", skylist=skylist, subtract=True)
    rows = library_results(result)
    assert [r[1] for r in rows] == [0.5 * k for k in range(1, 7)]
    assert all(r[3] == "user" and r[2] is True for r in rows)
    np.testing.assert_allclose(rows[0][5], 100.0 - 0.5)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["img001_cal.fits 1"], r"no sky value for: img002_cal.fits"),
        (
            [f"img{k:03d}_cal.fits 1" for k in range(1, 7)] + ["img001_cal.fits 2"],
            "'img001' is listed more than once",
        ),
        (
            [f"img{k:03d}_cal.fits 1" for k in range(1, 8)],
            "lists images that are not in the input: img007",
        ),
        (
            ["img001_cal.fits one", *[f"img{k:03d}_cal.fits 1" for k in range(2, 7)]],
            "sky value 'one' for 'img001_cal.fits' is not a number",
        ),
        (["img001_cal.fits 1 2"], "line 1: expected 2 columns"),
    ],
)
def test_bad_skylist_is_rejected_before_any_change(table1_models, tmp_path, lines, message):
    library = ModelLibrary(table1_models)
    with pytest.raises(ValueError, match=message):
        SkymatchStep.call(library, skymethod="user", skylist=_skylist(tmp_path, lines))
    assert all(m.meta.background.level is None for m in table1_models)


def test_missing_skylist(table1_models, tmp_path):
    with pytest.raises(ValueError, match=r"Cannot read skylist .*nope\.txt"):
        SkymatchStep.call(table1_models, skymethod="user", skylist=str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match="needs a sky value file: set 'skylist'"):
        SkymatchStep.call(table1_models, skymethod="user")


# -- bad input -------------------------------------------------------------


def test_model_without_wcs(table1_models):
    table1_models[2].meta.wcs = None
    with pytest.raises(ValueError, match=r"img003_cal\.fits' has no WCS"):
        SkymatchStep.call(table1_models)


def test_data_not_2d():
    from stdatamodels.jwst.datamodels import CubeModel

    cube = CubeModel((2, 10, 10))
    cube.meta.filename = "cube_cal.fits"
    with pytest.raises(ValueError, match=r"cube_cal.fits': data must be a 2-D image, got shape"):
        SkymatchStep.call([cube])


def test_empty_input():
    with pytest.raises(ValueError, match="No images to process: the input is empty"):
        SkymatchStep.call([])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"skymethod": "best"}, "skymethod"),
        ({"skystat": "average"}, "skystat"),
    ],
)
def test_unknown_options(table1_models, kwargs, message):
    from stpipe.config_parser import ValidationError

    with pytest.raises(ValidationError, match=message):
        SkymatchStep.call(table1_models, **kwargs)


def test_unparseable_dqbits(table1_models):
    with pytest.raises(ValueError, match=r"Cannot interpret dqbits='~NOT_A_FLAG'"):
        SkymatchStep.call(table1_models, dqbits="~NOT_A_FLAG")


def test_integer_dqbits(table1_models):
    table1_models[0].dq[:, :] = 4  # JUMP_DET, harmless when allowed
    rows = library_results(SkymatchStep.call(table1_models, skymethod="local", dqbits="4"))
    assert rows[0][4] == "COMPLETE"
    rows = library_results(SkymatchStep.call(table1_models, skymethod="local", dqbits="0"))
    assert rows[0][4] == "SKIPPED"


def test_constant_model_helper():
    model = constant_model(3.0, (0, 0))
    assert model.data.shape == (40, 40)


#: The engine's modules: arrays, masks and WCS callables in, levels out.
ENGINE_MODULES = (
    "_engine",
    "_options",
    "_layout",
    "_measure",
    "_comparisons",
    "_differences",
    "_fit",
    "_levels",
    "_runners",
    "_footprints",
    "_overlaps",
    "_planar",
    "_raster",
    "_statistics",
    "_solver",
    "_pairs",
    "_progress",
)


def test_engine_imports_no_datamodels_or_oracles():
    import re

    import skymatch_step

    src = Path(skymatch_step.__file__).parent
    imports = re.compile(r"^\s*(?:from|import)\s+([\w.]+)", re.MULTILINE)
    for path in src.glob("*.py"):
        names = imports.findall(path.read_text())
        assert not [n for n in names if n.startswith(("stcal", "stsci"))], path.name
        if path.stem in ENGINE_MODULES:
            assert not [n for n in names if "datamodels" in n or n.startswith("jwst")], path.name


def test_on_disk_run_frozen_objects_hold_no_released_wcs(mosaic_on_disk, monkeypatch):
    # With an on-disk library the step freezes, after each model of a
    # one-thread pass, what survived the garbage collection (so that the
    # next collections stay cheap). Nothing frozen may hold a model's WCS
    # after the step has dropped it: such a transform tree could never be
    # collected again, and the run would grow by one WCS per image.
    import gc

    from astropy.modeling import Model

    from skymatch_step import _memory, _model_inputs, _writeback

    trapped = []
    release = _memory.release

    def release_and_check(on_disk, *, settle=False, pixels=None):
        release(on_disk, settle=settle, pixels=pixels)
        if settle and _memory.FREEZING.active:
            gc.unfreeze()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                gc.collect()
                trapped.append(sum(isinstance(o, Model) for o in gc.garbage))
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
                gc.collect()
                gc.freeze()

    monkeypatch.setattr(_model_inputs, "release", release_and_check)
    monkeypatch.setattr(_writeback, "release", release_and_check)
    SkymatchStep.call(str(mosaic_on_disk.asn_path), in_memory=False, maximum_cores="1")
    # one check per model in the WCS pass and one in stpipe's last pass,
    # where the write-back is deferred to
    assert len(trapped) == 16
    assert trapped == [0] * 16


def test_on_disk_release_sweeps_garbage_that_was_frozen(monkeypatch):
    # An object frozen while alive and dropped later (as asdf drops the
    # oldest of the schema resolvers it keeps) is garbage the collector
    # cannot see while frozen: release must collect it within
    # _SWEEP_EVERY settled models, however long the pass.
    import gc
    import weakref

    from skymatch_step import _memory

    class Cyclic:
        pass

    if gc.get_freeze_count():
        pytest.skip("objects frozen by the test runner")
    monkeypatch.setattr(_memory, "_SWEEP_EVERY", 5)
    with _memory.quick_collections(True):
        for start in range(3):
            held = Cyclic()
            held.me = held
            alive = weakref.ref(held)
            _memory.release(True, settle=True)  # frozen while alive
            del held
            for _ in range(4):
                _memory.release(True, settle=True)
                if alive() is None:
                    break
            assert alive() is None, f"frozen garbage not collected (round {start})"
    assert gc.get_freeze_count() == 0


def test_on_disk_run_validates_each_file_on_its_first_read_only(mosaic_on_disk, monkeypatch):
    # The step reads an on-disk model for its WCS and its pixels; stpipe's
    # last pass reads it once more, and the step's results are written
    # there. Only the first read validates the file against its schemas;
    # the others open a file already validated in this run.
    # Every route that reads a model from a FITS file (the library's opens,
    # and the step's own opens of an on-disk member's file) goes through
    # stdatamodels' from_fits.
    import asdf
    from stdatamodels import fits_support

    opens = []
    original = fits_support.from_fits

    def recording_from_fits(hdulist, *args, **kwargs):
        name = Path(hdulist.fileinfo(0)["filename"]).name
        opens.append((name, asdf.get_config().validate_on_read))
        return original(hdulist, *args, **kwargs)

    monkeypatch.setattr(fits_support, "from_fits", recording_from_fits)
    library = SkymatchStep.call(str(mosaic_on_disk.asn_path), in_memory=False, maximum_cores="1")
    names = [f.name for f in mosaic_on_disk.files]
    # WCS pass (validated), pixel pass, and stpipe's last pass, which also
    # writes the results (the step's own on-disk library: no separate
    # write-back pass).
    assert opens == [(name, True) for name in names] + [(name, False) for name in names] * 2
    assert asdf.get_config().validate_on_read  # restored after the run
    with library:
        model = library.borrow(0)
        assert model.meta.cal_step.skymatch == "COMPLETE"
        assert model.meta.calibration_software_version  # stpipe's last pass ran
        library.shelve(model, 0, modify=False)


def test_on_disk_results_are_seen_before_stpipes_last_pass(mosaic_on_disk):
    # The step's own on-disk library gets its results in stpipe's last pass;
    # a caller reading the models before that pass (process() called
    # directly, a post hook) sees them too, also after a shelve that did
    # not save, and the subtraction is never applied twice.
    asn = str(mosaic_on_disk.asn_path)
    expected = library_results(SkymatchStep.call(asn, subtract=True))
    step = SkymatchStep(in_memory=False, subtract=True)
    library = step.process(asn)
    with library:
        model = library.borrow(0)
        first = np.array(model.data, copy=True)
        library.shelve(model, 0, modify=False)
        model = library.borrow(0)
        np.testing.assert_array_equal(model.data, first)
        library.shelve(model, 0, modify=False)
        model = library.borrow(1)
        library.shelve(model, 1)  # saved with its results
    seen = library_results(library)  # borrows, shelves without saving
    again = library_results(library)
    for rows in (seen, again):
        for a, b in zip(rows, expected, strict=True):
            assert a[1:5] == b[1:5]
            np.testing.assert_array_equal(a[5], b[5])
    library.finalize_result(step, [])  # stpipe's last pass: nothing applied twice
    for a, b in zip(library_results(library), expected, strict=True):
        assert a[1:5] == b[1:5]
        np.testing.assert_array_equal(a[5], b[5])


@pytest.mark.parametrize("subtract", [False, True])
def test_on_disk_run_saves_each_model_once(mosaic_on_disk, monkeypatch, subtract):
    # The step's own on-disk library is written in stpipe's last pass (which
    # reads and saves every model anyway), not in a write-back of its own:
    # one save per model, and the same results as in memory.
    from skymatch_step._library import StepLibrary

    saves = []
    original = StepLibrary._temp_path_for_model

    def recording(self, model, index):
        saves.append(index)
        return original(self, model, index)

    monkeypatch.setattr(StepLibrary, "_temp_path_for_model", recording)
    asn = str(mosaic_on_disk.asn_path)
    on_disk = library_results(SkymatchStep.call(asn, in_memory=False, subtract=subtract))
    assert sorted(saves) == list(range(len(mosaic_on_disk.files)))
    in_memory = library_results(SkymatchStep.call(asn, subtract=subtract))
    for a, b in zip(on_disk, in_memory, strict=True):
        assert a[:5] == b[:5]
        np.testing.assert_array_equal(a[5], b[5])
