"""Survey-scale benchmark: sparse mosaics of thousands of 128x128 images.

The mosaics are the sparse case of ``bench_skymatch.py`` (a grid
``2 sqrt(N)`` images wide, 5% overlap between neighbours) with 128x128
images, written once by the project's simulator
and cached under ``--workdir`` (later runs reuse them). Each run happens in
a fresh subprocess, timed around ``Step.call`` only, and reports its peak
resident memory (``ru_maxrss``) and its resident memory before the call
(imports). The contenders (ours with ``in_memory=False``, ours with
``in_memory=True`` if asked, and jwst's ``SkyMatchStep`` up to
``--jwst-max`` images) alternate within each round. The growth exponent
of each contender is the slope of log(time) against log(N) between the
smallest and the largest N it ran on.

jwst's skymatch finds the offsets with a dense pseudo-inverse of a
(pairs x groups) matrix. Its solve alone
(``stcal.skymatch.skymatch._find_optimum_sky_deltas``, fed a ready
overlap matrix of a square grid of groups with 4-neighbour links) is timed
at a few group counts, each in its own subprocess, a power law
``t = a N^p`` is fitted to the points and extrapolated.

Examples
--------
The survey-scale series (the 10,000-image cache is about 4 GB and takes
hours to write on 2 busy cores)::

    python benchmarks/bench_scale.py --workdir /tmp/sdata --sizes 1000 3000 10000

Writing the mosaics first, in two processes, then timing::

    python benchmarks/bench_scale.py --workdir /tmp/sdata --sizes 1000 3000 10000 \\
        --simulate-only --simulate-workers 2

The same with a Dask scheduler for our step::

    python benchmarks/bench_scale.py --step-arg dask_scheduler=local --step-arg maximum_cores=2

What our step keeps per image after its first pass (tracemalloc; slow,
since every allocation is traced)::

    python benchmarks/bench_scale.py --memory-profile 1000 --workdir /tmp/sdata

Smoke test (seconds; never a timing assertion)::

    python benchmarks/bench_scale.py --smoke --workdir /tmp/smoke --outdir /tmp/smoke
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_skymatch  # noqa: E402  (the sibling benchmark's simulation helper)
import numpy as np  # noqa: E402

SIZES = (1000, 3000, 10000)
SMOKE_SIZES = (4, 8)
IMAGE_SIZE = 128
OVERLAP = 0.05
SOLVE_GROUPS = (100, 400, 1024, 2025)
SMOKE_SOLVE_GROUPS = (16, 36, 64)
EXTRAPOLATE = (3000, 10000)
#: Targets of issue 10 for ours with in_memory=False.
TARGET_EXPONENT = 1.1
TARGET_PEAK_MB = 2048.0
TARGET_N = 10000


# -- subprocess bodies ---------------------------------------------------------


def _rss_mb():
    """Current resident memory of this process in MB (Linux; NaN elsewhere)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _run_step(runner, asn, in_memory, step_args):
    """Body of a worker subprocess: time one step call, report its memory."""
    import logging
    import resource

    os.environ["STPIPE_DISABLE_CRDS_STEPPARS"] = "true"  # jwst's step asks CRDS otherwise
    logging.disable(logging.WARNING)
    if runner == "jwst":
        from jwst.skymatch import SkyMatchStep as Step

        kwargs = {}
    else:
        from skymatch_step import SkymatchStep as Step

        kwargs = dict(step_args)
    base = _rss_mb()
    start = time.perf_counter()
    cpu = time.process_time()
    Step.call(asn, skymethod="match", in_memory=in_memory, **kwargs)
    seconds = time.perf_counter() - start
    cpu_s = time.process_time() - cpu  # this process only, not its workers
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"seconds": seconds, "cpu_s": cpu_s, "peak_mb": peak, "base_mb": base}))


