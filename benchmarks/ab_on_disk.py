"""Two checkouts of the step on one association, ``in_memory=False``, alternating.

Each run is a fresh process that imports ``skymatch_step`` from the given
``src`` folder (``PYTHONPATH``) and calls ``SkymatchStep.call(asn,
skymethod='match', in_memory=False, maximum_cores=...)``; its wall time,
CPU time and peak resident memory are recorded. The checkouts alternate
within each round, so that a shared machine's load falls on both alike;
the medians and the ratio of the medians are printed.

Example (the checkout before a change as a git worktree)::

    git worktree add /tmp/before <commit>
    python benchmarks/ab_on_disk.py /tmp/bdata/nircam64/nircam64_asn.json \\
        --src before=/tmp/before/src --src after=src --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

_WORKER = """
import json, resource, sys, time
from skymatch_step import SkymatchStep
import skymatch_step
t0, c0 = time.perf_counter(), time.process_time()
result = SkymatchStep.call(sys.argv[1], skymethod="match", in_memory=False,
                           maximum_cores=sys.argv[2])
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
del result
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print(json.dumps({"seconds": seconds, "cpu_s": cpu, "peak_mb": peak,
                  "module": skymatch_step.__file__}))
"""


def run_once(asn, src, cores):
    """One run of the step from ``src`` in a fresh process; its measurements."""
    env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()))
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER, str(asn), str(cores)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("asn", help="association file")
    parser.add_argument(
        "--src",
        action="append",
        required=True,
        metavar="LABEL=DIR",
        help="a checkout's src folder, labelled; give two or more",
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds")
    parser.add_argument("--cores", default="2", help="maximum_cores of the step")
    args = parser.parse_args(argv)
    contenders = [s.split("=", 1) for s in args.src]
    if any(len(c) != 2 for c in contenders) or len(contenders) < 2:
        parser.error("give at least two --src LABEL=DIR")
    runs = {label: [] for label, _ in contenders}
    for round_ in range(args.repeats):
        order = contenders if round_ % 2 == 0 else contenders[::-1]
        for label, src in order:
            row = run_once(args.asn, src, args.cores)
            runs[label].append(row)
            print(
                f"round {round_ + 1} {label}: {row['seconds']:.1f} s, CPU {row['cpu_s']:.1f} s, "
                f"peak {row['peak_mb']:.0f} MB ({row['module']})",
                flush=True,
            )
    first = contenders[0][0]
    base = statistics.median(r["seconds"] for r in runs[first])
    base_cpu = statistics.median(r["cpu_s"] for r in runs[first])
    print(f"\nmedians over {args.repeats} round(s); ratios: {first} / label")
    for label, rows in runs.items():
        wall = statistics.median(r["seconds"] for r in rows)
        cpu = statistics.median(r["cpu_s"] for r in rows)
        peak = max(r["peak_mb"] for r in rows)
        print(
            f"{label:>10}: {wall:8.1f} s  CPU {cpu:8.1f} s  peak {peak:6.0f} MB  "
            f"wall ratio {base / wall:5.2f}  CPU ratio {base_cpu / cpu:5.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
