"""Footprint intersections: spherical-geometry, the planar clip, and the step's path.

Timing (default): builds ``--pairs`` random pairs of overlapping image
footprints (simulated gwcs WCSs with rotation and distortion; corners only,
or vertices every ``--stepsize`` pixels along the edges), then intersects
each pair with spherical-geometry (``SphericalPolygon.intersection``, what
jwst uses), with `skymatch_step._planar.intersect_footprints` (the bare
planar clip) and with ``skymatch_step.engine.intersect_pair`` (what the
step uses: the planar clip when it provably selects spherical-geometry's
pixels, else spherical-geometry's graph replayed with its own arithmetic,
else spherical-geometry itself), alternating them ``--repeats`` times.
Reports the median time per pair of each, and the fraction of pairs the
step's path leaves to spherical-geometry.

Mosaics (``--mosaics``): the same fallback fraction and times on the
candidate pairs (overlapping bounding caps, different exposures) of two
simulated mosaics: NIRCam-like (16 exposures of 4 detectors of 2048 x 2048,
0.031"/pixel, 1.5 pixels of distortion) and sparse (100 exposures of
128 x 128).

Parity (``--parity N``): N random pairs from the simulator (rotations,
distortion, corner-only, large and nested overlaps, near the poles and
across RA = 0, corners-only and 16-pixel-step outlines) and, one pair in
four, undistorted tiles of one pixel grid shifted by whole or half pixels
(edges on pixel borders; touching, shared-edge and identical footprints).
Each pair's overlap pixels are selected as the step selects them
(``overlap_regions`` then ``region_mask``, in both images' pixel grids) from
``intersect_pair`` and from spherical-geometry; prints the number of pairs
whose pixels differ (and whether the overlap is empty), and the fallback
rate.

Examples
--------
::

    python benchmarks/bench_geometry.py --pairs 100 --repeats 3
    python benchmarks/bench_geometry.py --pairs 50 --stepsize 64
    python benchmarks/bench_geometry.py --mosaics
    python benchmarks/bench_geometry.py --parity 3000 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import functools
import statistics
import time

import numpy as np
from astropy.modeling import models

from skymatch_step import simulate
from skymatch_step._overlaps import PairOverlap, _intersection, overlap_regions, region_mask
from skymatch_step._planar import PlanarGeometryError, exact_intersection, intersect_footprints
from skymatch_step.engine import bounding_cap, candidate_pairs, image_footprint, intersect_pair
from skymatch_step.simulate import MosaicSpec, make_gwcs


def pair_pixels(overlap, images):
    """Pixels each image of a pair selects in their overlap, as the step does.

    ``overlap`` is a `PairOverlap` (from ``intersect_pair`` or
    spherical-geometry); ``images`` two objects with ``shape`` and
    ``inverse``. Returns, for each image, ``(area is zero, full-image
    boolean mask)``.
    """
    out = []
    for index, im in enumerate(images):
        regions = overlap_regions(index, [1 - index], {(0, 1): overlap}, im.inverse, [0, 1])
        region = regions[1 - index]
        full = np.zeros(im.shape, dtype=bool)
        if region.area != 0.0:
            where, mask = region_mask(region.polygons, im.shape)
            if where is not None:
                full[where] = mask
        out.append((region.area == 0.0, full))
    return out


def _cache_distortion_fits():
    """Fit each distorted inverse once per (distortion, shape): the fit takes 0.7 s."""
    fit = simulate._fit_inverse
    cache = {}

    def cached(forward, cx, cy, degree=5):
        key = (tuple(float(p) for p in forward.parameters), cx, cy, degree)
        if key not in cache:
            cache[key] = fit(forward, cx, cy, degree)
        return cache[key]

    simulate._fit_inverse = cached


class _Image:
    """Shape, footprint and inverse transform of one image."""

    def __init__(self, shape, forward, backward, stepsize=None):
        self.shape = tuple(int(n) for n in shape)
        self.footprint = image_footprint(self.shape, forward, stepsize)
        self.inverse = backward


def _simulated(shape, ra, dec, rotation, distortion, scale, stepsize=None):
    wcs = make_gwcs(shape, ra, dec, rotation, distortion=distortion, pixel_scale=scale)
    backward = functools.partial(wcs.backward_transform, with_bounding_box=False)
    return _Image(shape, wcs.forward_transform, backward, stepsize)


def _tile(shape, ra, dec, rotation, scale, shift):
    """Undistorted image of a pixel grid shared by all tiles at (ra, dec, rotation)."""
    theta = np.deg2rad(rotation)
    matrix = (
        scale / 3600.0 * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    )
    forward = (
        (models.Shift(shift[0]) & models.Shift(shift[1]))
        | models.AffineTransformation2D(matrix=matrix)
        | models.Pix2Sky_TAN()
        | models.RotateNative2Celestial(ra, dec, 180.0)
    )
    return _Image(shape, forward, forward.inverse)


def _place(rng):
    place = rng.integers(3)
    if place == 0:
        return rng.uniform(0, 360), rng.uniform(-80, 80)
    if place == 1:
        return rng.uniform(0, 360), rng.choice([-1, 1]) * rng.uniform(89.85, 89.99)
    return rng.uniform(-0.01, 0.01) % 360, rng.uniform(-60, 60)


_SHAPES = [(64, 64), (100, 160), (200, 120), (256, 256), (300, 90), (48, 300)]


def _random_pair(rng, kind):
    """Two images overlapping as ``kind`` says: large, corner, nested or aligned."""
    ra, dec = _place(rng)
    scale = float(rng.choice([0.031, 0.063, 0.11]))
    shape_a = _SHAPES[rng.integers(len(_SHAPES))]
    shape_b = _SHAPES[rng.integers(len(_SHAPES))]
    if kind == "aligned":
        rot = float(rng.choice([0.0, 90.0, rng.uniform(0, 360)]))
        unit = float(rng.choice([1.0, 0.5]))
        sx = unit * rng.integers(-int(shape_b[1] / unit) - 1, int(shape_a[1] / unit) + 2)
        sy = unit * rng.integers(-int(shape_b[0] / unit) - 1, int(shape_a[0] / unit) + 2)
        if rng.uniform() < 0.1:
            shape_b, sx, sy = shape_a, 0.0, 0.0
        return _tile(shape_a, ra, dec, rot, scale, (0.0, 0.0)), _tile(
            shape_b, ra, dec, rot, scale, (sx, sy)
        )
    half_a = np.hypot(*shape_a) * scale / 2
    if kind == "nested":
        shape_b = _SHAPES[0]
        dist = rng.uniform(0, 0.3) * half_a
    else:
        half_b = np.hypot(*shape_b) * scale / 2
        lo, hi = (0.0, 0.8) if kind == "large" else (0.7, 1.0)
        dist = rng.uniform(lo, hi) * (half_a + half_b)
    angle = rng.uniform(0, 2 * np.pi)
    ra_b = (ra + dist * np.cos(angle) / 3600 / max(np.cos(np.deg2rad(dec)), 1e-3)) % 360
    dec_b = float(np.clip(dec + dist * np.sin(angle) / 3600, -89.999, 89.999))
    step = [None, None, None, 16][rng.integers(4)]
    dist_a, dist_b = rng.choice([0.0, 0.0, 1.0, 3.0], 2)
    a = _simulated(shape_a, ra, dec, rng.uniform(0, 360), dist_a, scale, step)
    rot_b = float(rng.choice([rng.uniform(0, 360), 0.0]))
    b = _simulated(shape_b, ra_b, dec_b, rot_b, dist_b, scale, step)
    return a, b


def _fallback_reason(fp_a, fp_b):
    """None if the step's path uses the planar clip, else why not."""
    try:
        exact_intersection(fp_a, fp_b)
    except PlanarGeometryError as err:
        return str(err).removeprefix("sensitive pair: ").split(" (")[0]
    return None