def grid_overlaps(ngroups, *, seed=0):
    """Overlap matrices of a square grid of groups with 4-neighbour links.

    Parameters
    ----------
    ngroups : int
        Number of groups; the grid is ``k x k`` with ``k = round(sqrt(ngroups))``.
    seed : int, optional
        Seed of the random sky levels and weights.

    Returns
    -------
    A, W : ndarray
        ``(n, n)`` matrices as stcal's ``_overlap_matrix`` returns them:
        ``A[j, i]`` the sky of group ``i`` in its overlap with ``j``,
        ``W[j, i]`` its weight (pixel count); zero where groups do not
        overlap. ``n = k * k``.
    """
    import numpy as np

    k = max(2, round(math.sqrt(ngroups)))
    n = k * k
    rng = np.random.default_rng(seed)
    sky = rng.uniform(0.1, 0.5, n)
    idx = np.arange(n).reshape(k, k)
    pairs = np.concatenate(
        [
            np.stack([idx[:, :-1].ravel(), idx[:, 1:].ravel()], axis=1),
            np.stack([idx[:-1, :].ravel(), idx[1:, :].ravel()], axis=1),
        ]
    )
    a = np.zeros((n, n))
    w = np.zeros((n, n))
    i, j = pairs[:, 0], pairs[:, 1]
    a[j, i] = sky[i] + rng.normal(0, 1e-3, len(i))
    a[i, j] = sky[j] + rng.normal(0, 1e-3, len(i))
    w[j, i] = rng.integers(200, 2000, len(i))
    w[i, j] = rng.integers(200, 2000, len(i))
    return a, w


def _run_solve(ngroups):
    """Body of a worker subprocess: time stcal's dense solve on a grid of groups."""
    import importlib
    import resource

    import numpy as np

    # the module (the package exports a function of the same name)
    stcal_skymatch = importlib.import_module("stcal.skymatch.skymatch")

    # The memory of the (n, n) overlap matrices, which stcal builds too, counts.
    base = _rss_mb()
    a, w = grid_overlaps(ngroups)
    n = a.shape[0]
    # The solve alone: the overlap matrix is given, no image is measured.
    stcal_skymatch._overlap_matrix = lambda images, apply_sky=True: (a, w)
    start = time.perf_counter()
    cpu = time.process_time()
    deltas = stcal_skymatch._find_optimum_sky_deltas([None] * n)
    seconds = time.perf_counter() - start
    cpu_s = time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    ok = bool(np.all(np.isfinite(deltas)))
    print(
        json.dumps(
            {
                "groups": n,
                "seconds": seconds,
                "cpu_s": cpu_s,
                "peak_mb": peak,
                "base_mb": base,
                "ok": ok,
            }
        )
    )


class _Stop(Exception):
    """Raised by the memory probe to end the step after its first pass."""


def _package(filename):
    """Short name of the package a source file belongs to."""
    if "/skymatch_step/" in filename:
        return "skymatch_step." + Path(filename).stem
    if "site-packages/" in filename:
        return filename.split("site-packages/")[1].split("/")[0]
    if "/lib/python3" in filename:
        return "stdlib." + Path(filename).stem
    return Path(filename).name


def _owner(traceback):
    """Who keeps an allocation: the deepest skymatch_step line on its stack.

    Returns ``(site, package)``: that line (``file:line code``; the
    outermost frame when the stack has no skymatch_step frame) and the
    package of the allocating frame.
    """
    import linecache

    frames = list(traceback)  # oldest first
    ours = [f for f in frames if "/skymatch_step/" in f.filename]
    frame = ours[-1] if ours else frames[0]
    code = linecache.getline(frame.filename, frame.lineno).strip()
    site = f"{_package(frame.filename)}:{frame.lineno} {code}"
    return site, _package(frames[-1].filename)


def _traced():
    """Traced bytes in use after a garbage collection."""
    import gc
    import tracemalloc

    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def _held(make):
    """Call ``make()``; return its result and the traced bytes it keeps."""
    import gc
    import tracemalloc

    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    obj = make()
    gc.collect()
    return obj, tracemalloc.get_traced_memory()[0] - before


