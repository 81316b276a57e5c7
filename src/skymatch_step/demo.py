"""Demo: simulate a small mosaic, match its sky, compare with the truth.

Run as ``skymatch-demo`` (or ``python -m skymatch_step.demo``). It needs no
network and no CRDS: the simulator builds the WCSs from astropy models.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["expected_scatter", "main", "overlap_pixels"]

# Scatter of each sky statistic of N pixel values of spread s (Gaussian),
# modelled as s * sqrt(a**2 / N + b**2): a statistical term (a = 1 for
# the mean, sqrt(pi/2) for the median) and, for the statistics taken from
# a histogram with bins of binwidth * s (0.1), a floor b that does not
# shrink with N: where the bins fall relative to the peak moves the
# parabola through the three highest bins (mode) or the interpolated
# median (midpt) by a fraction of a bin. a and b were measured with this
# package's statistics (standard deviation over 300 samples of 5000 and
# 20000 values; tests/test_simulate_demo.py checks the model).
_STAT_SCATTER = {
    "mean": (1.0, 0.0),
    "median": (np.sqrt(np.pi / 2), 0.0),
    "midpt": (1.08, 0.0147),
    "mode": (10.6, 0.112),
}
# An offset error compares two levels (sqrt(2)), each a least-squares
# combination of pair differences of two statistics (at most sqrt(2)
# scatters): at most 2 statistic scatters. The verdict is at 5 sigma
# (default settings, seeds 0 to 39: the largest error is 0.56 of it).
_SIGMAS = 5.0


def _parse(argv):
    p = argparse.ArgumentParser(
        prog="skymatch-demo",
        description=(
            "Simulate a JWST-like mosaic with a known sky level per exposure, run "
            "SkymatchStep on its association, and print recovered against true levels."
        ),
    )
    p.add_argument("--exposures", type=int, default=6, help="number of exposures (default 6)")
    p.add_argument(
        "--detectors", type=int, default=2, choices=(1, 2, 4), help="detectors per exposure"
    )
    p.add_argument("--size", type=int, default=256, help="image size in pixels (default 256)")
    p.add_argument(
        "--skymethod",
        default="match",
        choices=("local", "global", "match", "global+match"),
        help="sky method (default match)",
    )
    p.add_argument("--skystat", default="mode", choices=("mode", "median", "midpt", "mean"))
    p.add_argument(
        "--compare",
        default="statistics",
        choices=("statistics", "differences"),
        help="how overlaps are compared (default statistics, as jwst)",
    )
    p.add_argument(
        "--diffuse",
        type=float,
        default=None,
        help="peak of the simulated diffuse emission in MJy/sr (default 0.3; e.g. 5 for a nebula)",
    )
    p.add_argument("--seed", type=int, default=3, help="random seed")
    p.add_argument("--outdir", default=None, help="keep the files here (default: temporary)")
    p.add_argument("--verbose", action="store_true", help="show the step's log")
    return p.parse_args(argv)


def main(argv=None):
    """Run the demo.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 when every image's recovered sky offset agrees with
        the truth within the tolerance the simulation supports (see
        `expected_scatter`), 1 otherwise.
    """
    args = _parse(argv)
    if not args.verbose:
        # stpipe configures its own log handlers; keep warnings only.
        logging.disable(logging.INFO)
    try:
        return _run(args)
    finally:
        logging.disable(logging.NOTSET)


def _run(args):
    from .simulate import MosaicSpec, write_mosaic
    from .step import SkymatchStep

    spec = MosaicSpec(
        n_exposures=args.exposures,
        detectors_per_exposure=args.detectors,
        shape=(args.size, args.size),
        seed=args.seed,
        **({} if args.diffuse is None else {"diffuse": args.diffuse}),
    )
    if spec.n_exposures < 2 and "match" in args.skymethod:
        print("skymatch-demo: matching needs at least 2 exposures", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        outdir = Path(args.outdir) if args.outdir else Path(tmp)
        print(
            f"Simulating {spec.n_exposures} exposures x {spec.detectors_per_exposure} detectors "
            f"of {args.size}x{args.size} pixels in {outdir} ..."
        )
        truth = write_mosaic(spec, outdir, product_name="demo")
        print(
            f"Running SkymatchStep(skymethod={args.skymethod!r}, skystat={args.skystat!r}, "
            f"compare={args.compare!r}) on {truth.asn_path.name} ..."
        )
        result = SkymatchStep.call(
            str(truth.asn_path),
            skymethod=args.skymethod,
            skystat=args.skystat,
            compare=args.compare,
        )
        rows = []
        spreads = []
        noises = []
        with result:
            for index in range(len(result)):
                model = result.borrow(index)
                name = Path(model.meta.filename).name
                spreads.append(_spread(model.data, model.dq))
                noises.append(_pixel_noise(model.data, model.dq))
                rows.append(
                    (
                        name,
                        truth.exposure[name],
                        truth.sky[name],
                        model.meta.background.level,
                        model.meta.cal_step.skymatch,
                    )
                )
                result.shelve(model, index, modify=False)
    scatter = expected_scatter(spec, args.skystat, float(np.median(spreads)))
    floor = 2.0 * float(np.median(noises)) / np.sqrt(overlap_pixels(spec))
    if args.outdir:
        print(f"Files kept in {outdir}; try: strun skymatch_step {truth.asn_path}")
    return _report(
        rows, args.skymethod, scatter, args.skystat, noise_floor=floor, compare=args.compare
    )


def _spread(data, dq):
    """Robust spread (1.4826 MAD) of an image's usable pixels."""
    values = data[np.isfinite(data) & ((dq & 1) == 0)]
    if values.size == 0:
        return np.nan
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def _pixel_noise(data, dq):
    """Pixel noise of an image: robust spread of differences of adjacent pixels.

    Smooth emission cancels in the differences, stars and cosmic rays are
    few; the spread of a difference is sqrt(2) times the noise.
    """
    good = np.isfinite(data) & ((dq & 1) == 0)
    pair = good[:, 1:] & good[:, :-1]
    diffs = (data[:, 1:] - data[:, :-1])[pair]
    if diffs.size == 0:
        return np.nan
    return 1.4826 * float(np.median(np.abs(diffs - np.median(diffs)))) / np.sqrt(2.0)