def parity(npairs, seed):
    """Compare the pixels of the step's path with spherical-geometry's on random pairs."""
    _cache_distortion_fits()
    rng = np.random.default_rng(seed)
    kinds = ("large", "corner", "nested", "aligned")
    counts = collections.Counter()
    reasons = collections.Counter()
    differ = []
    start = time.perf_counter()
    for k in range(npairs):
        kind = kinds[k % 4]
        a, b = _random_pair(rng, kind)
        try:
            ref = _intersection(a.footprint, b.footprint)
        except Exception:
            counts["spherical-geometry failed"] += 1
            continue
        ref = PairOverlap(ref, ref)
        got = intersect_pair(a.footprint, b.footprint)
        reason = _fallback_reason(a.footprint, b.footprint)
        counts["pairs"] += 1
        counts[f"pairs {kind}"] += 1
        if reason is not None:
            counts["fallback"] += 1
            counts[f"fallback {kind}"] += 1
            reasons[reason] += 1
        want = pair_pixels(ref, (a, b))
        have = pair_pixels(got, (a, b))
        counts["overlapping"] += not want[0][0]
        ndiff = sum(
            int((w[1] != h[1]).sum()) + (w[0] != h[0]) for w, h in zip(want, have, strict=True)
        )
        if ndiff:
            differ.append((k, kind, ndiff))
        if (k + 1) % 250 == 0:
            print(f"  {k + 1} pairs, {time.perf_counter() - start:.0f} s", flush=True)
    n = counts["pairs"]
    print(
        f"{n} random pairs (seed {seed}), {counts['overlapping']} overlapping; "
        f"spherical-geometry failed on {counts['spherical-geometry failed']}"
    )
    print(f"pairs with differing pixels or emptiness: {len(differ)}", differ[:10])
    nf = counts["fallback"]
    print(f"fallback to spherical-geometry: {nf} ({100 * nf / n:.1f}%)")
    for kind in kinds:
        m, f = counts[f"pairs {kind}"], counts[f"fallback {kind}"]
        print(f"  {kind:<8} {f:>5} of {m} ({100 * f / max(m, 1):.1f}%)")
    for reason, c in reasons.most_common():
        print(f"  {c:>5}  {reason}")
    return len(differ)