def _unit_sizes(files):
    """Traced bytes kept by one image's objects, measured on ``files[1]``.

    The same is done on ``files[0]`` first so that one-time caches are
    warm and not charged to the image.
    """
    from jwst import datamodels
    from spherical_geometry.polygon import SphericalPolygon

    from skymatch_step.engine import bounding_cap, image_footprint

    def wcs_of(path):
        with datamodels.open(path) as model:
            return model.meta.wcs, model.data.shape

    for path in files[:2]:  # the second image's figures: caches are warm then
        start = _traced()
        wcs, shape = wcs_of(path)
        wcs_bytes = _traced() - start
        fwd, inv = wcs.forward_transform, wcs.backward_transform
        closure_extra = _traced() - start - wcs_bytes
        del wcs
        closures_alone = _traced() - start
        before = _traced()
        footprint = image_footprint(shape, fwd)
        footprint_bytes = _traced() - before
        _, cap_bytes = _held(partial(bounding_cap, footprint))
        points = np.asarray(footprint.polygons[0].points)
        _, vertices_bytes = _held(partial(np.array, points))
        _, polygon_bytes = _held(partial(SphericalPolygon, points))
        del fwd, inv, footprint
    return {
        "gwcs WCS object read from a file (asdf)": wcs_bytes,
        "forward/inverse closures, on top of the WCS": closure_extra,
        "forward/inverse closures once the WCS is dropped (what ImageInput keeps)": closures_alone,
        "footprint (SphericalPolygon from image_footprint)": footprint_bytes,
        "bounding cap of the footprint": cap_bytes,
        "footprint vertices alone (ndarray of unit vectors)": vertices_bytes,
        "a bare SphericalPolygon of those vertices": polygon_bytes,
    }


def _run_memory(asn, step_args, nframes):
    """Body of a worker subprocess: what our step keeps per image after pass 1.

    ``in_memory=False``. The engine's second pass (``_measure_all``) is
    replaced by a probe that takes a tracemalloc snapshot and the resident
    memory, then stops the step.
    """
    import gc
    import logging
    import tracemalloc

    os.environ["STPIPE_DISABLE_CRDS_STEPPARS"] = "true"
    logging.disable(logging.WARNING)
    from skymatch_step import SkymatchStep, _engine
    from skymatch_step import step as step_module

    if not hasattr(_engine, "measure_all"):
        raise RuntimeError("skymatch_step._engine has no measure_all: update the probe")
    probe = {}

    def measure_all(layout, *args, **kwargs):
        gc.collect()
        probe["rss_mb"] = _rss_mb()
        probe["snapshot"] = tracemalloc.take_snapshot()
        probe["images"] = len(layout.images)
        probe["pairs"] = len(layout.pairs)
        raise _Stop

    _engine.measure_all = measure_all
    open_library = step_module.open_library

    def traced_open_library(self, input_models, **kwargs):
        # The association is read and validated untraced (very slow when
        # traced); tracing starts once the library exists.
        library = open_library(self, input_models, **kwargs)
        gc.collect()
        probe["rss_library_mb"] = _rss_mb()
        tracemalloc.start(nframes)
        probe["baseline"] = tracemalloc.take_snapshot()
        return library

    step_module.open_library = traced_open_library
    files = sorted(Path(asn).parent.glob("*_cal.fits"))
    # Load asdf's extensions and converters before tracing (slow when traced).
    from jwst import datamodels

    with datamodels.open(files[0]) as model:
        model.meta.wcs  # noqa: B018
    tracemalloc.start(nframes)
    units = _unit_sizes(files)
    tracemalloc.stop()
    gc.collect()
    base_rss = _rss_mb()
    start = time.perf_counter()
    try:
        SkymatchStep.call(asn, skymethod="match", in_memory=False, **step_args)
    except _Stop:
        pass
    else:
        raise RuntimeError("the memory probe was not reached")
    seconds = time.perf_counter() - start
    n = probe["images"]
    sites, packages, owners = {}, {}, {}
    for stat in probe["snapshot"].compare_to(probe["baseline"], "traceback"):
        if stat.size_diff <= 0:
            continue
        site, package = _owner(stat.traceback)
        sites[site] = sites.get(site, 0) + stat.size_diff
        packages[package] = packages.get(package, 0) + stat.size_diff
        key = f"{site} -> {package}"
        owners[key] = owners.get(key, 0) + stat.size_diff

    def top(table, count=25):
        items = sorted(table.items(), key=lambda kv: -kv[1])[:count]
        return [{"owner": k, "bytes": v, "bytes_per_image": v / n} for k, v in items]

    traced = sum(sites.values())
    print(
        json.dumps(
            {
                "images": n,
                "pairs": probe["pairs"],
                "first_pass_s": seconds,
                "rss_before_mb": base_rss,
                "rss_library_mb": probe["rss_library_mb"],
                "rss_after_pass1_mb": probe["rss_mb"],
                "rss_per_image_kb": 1024.0 * (probe["rss_mb"] - base_rss) / n,
                "traced_bytes": traced,
                "traced_per_image": traced / n,
                "by_site": top(sites),
                "by_package": top(packages, 15),
                "by_site_and_package": top(owners, 30),
                "unit_sizes": units,
            }
        )
    )


