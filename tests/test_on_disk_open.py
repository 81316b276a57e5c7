"""On-disk members opened straight from their files (`open_member_file`).

The WCS pass reads no array of a member's file, the pixel pass only the
science and DQ arrays; the checks and errors are those of the library's
own opens, and no file is left open.
"""

from __future__ import annotations

import contextlib
import gc
import json
import mmap
import os

import numpy as np
import pytest
from astropy.io import fits
from stdatamodels.jwst import datamodels

import skymatch_step._model_inputs as model_inputs
from conftest import library_results
from skymatch_step import SkymatchStep
from skymatch_step.simulate import MosaicSpec, write_mosaic


def _mapped(array):
    """Whether ``array`` is a view of a memory-mapped file (so not read into memory)."""
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    return isinstance(base, mmap.mmap)


def _open_files(paths):
    """Which of ``paths`` this process holds open (file descriptors, memory maps)."""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            held.add(os.readlink(f"/proc/self/fd/{fd}"))
    with open("/proc/self/maps") as maps:
        held.update(line.split()[-1] for line in maps if "/" in line)
    return sorted(str(p) for p in paths if str(p) in held)


@pytest.fixture
def mosaic(tmp_path):
    spec = MosaicSpec(n_exposures=3, detectors_per_exposure=1, shape=(64, 64), seed=11)
    return write_mosaic(spec, tmp_path / "data")


@pytest.mark.filterwarnings("error::ResourceWarning")
def test_wcs_pass_reads_no_array_and_pixel_pass_only_sci_and_dq(mosaic, monkeypatch):
    described, measured = [], []
    original_describe = model_inputs.describe
    original_usable = model_inputs.usable_image

    def recording_describe(model, *args, **kwargs):
        described.append({name: _mapped(getattr(model, name)) for name in ("data", "dq", "err")})
        return original_describe(model, *args, **kwargs)

    def recording_usable(model, *args, **kwargs):
        image = original_usable(model, *args, **kwargs)
        with image.pixels() as (data, _good):
            measured.append(
                {
                    "err": _mapped(model.err),
                    "var_poisson": _mapped(model.var_poisson),
                    "dq": _mapped(model.dq),
                    "data kept": _mapped(data),
                    "dq dtype": model.dq.dtype,
                }
            )
        return image

    monkeypatch.setattr(model_inputs, "describe", recording_describe)
    monkeypatch.setattr(model_inputs, "usable_image", recording_usable)
    library = SkymatchStep.call(str(mosaic.asn_path), in_memory=False, skymethod="match")
    n = len(mosaic.files)
    # WCS pass: every array left in the file (memory-mapped, never touched).
    assert described == [{"data": True, "dq": True, "err": True}] * n
    # Pixel pass: the other arrays are not read; the DQ array is read and
    # scaled (BZERO) as the library does; the science array is copied into
    # memory, so that the file is closed before the statistics.
    expected = {
        "err": True,
        "var_poisson": True,
        "dq": False,
        "data kept": False,
        "dq dtype": np.dtype(np.uint32),
    }
    assert measured == [expected] * n
    assert not _open_files(mosaic.files)
    # The same results as in memory, where the library reads every array.
    memory = library_results(SkymatchStep.call(str(mosaic.asn_path), skymethod="match"))
    disk = library_results(library)
    assert [r[:5] for r in disk] == [r[:5] for r in memory]


def _rewrite(path, change):
    """Change the model in ``path`` and save it again."""
    with datamodels.open(path) as model:
        copy = model.copy()
    change(copy)
    copy.save(path)
    copy.close()


def _no_wcs(model):
    model.meta.wcs = None


def _dq_of_another_shape(model):
    model.dq = np.zeros((5, 7), dtype=np.uint32)


def _integer_data(path):
    # int32 science data in the file, unscaled
    with fits.open(path) as hdul:
        sci = hdul["SCI"]
        hdul["SCI"] = fits.ImageHDU(np.nan_to_num(sci.data).astype(np.int32), header=sci.header)
        hdul.writeto(path, overwrite=True)


def _scaled_integer_data(path):
    # int16 science data with BSCALE: floating-point once scaled (astropy)
    with fits.open(path) as hdul:
        sci = hdul["SCI"]
        values = np.round(np.nan_to_num(sci.data) * 100).astype(np.int16)
        scaled = fits.ImageHDU(values, header=sci.header)
        scaled.scale("int16", bscale=0.01)
        hdul["SCI"] = scaled
        hdul.writeto(path, overwrite=True)


def _with_group_ids(asn_path):
    # The library then reads a member first when the step opens it (not
    # when the library is created, to read its group id).
    asn = json.loads(asn_path.read_text())
    for k, member in enumerate(asn["products"][0]["members"]):
        member["group_id"] = f"exposure{k}"
    asn_path.write_text(json.dumps(asn))


def _truncated(path):
    with fits.open(path) as hdul:
        start = hdul.fileinfo(hdul.index_of("SCI"))["datLoc"]
        cut = start + hdul["SCI"].data.nbytes // 2
    with open(path, "r+b") as f:
        f.truncate(cut)


@pytest.mark.filterwarnings("ignore:File may have been truncated")
@pytest.mark.filterwarnings("error:unclosed file:ResourceWarning")
@pytest.mark.parametrize(
    ("damage", "subtract", "message"),
    [
        (_no_wcs, False, r"has no WCS \(meta.wcs\)"),
        (_dq_of_another_shape, False, r"its DQ array has shape \(5, 7\) but its data have"),
        (_truncated, False, r"Cannot read image 2 of 3 \('.*'\): ValueError: "),
    ],
)
def test_bad_member_file_gives_the_librarys_error(mosaic, damage, subtract, message):
    victim = mosaic.files[1]
    _with_group_ids(mosaic.asn_path)
    if damage is _truncated:
        damage(victim)
    else:
        _rewrite(victim, damage)
    errors = {}
    for in_memory in (True, False):
        with pytest.raises((ValueError, OSError), match=message) as info:
            SkymatchStep.call(str(mosaic.asn_path), in_memory=in_memory, subtract=subtract)
        errors[in_memory] = (type(info.value), str(info.value))
        # the model in the traceback holds its file open until it is dropped
        del info
        gc.collect()
        assert not _open_files(mosaic.files)
    # the same error whether the library reads the file or the step does
    assert errors[True] == errors[False]


def _outcome(asn, **kwargs):
    """The error of a run (type and message), or its results."""
    try:
        library = SkymatchStep.call(asn, **kwargs)
    except ValueError as err:
        return type(err), str(err)
    # (the data of a file rewritten by hand are saved differently in memory
    # and on disk, as before the step opened files itself: not compared)
    return [r[:5] for r in library_results(library)]


@pytest.mark.filterwarnings("error:unclosed file:ResourceWarning")
@pytest.mark.parametrize("damage", [_integer_data, _scaled_integer_data])
def test_integer_data_are_checked_as_the_library_reads_them(mosaic, damage):
    # Left unscaled, the science array of the file may have another type
    # than the library's model has (int16 for float32 once scaled): the
    # subtract check must see the library's.
    damage(mosaic.files[1])
    asn = str(mosaic.asn_path)
    memory = _outcome(asn, subtract=True)
    disk = _outcome(asn, subtract=True, in_memory=False)
    assert disk == memory
