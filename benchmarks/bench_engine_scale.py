"""The engine's own cost at survey scale: time and memory of ``match()`` for N images.

The images are never stored: each is described by a *source* that builds
its WCS and 128x128 pixels on demand (as the step's on-disk inputs re-open
their files), so what the engine keeps per image is all that grows with N.
The mosaic is a grid of rotated images with 5% overlaps on each side (4
neighbours each), like a wide survey field. Each N runs in a fresh
subprocess; the script reports the wall time of each pass (from the
engine's progress lines), the peak resident memory, the time per image and
the growth exponent of the total time between the smallest and largest N.
This isolates the engine (pair search, intersections, statistics, solve)
from the cost of opening and saving data models, which
``benchmarks/bench_scale.py`` measures with the step.

Examples
--------
::

    python benchmarks/bench_engine_scale.py --sizes 1000 3000 10000

Smoke test::

    python benchmarks/bench_engine_scale.py --sizes 20 50
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZE = 128
PASSES = {
    "to_pairs": re.compile(r"Footprints of \d+ image\(s\).* in ([\d.]+) s"),
    "measure": re.compile(r"Measured \d+ images in ([\d.]+) s"),
    "fit": re.compile(r"Fitted \d+ group offset\(s\) to \d+ pair\(s\) in ([\d.]+) s"),
}


def _images(n, rng_seed=1):
    """Engine inputs of an n-image grid; WCS and pixels built on demand."""
    import numpy as np

    from skymatch_step import ImageInput
    from skymatch_step.simulate import DEFAULT_PIXEL_SCALE, make_gwcs

    cols = max(1, round(math.sqrt(n)))
    step_deg = 0.95 * SIZE * DEFAULT_PIXEL_SCALE / 3600.0
    ra0, dec0 = 150.1, 2.2
    rng = np.random.default_rng(rng_seed)
    levels = rng.uniform(0.1, 0.5, n)

    def wcs_of(k):
        row, col = divmod(k, cols)
        dec = dec0 + row * step_deg
        ra = ra0 + col * step_deg / math.cos(math.radians(dec))
        return make_gwcs((SIZE, SIZE), ra, dec, rotation=0.3)

    def source_of(k):
        @contextlib.contextmanager
        def source():
            wcs = wcs_of(k)
            data = np.random.default_rng(k).normal(levels[k], 0.01, (SIZE, SIZE))
            data = data.astype(np.float32)
            yield ImageInput.from_arrays(
                data, None, _forward(wcs), _inverse(wcs), id=f"image{k:05d}"
            )

        return source

    for k in range(n):
        wcs = wcs_of(k)
        yield ImageInput(
            id=f"image{k:05d}",
            shape=(SIZE, SIZE),
            forward=_forward(wcs),
            inverse=None,
            pixels=None,
            source=source_of(k),
        )


def _forward(wcs):
    tr = wcs.forward_transform
    return lambda x, y: tr(x, y, with_bounding_box=False)


def _inverse(wcs):
    tr = wcs.backward_transform
    return lambda ra, dec: tr(ra, dec, with_bounding_box=False)


def _run_one(n, workers):
    import io
    import logging
    import resource

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("skymatch_step")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    from bench_dask import pass_times

    from skymatch_step import match

    t0 = time.perf_counter()
    result = match(_images(n), skymethod="match", workers=workers)
    elapsed = time.perf_counter() - t0
    passes = pass_times(stream.getvalue(), PASSES)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "n": n,
                "seconds": elapsed,
                "passes": passes,
                "peak_mb": peak,
                "pairs": len(result.pairs),
                "valid": int(result.valid.sum()),
            }
        )
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 3000, 10000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--outdir", default=None, help="write engine_scale.md/json here")
    parser.add_argument("--worker", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _run_one(*args.worker)
        return 0
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--worker", str(n), str(args.workers)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"N={n}: {row['seconds']:.1f} s, {row['passes']}, {row['pairs']} pairs, "
            f"peak {row['peak_mb']:.0f} MB",
            flush=True,
        )
    lines = [
        "| images | pairs | total s | to pairs s | measure s | fit s | ms per image | peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r["passes"]
        lines.append(
            f"| {r['n']} | {r['pairs']} | {r['seconds']:.1f} | {p['to_pairs']:.1f} "
            f"| {p['measure']:.1f} | {p['fit']:.2f} | {1000 * r['seconds'] / r['n']:.1f} "
            f"| {r['peak_mb']:.0f} |"
        )
    if len(rows) >= 2 and rows[0]["n"] != rows[-1]["n"]:
        growth = math.log(rows[-1]["seconds"] / rows[0]["seconds"]) / math.log(
            rows[-1]["n"] / rows[0]["n"]
        )
        lines.append("")
        lines.append(f"Time grows as N^{growth:.2f} from {rows[0]['n']} to {rows[-1]['n']} images.")
    table = "\n".join(lines)
    print(table)
    if args.outdir:
        out = Path(args.outdir)
        out.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/bench_engine_scale.py " + " ".join(argv or sys.argv[1:])
        machine = f"{platform.machine()}, {os.cpu_count()} cores"
        (out / "engine_scale.json").write_text(
            json.dumps({"command": command, "machine": machine, "rows": rows}, indent=1)
        )
        (out / "engine_scale.md").write_text(f"Command: `{command}` ({machine}).\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