def memory_table(result, command):
    """Markdown report of `_run_memory`'s result."""
    n = result["images"]
    lines = [
        f"Command: `{command}`. Our step, in_memory=False, skymethod='match', on {n} images "
        f"({result['pairs']} candidate pairs); tracemalloc snapshot at the start of the "
        "second pass compared with one taken once the library is open "
        f"({result['first_pass_s']:.0f} s to get there, traced).",
        "",
        f"Resident memory: {result['rss_before_mb']:.0f} MB before the call, "
        f"{result['rss_library_mb']:.0f} MB once the library is open (association read; "
        "tracing starts there), "
        f"{result['rss_after_pass1_mb']:.0f} MB after the first pass: "
        f"{result['rss_per_image_kb']:.1f} kB per image. Traced by Python: "
        f"{result['traced_bytes'] / 2**20:.1f} MB, {result['traced_per_image'] / 1024:.1f} kB "
        "per image.",
        "",
        "Kept per image, by the skymatch_step line that caused the allocation:",
        "",
        "| bytes per image | total MB | line |",
        "| ---: | ---: | --- |",
    ]
    for r in result["by_site"][:15]:
        owner = r["owner"].replace("|", "\\|")
        lines.append(f"| {r['bytes_per_image']:.0f} | {r['bytes'] / 2**20:.1f} | `{owner}` |")
    lines += [
        "",
        "By the package that allocated it:",
        "",
        "| bytes per image | total MB | package |",
        "| ---: | ---: | --- |",
    ]
    for r in result["by_package"][:12]:
        lines.append(f"| {r['bytes_per_image']:.0f} | {r['bytes'] / 2**20:.1f} | {r['owner']} |")
    lines += [
        "",
        "Sizes of one image's objects (traced bytes kept, measured alone):",
        "",
        "| object | bytes |",
        "| --- | ---: |",
    ]
    for k, v in result["unit_sizes"].items():
        lines.append(f"| {k} | {v} |")
    return "\n".join(lines) + "\n"


# -- driver ----------------------------------------------------------------------


def _spawn(args, cwd, timeout, threads=None):
    """Run ``bench_scale.py --worker ARGS`` and return its JSON line.

    On timeout the whole process group (the step's worker processes
    included) is killed and ``{"timed_out": True}`` returned.
    """
    cmd = [sys.executable, __file__, "--worker", *args]
    # The worker runs in another directory: the same sources as this process.
    env = dict(os.environ)
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p
        )
    if threads is not None:
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(threads)
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"timed_out": True, "seconds": float(timeout)}
    except BaseException:  # interrupted: never leave the worker running
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args[:2]} failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def parse_step_args(items):
    """Turn ``key=value`` strings into a dict of step parameters.

    Parameters
    ----------
    items : list of str
        ``key=value`` items; values stay strings (stpipe converts them
        with the step's spec).

    Returns
    -------
    dict
    """
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--step-arg {item!r} is not of the form key=value")
        out[key.strip()] = value.strip()
    return out