def _time(func, pairs):
    """Seconds per pair of ``func`` over all pairs."""
    start = time.perf_counter()
    for a, b in pairs:
        func(a, b)
    return (time.perf_counter() - start) / len(pairs)


def _report_times(pairs, repeats, label):
    funcs = {
        "spherical-geometry": _intersection,
        "planar clip": intersect_footprints,
        "step (intersect_pair)": intersect_pair,
    }
    times = {name: [] for name in funcs}
    for _ in range(repeats):
        for name, func in funcs.items():
            times[name].append(_time(func, pairs))
    reasons = collections.Counter(_fallback_reason(a, b) for a, b in pairs)
    fallback = len(pairs) - reasons.pop(None, 0)
    print(f"{label}: {len(pairs)} pairs, {repeats} alternating rounds (median)")
    print(f"{'method':<24} {'ms/pair':>10} {'total s':>10} {'speed-up':>8}")
    sg = statistics.median(times["spherical-geometry"])
    for name in funcs:
        t = statistics.median(times[name])
        print(f"{name:<24} {1e3 * t:>10.3f} {t * len(pairs):>10.3f} {sg / t:>8.1f}")
    share = 100 * fallback / len(pairs)
    print(f"fallback to spherical-geometry: {fallback} of {len(pairs)} ({share:.1f}%)")
    for reason, c in reasons.most_common():
        print(f"  {c:>5}  {reason}")


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


def _mosaic_pairs(spec):
    """Footprints of the candidate pairs of a simulated mosaic (no pixels rendered)."""
    tiles = simulate._tile_layout(spec)
    fps = []
    for tile in tiles:
        ra, dec = simulate._tangent_to_sky(spec.center, *tile.offset)
        wcs = make_gwcs(
            spec.shape,
            float(ra),
            float(dec),
            tile.rotation,
            pixel_scale=spec.pixel_scale,
            distortion=spec.distortion,
        )
        fps.append(image_footprint(spec.shape, wcs.forward_transform))
    caps = [bounding_cap(fp) for fp in fps]
    pairs = candidate_pairs(caps, [t.exposure for t in tiles])
    return [(fps[i], fps[j]) for i, j in pairs]


def mosaics(repeats):
    """Fallback rate and times on the candidate pairs of two simulated mosaics."""
    _cache_distortion_fits()
    specs = {
        "NIRCam-like mosaic (16 x 4 detectors, 2048^2)": MosaicSpec(
            n_exposures=16, detectors_per_exposure=4, shape=(2048, 2048), overlap=0.15
        ),
        "sparse mosaic (100 exposures, 128^2)": MosaicSpec(
            n_exposures=100, shape=(128, 128), overlap=0.1, rotation_jitter=2.0, seed=3
        ),
    }
    for label, spec in specs.items():
        _report_times(_mosaic_pairs(spec), repeats, label)


def main(argv=None):
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=100, help="number of overlapping pairs")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds")
    parser.add_argument("--stepsize", type=int, default=None, help="footprint vertex spacing")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mosaics", action="store_true", help="candidate pairs of two mosaics")
    parser.add_argument("--parity", type=int, default=0, metavar="N", help="check N random pairs")
    args = parser.parse_args(argv)

    if args.parity:
        return 1 if parity(args.parity, args.seed) else 0
    if args.mosaics:
        mosaics(args.repeats)
        return 0
    _cache_distortion_fits()
    pairs = _pairs(args.pairs, args.seed, args.stepsize)
    nvert = statistics.mean(len(a.polygons[0].points) - 1 for a, _ in pairs)
    _report_times(pairs, args.repeats, f"overlapping NIRCam-size pairs, {nvert:.0f} vertices each")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
