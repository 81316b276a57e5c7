"""Time the least-squares offset solve: dense pseudo-inverse vs sparse solver.

The equations come from square grid mosaics (each group overlaps its right
and lower neighbours), with random sky differences and weights. Every case
runs in a fresh subprocess, so that peak memory is per case: the script
reports the median time of ``--repeats`` solves, the peak of Python-tracked
allocations (``tracemalloc``, which includes numpy arrays but not
SuperLU's internal buffers) and the growth of the process's peak resident
memory over its state just before the first solve (``ru_maxrss``). The
growth exponent is the slope of log(time) against log(groups).

Examples
--------
Default table (old solver up to 1,024 groups; about a minute)::

    python benchmarks/bench_solver.py

Include the dense solver at 2,025 groups (about 2 minutes and 550 MB more)::

    python benchmarks/bench_solver.py --old-max 2025
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
import tracemalloc

import numpy as np

SIZES = (400, 1024, 2025, 10_000, 40_000)


def grid_pairs(ngroups, seed=0):
    """Equations of a square grid mosaic of ``ngroups`` groups."""
    side = math.isqrt(ngroups)
    if side * side != ngroups:
        raise ValueError(f"ngroups must be a square number, got {ngroups}")
    rng = np.random.default_rng(seed)
    idx = np.arange(ngroups).reshape(side, side)
    i = np.concatenate([idx[:, :-1].ravel(), idx[:-1, :].ravel()])
    j = np.concatenate([idx[:, 1:].ravel(), idx[1:, :].ravel()])
    sky = rng.uniform(0.0, 10.0, ngroups)
    s_i = sky[i] + rng.normal(0.0, 0.01, i.size)
    s_j = sky[j] + rng.normal(0.0, 0.01, i.size)
    w = rng.uniform(1.0e3, 1.0e5, i.size)  # pixel counts
    return list(zip(i.tolist(), j.tolist(), s_i.tolist(), s_j.tolist(), w.tolist(), strict=True))


def pinv_offsets(pairs, n):
    """The dense solver this package used before (pseudo-inverse)."""
    k = np.zeros((len(pairs), n))
    f = np.zeros(len(pairs))
    used = np.zeros(n, dtype=bool)
    for row, (i, j, s_i, s_j, w) in enumerate(pairs):
        k[row, i] = w
        k[row, j] = -w
        f[row] = w * (float(s_i) - float(s_j))
        used[i] = used[j] = True
    deltas = np.linalg.pinv(k, rcond=1.0e-12) @ f
    deltas[~used] = np.nan
    return deltas


def run_case(solver, ngroups, repeats):
    """Run one case in this process; return its measurements as a dict."""
    from skymatch_step.engine import solve_offsets

    func = pinv_offsets if solver == "old" else solve_offsets
    pairs = grid_pairs(ngroups)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    start = time.perf_counter()
    offsets = func(pairs, ngroups)
    first = time.perf_counter() - start
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    times = [first]
    for _ in range(repeats - 1):
        start = time.perf_counter()
        func(pairs, ngroups)
        times.append(time.perf_counter() - start)
    return {
        "solver": solver,
        "groups": ngroups,
        "pairs": len(pairs),
        "time": float(np.median(times)),
        "traced_mb": traced / 2**20,
        "rss_mb": rss / 1024,
        "offsets": offsets.tolist() if ngroups <= 2025 else None,
    }


def subprocess_case(solver, ngroups, repeats):
    cmd = [sys.executable, __file__, "--case", solver, str(ngroups), "--repeats", str(repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def exponent(rows):
    """Slope of log(time) against log(groups)."""
    if len(rows) < 2:
        return float("nan")
    x = np.log([r["groups"] for r in rows])
    y = np.log([r["time"] for r in rows])
    return float(np.polyfit(x, y, 1)[0])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--old-max", type=int, default=1024, help="largest size for pinv")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case", nargs=2, metavar=("SOLVER", "GROUPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        solver, ngroups = args.case
        print(json.dumps(run_case(solver, int(ngroups), args.repeats)))
        return

    rows = {"old": [], "new": []}
    print(
        f"{'solver':<7}{'groups':>8}{'pairs':>8}{'time [s]':>11}{'traced MB':>11}"
        f"{'RSS+ MB':>10}{'max |new-old|':>15}"
    )
    for ngroups in args.sizes:
        new = subprocess_case("new", ngroups, args.repeats)
        rows["new"].append(new)
        cases = [new]
        if ngroups <= args.old_max:
            old = subprocess_case("old", ngroups, 1)
            rows["old"].append(old)
            diff = np.max(np.abs(np.subtract(new["offsets"], old["offsets"])))
            old["diff"] = new["diff"] = diff
            cases.append(old)
        for r in cases:
            diff = f"{r['diff']:.2e}" if "diff" in r else "-"
            print(
                f"{r['solver']:<7}{r['groups']:>8}{r['pairs']:>8}{r['time']:>11.4f}"
                f"{r['traced_mb']:>11.1f}{r['rss_mb']:>10.1f}{diff:>15}",
                flush=True,
            )
    for solver, rs in rows.items():
        if rs:
            print(f"growth exponent of time, {solver}: {exponent(rs):.2f}")


if __name__ == "__main__":
    main()