def simulate(n, workdir, workers=1):
    """Write (or find in ``workdir``) the sparse mosaic of ``n`` 128x128 images.

    Parameters
    ----------
    n : int
        Number of images (one per exposure, so one per sky group).
    workdir : pathlib.Path
        Cache directory; the mosaic goes to ``workdir / f"scale{n}"``.
    workers : int
        Processes writing the files (the same files for any number).

    Returns
    -------
    pathlib.Path
        The association file.
    """
    # Assignments to the models being written need no validation (the file
    # is validated when saved); this halves the simulator's time per image.
    previous = os.environ.get("VALIDATE_ON_ASSIGNMENT")
    os.environ["VALIDATE_ON_ASSIGNMENT"] = "false"
    try:
        return bench_skymatch._simulate(
            f"scale{n}",
            n,
            1,
            IMAGE_SIZE,
            OVERLAP,
            workdir,
            columns=max(1, int(n**0.5 * 2)),
            workers=workers,
        )
    finally:
        if previous is None:
            del os.environ["VALIDATE_ON_ASSIGNMENT"]
        else:
            os.environ["VALIDATE_ON_ASSIGNMENT"] = previous


def _contenders(n, args):
    """(label, runner, in_memory) of each contender at ``n`` images."""
    out = [("ours", "ours", False)]
    if args.in_memory:
        out.append(("ours in_memory", "ours", True))
    if n <= args.jwst_max:
        out.append(("jwst", "jwst", False))
    return out


def measure_sizes(args, sizes, repeats, workdir):
    """Run every contender at every size; return one row per (size, contender)."""
    step_args = json.dumps(parse_step_args(args.step_arg))
    rows = []
    for n in sizes:
        asn = simulate(n, workdir, args.simulate_workers)
        contenders = _contenders(n, args)
        runs = {label: [] for label, _, _ in contenders}
        for k in range(repeats):
            # Alternate: the order rotates by one contender each round.
            order = contenders[k % len(contenders) :] + contenders[: k % len(contenders)]
            for label, runner, in_memory in order:
                if runner == "jwst" and len(runs[label]) >= args.jwst_repeats:
                    continue
                timeout = args.jwst_timeout if runner == "jwst" else args.timeout
                result = _spawn(
                    ["step", runner, str(asn), str(in_memory), step_args],
                    cwd=asn.parent,
                    timeout=timeout,
                )
                runs[label].append(result)
                print(f"  N={n:<6d} {label:15s} {_describe(result)}", flush=True)
        for label, runner, in_memory in contenders:
            rows.append(_row(n, label, runner, in_memory, runs[label]))
    return rows


def _describe(result):
    if result.get("timed_out"):
        return f"timed out after {result['seconds']:.0f} s"
    return (
        f"{result['seconds']:8.1f} s  peak {result['peak_mb']:6.0f} MB "
        f"(before the call {result['base_mb']:.0f} MB)"
    )


def _row(n, label, runner, in_memory, runs):
    done = [r for r in runs if not r.get("timed_out")]
    timed_out = len(runs) - len(done)
    nan = float("nan")
    seconds = statistics.median(r["seconds"] for r in done) if done else nan
    return {
        "n_images": n,
        "contender": label,
        "runner": runner,
        "in_memory": in_memory,
        "runs": len(done),
        "timed_out": timed_out,
        # a lower bound when every run timed out
        "timeout_s": max((r["seconds"] for r in runs if r.get("timed_out")), default=nan),
        "seconds": seconds,
        "ms_per_image": 1000.0 * seconds / n,
        # of the step's own process (its footprint-intersecting workers not counted)
        "cpu_s": statistics.median(r.get("cpu_s", nan) for r in done) if done else nan,
        "peak_mb": statistics.median(r["peak_mb"] for r in done) if done else nan,
        "base_mb": statistics.median(r["base_mb"] for r in done) if done else nan,
    }


