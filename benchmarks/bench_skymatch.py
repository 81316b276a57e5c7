"""Benchmark SkymatchStep against jwst's SkyMatchStep on simulated mosaics.

Each run happens in a fresh subprocess (so peak memory is per run), timed
around ``Step.call`` only. For every case the script alternates jwst, ours
and two references for ``--repeats`` rounds: the *floor* (opening every
model through ModelLibrary once and taking one median per image, the least
any ModelLibrary-based step pays) and *open* (the opening alone, no
statistic, through the library class our step uses). It reports medians,
the ratio jwst/ours and jwst/open: the latter is the speed-up over jwst of
a step that did nothing but open the models, the most any step which opens
every model through the library can reach on the machine.

Examples
--------
Full NIRCam-scale run (several GB of simulated files, tens of minutes)::

    python benchmarks/bench_skymatch.py --cases nircam16 grouped nircam64 sparse

Smoke test (seconds; CI runs this, never as a timing assertion)::

    python benchmarks/bench_skymatch.py --smoke

Models already loaded (as in the Image3 pipeline, where tweakreg has read
them before skymatch runs): each run builds a ``ModelLibrary(on_disk=False)``
of the association, borrows every model and reads its arrays, then times
only ``step.run(library)``; jwst and ours alternate (no floor or open
reference: there is nothing left to open). Results go to ``loaded.*``::

    python benchmarks/bench_skymatch.py --loaded --cases nircam16 nircam64
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name: (n_exposures, detectors per exposure, image size, methods, overlap)
CASES = {
    "nircam16": (16, 1, 2048, ("match", "global+match"), 0.15),
    "grouped": (4, 4, 2048, ("match", "global+match"), 0.15),
    "nircam64": (64, 1, 2048, ("match", "global+match"), 0.15),
}
SPARSE_SIZES = (100, 300, 1000)
SMOKE = {"smoke": (4, 1, 128, ("match",), 0.15)}
# What each round runs: jwst's step, ours, and the two references.
RUNNERS = ("jwst", "ours", "floor", "open")
# Arrays read before the timed run with --loaded (those tweakreg and
# skymatch use; the others stay unread, as in the pipeline).
LOADED_ARRAYS = ("data", "dq", "err")


def _load_library(asn):
    """An in-memory library of ``asn`` with every model's arrays read."""
    from jwst.datamodels import ModelLibrary

    library = ModelLibrary(asn, on_disk=False)
    with library:
        for index in range(len(library)):
            model = library.borrow(index)
            for name in LOADED_ARRAYS:
                if model.hasattr(name):
                    getattr(model, name)
            library.shelve(model, index, modify=False)
    return library


def _run_one(which, asn, method, in_memory, cores):
    """Body of a worker subprocess: time one step call, report peak memory.

    ``in_memory == "loaded"``: the models are loaded first (see
    `_load_library`) and only ``step.run(library)`` is timed.
    """
    import logging
    import resource

    os.environ["STPIPE_DISABLE_CRDS_STEPPARS"] = "true"  # jwst's step asks CRDS otherwise
    logging.disable(logging.WARNING)
    import numpy as np
    from jwst.datamodels import ModelLibrary

    if which == "jwst":
        from jwst.skymatch import SkyMatchStep as Step

        kwargs = {}
    elif which == "ours":
        from skymatch_step import SkymatchStep as Step

        kwargs = {"maximum_cores": cores}
        # --compare of the parent process (inherited through the environment)
        kwargs["compare"] = os.environ.get("SKYMATCH_BENCH_COMPARE", "statistics")
    base = None
    if in_memory == "loaded":
        library = _load_library(asn)
        step = Step(skymethod=method, **kwargs)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        start = time.perf_counter()
        step.run(library)
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        print(json.dumps({"seconds": seconds, "peak_mb": peak, "loaded_mb": base}))
        return
    in_memory = in_memory == "True"
    start = time.perf_counter()
    if which in ("floor", "open"):
        library_class = ModelLibrary
        if which == "open":
            # The library class our step opens associations with (it caches
            # ``asn``, so it is faster than ModelLibrary for large N).
            from skymatch_step._library import StepLibrary as library_class
        library = library_class(asn, on_disk=not in_memory)
        with library:
            for index in range(len(library)):
                model = library.borrow(index)
                if which == "floor":
                    np.median(model.data)
                library.shelve(model, index, modify=False)
    else:
        Step.call(asn, skymethod=method, in_memory=in_memory, **kwargs)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"seconds": seconds, "peak_mb": peak}))


