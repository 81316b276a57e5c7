"""Time footprint intersections: spherical-geometry against the planar method.

Builds ``--pairs`` random pairs of overlapping image footprints (simulated
gwcs WCSs with rotation and distortion; corners only, or vertices every
``--stepsize`` pixels along the edges), then intersects each pair with
spherical-geometry (``SphericalPolygon.intersection``, what jwst uses) and
with `skymatch_step._planar.intersect_footprints`, alternating the two
``--repeats`` times. Reports the median time per pair of each method, the
total for all pairs and the ratio.

Examples
--------
::

    python benchmarks/bench_geometry.py --pairs 100 --repeats 3
    python benchmarks/bench_geometry.py --pairs 50 --stepsize 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from skymatch_step._footprints import image_footprint
from skymatch_step._overlaps import _intersection
from skymatch_step._planar import intersect_footprints
from skymatch_step.simulate import make_gwcs


def _pairs(n, seed, stepsize):
    """``n`` pairs of overlapping footprints of 2048 x 2048 NIRCam-like images."""
    rng = np.random.default_rng(seed)
    shape = (2048, 2048)
    scale = 0.031
    half = np.hypot(*shape) * scale / 2  # arcsec
    out = []
    while len(out) < n:
        ra, dec = rng.uniform(0, 360), rng.uniform(-70, 70)
        dist = rng.uniform(0.1, 1.6) * half
        angle = rng.uniform(0, 2 * np.pi)
        ra_b = (ra + dist * np.cos(angle) / 3600 / np.cos(np.deg2rad(dec))) % 360
        dec_b = dec + dist * np.sin(angle) / 3600
        fps = [
            image_footprint(
                shape,
                make_gwcs(shape, r, d, rng.uniform(0, 360), distortion=3.0).forward_transform,
                stepsize,
            )
            for r, d in ((ra, dec), (ra_b, dec_b))
        ]
        if intersect_footprints(*fps)[0] > 0:
            out.append(fps)
    return out


def _time(func, pairs):
    """Seconds per pair of ``func`` over all pairs."""
    start = time.perf_counter()
    for a, b in pairs:
        func(a, b)
    return (time.perf_counter() - start) / len(pairs)


def main(argv=None):
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=100, help="number of overlapping pairs")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds")
    parser.add_argument("--stepsize", type=int, default=None, help="footprint vertex spacing")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    pairs = _pairs(args.pairs, args.seed, args.stepsize)
    nvert = statistics.mean(len(a.polygons[0].points) - 1 for a, _ in pairs)
    times = {"spherical-geometry": [], "planar": []}
    for _ in range(args.repeats):
        times["spherical-geometry"].append(_time(_intersection, pairs))
        times["planar"].append(_time(intersect_footprints, pairs))
    sg = statistics.median(times["spherical-geometry"])
    pl = statistics.median(times["planar"])
    print(
        f"{args.pairs} overlapping pairs, {nvert:.0f} vertices per footprint, "
        f"{args.repeats} alternating rounds (median)"
    )
    print(f"{'method':<20} {'ms/pair':>10} {'total s':>10}")
    for name, t in (("spherical-geometry", sg), ("planar", pl)):
        print(f"{name:<20} {1e3 * t:>10.3f} {t * args.pairs:>10.3f}")
    print(f"ratio spherical-geometry / planar: {sg / pl:.0f}")


if __name__ == "__main__":
    main()