def growth(rows):
    """Growth exponent of each contender between its smallest and largest N.

    Parameters
    ----------
    rows : list of dict
        Rows of `measure_sizes`.

    Returns
    -------
    dict
        ``{contender: (exponent, n_small, n_large)}`` for contenders that
        completed at two sizes or more.
    """
    out = {}
    for label in dict.fromkeys(r["contender"] for r in rows):
        pts = sorted(
            (r["n_images"], r["seconds"])
            for r in rows
            if r["contender"] == label and r["seconds"] == r["seconds"]
        )
        if len(pts) >= 2 and pts[0][0] != pts[-1][0]:
            (n0, t0), (n1, t1) = pts[0], pts[-1]
            out[label] = (math.log(t1 / t0) / math.log(n1 / n0), n0, n1)
    return out


def fit_power_law(points):
    """Least-squares fit of ``y = a x^p`` in log-log space.

    Parameters
    ----------
    points : list of (float, float)
        ``(x, y)`` pairs, positive.

    Returns
    -------
    a, p : float
    """
    xs = [math.log(x) for x, _ in points]
    ys = [math.log(y) for _, y in points]
    mx = sum(xs) / len(xs)
    my = sum(ys) / len(ys)
    p = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    return math.exp(my - p * mx), p


def measure_solve(groups, timeout):
    """Time stcal's dense solve at each group count; fit and extrapolate.

    Returns
    -------
    dict
        ``points`` (measured), ``time_fit`` and ``memory_fit`` (``a``,
        ``p``) and ``extrapolated`` (group count, seconds, MB).
    """
    points = []
    for g in groups:
        # One BLAS thread: on a shared machine, threads waiting for each
        # other would dominate; the CPU time is then the cost of the solve.
        result = _spawn(["solve", str(g)], cwd=None, timeout=timeout, threads=1)
        if result.get("timed_out"):
            print(f"  solve {g} groups: timed out after {timeout} s", flush=True)
            break
        points.append(result)
        print(
            f"  solve {result['groups']:5d} groups: {result['seconds']:8.2f} s "
            f"({result['cpu_s']:.2f} s CPU), "
            f"peak {result['peak_mb']:.0f} MB (before {result['base_mb']:.0f} MB)",
            flush=True,
        )
    out = {"points": points, "time_fit": None, "memory_fit": None, "extrapolated": []}
    if len(points) < 2:
        return out
    # The largest three points: the small ones are dominated by overheads.
    big = points[-3:]
    a, p = fit_power_law([(r["groups"], r["cpu_s"]) for r in big])
    # The solve's own memory: peak less what the process held before it.
    mem = [(r["groups"], max(r["peak_mb"] - r["base_mb"], 1e-3)) for r in big]
    am, pm = fit_power_law(mem)
    out["time_fit"] = {"a": a, "p": p}
    out["memory_fit"] = {"a": am, "p": pm}
    out["extrapolated"] = [
        {"groups": g, "seconds": a * g**p, "memory_mb": am * g**pm} for g in EXTRAPOLATE
    ]
    return out


# -- output ------------------------------------------------------------------------


def _fmt(value, digits=1):
    return "n/a" if value != value else f"{value:.{digits}f}"


def _time_cell(r):
    if r["runs"] == 0 and r["timed_out"]:
        return f"> {r['timeout_s']:.0f} (timed out)"
    return _fmt(r["seconds"])


