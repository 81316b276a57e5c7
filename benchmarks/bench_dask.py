"""Time the step in this process and on a local Dask cluster of 1 and 2 workers.

Each run happens in a fresh subprocess, timed around ``Step.call``; the
runners alternate in every round and the medians are reported. The time of
each pass comes from the step's own progress lines (reading the WCS and
footprints, intersections, measuring the pixels, writing the results into
the models). The levels of every run are compared: they must be identical.

Examples
--------
64 NIRCam-size images written by ``benchmarks/bench_skymatch.py`` and the
1,000-image sparse mosaic written by ``benchmarks/bench_scale.py``::

    python benchmarks/bench_dask.py --asn /tmp/bdata/nircam64/nircam64_asn.json \\
        /tmp/sdata/scale1000/scale1000_asn.json --repeats 2

Smoke test (a tiny simulated mosaic, one round)::

    python benchmarks/bench_dask.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: runner name: (dask_scheduler, maximum_cores)
RUNNERS = {"in-process": (None, "all"), "dask-1": ("local", "1"), "dask-2": ("local", "2")}

#: progress lines giving the duration of each pass (the step's INFO lines)
PASSES = {
    "wcs": re.compile(r"Read the WCS of \d+ models(?: on Dask)? in ([\d.]+) s"),
    "footprints": re.compile(r"Footprints of \d+ image\(s\).* in ([\d.]+) s"),
    "measure": re.compile(r"Measured \d+ images(?: on Dask)? in ([\d.]+) s"),
    "write": re.compile(r"Wrote the results into \d+ models in ([\d.]+) s"),
}


def pass_times(text, patterns):
    """Seconds of each pass, from the step's progress lines (None if absent)."""
    out = {}
    for name, pattern in patterns.items():
        found = pattern.search(text)
        out[name] = float(found.group(1)) if found else None
    return out


def _run_one(asn, runner, method, in_memory):
    """Body of a worker subprocess: one step call; prints a JSON line."""
    import io
    import logging
    import resource

    os.environ["STPIPE_DISABLE_CRDS_STEPPARS"] = "true"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("skymatch_step")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logging.getLogger("stpipe").setLevel(logging.WARNING)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    from skymatch_step import SkymatchStep

    scheduler, cores = RUNNERS[runner]
    t0 = time.perf_counter()
    library = SkymatchStep.call(
        asn,
        skymethod=method,
        in_memory=in_memory,
        dask_scheduler=scheduler,
        maximum_cores=cores,
    )
    elapsed = time.perf_counter() - t0
    levels = []
    with library:
        for k in range(len(library)):
            model = library.borrow(k)
            levels.append(model.meta.background.level)
            library.shelve(model, k, modify=False)
    passes = pass_times(stream.getvalue(), PASSES)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"seconds": elapsed, "passes": passes, "peak_mb": peak}
    print(json.dumps({**result, "levels": levels, "n": len(levels)}))


def _call(asn, runner, method, in_memory):
    cmd = [sys.executable, __file__, "--worker", str(asn), runner, method, str(in_memory)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{runner} on {asn} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--asn", nargs="+", default=[], help="association files to run on")
    parser.add_argument("--runners", nargs="+", default=list(RUNNERS), choices=list(RUNNERS))
    parser.add_argument("--method", default="match")
    parser.add_argument("--in-memory", action="store_true", help="in_memory=True (default False)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--outdir", default=str(HERE / "results"))
    parser.add_argument("--smoke", action="store_true", help="tiny simulated mosaic, one round")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        asn, runner, method, in_memory = args.worker
        _run_one(asn, runner, method, in_memory == "True")
        return 0

    tmp = None
    asns = [Path(a) for a in args.asn]
    if args.smoke:
        from skymatch_step.simulate import MosaicSpec, write_mosaic

        tmp = tempfile.TemporaryDirectory()
        spec = MosaicSpec(n_exposures=4, detectors_per_exposure=1, shape=(64, 64), seed=3)
        asns = [write_mosaic(spec, Path(tmp.name) / "smoke").asn_path]
        args.repeats = 1
    if not asns:
        parser.error("give --asn files or --smoke")

    rows = []
    try:
        for asn in asns:
            runs = {r: [] for r in args.runners}
            for k in range(args.repeats):
                # alternate the order between rounds
                order = args.runners if k % 2 == 0 else args.runners[::-1]
                for runner in order:
                    result = _call(asn, runner, args.method, args.in_memory)
                    runs[runner].append(result)
                    print(
                        f"{asn.name} {runner} round {k + 1}: {result['seconds']:.1f} s "
                        f"{result['passes']} peak {result['peak_mb']:.0f} MB",
                        flush=True,
                    )
            reference = runs[args.runners[0]][0]["levels"]
            identical = all(r["levels"] == reference for v in runs.values() for r in v)
            for runner, results in runs.items():
                rows.append(
                    {
                        "asn": asn.name,
                        "n": results[0]["n"],
                        "runner": runner,
                        "seconds": _median([r["seconds"] for r in results]),
                        **{p: _median([r["passes"][p] for r in results]) for p in PASSES},
                        "peak_mb": _median([r["peak_mb"] for r in results]),
                        "identical": identical,
                    }
                )
    finally:
        if tmp is not None:
            tmp.cleanup()

    header = (
        "| mosaic | images | runner | total s | WCS pass s | to pairs s (incl. WCS) | measure s "
        "| write s | peak MB (driver) | levels identical |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['asn']} | {r['n']} | {r['runner']} | {_fmt(r['seconds'])} | {_fmt(r['wcs'])} "
            f"| {_fmt(r['footprints'])} | {_fmt(r['measure'])} | {_fmt(r['write'])} "
            f"| {_fmt(r['peak_mb'], 0)} | {r['identical']} |"
        )
    table = "\n".join(lines)
    print(table)
    if not args.smoke:
        outdir = Path(args.outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        meta = {
            "command": "python benchmarks/bench_dask.py " + " ".join(argv or sys.argv[1:]),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "method": args.method,
            "in_memory": args.in_memory,
            "repeats": args.repeats,
        }
        (outdir / "dask.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        (outdir / "dask.md").write_text(
            f"Command: `{meta['command']}` ({meta['machine']}; medians of {args.repeats} "
            f"rounds, runners alternating; skymethod={args.method}, in_memory={args.in_memory})."
            f"\n\n{table}\n"
        )
    if not all(r["identical"] for r in rows):
        print("LEVELS DIFFER between runners", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
