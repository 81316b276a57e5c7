"""Where the on-disk path's time goes: the step with ``in_memory=False``, profiled.

Runs ``SkymatchStep.call(asn, skymethod='match', in_memory=False,
maximum_cores=...)`` in a fresh process with timers wrapped, at run time,
around the functions that open, save, check, measure and collect the
models (nothing in the package is changed), and attributes the step's wall
time to them:

* each ``ModelLibrary.borrow`` (the open of a model from its file or its
  temporary file), split by pass: the WCS pass, the pixel pass, the
  write-back and stpipe's final pass (``finalize_result``);
* each ``shelve(..., modify=True)`` (the save of a temporary file), with
  the bytes written;
* inside an open or a save: FITS headers, FITS array reads and writes
  (bytes), YAML parse and dump, ASDF tag conversion (which builds the
  gwcs), asdf schema validation, validation on assignment, schema merge,
  the FITS keyword mapping;
* the WCS work (footprints, ``wcs_callables``, transform calls), the
  statistics (``measure_image`` minus its reads), the fit, gc and
  ``malloc_trim`` housekeeping (``release``; automatic collections are
  timed through ``gc.callbacks``), the ledger lock, and the rest.

Each timer records its *exclusive* time (its time minus that of the timed
calls inside it) per thread, so that the rows of the main thread add up to
the wall time. The pixel pass runs in ``maximum_cores`` threads: its rows
are the thread-seconds of the worker threads, scaled so that they add up to
the pass's wall time (a thread waiting for the library's ledger lock, while
another opens a model, gets none; the thread-seconds are kept in the JSON).
Each timer also records its thread's CPU time (``time.thread_time``), which
the other jobs of a shared machine disturb less than the wall time.

In the same run, alternating with the profiled step, each round also runs
(each in its own process, so that peak memory, ``ru_maxrss``, is per run):
the *floor* (open every model once through
``skymatch_step._library.StepLibrary(asn, on_disk=True)`` and take one
median per image), jwst's ``SkyMatchStep`` with the same arguments, and,
with ``--plain``, this step without timers (the timers' own cost).

Examples
--------
The 16- and 64-image NIRCam mosaics of ``bench_skymatch.py`` and the
1,000-image mosaic of ``bench_scale.py`` (each run adds its case to
``benchmarks/results/on_disk_profile.json`` and rewrites the Markdown)::

    python benchmarks/profile_on_disk.py /tmp/bdata/nircam16/nircam16_asn.json \\
        --case nircam16 --plain
    python benchmarks/profile_on_disk.py /tmp/bdata/nircam64/nircam64_asn.json \\
        --case nircam64 --plain
    python benchmarks/profile_on_disk.py /tmp/sdata/scale1000/scale1000_asn.json \\
        --case scale1000 --plain --jwst-repeats 1

The ranked list of cuts drawn from these runs is kept by hand in
``benchmarks/results/on_disk_profile.notes.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# -- timers ---------------------------------------------------------------------

#: Phase of the step the main thread is in (worker threads read it too).
PHASE = ["other"]
_LOCAL = threading.local()
_STATES = []
_STATES_LOCK = threading.Lock()
#: Names of the frames the gc callback opens.
_GC_EXPLICIT = "gc.collect in release()"
_GC_AUTO = "automatic gc"
_RELEASE = "release() other"


class _ThreadState:
    """One thread's stack of open timers and its records."""

    def __init__(self):
        self.main = threading.current_thread() is threading.main_thread()
        self.stack = []
        self.opaque = 0
        # (phase, context, name) -> [exclusive s, inclusive s, calls, bytes, exclusive CPU s]
        self.records = {}


def _state():
    state = getattr(_LOCAL, "state", None)
    if state is None:
        state = _LOCAL.state = _ThreadState()
        with _STATES_LOCK:
            _STATES.append(state)
    return state


def _enter(state, name, ctx, opaque):
    if ctx is None:
        ctx = state.stack[-1][1] if state.stack else ""
    frame = [name, ctx, PHASE[-1], time.perf_counter(), 0.0, opaque, time.thread_time(), 0.0]
    state.stack.append(frame)
    if opaque:
        state.opaque += 1
    return frame


def _leave(state, frame, nbytes=0):
    elapsed = time.perf_counter() - frame[3]
    cpu = time.thread_time() - frame[6]
    while state.stack and state.stack[-1] is not frame:
        state.stack.pop()  # not expected: frames are strictly nested
    if state.stack:
        state.stack.pop()
    if frame[5]:
        state.opaque -= 1
    key = (frame[2], frame[1], frame[0])
    record = state.records.get(key)
    if record is None:
        record = state.records[key] = [0.0, 0.0, 0, 0, 0.0]
    record[0] += elapsed - frame[4]
    record[1] += elapsed
    record[2] += 1
    record[3] += nbytes
    record[4] += cpu - frame[7]
    if state.stack:
        state.stack[-1][4] += elapsed
        state.stack[-1][7] += cpu