def _spawn(which, asn, method, in_memory, cores):
    cmd = [sys.executable, __file__, "--worker", which, str(asn), method, str(in_memory), cores]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=Path(asn).parent)
    if out.returncode != 0:
        raise RuntimeError(f"{which} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _simulate(name, n_exp, ndet, size, overlap, workdir, columns=None, seed=1, workers=1):
    from skymatch_step.simulate import MosaicSpec, write_mosaic

    target = workdir / name
    asn = target / f"{name}_asn.json"
    if asn.exists():
        return asn
    spec = MosaicSpec(
        n_exposures=n_exp,
        detectors_per_exposure=ndet,
        shape=(size, size),
        overlap=overlap,
        columns=columns,
        n_stars=int(100 * size * size / 2048**2) + 20,
        seed=seed,
    )
    t0 = time.perf_counter()
    write_mosaic(spec, target, product_name=name, workers=workers)
    print(
        f"  simulated {name}: {n_exp * ndet} images in {time.perf_counter() - t0:.0f} s", flush=True
    )
    return asn


def _measure(asn, method, repeats, in_memory, cores, with_jwst=True, reference_rounds=None):
    """Alternate jwst, ours and the references; these in the first rounds only."""
    runs = {which: [] for which in RUNNERS}
    for k in range(repeats):
        refs = reference_rounds is None or k < reference_rounds
        order = (["jwst"] if with_jwst and refs else []) + ["ours"]
        order += ["floor", "open"] if refs and in_memory != "loaded" else []
        for which in order:
            runs[which].append(_spawn(which, asn, method, in_memory, cores))
    return runs


def _median(runs, key):
    return statistics.median(r[key] for r in runs) if runs else float("nan")


def main(argv=None):
    """Run the benchmark and write the table, JSON and plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=["nircam16", "grouped", "nircam64", "sparse"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=str(HERE / "data"))
    parser.add_argument("--outdir", default=str(HERE / "results"))
    parser.add_argument("--cores", default="all", help="maximum_cores for our step")
    parser.add_argument(
        "--sparse-jwst-max",
        type=int,
        default=300,
        help="largest sparse N to run jwst on (its geometry is all-pairs)",
    )
    parser.add_argument(
        "--sparse-reference-repeats",
        type=int,
        default=1,
        help="rounds of the sparse series in which jwst and the floor also run",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument(
        "--compare",
        default="statistics",
        choices=("statistics", "differences"),
        help="compare option of our step (jwst always compares statistics)",
    )
    parser.add_argument(
        "--loaded",
        action="store_true",
        help="time step.run on a library whose models are already loaded (results: loaded.*)",
    )
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.worker:
        os.environ["SKYMATCH_BENCH_COMPARE"] = args.compare
    if args.worker:
        which, asn, method, in_memory, cores = args.worker
        _run_one(which, asn, method, in_memory, cores)
        return 0

    workdir = Path(args.workdir)
    outdir = Path(args.outdir)
    workdir.mkdir(parents=True, exist_ok=True)
    outdir.mkdir(parents=True, exist_ok=True)
    cases = SMOKE if args.smoke else {k: CASES[k] for k in args.cases if k in CASES}
    repeats = 1 if args.smoke else args.repeats
    rows = []
    mode = "loaded" if args.loaded else True
    for name, (n_exp, ndet, size, methods, overlap) in cases.items():
        asn = _simulate(name, n_exp, ndet, size, overlap, workdir)
        for method in methods:
            runs = _measure(asn, method, repeats, mode, args.cores)
            rows.append(_row(name, n_exp * ndet, size, method, mode, runs))
            print(_format(rows[-1]), flush=True)
        if args.loaded:
            continue
        if name in ("nircam16", "nircam64") or args.smoke:
            runs = _measure(asn, "match", repeats, False, args.cores)
            rows.append(_row(name, n_exp * ndet, size, "match", False, runs))
            print(_format(rows[-1]), flush=True)
    if "sparse" in args.cases and not (args.smoke or args.loaded):
        for n in SPARSE_SIZES:
            name = f"sparse{n}"
            asn = _simulate(name, n, 1, 256, 0.05, workdir, columns=int(n**0.5 * 2))
            runs = _measure(
                asn,
                "match",
                repeats,
                True,
                args.cores,
                with_jwst=n <= args.sparse_jwst_max,
                reference_rounds=args.sparse_reference_repeats,
            )
            rows.append(_row(name, n, 256, "match", True, runs))
            print(_format(rows[-1]), flush=True)

    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"jwst {importlib.metadata.version('jwst')}"
    )
    stem = "loaded" if args.loaded else "latest"
    data = json.dumps({"machine": machine, "rows": rows}, indent=1)
    _write(outdir / f"{stem}.json", data)
    table = _table(rows, machine, argv)
    _write(outdir / f"{stem}.md", table)
    _write(outdir / f"{stem}.rst", _table(rows, machine, argv, rst=True))
    print("\n" + table)
    _plot(rows, outdir / f"{stem}.png")
    return 0


def _write(path, text):
    """Write ``text`` to ``path`` through a temporary file (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _row(name, n, size, method, in_memory, runs):
    jwst_t = _median(runs["jwst"], "seconds")
    ours_t = _median(runs["ours"], "seconds")
    floor_t = _median(runs["floor"], "seconds")
    open_t = _median(runs["open"], "seconds")
    # Ratios of the runs made side by side (same round), then their median.
    paired = _paired_ratios(runs["jwst"], runs["ours"])
    ceiling = _paired_ratios(runs["jwst"], runs["open"])
    return {
        "case": name,
        "n_images": n,
        "size": size,
        "method": method,
        "in_memory": in_memory,
        "jwst_s": jwst_t,
        "ours_s": ours_t,
        "floor_s": floor_t,
        "open_s": open_t,
        "speedup": statistics.median(paired) if paired else float("nan"),
        "ours_over_floor": ours_t / floor_t,
        "jwst_over_open": statistics.median(ceiling) if ceiling else float("nan"),
        "jwst_peak_mb": _median(runs["jwst"], "peak_mb"),
        "ours_peak_mb": _median(runs["ours"], "peak_mb"),
        # With --loaded: the memory of the loaded library, before the step ran.
        "jwst_loaded_mb": _median([r for r in runs["jwst"] if "loaded_mb" in r], "loaded_mb"),
        "ours_loaded_mb": _median([r for r in runs["ours"] if "loaded_mb" in r], "loaded_mb"),
        "repeats": len(runs["ours"]),
        # rounds with the references (with --loaded, there are none: those with jwst)
        "reference_repeats": len(runs["jwst"] if in_memory == "loaded" else runs["floor"]),
    }


def _paired_ratios(numerators, denominators):
    return [a["seconds"] / b["seconds"] for a, b in zip(numerators, denominators, strict=False)]


def _format(r):
    return (
        f"{r['case']:>10s} N={r['n_images']:<5d} {r['method']:13s} in_memory={r['in_memory']!s:5s} "
        f"jwst={r['jwst_s']:7.2f}s ours={r['ours_s']:7.2f}s floor={r['floor_s']:7.2f}s "
        f"open={r['open_s']:7.2f}s speedup={r['speedup']:5.2f} "
        f"ours/floor={r['ours_over_floor']:4.2f} jwst/open={r['jwst_over_open']:5.2f} "
        f"peak jwst={r['jwst_peak_mb']:.0f}MB ours={r['ours_peak_mb']:.0f}MB"
    )


def _fmt(value, digits=2):
    """A table cell: ``n/a`` for a runner that was not run (NaN)."""
    return "n/a" if value != value else f"{value:.{digits}f}"


_HEADER = (
    "case",
    "images",
    "size",
    "method",
    "in_memory",
    "runs",
    "jwst (s)",
    "ours (s)",
    "floor (s)",
    "open (s)",
    "jwst/ours",
    "ours/floor",
    "jwst/open",
    "peak jwst (MB)",
    "peak ours (MB)",
)


def _cells(r):
    return (
        r["case"],
        str(r["n_images"]),
        str(r["size"]),
        r["method"],
        str(r["in_memory"]),
        f"{r['repeats']}/{r['reference_repeats']}",
        _fmt(r["jwst_s"]),
        _fmt(r["ours_s"]),
        _fmt(r["floor_s"]),
        _fmt(r["open_s"]),
        _fmt(r["speedup"]),
        _fmt(r["ours_over_floor"]),
        _fmt(r["jwst_over_open"]),
        _fmt(r["jwst_peak_mb"], 0),
        _fmt(r["ours_peak_mb"], 0),
    )


def _table(rows, machine, argv, rst=False):
    """The results as a Markdown table, or a reST list-table for the docs."""
    cmd = ("python benchmarks/bench_skymatch.py " + " ".join(argv or sys.argv[1:])).strip()
    quote = "``" if rst else "`"
    if any(r["in_memory"] == "loaded" for r in rows):
        loaded = [r["ours_loaded_mb"] for r in rows if r["ours_loaded_mb"] == r["ours_loaded_mb"]]
        lines = [
            f"Machine: {machine}. Command: {quote}{cmd}{quote}. Each run in a fresh process "
            f"loads a {quote}ModelLibrary(on_disk=False){quote} of the association and reads "
            "every model's arrays (as tweakreg leaves them in the Image3 pipeline), then is "
            f"timed around {quote}step.run(library){quote} only; jwst and ours alternate. "
            "Times are medians; jwst/ours is the median of the ratios of runs made side by "
            "side; peak memory includes the loaded library "
            f"({', '.join(f'{v:.0f}' for v in loaded)} MB before the step ran).",
            "",
        ]
    else:
        lines = [
            f"Machine: {machine}. Command: {quote}{cmd}{quote}. Each run in a fresh process, "
            f"timed around {quote}Step.call{quote}; jwst, ours, the floor (open every model "
            "through ModelLibrary + one median per image) and open (the opening alone, through "
            "our step's library class) alternate. Times are medians; jwst/ours and jwst/open "
            "are medians of the ratios of runs made side by side; jwst/open is the speed-up of "
            "a step that would only open the models; runs = rounds of ours / rounds with jwst "
            "and the references.",
            "",
        ]
    if rst:
        lines += [".. list-table::", "   :header-rows: 1", ""]
        for cells in (_HEADER, *(_cells(r) for r in rows)):
            lines.append(f"   * - {cells[0]}")
            lines += [f"     - {c}" for c in cells[1:]]
    else:
        text = ("case", "method", "in_memory", "runs")
        lines.append("| " + " | ".join(_HEADER) + " |")
        lines.append("| " + " | ".join("---" if h in text else "---:" for h in _HEADER) + " |")
        lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    growth = _growth(rows)
    if growth:
        lines += [
            "",
            "Growth of wall time with N on the sparse series (least-squares slope of "
            "log t against log N): " + growth + ".",
        ]
    return "\n".join(lines) + "\n"


def _growth(rows):
    """Exponent p of t ~ N^p over the sparse rows, for each runner."""
    import math

    sparse = sorted(
        (r for r in rows if r["case"].startswith("sparse")), key=lambda r: r["n_images"]
    )
    parts = []
    for label in RUNNERS:
        key = f"{label}_s"
        pts = [(math.log(r["n_images"]), math.log(r[key])) for r in sparse if r[key] == r[key]]
        if len(pts) < 2:
            continue
        mx = sum(x for x, _ in pts) / len(pts)
        my = sum(y for _, y in pts) / len(pts)
        slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
        ns = ", ".join(str(r["n_images"]) for r in sparse if r[key] == r[key])
        parts.append(f"{label} N^{slope:.2f} (N = {ns})")
    return "; ".join(parts)


def _plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = {"jwst": "tab:red", "ours": "tab:blue", "floor": "tab:gray", "open": "0.7"}
    labels = {"ours": "skymatch_step", "open": "open only"}
    for size, marker in ((2048, "o"), (256, "s"), (128, "^")):
        # Ungrouped images only, so that each series has one point per N.
        sel = [
            r
            for r in rows
            if r["size"] == size
            and r["in_memory"]
            and r["method"] == "match"
            and r["case"] != "grouped"
        ]
        if not sel:
            continue
        sel.sort(key=lambda r: r["n_images"])
        for which in RUNNERS:
            key = f"{which}_s"
            pts = [(r["n_images"], r[key]) for r in sel if r[key] == r[key]]
            ax.plot(
                [n for n, _ in pts],
                [t for _, t in pts],
                marker=marker,
                color=colours[which],
                label=f"{labels.get(which, which)} ({size}x{size})",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of images")
    ax.set_ylabel("wall time (s), skymethod='match'")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    sys.exit(main())