def overlap_pixels(spec):
    """Pixels shared by two neighbouring exposures of ``spec`` (about).

    Parameters
    ----------
    spec : skymatch_step.simulate.MosaicSpec
        The simulated mosaic.

    Returns
    -------
    float
        ``overlap`` times an exposure's area in pixels: the size of the
        strip two neighbours share, along a row or a column of the grid.
    """
    ny, nx = spec.shape
    ndet = spec.detectors_per_exposure
    cols, rows = (2 if ndet >= 2 else 1), (2 if ndet == 4 else 1)
    width = cols * nx + (cols - 1) * 0.02 * nx
    height = rows * ny + (rows - 1) * 0.02 * ny
    return spec.overlap * width * height


def expected_scatter(spec, skystat, spread):
    """Statistical scatter of one sky statistic over a neighbours' overlap.

    Parameters
    ----------
    spec : skymatch_step.simulate.MosaicSpec
        The simulated mosaic (its layout gives the overlap's size).
    skystat : {'mode', 'median', 'midpt', 'mean'}
        The statistic.
    spread : float
        Spread of the pixel values (MJy/sr): noise plus the variation of
        the diffuse emission, which widens the histogram the mode is
        taken from.

    Returns
    -------
    float
        ``spread * sqrt(a**2 / N + b**2)`` (MJy/sr), with ``N`` from
        `overlap_pixels`; ``a`` is the statistical factor (1 for the mean,
        1.25 for the median, about 11 for the mode) and ``b`` the floor
        set by the histogram's bins (0.11 of the spread for the mode,
        whose bins are 0.1 of the spread wide; 0 for mean and median).
    """
    a, b = _STAT_SCATTER[skystat]
    return float(spread * np.sqrt(a**2 / overlap_pixels(spec) + b**2))


def _report(rows, skymethod, scatter, skystat, *, noise_floor=None, compare="statistics"):
    relative = "match" in skymethod
    true = np.array([r[2] for r in rows])
    found = np.array([np.nan if r[3] is None else r[3] for r in rows])
    # 'match' levels are offsets from the matched reference, so compare
    # offsets from the lowest true sky; other methods give absolute levels
    # (which also contain the diffuse emission the simulator adds).
    ref_true = true.min() if relative else 0.0
    ref_found = np.nanmin(found) if relative else 0.0
    header = f"{'image':45s} {'exp':>3s} {'true sky':>9s} {'BKGLEVEL':>9s} {'error':>9s} status"
    print(header)
    print("-" * len(header))
    errors = []
    for (name, exp, sky, level, status), t, f in zip(rows, true, found, strict=True):
        err = (f - ref_found) - (t - ref_true)
        errors.append(err)
        lv = "--" if level is None else f"{level:9.5f}"
        print(f"{name:45s} {exp:3d} {sky:9.5f} {lv:>9s} {err:+9.5f} {status}")
    errors = np.array(errors)
    worst = np.nanmax(np.abs(errors))
    what = "offset from the lowest sky" if relative else "absolute level"
    print(f"\nLargest error of the recovered {what}: {worst:.5f} MJy/sr")
    if not relative:
        print("(local/global levels include the simulated diffuse emission, so they are high.)")
        return 0
    tolerance = _SIGMAS * 2.0 * scatter
    print(
        f"Expected scatter of one {skystat} over an overlap (from the images' pixel spread, "
        f"which diffuse emission widens): {scatter:.5f} MJy/sr; "
        f"tolerance ({_SIGMAS:g} sigma of an offset): {tolerance:.5f} MJy/sr "
        f"(largest error / tolerance = {worst / tolerance:.2f})."
    )
    ok = bool(worst <= tolerance) and bool(np.isfinite(errors).all())
    print(
        f"Recovered the true sky offsets within the tolerance of the {skystat}'s scatter."
        if ok
        else "Some offsets are off by more than the tolerance (or were not measured)!"
    )
    if noise_floor is not None and noise_floor > 0:
        _compare_with_noise(worst, noise_floor, scatter, skystat, compare)
    return 0 if ok else 1


#: Errors above this many pixel-noise floors are worth a word.
_FAR_ABOVE_NOISE = 10.0


def _compare_with_noise(worst, floor, scatter, skystat, compare):
    """Say how the largest error compares with what the pixel noise alone allows."""
    print(
        f"Pixel-noise floor of an offset (the images' noise alone): {floor:.5f} MJy/sr; "
        f"the largest error is {worst / floor:.1f} times it."
    )
    if worst <= _FAR_ABOVE_NOISE * floor:
        return
    if compare == "statistics":
        print(
            f"Each image's {skystat} over an overlap scatters {scatter / floor:.0f} times more "
            "than that floor (it is taken from the overlap's pixel values, which the "
            "emission spreads out). --compare differences compares the images pixel by "
            "pixel at the same sky positions and comes close to the floor."
        )
    else:
        print("The offsets are far above the pixel noise: the skies have structure.")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