def timed(fn, name, *, ctx=None, opaque=False, classify=None, nbytes=None, result_hook=None):
    """Wrap ``fn`` with a timer recording under ``name`` (and context ``ctx``).

    ``opaque``: the timed calls made inside are not timed separately.
    ``classify(args, kwargs)`` may return ``(name, ctx)`` per call;
    ``nbytes(args, kwargs, result)`` the bytes the call moved;
    ``result_hook(result)`` may replace the result (wrap returned callables).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        state = _state()
        if state.opaque:
            return fn(*args, **kwargs)
        label, context = classify(args, kwargs) if classify else (name, ctx)
        frame = _enter(state, label, context, opaque)
        moved = 0
        try:
            result = fn(*args, **kwargs)
            if nbytes is not None:
                moved = nbytes(args, kwargs, result)
            if result_hook is not None:
                result = result_hook(result)
            return result
        finally:
            _leave(state, frame, moved)

    return wrapper


def phase(fn, label):
    """Wrap ``fn`` so that the calls inside it are filed under phase ``label``."""
    inner = timed(fn, f"rest of {label}", ctx="")

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        PHASE.append(label)
        try:
            return inner(*args, **kwargs)
        finally:
            PHASE.pop()

    return wrapper


def _gc_callback(event, info):
    state = _state()
    if event == "start":
        top = state.stack[-1][0] if state.stack else ""
        _enter(state, _GC_EXPLICIT if top == _RELEASE else _GC_AUTO, "", False)
    elif state.stack and state.stack[-1][0] in (_GC_EXPLICIT, _GC_AUTO):
        _leave(state, state.stack[-1])


class _TimedLock:
    """A lock whose acquisitions are timed (the wait for the library's ledger)."""

    def __init__(self, lock):
        self._lock = lock
        self._acquire = timed(lock.acquire, "ledger lock wait", ctx="")

    def __enter__(self):
        self._acquire()
        return self

    def __exit__(self, *exc):
        self._lock.release()

    def acquire(self, *args, **kwargs):
        return self._acquire(*args, **kwargs)

    def release(self):
        self._lock.release()


def _patch(owner, attr, make):
    """Replace ``owner.attr`` by ``make(original)`` (keeping class/static methods)."""
    original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
    if isinstance(original, classmethod):
        setattr(owner, attr, classmethod(make(original.__func__)))
    elif isinstance(original, staticmethod):
        setattr(owner, attr, staticmethod(make(original.__func__)))
    else:
        setattr(owner, attr, make(original))


def _file_size(args, kwargs, result):
    target = args[1] if len(args) > 1 else kwargs.get("fileobj")
    if isinstance(target, (str, os.PathLike)) and os.path.isfile(target):
        return os.path.getsize(target)
    return 0


def _shelve_kind(args, kwargs):
    library = args[0]
    modify = args[3] if len(args) > 3 else kwargs.get("modify", True)
    if modify and getattr(library, "_on_disk", False):
        return "shelve other", "save"
    return "shelve, no save", ""


def _wrap_transforms(result):
    forward, inverse = result
    return (
        timed(forward, "WCS transform call", ctx=""),
        timed(inverse, "WCS transform call", ctx=""),
    )


def install_timers():
    """Wrap the functions of the on-disk path with timers (this process only)."""
    import concurrent.futures

    import asdf
    import asdf.schema
    import asdf.yamlutil
    import astropy.io.fits
    import jwst.datamodels.library as jwst_library
    import jwst.stpipe.core as jwst_core
    import stdatamodels.fits_support as fits_support
    import stdatamodels.model_base as model_base
    import stdatamodels.schema as dm_schema
    import stdatamodels.validate as dm_validate
    import stpipe.library as stpipe_library
    from astropy.io.fits import file as fits_file
    from astropy.io.fits.hdu import base as hdu_base
    from astropy.io.fits.hdu import hdulist as hdu_list
    from astropy.io.fits.hdu import image as hdu_image

    import skymatch_step._engine as engine
    import skymatch_step._layout as layout
    import skymatch_step._library as step_library
    import skymatch_step._measure as measure
    import skymatch_step._memory as memory
    import skymatch_step._model_inputs as model_inputs
    import skymatch_step._runners as runners
    import skymatch_step._writeback as writeback
    import skymatch_step.step as step

    def t(name, **kw):
        return lambda fn: timed(fn, name, **kw)

    # The phases.
    _patch(step.SkymatchStep, "process", lambda fn: phase(fn, "step other"))
    _patch(step, "open_library", lambda fn: phase(fn, "library creation"))
    _patch(step, "match", lambda fn: phase(fn, "engine other"))
    _patch(engine, "read_layout", lambda fn: phase(fn, "WCS pass"))
    _patch(engine, "measure_all", lambda fn: phase(fn, "pixel pass"))
    _patch(step, "write_back", lambda fn: phase(fn, "write-back"))
    _patch(step_library.StepLibrary, "finalize_result", lambda fn: phase(fn, "final pass"))
    # (a) opens, (b) saves.
    _patch(stpipe_library.AbstractModelLibrary, "borrow", t("borrow other", ctx="open"))
    _patch(model_inputs, "borrow", t("borrow wrapper (reread)", ctx="open"))
    _patch(writeback, "borrow", t("borrow wrapper (reread)", ctx="open"))
    _patch(jwst_library, "datamodels_open", t("datamodels.open other"))
    _patch(model_base.DataModel, "__init__", t("DataModel.__init__ other"))
    _patch(astropy.io.fits, "open", t("fits.open other"))
    _patch(asdf.AsdfFile, "__init__", t("AsdfFile()"))
    _patch(asdf.schema, "load_schema", t("load_schema"))
    _patch(jwst_library.ModelLibrary, "_assign_member_to_model", t("member metadata (asn)"))
    _patch(
        jwst_library.ModelLibrary,
        "_filename_to_group_id",
        t("read_metadata for group_id", ctx="library", opaque=True),
    )
    _patch(
        stpipe_library.AbstractModelLibrary,
        "shelve",
        lambda fn: timed(fn, None, classify=_shelve_kind),
    )
    # (c) inside an open or a save.
    _patch(hdu_base._BaseHDU, "_readfrom_internal", t("FITS header parse"))
    _patch(hdu_image._ImageBaseHDU, "_get_scaled_image_data", t("FITS array scaling"))
    _patch(
        fits_file._File,
        "readarray",
        lambda fn: timed(fn, "FITS array read", nbytes=lambda a, k, r: int(r.nbytes)),
    )
    _patch(asdf, "open", t("ASDF open other"))
    _patch(asdf.yamlutil, "load_tree", t("YAML parse"))
    _patch(asdf.yamlutil, "dump_tree", t("YAML dump"))
    _patch(asdf.yamlutil, "tagged_tree_to_custom_tree", t("ASDF tagged->custom (gwcs)"))
    _patch(asdf.yamlutil, "custom_tree_to_tagged_tree", t("ASDF custom->tagged"))
    _patch(asdf.schema, "validate", t("schema validation"))
    _patch(dm_validate, "value_change", t("validation on assignment", opaque=True))
    _patch(dm_schema, "merge_property_trees", t("schema merge"))
    _patch(fits_support, "_map_hdulist_to_arrays", t("map FITS arrays to tree"))
    _patch(fits_support, "_load_from_schema", t("FITS keywords -> tree"))
    _patch(fits_support, "fits_hash", t("FITS header hash"))
    _patch(model_base.DataModel, "save", t("DataModel.save other"))
    # Closing a model closes its file; the last close of a temporary file that a
    # save has replaced frees its blocks (the final pass overwrites every one).
    _patch(model_base.DataModel, "close", t("DataModel.close (file)", ctx=""))
    _patch(fits_support, "_save_from_schema", t("schema walk -> FITS"))
    _patch(fits_support, "_create_asdf_hdu", t("ASDF extension other"))
    _patch(
        hdu_list.HDUList,
        "writeto",
        lambda fn: timed(fn, "FITS writeto other", nbytes=_file_size),
    )
    _patch(
        hdu_base._BaseHDU,
        "_writedata",
        lambda fn: timed(fn, "FITS array write", nbytes=lambda a, k, r: int(r[1])),
    )
    # (d) WCS.
    _patch(layout, "image_footprint", t("footprint", ctx="", opaque=True))
    _patch(
        model_inputs,
        "wcs_callables",
        lambda fn: timed(fn, "wcs_callables", ctx="", result_hook=_wrap_transforms),
    )
    _patch(model_inputs, "describe", t("describe (checks)", ctx=""))
    # (e) pixels and statistics.
    _patch(model_inputs, "usable_image", t("usable_image other", ctx=""))
    _patch(model_inputs, "good_pixels", t("good_pixels (DQ, finite)", ctx=""))
    _patch(measure, "measure_image", t("overlap statistics (measure_image rest)", ctx=""))
    _patch(measure, "sorted_values", t("sort usable values", ctx=""))
    _patch(measure, "try_statistic", t("own-sky statistic", ctx=""))
    # (f) fit.
    _patch(engine, "fit_sky", t("fit", ctx="", opaque=True))
    # (g) housekeeping.
    _patch(model_inputs, "release", t(_RELEASE, ctx=""))
    _patch(writeback, "release", t(_RELEASE, ctx=""))
    _patch(memory, "trim_heap", t("malloc_trim", ctx=""))
    _patch(model_inputs, "trim_heap", t("malloc_trim", ctx=""))
    gc.callbacks.append(_gc_callback)
    # (h) the rest.
    model_inputs.LEDGER_LOCK = _TimedLock(model_inputs.LEDGER_LOCK)
    _patch(runners.ProcessRunner, "_submit", t("submit intersections", ctx="", opaque=True))
    _patch(concurrent.futures.Future, "result", t("wait for workers", ctx=""))
    _patch(jwst_core.JwstStep, "finalize_result", t("Step.finalize_result(model)", ctx=""))


def collect_records():
    """Every thread's records: ``[{phase, ctx, name, main, excl, incl, calls, bytes, cpu}]``."""
    out = []
    for state in _STATES:
        for (ph, ctx, name), (excl, incl, calls, nbytes, cpu) in state.records.items():
            out.append(
                {
                    "phase": ph,
                    "ctx": ctx,
                    "name": name,
                    "main": state.main,
                    "excl": excl,
                    "incl": incl,
                    "calls": calls,
                    "bytes": nbytes,
                    "cpu": cpu,
                }
            )
    return out


# -- the runs (each in a fresh process) --------------------------------------------


def _rss_mb():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def run_worker(kind, asn, cores):
    """Body of a worker process: one run of ``kind``; prints one JSON line."""
    import logging
    import resource

    os.environ["STPIPE_DISABLE_CRDS_STEPPARS"] = "true"
    logging.disable(logging.WARNING)
    import numpy as np

    out = {"kind": kind, "load_before": os.getloadavg()[0]}
    if kind == "jwst":
        from jwst.skymatch import SkyMatchStep
    else:
        from skymatch_step import SkymatchStep
        from skymatch_step._library import StepLibrary
    if kind == "profile":
        install_timers()
    out["rss_before_mb"] = _rss_mb()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time()
    start = time.perf_counter()
    if kind == "floor":
        library = StepLibrary(asn, on_disk=True)
        out["library_s"] = time.perf_counter() - start
        with library:
            for index in range(len(library)):
                model = library.borrow(index)
                np.median(model.data)
                library.shelve(model, index, modify=False)
                del model
    elif kind == "jwst":
        result = SkyMatchStep.call(asn, skymethod="match", in_memory=False)
        del result  # its temporary files are deleted (timed, as for the others)
    elif kind == "profile":
        state = _state()
        frame = _enter(state, "rest of stpipe Step.call", "", False)
        try:
            result = SkymatchStep.call(asn, skymethod="match", in_memory=False, maximum_cores=cores)
        finally:
            _leave(state, frame)
        PHASE.append("temp cleanup")
        frame = _enter(state, "delete the temporary files (result dropped)", "", False)
        del result
        _leave(state, frame)
        PHASE.pop()
        gc.callbacks.remove(_gc_callback)
    else:
        result = SkymatchStep.call(asn, skymethod="match", in_memory=False, maximum_cores=cores)
        del result
    out["seconds"] = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["cpu_s"] = time.process_time() - cpu
    out["children_cpu_s"] = (after.ru_utime + after.ru_stime) - (
        children.ru_utime + children.ru_stime
    )
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out["load_after"] = os.getloadavg()[0]
    if kind == "profile":
        out["records"] = collect_records()
    print(json.dumps(out))


def spawn(kind, asn, cores, timeout):
    """Run one ``kind`` in a fresh process (working directory: the association's)."""
    cmd = [sys.executable, __file__, "--worker", kind, str(asn), str(cores)]
    done = subprocess.run(
        cmd, capture_output=True, text=True, check=False, cwd=Path(asn).parent, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(f"{kind} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- attribution ------------------------------------------------------------------

#: Columns of the detail table (phases in the order they run).
PHASES = (
    "library creation",
    "WCS pass",
    "pixel pass",
    "engine other",
    "write-back",
    "final pass",
    "step other",
    "other",
    "temp cleanup",
)


def attribute(records):
    """Wall seconds of every (context, name) in every phase.

    The main thread's exclusive times add up to the wall time; in the pixel
    pass (worker threads), the threads' exclusive times are scaled to the
    pass's wall time.

    A thread waiting for the ledger lock waits for another thread's open
    or shelve: that wait gets no wall time (its thread-seconds are kept).

    Returns
    -------
    cells : dict
        ``{(ctx, name): {phase: [wall s, thread s, calls, bytes, CPU s]}}``
    """
    cells = {}

    def add(r, wall):
        cell = cells.setdefault((r["ctx"], r["name"]), {})
        entry = cell.setdefault(r["phase"], [0.0, 0.0, 0, 0, 0.0])
        entry[0] += wall
        entry[1] += r["excl"]
        entry[2] += r["calls"]
        entry[3] += r["bytes"]
        entry[4] += r["cpu"]

    pixel = [r for r in records if r["phase"] == "pixel pass"]
    workers = [r for r in pixel if not r["main"]]
    if workers:
        wall = sum(r["excl"] for r in pixel if r["main"])  # the pass, as the main thread saw it
        busy = sum(r["excl"] for r in workers if r["name"] != "ledger lock wait")
        scale = wall / busy if busy else 0.0
        for r in workers:
            add(r, 0.0 if r["name"] == "ledger lock wait" else r["excl"] * scale)
        for r in pixel:
            if r["main"]:
                add(r, 0.0)  # counted, not timed: waiting for the threads
    for r in records:
        if r["phase"] == "pixel pass" and workers:
            continue
        if r["main"]:
            add(r, r["excl"])
        else:
            add(r, 0.0)  # outside the pixel pass: no worker thread expected; shown as calls
    return cells


#: The brief's groups (a)-(h), by (context, name).
def group_of(ctx, name):
    """The group (a)-(h) of one row."""
    if ctx == "open":
        return "a/c open"
    if ctx == "save":
        return "b save"
    if ctx == "library":
        return "h library creation"
    if name in ("footprint", "wcs_callables", "WCS transform call"):
        return "d WCS"
    if name in (
        "overlap statistics (measure_image rest)",
        "sort usable values",
        "own-sky statistic",
        "good_pixels (DQ, finite)",
        "usable_image other",
    ):
        return "e statistics"
    if name == "fit":
        return "f fit"
    if name in (_RELEASE, _GC_EXPLICIT, _GC_AUTO, "malloc_trim"):
        return "g housekeeping"
    if name in ("DataModel.close (file)", "delete the temporary files (result dropped)"):
        return "h file closes and deletions"
    return "h rest"


#: Names inside an open (or a save) that are the arrays, not the metadata.
ARRAY_NAMES = ("FITS array read", "FITS array scaling", "FITS array write")
METADATA_NAMES = (
    "YAML parse",
    "YAML dump",
    "ASDF tagged->custom (gwcs)",
    "ASDF custom->tagged",
    "schema validation",
    "validation on assignment",
    "schema merge",
    "FITS keywords -> tree",
    "FITS header hash",
    "schema walk -> FITS",
    "member metadata (asn)",
)


def _sum(cells, phase_name, *, ctx, name=None, index=0):
    """Sum of ``cells[(ctx, name)][phase][index]`` over the names (all of ``ctx`` if None)."""
    total = 0
    for (c, n), by_phase in cells.items():
        if c == ctx and (name is None or n == name) and phase_name in by_phase:
            total += by_phase[phase_name][index]
    return total


def summarize_run(run):
    """One run's cells and, per phase: wall, CPU, opens and saves; per group: wall, CPU."""
    cells = attribute(run["records"])
    walls = dict.fromkeys(PHASES, 0.0)
    cpus = dict.fromkeys(PHASES, 0.0)
    groups = {}
    for (ctx, name), by_phase in cells.items():
        group = groups.setdefault(group_of(ctx, name), [0.0, 0.0])
        for ph, entry in by_phase.items():
            walls[ph] = walls.get(ph, 0.0) + entry[0]
            cpus[ph] = cpus.get(ph, 0.0) + entry[4]
            group[0] += entry[0]
            group[1] += entry[4]
    per_phase = {}
    for ph in PHASES:
        per_phase[ph] = {
            "wall": walls[ph],
            "cpu": cpus[ph],
            "open_s": _sum(cells, ph, ctx="open"),
            "opens": _sum(cells, ph, ctx="open", name="borrow other", index=2),
            "save_s": _sum(cells, ph, ctx="save"),
            "saves": _sum(cells, ph, ctx="save", name="shelve other", index=2),
            "written": _sum(cells, ph, ctx="save", name="FITS writeto other", index=3),
        }
    pixel = [r for r in run["records"] if r["phase"] == "pixel pass" and not r["main"]]
    threads = {
        "thread_s": sum(r["excl"] for r in pixel),
        "lock_wait_s": sum(r["excl"] for r in pixel if r["name"] == "ledger lock wait"),
        "open_s": sum(r["excl"] for r in pixel if r["ctx"] == "open"),
    }
    cpu = sum(e[4] for by_phase in cells.values() for e in by_phase.values())
    return {"cells": cells, "phases": per_phase, "groups": groups, "threads": threads, "cpu": cpu}


# -- the report ---------------------------------------------------------------------


def _median(values):
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def _fmt(value, digits=2):
    return "n/a" if value != value else f"{value:.{digits}f}"


LABELS = {
    "profile": "this step, profiled",
    "plain": "this step, no timers",
    "floor": "floor: StepLibrary(on_disk=True), open each model once + one median",
    "jwst": "jwst SkyMatchStep (same arguments)",
}

#: Where each timer of an open or a save goes in the "inside" table.
PARTS = (
    ("arrays: FITS read, BZERO scaling, write", ARRAY_NAMES),
    ("schema validation (asdf, on assignment)", ("schema validation", "validation on assignment")),
    (
        "ASDF tree: YAML, tag conversion (gwcs)",
        ("YAML parse", "YAML dump", "ASDF tagged->custom (gwcs)", "ASDF custom->tagged"),
    ),
    ("other metadata: keywords, schema merge, hash", METADATA_NAMES),
    ("FITS headers", ("FITS header parse",)),
)


def part_of(name):
    """The row of the "inside" table of one timer of an open or a save."""
    for label, names in PARTS:
        if name in names:
            return label
    return "other Python (model init, file handling, save hooks)"


def case_report(name, case):
    """The Markdown section of one case."""
    runs = case["runs"]
    summaries = [summarize_run(r) for r in runs if r["kind"] == "profile"]
    n = case["n_images"]

    def med(kind, key="seconds"):
        return _median([r.get(key, float("nan")) for r in runs if r["kind"] == kind])

    def count(kind):
        return sum(1 for r in runs if r["kind"] == kind)

    total = med("profile")

    def pct(x):
        return f"{100.0 * x / total:.1f}" if total == total and total else "n/a"

    cpu_total = _median([s["cpu"] for s in summaries])

    def cpct(x):
        return f"{100.0 * x / cpu_total:.1f}" if cpu_total else "n/a"

    load = _median([r["load_before"] for r in runs])
    lines = [
        f"## {name}: {n} images of {case['shape']}",
        "",
        f"Command: `{case['command']}`",
        "",
        f"Association `{case['asn']}`; this step with maximum_cores={case['cores']}; load "
        f"average {_fmt(load, 1)} at the runs' start (median; 2 cores).",
        "",
        "| run | runs | wall (s) | per image (s) | CPU (s) | peak RSS (MB) | RSS before (MB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in ("profile", "plain", "floor", "jwst"):
        if count(kind):
            wall = med(kind)
            cpu = _median(
                [
                    r["cpu_s"] + r["children_cpu_s"]
                    for r in runs
                    if r["kind"] == kind and "cpu_s" in r
                ]
            )
            lines.append(
                f"| {LABELS[kind]} | {count(kind)} | {_fmt(wall)} | {_fmt(wall / n, 3)} | "
                f"{_fmt(cpu)} | {_fmt(med(kind, 'peak_mb'), 0)} | "
                f"{_fmt(med(kind, 'rss_before_mb'), 0)} |"
            )
    timers = ""
    if count("plain"):

        def cpu_of(kind):
            return _median([r["cpu_s"] + r["children_cpu_s"] for r in runs if r["kind"] == kind])

        timers = (
            f" The timers' own cost: profiled/plain {_fmt(total / med('plain'))} in wall "
            f"time, {_fmt(cpu_of('profile') / cpu_of('plain'))} in CPU time."
        )
    lines += [
        "",
        f"Step/floor {_fmt(total / med('floor'))}; jwst/step {_fmt(med('jwst') / total)}."
        + timers
        + " Medians of the runs; CPU: this process and its worker processes. In the "
        "breakdowns each cell is the median of its runs, so rows may not add up exactly.",
        "",
        "### By pass (a, b)",
        "",
        "CPU: the timed threads' CPU time (`time.thread_time`), less sensitive to the "
        "other jobs than the wall time; CPU % is of their sum "
        f"({_fmt(cpu_total)} s; the intersection worker processes are not in it).",
        "",
        "| pass | wall (s) | % of step | CPU (s) | CPU % | opens | open (s) | ms/open | saves | "
        "save (s) | ms/save | MB saved |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def per(seconds, calls):
        return f"{1000.0 * seconds / calls:.0f}" if calls else ""

    for ph in PHASES:

        def get(key, ph=ph):
            return _median([s["phases"][ph][key] for s in summaries])

        lines.append(
            f"| {ph} | {_fmt(get('wall'))} | {pct(get('wall'))} | {_fmt(get('cpu'))} | "
            f"{cpct(get('cpu'))} | {get('opens'):.0f} | {_fmt(get('open_s'))} | "
            f"{per(get('open_s'), get('opens'))} | {get('saves'):.0f} | {_fmt(get('save_s'))} | "
            f"{per(get('save_s'), get('saves'))} | {_fmt(get('written') / 1e6, 0)} |"
        )
    lines.append(
        f"| **Step.call** | **{_fmt(total)}** | 100.0 | {_fmt(cpu_total)} | 100.0 | | | | | | | |"
    )
    thread_s = _median([s["threads"]["thread_s"] for s in summaries])
    lock_s = _median([s["threads"]["lock_wait_s"] for s in summaries])
    open_s = _median([s["threads"]["open_s"] for s in summaries])
    lines += [
        "",
        f"Pixel pass: {_fmt(thread_s)} thread-seconds in its worker threads, of which "
        f"{_fmt(lock_s)} waiting for the library's ledger lock (another thread opening or "
        f"shelving a model) and {_fmt(open_s)} opening models (one at a time, under that "
        "lock: an open is in progress for that long of the pass's wall time); the "
        "thread-seconds but the wait are spread over the pass's wall time in the tables.",
        "",
        "### By kind of work (a)-(h)",
        "",
        "| group | wall (s) | % of step | CPU (s) | CPU % |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for group in sorted({g for s in summaries for g in s["groups"]}):
        wall = _median([s["groups"].get(group, [0.0, 0.0])[0] for s in summaries])
        cpu = _median([s["groups"].get(group, [0.0, 0.0])[1] for s in summaries])
        lines.append(f"| {group} | {_fmt(wall)} | {pct(wall)} | {_fmt(cpu)} | {cpct(cpu)} |")
    lines += [
        "",
        "### (c) Inside the opens and saves, all passes",
        "",
        "| part | in opens (s) | in saves (s) | % of step | CPU (s) | CPU % | MB read / written |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    nruns = len(summaries)
    parts = {}
    for k, summary in enumerate(summaries):
        for (ctx, timer), by_phase in summary["cells"].items():
            if ctx not in ("open", "save"):
                continue
            entry = parts.setdefault(
                part_of(timer),
                {
                    "open": [0.0] * nruns,
                    "save": [0.0] * nruns,
                    "mb": [0.0] * nruns,
                    "cpu": [0.0] * nruns,
                },
            )
            for wall, _threads, _calls, nbytes, cpu in by_phase.values():
                entry[ctx][k] += wall
                entry["cpu"][k] += cpu
                if timer in ("FITS array read", "FITS array write"):
                    entry["mb"][k] += nbytes / 1e6
    for label in sorted(parts):
        o = _median(parts[label]["open"])
        sv = _median(parts[label]["save"])
        mb = _median(parts[label]["mb"])
        cpu = _median(parts[label]["cpu"])
        lines.append(
            f"| {label} | {_fmt(o)} | {_fmt(sv)} | {pct(o + sv)} | {_fmt(cpu)} | {cpct(cpu)} | "
            f"{_fmt(mb, 0) if mb else ''} |"
        )
    lines += [
        "",
        "### Detail: wall seconds per pass (calls)",
        "",
        "Context `open`: inside a borrow; `save`: inside a shelve that writes a temporary "
        "file; `library`: each member's group_id read when the library is created. Each "
        "timer's exclusive time (nested timers subtracted). Pixel-pass cells: worker-thread "
        "seconds scaled to the pass's wall time (the ledger-lock wait gets none).",
        "",
        "| context | timer | " + " | ".join(PHASES) + " | total (s) | % | CPU (s) |",
        "| --- | --- | " + " | ".join("---:" for _ in PHASES) + " | ---: | ---: | ---: |",
    ]
    rows = []
    for key in {k for s in summaries for k in s["cells"]}:
        row_total = _median(
            [sum(v[0] for v in s["cells"].get(key, {}).values()) for s in summaries]
        )
        row_cpu = _median([sum(v[4] for v in s["cells"].get(key, {}).values()) for s in summaries])
        texts = []
        for ph in PHASES:
            entries = [s["cells"].get(key, {}).get(ph) for s in summaries]
            if not any(entries):
                texts.append("")
                continue
            wall = _median([e[0] if e else 0.0 for e in entries])
            calls = _median([e[2] if e else 0 for e in entries])
            texts.append(f"{wall:.2f} ({calls:.0f})")
        rows.append((row_total, key, texts, row_cpu))
    rows.sort(key=lambda r: (-r[0], r[1]))
    for row_total, (ctx, timer), texts, row_cpu in rows:
        cells_text = " | ".join(texts)
        lines.append(
            f"| {ctx} | {timer} | {cells_text} | {row_total:.2f} | {pct(row_total)} | "
            f"{row_cpu:.2f} |"
        )
    lines += ["", "### What is this step's to cut, and what is the data models' own", ""]
    lines += cuts(summaries, case, total, med("floor"))
    return "\n".join(lines) + "\n"


def _cell(summaries, keys, phases, index=0):
    """Median over runs of the sum of ``cells[key][phase][index]``."""
    values = []
    for summary in summaries:
        value = 0.0
        for key in keys:
            for ph in phases:
                entry = summary["cells"].get(key, {}).get(ph)
                if entry:
                    value += entry[index]
        values.append(value)
    return _median(values)


def cuts(summaries, case, total, floor):
    """Estimated savings, computed from the breakdown (wall s, CPU s in parentheses)."""
    n = case["n_images"]
    found = {k for s in summaries for k in s["cells"]}

    def keys(ctx=None, names=None):
        return [
            k for k in found if (ctx is None or k[0] == ctx) and (names is None or k[1] in names)
        ]

    def cost(selected, phases):
        wall = _cell(summaries, selected, phases)
        cpu = _cell(summaries, selected, phases, index=4)
        share = f"{100.0 * wall / total:.0f}%" if total else "n/a"
        return f"{_fmt(wall)} s ({_fmt(cpu)} s CPU; {share} of the step)"

    every = sorted(found)
    opens = keys(ctx="open")
    saves = keys(ctx="save")
    reads = keys(ctx="open", names=("FITS array read", "FITS array scaling"))
    writes = keys(ctx="save", names=("FITS array write",))
    closes = keys(names=("DataModel.close (file)",))
    housekeeping = keys(names=(_RELEASE, _GC_EXPLICIT, _GC_AUTO, "malloc_trim"))
    validation = keys(ctx="save", names=("schema validation",))
    library = _median([s["phases"]["library creation"]["wall"] for s in summaries])
    return [
        "This step's (estimates from the medians above; wall time, CPU time):",
        "",
        f"* stpipe's final pass re-opens every temporary file and saves it again for two "
        f"metadata values: {cost(every, ['final pass'])}; of it the opens "
        f"{cost(opens, ['final pass'])}, the saves {cost(saves, ['final pass'])}, the "
        f"closes that free the replaced temporary files {cost(closes, ['final pass'])}. "
        "Setting those values (`Step.finalize_result`) in the write-back's save and "
        "skipping the pass for models already finalized would remove it (jwst pays it too).",
        f"* the write-back opens every model and saves a full temporary copy although, with "
        f"subtract=False, only metadata change: {cost(every, ['write-back'])}; opens "
        f"{cost(opens, ['write-back'])}, saves {cost(saves, ['write-back'])}; the arrays "
        f"(read, BZERO scaling, write) {cost(reads + writes, ['write-back'])}.",
        f"* the pixel pass re-opens every model: {cost(opens, ['pixel pass'])} (of the pass's "
        "wall time); it needs SCI, DQ and the WCS only.",
        f"* the WCS pass reads every array though it needs the WCS and the shape only: "
        f"{cost(reads, ['WCS pass'])} of its opens' {cost(opens, ['WCS pass'])}.",
        f"* gc and malloc_trim housekeeping: {cost(housekeeping, PHASES)}.",
        "",
        "The data models' own cost:",
        "",
        f"* one open per image (the floor): {_fmt(floor)} s, {_fmt(floor / n, 3)} s per image, "
        f"the library's creation included (each member's group_id through `read_metadata`: "
        f"{_fmt(library)} s in the step); the first open validates the metadata, the step's "
        "later opens skip it (`reread`);",
        f"* every save validates the ASDF tree against its schemas: "
        f"{cost(validation, PHASES)} over all saves;",
        "* deleting the temporary directory when the result is dropped (stpipe's library): "
        f"{cost(keys(names=('delete the temporary files (result dropped)',)), PHASES)}.",
    ]


def write_report(data, outdir, stem):
    """Write ``<stem>.json`` and ``<stem>.md``."""
    outdir.mkdir(parents=True, exist_ok=True)
    _write(outdir / f"{stem}.json", json.dumps(data, indent=1))
    lines = [
        "# Where the on-disk path's time goes",
        "",
        f"Machine: {data['machine']}. Produced by `benchmarks/profile_on_disk.py` "
        "(timers wrapped at run time around the functions of the on-disk path; see its "
        "docstring). Every run is a fresh process; the profiled step, the floor, jwst's "
        "step and (where run) the step without timers alternate within each round. "
        "The ranked cuts over all cases: `on_disk_profile.notes.md`.",
        "",
    ]
    text = "\n".join(lines) + "\n"
    for name, case in data["cases"].items():
        text += "\n" + case_report(name, case)
    _write(outdir / f"{stem}.md", text)
    return text


def _write(path, text):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- main ---------------------------------------------------------------------------


def _case_shape(asn):
    from astropy.io import fits

    with open(asn) as f:
        members = json.load(f)["products"][0]["members"]
    first = Path(asn).parent / members[0]["expname"]
    with fits.open(first) as hdulist:
        shape = hdulist["SCI"].shape
    return len(members), "x".join(str(s) for s in shape)


def main(argv=None):
    """Run the rounds of one case and update the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("asn", nargs="?", help="association file")
    parser.add_argument("--case", help="case name in the report (default: the file's stem)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds")
    parser.add_argument("--cores", default="2", help="maximum_cores of the step")
    parser.add_argument("--jwst-repeats", type=int, default=None, help="rounds with jwst")
    parser.add_argument("--plain", action="store_true", help="also run the step without timers")
    parser.add_argument("--timeout", type=float, default=3 * 3600.0, help="seconds per run")
    parser.add_argument("--outdir", default=str(HERE / "results"))
    parser.add_argument("--stem", default="on_disk_profile")
    parser.add_argument("--report-only", action="store_true", help="rewrite the Markdown")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, asn, cores = args.worker
        run_worker(kind, asn, cores)
        return 0
    outdir = Path(args.outdir)
    path = outdir / f"{args.stem}.json"
    data = json.loads(path.read_text()) if path.exists() else {"cases": {}}
    data["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs), Python "
        f"{platform.python_version()}, jwst {importlib.metadata.version('jwst')}, "
        f"stdatamodels {importlib.metadata.version('stdatamodels')}, "
        f"stpipe {importlib.metadata.version('stpipe')}, asdf {importlib.metadata.version('asdf')}"
    )
    if args.report_only:
        print(write_report(data, outdir, args.stem))
        return 0
    if not args.asn:
        parser.error("an association file is needed")
    asn = str(Path(args.asn).resolve())
    name = args.case or Path(asn).stem
    n_images, shape = _case_shape(asn)
    command = "python benchmarks/profile_on_disk.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    jwst_rounds = args.repeats if args.jwst_repeats is None else args.jwst_repeats
    case = {
        "asn": asn,
        "n_images": n_images,
        "shape": shape,
        "cores": args.cores,
        "command": command,
        "runs": [],
    }
    for k in range(args.repeats):
        kinds = ["profile", "floor"]
        if k < jwst_rounds:
            kinds.append("jwst")
        if args.plain:
            kinds.append("plain")
        if k % 2:
            kinds.reverse()  # alternate the order too
        for kind in kinds:
            started = time.perf_counter()
            run = spawn(kind, asn, args.cores, args.timeout)
            case["runs"].append(run)
            print(
                f"round {k + 1} {kind}: {run['seconds']:.1f} s, peak {run['peak_mb']:.0f} MB "
                f"(load {run['load_before']:.1f}; {time.perf_counter() - started:.0f} s with "
                "start-up)",
                flush=True,
            )
        data["cases"][name] = case
        write_report(data, outdir, args.stem)  # after every round: nothing lost
    print(write_report(data, outdir, args.stem))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