def table(rows, solve, machine, command):
    """The results as Markdown: runs, growth, targets and jwst's solve."""
    lines = [
        f"Machine: {machine}. Command: `{command}`. Sparse mosaics of 128x128 images "
        "(bench_skymatch's sparse layout), skymethod='match'. Each run in a fresh process, "
        "timed around `Step.call` (CPU: of the step's own process, not its workers); "
        "peak = ru_maxrss of the process, before = its resident "
        "memory before the call (imports); contenders alternate; times are medians.",
    ]
    if rows:
        lines += _steps_table(rows)
    if solve and solve["points"]:
        lines += [
            "",
            "jwst's solve alone (`stcal.skymatch.skymatch._find_optimum_sky_deltas`: dense "
            "matrix rank and pseudo-inverse of the (pairs x groups) matrix), on a square grid "
            "of groups with 4-neighbour links, each in a fresh process:",
            "",
            "| groups | wall (s) | CPU (s) | solve memory (MB) | kind |",
            "| ---: | ---: | ---: | ---: | --- |",
        ]
        for r in solve["points"]:
            lines.append(
                f"| {r['groups']} | {r['seconds']:.2f} | {r['cpu_s']:.2f} "
                f"| {r['peak_mb'] - r['base_mb']:.0f} | measured |"
            )
        for r in solve["extrapolated"]:
            lines.append(
                f"| {r['groups']} | | {r['seconds']:.0f} | {r['memory_mb']:.0f} | extrapolated |"
            )
        if solve["time_fit"]:
            tf, mf = solve["time_fit"], solve["memory_fit"]
            lines += [
                "",
                "Fits (least squares in log-log over the three largest measured points, "
                "one BLAS thread, CPU time): "
                f"t = {tf['a']:.3g} s x N^{tf['p']:.2f}; "
                f"memory = {mf['a']:.3g} MB x N^{mf['p']:.2f} (N = groups).",
            ]
    return "\n".join(lines) + "\n"


def _steps_table(rows):
    """The step runs, their growth and issue 10's targets, as Markdown lines."""
    lines = [
        "",
        "| images | contender | in_memory | runs | time (s) | ms per image | CPU (s) "
        "| peak (MB) | before (MB) |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['n_images']} | {r['contender']} | {r['in_memory']} | {r['runs']} "
            f"| {_time_cell(r)} | {_fmt(r['ms_per_image'])} | {_fmt(r['cpu_s'])} "
            f"| {_fmt(r['peak_mb'], 0)} "
            f"| {_fmt(r['base_mb'], 0)} |"
        )
    grow = growth(rows)
    if grow:
        lines += [
            "",
            "Growth of wall time (slope of log t against log N, smallest to largest N): "
            + "; ".join(f"{k} N^{p:.2f} (N = {n0} to {n1})" for k, (p, n0, n1) in grow.items())
            + ".",
        ]
    lines += ["", *_targets(rows, grow)]
    return lines


def _targets(rows, grow):
    """Issue 10's targets for ours with in_memory=False, checked where measured."""
    out = []
    if "ours" in grow:
        p, n0, n1 = grow["ours"]
        verdict = "met" if p <= TARGET_EXPONENT else "not met"
        out.append(
            f"Target time <= N^{TARGET_EXPONENT} (ours, in_memory=False): N^{p:.2f} "
            f"from {n0} to {n1}, {verdict}."
        )
    big = [r for r in rows if r["contender"] == "ours" and r["n_images"] >= TARGET_N and r["runs"]]
    if big:
        r = big[0]
        verdict = "met" if r["peak_mb"] <= TARGET_PEAK_MB else "not met"
        out.append(
            f"Target peak <= {TARGET_PEAK_MB:.0f} MB at {r['n_images']} images "
            f"(ours, in_memory=False): {r['peak_mb']:.0f} MB, {verdict}."
        )
    else:
        out.append(f"Target peak <= {TARGET_PEAK_MB:.0f} MB at {TARGET_N} images: not measured.")
    return out


