"""Footprint intersections in the engine on three mosaic layouts: aligned, rotated, random.

Engine only (``match(images, skymethod='match')`` on `ImageInput.from_arrays`
inputs): N images of 32 x 32 pixels, each with its own gwcs
(`skymatch_step.simulate.make_gwcs`, no distortion), laid out as

``aligned``
    a square grid of tiles of the same orientation (rotation 0), 10%
    overlaps between neighbours: the edges of neighbouring tiles are nearly
    collinear and their corners nearly touch, the degenerate configurations
    of a regular mosaic;
``rotated``
    the same grid with every tile (and the grid) rotated by ``--rotation``
    degrees (17 by default);
``random``
    random centres (uniform over the grid's area, so the same density) and
    random rotations.

For every layout and N (``--sizes``), in a fresh subprocess: the wall time
of ``match``, the time of the footprints and intersections (the engine's
log line "Footprints of N image(s) and intersections of M candidate pair(s)
in X s"), the number of intersections that fell back to spherical-geometry
and why (``PlanarGeometryError`` reasons, counted by wrapping
``_planar.exact_intersection`` in every geometry worker), the CPU time
spent in spherical-geometry's intersections, and the growth exponent of
the times between the smallest and the largest N.

The results go to ``<out>.json`` and ``<out>.md`` (``--out``, default
``benchmarks/results/layouts``) under ``--label``: runs with other labels
already in the JSON file (say ``before`` and ``after`` a change) are kept,
and the Markdown file shows them all, each under the command that made it.

Examples
--------
::

    python benchmarks/bench_layouts.py --label after
    python benchmarks/bench_layouts.py --sizes 100 300 --layouts aligned --out /tmp/layouts

Smoke test::

    python benchmarks/bench_layouts.py --sizes 16 36 --out /tmp/layouts
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZE = 32
OVERLAP = 0.10
LAYOUTS = ("aligned", "rotated", "random")
CENTER = (150.1, 2.2)
LAYOUT_LINE = re.compile(
    r"Footprints of (\d+) image\(s\) and intersections of (\d+) candidate pair\(s\) in ([\d.]+) s"
)


def tile_centres(layout, n, *, rotation=17.0, seed=1):
    """Sky centres and rotations (degrees) of the ``n`` tiles of a layout.

    The grid is laid out in the pixel grid of one large reference WCS
    (about `CENTER`, rotated like the tiles), so that tiles of the same
    rotation have (nearly) collinear edges, as in a real mosaic.
    """
    import numpy as np

    from skymatch_step.simulate import make_gwcs

    cols = max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    step = (1.0 - OVERLAP) * SIZE  # pixels between neighbouring centres
    angle = {"aligned": 0.0, "rotated": rotation, "random": 0.0}[layout]
    ref = make_gwcs((rows * SIZE, cols * SIZE), *CENTER, angle)
    cx, cy = (cols - 1) * step / 2.0, (rows - 1) * step / 2.0
    if layout == "random":
        rng = np.random.default_rng(seed)
        x = rng.uniform(0, cols * step, n) - step / 2.0
        y = rng.uniform(0, rows * step, n) - step / 2.0
        rot = rng.uniform(0.0, 360.0, n)
    else:
        k = np.arange(n)
        x, y = (k % cols) * step, (k // cols) * step
        rot = np.full(n, angle)
    # reference pixel of the grid's centre is the reference WCS's centre
    ref_cx, ref_cy = (cols * SIZE - 1) / 2.0, (rows * SIZE - 1) / 2.0
    ra, dec = ref.forward_transform(x - cx + ref_cx, y - cy + ref_cy, with_bounding_box=False)
    return np.asarray(ra, float), np.asarray(dec, float), rot


def _images(layout, n, rotation):
    """Engine inputs of a layout: 32 x 32 images, each at its own sky level."""
    import numpy as np

    from skymatch_step import ImageInput
    from skymatch_step.simulate import make_gwcs

    ra, dec, rot = tile_centres(layout, n, rotation=rotation)
    levels = np.random.default_rng(2).uniform(0.1, 0.5, n)
    for k in range(n):
        wcs = make_gwcs((SIZE, SIZE), float(ra[k]), float(dec[k]), float(rot[k]))
        fwd, bwd = wcs.forward_transform, wcs.backward_transform
        data = np.random.default_rng(k).normal(levels[k], 0.01, (SIZE, SIZE)).astype(np.float32)
        yield ImageInput.from_arrays(
            data,
            None,
            lambda x, y, f=fwd: f(x, y, with_bounding_box=False),
            lambda r, d, b=bwd: b(r, d, with_bounding_box=False),
            id=f"{layout}{k:05d}",
        )


def _record_fallbacks(folder):
    """Wrap the exact intersection and spherical-geometry's; log each call to ``folder``.

    The geometry workers are forked from this process, so they inherit the
    wrappers; each appends one line per call to its own file.
    """
    from skymatch_step import _overlaps, _planar

    exact = _planar.exact_intersection
    spherical = _overlaps._intersection

    def write(line):
        with open(Path(folder) / f"calls-{os.getpid()}.txt", "a") as fh:
            fh.write(line + "\n")

    def wrapped_exact(fp_a, fp_b):
        try:
            out = exact(fp_a, fp_b)
        except _planar.PlanarGeometryError as err:
            reason = str(err).removeprefix("sensitive pair: ")
            write("fallback\t" + reason.replace("\n", " ").replace("\t", " "))
            raise
        write("exact\t")
        return out

    def wrapped_spherical(fp_a, fp_b):
        start = time.process_time()
        try:
            return spherical(fp_a, fp_b)
        finally:
            write(f"sg_seconds\t{time.process_time() - start:.6f}")

    _planar.exact_intersection = wrapped_exact
    _overlaps.exact_intersection = wrapped_exact
    _overlaps._intersection = wrapped_spherical


def _read_calls(folder):
    counts = collections.Counter()
    reasons = collections.Counter()
    sg_seconds = 0.0
    for path in Path(folder).glob("calls-*.txt"):
        for line in path.read_text().splitlines():
            kind, _, value = line.partition("\t")
            if kind == "sg_seconds":
                sg_seconds += float(value)
                counts["spherical"] += 1
            else:
                counts[kind] += 1
                if kind == "fallback":
                    reasons[value] += 1
    return counts, reasons, sg_seconds


def _run_one(layout, n, workers, rotation):
    """Body of a worker subprocess: one ``match`` call; prints a JSON line."""
    import io
    import logging

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("skymatch_step")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    from skymatch_step import match

    with tempfile.TemporaryDirectory() as folder:
        _record_fallbacks(folder)
        t0 = time.perf_counter()
        result = match(_images(layout, n, rotation), skymethod="match", workers=workers)
        elapsed = time.perf_counter() - t0
        counts, reasons, sg_seconds = _read_calls(folder)
    found = LAYOUT_LINE.search(stream.getvalue())
    print(
        json.dumps(
            {
                "layout": layout,
                "n": n,
                "seconds": elapsed,
                "layout_seconds": float(found.group(3)) if found else None,
                "pairs": int(found.group(2)) if found else len(result.pairs),
                "overlapping_pairs": len(result.pairs),
                "exact": counts["exact"],
                "fallbacks": counts["fallback"],
                "spherical_calls": counts["spherical"],
                "spherical_cpu_seconds": sg_seconds,
                "reasons": dict(reasons.most_common()),
                "valid": int(result.valid.sum()),
            }
        )
    )


def _growth(rows, key):
    """Exponent of ``key`` between the smallest and the largest N (None if undefined)."""
    rows = [r for r in rows if r.get(key)]
    if len(rows) < 2 or rows[0]["n"] == rows[-1]["n"]:
        return None
    return math.log(rows[-1][key] / rows[0][key]) / math.log(rows[-1]["n"] / rows[0]["n"])


def _table(run):
    lines = [
        "| layout | images | candidate pairs | total s | footprints + intersections s "
        "| fallbacks to spherical-geometry | spherical-geometry CPU s | ms per image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = run["rows"]
    for r in rows:
        lines.append(
            f"| {r['layout']} | {r['n']} | {r['pairs']} | {r['seconds']:.1f} "
            f"| {r['layout_seconds']:.1f} | {r['fallbacks']} of {r['exact'] + r['fallbacks']} "
            f"| {r['spherical_cpu_seconds']:.1f} | {1000 * r['seconds'] / r['n']:.1f} |"
        )
    lines.append("")
    for layout in dict.fromkeys(r["layout"] for r in rows):
        mine = sorted((r for r in rows if r["layout"] == layout), key=lambda r: r["n"])
        total, geo = _growth(mine, "seconds"), _growth(mine, "layout_seconds")
        if total is not None:
            lines.append(
                f"* {layout}: total time grows as N^{total:.2f}, footprints + intersections "
                f"as N^{geo:.2f} from {mine[0]['n']} to {mine[-1]['n']} images."
            )
    lines.append("")
    for r in rows:
        if r["reasons"]:
            lines.append(f"Fallback reasons, {r['layout']} N={r['n']}:")
            lines.append("")
            lines.extend(f"* {c} x {reason}" for reason, c in r["reasons"].items())
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _comparison(first, last):
    """Table of the first run against the last, for the layouts and sizes both have."""
    rows = {(r["layout"], r["n"]): r for r in first["rows"]}
    lines = [
        f"| layout | images | total s: {first['label']} | {last['label']} | speed-up "
        f"| intersections s: {first['label']} | {last['label']} "
        f"| fallbacks: {first['label']} | {last['label']} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in last["rows"]:
        b = rows.get((r["layout"], r["n"]))
        if b is None:
            continue
        lines.append(
            f"| {r['layout']} | {r['n']} | {b['seconds']:.1f} | {r['seconds']:.1f} "
            f"| {b['seconds'] / r['seconds']:.1f} | {b['layout_seconds']:.1f} "
            f"| {r['layout_seconds']:.1f} | {b['fallbacks']} | {r['fallbacks']} |"
        )
    return "\n".join(lines) + "\n"


def render(out):
    """Write ``<out>.md`` from ``<out>.json`` (every run, first against last on top)."""
    runs = json.loads(Path(f"{out}.json").read_text())
    parts = [
        "# Footprint intersections on mosaic layouts\n",
        "Engine only (`match(images, skymethod='match')`), 32 x 32 images with gwcs WCSs "
        "(`make_gwcs`, no distortion); see `benchmarks/bench_layouts.py`. 'intersections s' "
        "is the engine's time for the footprints and the intersections of the candidate "
        "pairs (its log line); fallbacks are the intersections left to spherical-geometry.\n",
    ]
    named = [dict(r, label=name) for name, r in runs.items()]
    if len(named) >= 2:
        parts.append(f"## {named[0]['label']} against {named[-1]['label']}\n")
        parts.append(_comparison(named[0], named[-1]))
    for r in named:
        parts.append(f"## {r['label']}\n")
        parts.append(f"Command: `{r['command']}` ({r['machine']}, {r['date']}).\n")
        if r.get("note"):
            parts.append(r["note"] + "\n")
        parts.append(_table(r))
    Path(f"{out}.md").write_text("\n".join(parts))


def _write(out, label, run):
    path_json = Path(f"{out}.json")
    runs = json.loads(path_json.read_text()) if path_json.exists() else {}
    runs[label] = run
    path_json.parent.mkdir(parents=True, exist_ok=True)
    path_json.write_text(json.dumps(runs, indent=1) + "\n")
    render(out)


def _command(argv):
    """The command line, without the ``--note`` text."""
    args = list(argv)
    if "--note" in args:
        k = args.index("--note")
        del args[k : k + 2]
    return shlex.join(["python", "benchmarks/bench_layouts.py", *args])


def main(argv=None):
    """Run the layouts in subprocesses and write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[500, 2500])
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--workers", type=int, default=2, help="geometry and pixel workers")
    parser.add_argument("--rotation", type=float, default=17.0, help="rotation of 'rotated'")
    parser.add_argument("--label", default="results", help="name of this run in the output")
    parser.add_argument("--note", default="", help="a line written under the command")
    parser.add_argument(
        "--out", default=str(HERE / "results" / "layouts"), help="output path without suffix"
    )
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _run_one(args.worker[0], int(args.worker[1]), args.workers, args.rotation)
        return 0
    rows = []
    for layout in args.layouts:
        for n in args.sizes:
            cmd = [sys.executable, __file__, "--worker", layout, str(n)]
            cmd += ["--workers", str(args.workers), "--rotation", str(args.rotation)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{layout} N={n}: {row['seconds']:.1f} s, intersections "
                f"{row['layout_seconds']:.1f} s, {row['pairs']} pairs, "
                f"{row['fallbacks']} fallbacks {row['reasons']}",
                flush=True,
            )
    run = {
        "command": _command(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": datetime.date.today().isoformat(),
        "note": args.note,
        "rows": rows,
    }
    _write(args.out, args.label, run)
    print(_table(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