def _write(path, text):
    """Write ``text`` to ``path`` through a temporary file (never half-written)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv=None):
    """Run the benchmark and write ``scale.md`` and ``scale.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", default=str(HERE / "data"), help="mosaic cache")
    parser.add_argument("--outdir", default=str(HERE / "results"))
    parser.add_argument("--in-memory", action="store_true", help="also run ours in_memory=True")
    parser.add_argument("--jwst-max", type=int, default=1000, help="largest N to run jwst on")
    parser.add_argument("--jwst-repeats", type=int, default=1, help="rounds with jwst")
    parser.add_argument("--jwst-timeout", type=float, default=3600.0, help="seconds per jwst run")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds per run of ours")
    parser.add_argument(
        "--step-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="parameter of our step (repeatable), e.g. maximum_cores=2",
    )
    parser.add_argument(
        "--solve-groups",
        nargs="*",
        type=int,
        default=list(SOLVE_GROUPS),
        help="group counts at which to time jwst's dense solve (none: skip it)",
    )
    parser.add_argument("--solve-timeout", type=float, default=1800.0)
    parser.add_argument("--no-steps", action="store_true", help="only jwst's solve")
    parser.add_argument(
        "--memory-profile",
        type=int,
        metavar="N",
        help="instead of timing: what our step keeps per image after its first pass, at N "
        "images (tracemalloc; writes scale.memory.md/json)",
    )
    parser.add_argument("--frames", type=int, default=60, help="tracemalloc stack depth")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument(
        "--simulate-workers",
        type=int,
        default=1,
        help="processes writing a mosaic that is not cached yet (same files for any number)",
    )
    parser.add_argument(
        "--simulate-only", action="store_true", help="only write (or find) the mosaics"
    )
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, *rest = args.worker
        if kind == "step":
            runner, asn, in_memory, step_args = rest
            _run_step(runner, asn, in_memory == "True", json.loads(step_args))
        elif kind == "memory":
            asn, step_args, nframes = rest
            _run_memory(asn, json.loads(step_args), int(nframes))
        else:
            _run_solve(int(rest[0]))
        return 0

    parse_step_args(args.step_arg)  # a malformed item fails before any work
    workdir = Path(args.workdir)
    outdir = Path(args.outdir)
    workdir.mkdir(parents=True, exist_ok=True)
    outdir.mkdir(parents=True, exist_ok=True)
    sizes = SMOKE_SIZES if args.smoke else args.sizes
    repeats = 1 if args.smoke else args.repeats
    groups = SMOKE_SOLVE_GROUPS if args.smoke else args.solve_groups
    if args.smoke:
        args.jwst_max = min(args.jwst_max, SMOKE_SIZES[0])
    command = "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
    command = command.strip()
    if args.simulate_only:
        for n in sizes:
            started = time.perf_counter()
            asn = simulate(n, workdir, args.simulate_workers)
            print(f"{asn} ({time.perf_counter() - started:.0f} s)", flush=True)
        return 0
    if args.memory_profile:
        n = min(SMOKE_SIZES) if args.smoke else args.memory_profile
        asn = simulate(n, workdir, args.simulate_workers)
        step_args = json.dumps(parse_step_args(args.step_arg))
        result = _spawn(
            ["memory", str(asn), step_args, str(args.frames)], cwd=asn.parent, timeout=args.timeout
        )
        if result.get("timed_out"):
            raise RuntimeError(f"the memory profile timed out after {args.timeout} s")
        _write(outdir / "scale.memory.json", json.dumps(result, indent=1))
        text = memory_table(result, command)
        _write(outdir / "scale.memory.md", text)
        print(text)
        return 0
    rows = [] if args.no_steps else measure_sizes(args, sizes, repeats, workdir)
    solve = measure_solve(groups, args.solve_timeout) if groups else None

    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"jwst {importlib.metadata.version('jwst')}"
    )
    payload = {
        "machine": machine,
        "command": command,
        "step_args": parse_step_args(args.step_arg),
        "rows": rows,
        "growth": {
            k: {"exponent": p, "n_from": n0, "n_to": n1} for k, (p, n0, n1) in growth(rows).items()
        },
        "solve": solve,
    }
    _write(outdir / "scale.json", json.dumps(payload, indent=1))
    text = table(rows, solve, machine, command)
    _write(outdir / "scale.md", text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    # A terminated driver (e.g. by `timeout`) stops its worker too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
