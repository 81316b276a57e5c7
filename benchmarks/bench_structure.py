"""Sky structure: constant against plane sky models on skies with gradients and stripes.

Every case is a simulated mosaic dominated by diffuse emission (as in
``bench_accuracy.py``) whose exposures' skies have, or have not, structure
that a constant level per exposure cannot describe:

* ``flat``: a constant sky per exposure;
* ``gradient``: a linear sky gradient per exposure (``sky_gradient``);
* ``stripes+seeing``: 1/f-like row and column striping and a different PSF
  width per exposure (``striping``, ``seeing_scatter``), flat skies;
* ``all``: all three.

On every mosaic, in one run, the contenders are the engine's ``match``
with ``compare='differences'`` and ``sky_model='constant'`` and
``'plane'``, and, as a reference, jwst's ``SkyMatchStep`` with
``skymethod='match'`` (its defaults otherwise; ``BKGLEVEL`` taken as a
constant surface).

Metrics (`surface_error`, `constant_pulls`, `plane_pulls`):

1. *Surface error*: the recovered sky surface at every ``--subsample``-th
   pixel (both axes) of every image, minus the true sky surface
   (``truth.sky_image``: level and plane only), less the least-squares plane
   common to all pixels of all images (in one tangent plane of the mosaic;
   no relative matching can determine a common offset or gradient), RMS.
2. *Noise floor*: the surface error of the same contender on a *twin*
   mosaic: the same seed, layout, levels, gradients and noise (white pixel
   noise and, where the case has them, the 1/f stripes, which no method
   can tell from the sky), without emission, stars, cosmic rays, bad pixels
   or seeing differences. The ratio error / floor says how much the
   structure costs.
3. *Pulls*: each image's recovered minus true level relative to the
   gauge (the set's mean level; for planes, its mean plane), divided by the
   engine's ``SkyResult.uncertainties``; their standard deviation should be
   near 1 (target 0.8 to 1.25).

Examples
--------
Full run, 30 seeds per case (about 30 minutes on two loaded cores)::

    python benchmarks/bench_structure.py

Smoke test (seconds; no assertion)::

    python benchmarks/bench_structure.py --smoke --outdir /tmp/structure
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.metadata
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

#: Peak amplitude of the diffuse emission, MJy/sr.
DIFFUSE = 5.0
#: Pixel noise, MJy/sr.
NOISE = 0.02
#: Overlap of neighbouring exposures (fraction of an exposure's width).
OVERLAP = 0.15
#: Exposures per mosaic and image size (pixels) by default.
EXPOSURES = 9
SIZE = 256
#: Surface errors are reported in this unit (MJy/sr).
UNIT = 1e-4
#: Target range of the pulls' standard deviation.
PULL_TARGET = (0.8, 1.25)

#: name: the MosaicSpec fields of the sky structure
CASES = {
    "flat": {},
    "gradient": {"sky_gradient": 0.05},
    "stripes+seeing": {"striping": 0.01, "seeing_scatter": 0.2},
    "all": {"sky_gradient": 0.05, "striping": 0.01, "seeing_scatter": 0.2},
}
#: --smoke: every case, one seed, a small mosaic
SMOKE = {"exposures": 4, "size": 96, "seeds": 1}

#: The twin mosaic: what is switched off, leaving the skies and the noise.
#: Stripes (1/f, correlated along rows and columns) are noise, not sky
#: structure: the twin keeps them, so the floor is what the noise allows.
TWIN = {
    "diffuse": 0.0,
    "n_stars": 0,
    "cosmic_ray_fraction": 0.0,
    "bad_fraction": 0.0,
    "seeing_scatter": 0.0,
}

#: label: sky model of the engine, or None for jwst's step
CONTENDERS = {"constant": "constant", "plane": "plane", "jwst": None}
LABELS = {"constant": "ours constant", "plane": "ours plane", "jwst": "jwst default"}


# -- metrics (pure functions of arrays) ---------------------------------------


def fit_plane(values, xi, eta):
    """Least-squares plane ``a + b xi + c eta`` through ``values``; ``(a, b, c)``.

    Parameters
    ----------
    values, xi, eta : array_like
        Values and their tangent-plane positions (any shape, flattened).

    Returns
    -------
    ndarray
        ``(3,)``.
    """
    values = np.ravel(np.asarray(values, dtype=float))
    xi = np.ravel(np.asarray(xi, dtype=float))
    eta = np.ravel(np.asarray(eta, dtype=float))
    # Centre and scale the positions: tangent-plane offsets are tiny (degrees).
    x0, y0 = float(np.mean(xi)), float(np.mean(eta))
    scale = float(np.sqrt(np.mean((xi - x0) ** 2 + (eta - y0) ** 2))) or 1.0
    design = np.column_stack([np.ones_like(xi), (xi - x0) / scale, (eta - y0) / scale])
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    b, c = coef[1] / scale, coef[2] / scale
    return np.array([coef[0] - b * x0 - c * y0, b, c])


def surface_error(residuals, xi, eta):
    """RMS of the residual surfaces of all images less their common plane.

    Parameters
    ----------
    residuals, xi, eta : list of ndarray
        For every image, recovered minus true sky at its sampled pixels and
        their positions in one tangent plane of the mosaic.

    Returns
    -------
    float
        The root mean square over all pixels of all images of the
        residuals less the least-squares plane through all of them.
    """
    res = np.concatenate([np.ravel(r) for r in residuals]).astype(float)
    x = np.concatenate([np.ravel(v) for v in xi]).astype(float)
    y = np.concatenate([np.ravel(v) for v in eta]).astype(float)
    a, b, c = fit_plane(res, x, y)
    return float(np.sqrt(np.mean((res - a - b * x - c * y) ** 2)))


def constant_pulls(levels, true, sigma):
    """Pulls of constant levels: errors relative to the mean, over their uncertainties.

    ``d = (level - mean level) - (true - mean true)``, ``d / sigma``; the
    means over the images whose level and uncertainty are finite (the
    others get NaN).
    """
    levels, true, sigma = (np.asarray(v, dtype=float) for v in (levels, true, sigma))
    ok = np.isfinite(levels) & np.isfinite(sigma) & (sigma > 0)
    out = np.full(levels.shape, np.nan)
    if not ok.any():
        return out
    d = (levels[ok] - levels[ok].mean()) - (true[ok] - true[ok].mean())
    out[ok] = d / sigma[ok]
    return out


def plane_pulls(planes, true_planes, centres, sigma):
    """Pulls of planes: level errors at each image's centre relative to the mean plane.

    ``dp = plane - true plane``, less its mean over the images (the
    gauge: a common plane); ``d = (1, xi, eta) . dp`` at the image's mean
    position ``(xi, eta)``; ``d / sigma``. Images with no plane (None) or
    no finite uncertainty get NaN and are left out of the mean.
    """
    n = len(planes)
    sigma = np.asarray(sigma, dtype=float)
    ok = np.array([p is not None and np.all(np.isfinite(p)) for p in planes], dtype=bool) & (
        np.isfinite(sigma) & (sigma > 0)
    )
    out = np.full(n, np.nan)
    if not ok.any():
        return out
    dp = np.array([np.asarray(planes[k], float) for k in np.flatnonzero(ok)])
    dp = dp - np.asarray(true_planes, dtype=float)[ok]
    dp -= dp.mean(axis=0)
    e = np.column_stack([np.ones(int(ok.sum())), np.asarray(centres, dtype=float)[ok]])
    out[ok] = np.einsum("kd,kd->k", e, dp) / sigma[ok]
    return out


def pull_stats(pulls):
    """Standard deviation (ddof 1), mean and count of the finite pulls."""
    p = np.asarray(pulls, dtype=float)
    p = p[np.isfinite(p)]
    if p.size < 2:
        return math.nan, (float(p.mean()) if p.size else math.nan), int(p.size)
    return float(np.std(p, ddof=1)), float(np.mean(p)), int(p.size)


# -- mosaics and contenders ---------------------------------------------------


def make_spec(case, seed, *, size=SIZE, exposures=EXPOSURES):
    """The MosaicSpec of one case and seed."""
    from skymatch_step.simulate import MosaicSpec

    return MosaicSpec(
        n_exposures=exposures,
        shape=(size, size),
        overlap=OVERLAP,
        noise=NOISE,
        diffuse=DIFFUSE,
        n_stars=int(60 * exposures * size * size / 1024**2) + 20,
        seed=seed,
        diffuse_step=1,  # the emission at every pixel: the same in overlapping tiles
        **CASES[case],
    )


def twin_spec(spec):
    """The same mosaic (layout, levels, gradients, seed, noise and stripes), nothing else."""
    return dataclasses.replace(spec, **TWIN)


def _run_ours(models, truth, sky_model):
    from skymatch_step import match, model_input

    inputs = [model_input(m, group=truth.exposure[m.meta.filename]) for m in models]
    return match(inputs, skymethod="match", compare="differences", sky_model=sky_model)


def _run_jwst(models):
    """jwst's SkyMatchStep (match, its defaults) on copies; BKGLEVEL per file name."""
    from jwst.skymatch import SkyMatchStep

    out = SkyMatchStep.call([copy.deepcopy(m) for m in models], skymethod="match", subtract=False)
    levels = {}
    with out:
        for index in range(len(out)):
            model = out.borrow(index)
            level = model.meta.background.level
            levels[model.meta.filename] = math.nan if level is None else float(level)
            out.shelve(model, index, modify=False)
    return levels


def _frame(results):
    """One tangent plane for the whole mosaic: the plane fit's, else the footprints'."""
    from skymatch_step._tangent import TangentPlane

    for r in results:
        if getattr(r, "tangent", None) is not None:
            return r.tangent
    footprints = next(r.footprints for r in results if getattr(r, "footprints", None))
    return TangentPlane.about(footprints)


def _sampled(models, truth, frame, step):
    """Every image's sampled pixels: name, (xi, eta), true sky there and mean position."""
    out = []
    for m in models:
        ny, nx = m.data.shape
        y, x = np.mgrid[0:ny:step, 0:nx:step]
        ra, dec = m.meta.wcs(x.astype(float), y.astype(float))
        xi, eta = frame(ra, dec)
        true = truth.sky_image(m.meta.filename)[::step, ::step]
        ok = np.isfinite(xi) & np.isfinite(eta)
        xi, eta, true = xi[ok], eta[ok], true[ok]
        out.append(
            {
                "name": m.meta.filename,
                "xi": xi,
                "eta": eta,
                "true": true,
                "centre": (float(xi.mean()), float(eta.mean())),
                "true_plane": fit_plane(true, xi, eta),
            }
        )
    return out


def _surfaces(outcome, samples):
    """Recovered sky at the sampled pixels of every image (None: no sky)."""
    kind, value = outcome
    out = []
    for k, s in enumerate(samples):
        if kind == "levels":
            level = value[s["name"]]
            out.append(None if not np.isfinite(level) else np.full(s["xi"].shape, level))
        else:
            plane = value.planes[k]
            if plane is None:
                out.append(None)
            else:
                a, b, c = plane
                out.append(a + b * s["xi"] + c * s["eta"])
    return out


def _score(outcome, samples):
    """Surface error of one contender on one mosaic, and the images left out."""
    surfaces = _surfaces(outcome, samples)
    use = [k for k, sf in enumerate(surfaces) if sf is not None]
    if not use:
        return math.nan, len(samples)
    residuals = [surfaces[k] - samples[k]["true"] for k in use]
    err = surface_error(
        residuals, [samples[k]["xi"] for k in use], [samples[k]["eta"] for k in use]
    )
    return err, len(samples) - len(use)


def _pulls(label, result, samples, truth):
    if label == "constant":
        true = [truth.sky[s["name"]] for s in samples]
        return constant_pulls(result.levels, true, result.uncertainties)
    if label == "plane":
        return plane_pulls(
            result.planes,
            [s["true_plane"] for s in samples],
            [s["centre"] for s in samples],
            result.uncertainties,
        )
    return np.full(len(samples), np.nan)


def _contend(models, truth, contenders):
    """Run every contender on one mosaic: (label -> (result, outcome, seconds))."""
    out = {}
    for label in contenders:
        t0 = time.perf_counter()
        if CONTENDERS[label] is None:
            levels = _run_jwst(models)
            result, outcome = None, ("levels", levels)
        else:
            result = _run_ours(models, truth, CONTENDERS[label])
            if CONTENDERS[label] == "constant":
                levels = dict(zip(result.names, result.levels, strict=True))
                outcome = ("levels", levels)
            else:
                outcome = ("planes", result)
        out[label] = (result, outcome, time.perf_counter() - t0)
    return out


def _measure(models, truth, contenders, subsample):
    """Surface error, pulls and time of every contender on one mosaic."""
    runs = _contend(models, truth, contenders)
    frame = _frame([r for r, _, _ in runs.values() if r is not None])
    samples = _sampled(models, truth, frame, subsample)
    out = {}
    for label, (result, outcome, seconds) in runs.items():
        err, missing = _score(outcome, samples)
        pulls = _pulls(label, result, samples, truth) if result is not None else None
        out[label] = {
            "surface": err,
            "missing": missing,
            "seconds": seconds,
            "pulls": None if pulls is None else [float(p) for p in pulls],
            "excess": None if result is None else float(result.excess),
            "chi2_pixel": None if result is None else float(result.chi2_pixel),
        }
    return out


def run_case(case, seed, *, size, exposures, contenders, subsample):
    """Simulate one case's mosaic and its twin; one row per contender."""
    from skymatch_step.simulate import simulate_mosaic

    spec = make_spec(case, seed, size=size, exposures=exposures)
    models, truth = simulate_mosaic(spec)
    main = _measure(models, truth, contenders, subsample)
    for m in models:
        m.close()
    models, truth = simulate_mosaic(twin_spec(spec))
    twin = _measure(models, truth, contenders, subsample)
    for m in models:
        m.close()
    rows = []
    for label in contenders:
        a, b = main[label], twin[label]
        rows.append(
            {
                "case": case,
                "seed": seed,
                "contender": label,
                "surface": a["surface"],
                "floor": b["surface"],
                "ratio": a["surface"] / b["surface"] if b["surface"] > 0 else math.nan,
                "missing": a["missing"],
                "seconds": a["seconds"],
                "pulls": a["pulls"],
                "twin_pulls": b["pulls"],
                "excess": a["excess"],
                "chi2_pixel": a["chi2_pixel"],
                "twin_excess": b["excess"],
            }
        )
    return rows


def _finite(func, values):
    """``func`` of the finite values (NaN when there are none)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(func(values)) if values.size else math.nan


def summarize(rows):
    """Per case and contender: medians over the seeds, pull statistics over all."""
    out = []
    keys = dict.fromkeys((r["case"], r["contender"]) for r in rows)
    for case, label in keys:
        sel = [r for r in rows if r["case"] == case and r["contender"] == label]
        s = {"case": case, "contender": label, "seeds": len(sel)}
        for key in ("surface", "floor", "ratio", "seconds"):
            s[key] = _finite(np.median, [r[key] for r in sel])
        for key in ("excess", "twin_excess", "chi2_pixel"):
            values = [r[key] for r in sel if r[key] is not None]
            s[key] = _finite(np.median, values) if values else None
        for key, name in (("pulls", "pull"), ("twin_pulls", "twin_pull")):
            values = [p for r in sel if r[key] is not None for p in r[key]]
            std, mean, n = pull_stats(values) if values else (math.nan, math.nan, 0)
            s[f"{name}_std"], s[f"{name}_mean"], s[f"{name}_n"] = std, mean, n
        # Pulls of one mosaic that move together: the largest mean over a seed's images
        means = [_finite(np.mean, r["pulls"]) for r in sel if r["pulls"] is not None]
        s["seed_pull_mean_max"] = _finite(np.max, np.abs(means))
        s["in_target"] = bool(PULL_TARGET[0] <= s["pull_std"] <= PULL_TARGET[1])
        out.append(s)
    return out


# -- output --------------------------------------------------------------------

COLUMNS = (
    ("case", "Case", None),
    ("contender", "Contender", None),
    ("surface", "surface error", UNIT),
    ("floor", "floor", UNIT),
    ("ratio", "error / floor", 1),
    ("pull_std", "pull std", 1),
    ("pull_mean", "pull mean", 1),
    ("seed_pull_mean_max", "max seed pull mean", 1),
    ("twin_pull_std", "pull std, noise only", 1),
    ("seconds", "time (s)", 1),
)


def _fmt(value, scale):
    if scale is None:
        return LABELS.get(value, str(value))
    if value is None or not np.isfinite(value):
        return "-"
    if scale == 1:
        return f"{value:.2f}"
    return f"{value / scale:.3g}"


def _table(summary):
    return [[title for _, title, _ in COLUMNS]] + [
        [_fmt(s[key], scale) for key, _, scale in COLUMNS] for s in summary
    ]


def _seed_table(rows):
    labels = list(dict.fromkeys(r["contender"] for r in rows))
    head = ["Case", "Seed"] + [f"{LABELS[c]} (floor)" for c in labels]
    body = []
    for case, seed in dict.fromkeys((r["case"], r["seed"]) for r in rows):
        cells = [case, str(seed)]
        for label in labels:
            key = (case, seed, label)
            (r,) = [x for x in rows if (x["case"], x["seed"], x["contender"]) == key]
            cells.append(f"{_fmt(r['surface'], UNIT)} ({_fmt(r['floor'], UNIT)})")
        body.append(cells)
    return [head, *body]


NOTES = [
    "Surface error and floor: medians over the seeds, in 10^-4 MJy/sr, of the RMS over every "
    "sampled pixel of every image of recovered minus true sky, less their common plane; "
    "floor: the same on the twin mosaic with the noise only (pixel noise and stripes). "
    "Error / floor: median of the per-seed ratios.",
    "Pulls: per image, recovered minus true level relative to the set's mean (planes: mean "
    "plane, at the image's centre) over the engine's uncertainty; std and mean over all images "
    f"of all seeds; target std {PULL_TARGET[0]} to {PULL_TARGET[1]}. 'noise only': the pulls "
    "on the twin mosaics. Max seed pull mean: the largest absolute mean of one mosaic's "
    "pulls (pulls that move together; the mean of 9 independent unit pulls has std 1/3). "
    "jwst gives no uncertainties.",
    "A constant sky cannot follow a gradient: on the gradient cases its floor is the gradient "
    "within each image.",
]


def _markdown(summary, rows, header):
    def md(table):
        lines = ["| " + " | ".join(table[0]) + " |", "|" + "|".join("---" for _ in table[0]) + "|"]
        return lines + ["| " + " | ".join(r) + " |" for r in table[1:]]

    lines = [*header, "", *md(_table(summary)), ""]
    lines += [f"{n}" for n in NOTES]
    lines += ["", "Per seed: surface error (floor), 10^-4 MJy/sr.", "", *md(_seed_table(rows))]
    return "\n".join(lines) + "\n"


def _rst_table(table):
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    rule = "  ".join("=" * w for w in widths)

    def line(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [rule, line(table[0]), rule, *(line(r) for r in table[1:]), rule]


def _rst(summary, rows, header):
    lines = [*(f"| {h}" for h in header), "", *_rst_table(_table(summary)), ""]
    for note in NOTES:
        lines += [note.replace("10^-4", "10\\ :sup:`-4`"), ""]
    lines += ["Per seed: surface error (floor), 10\\ :sup:`-4` MJy/sr.", ""]
    lines += _rst_table(_seed_table(rows))
    return "\n".join(lines) + "\n"


def _plot(summary, rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(s["case"] for s in summary))
    labels = list(dict.fromkeys(s["contender"] for s in summary))
    fig = plt.figure(figsize=(3.2 * max(len(cases), 2), 7.5))
    grid = fig.add_gridspec(2, len(cases))
    x = np.linspace(-4, 4, 201)
    bins = np.linspace(-5, 5, 26)
    for i, case in enumerate(cases):
        ax = fig.add_subplot(grid[0, i])
        for k, label in enumerate(("constant", "plane")):
            pulls = [
                p
                for r in rows
                if r["case"] == case and r["contender"] == label and r["pulls"] is not None
                for p in r["pulls"]
            ]
            pulls = np.asarray(pulls, dtype=float)
            pulls = pulls[np.isfinite(pulls)]
            if pulls.size:
                std = np.std(pulls, ddof=1) if pulls.size > 1 else math.nan
                pulls = np.clip(pulls, bins[0], bins[-1])
                ax.hist(
                    pulls,
                    bins=bins,
                    density=True,
                    histtype="step",
                    color=f"C{k}",
                    lw=1.5,
                    label=f"{LABELS[label]} (std {std:.2f})",
                )
        ax.plot(x, np.exp(-0.5 * x**2) / np.sqrt(2 * np.pi), "k--", lw=1, label="N(0, 1)")
        ax.set_title(case)
        ax.set_xlabel("pull (clipped at +-5)")
        if i == 0:
            ax.set_ylabel("density")
        ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[1, :])
    width = 0.8 / len(labels)
    pos = np.arange(len(cases))
    for k, label in enumerate(labels):
        err = [_pick(summary, c, label, "surface") / UNIT for c in cases]
        floor = [_pick(summary, c, label, "floor") / UNIT for c in cases]
        xs = pos + (k - (len(labels) - 1) / 2) * width
        ax.bar(xs, err, width * 0.9, color=f"C{k}", label=f"{LABELS[label]}: error")
        ax.hlines(
            floor,
            xs - width * 0.45,
            xs + width * 0.45,
            colors="k",
            linewidth=2.5,
            label="noise floor (twin mosaic)" if k == 0 else None,
        )
    ax.set_yscale("log")
    ax.set_xticks(pos, cases)
    ax.set_ylabel("surface error, 1e-4 MJy/sr (median)")
    ax.grid(True, which="both", axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _pick(summary, case, label, key):
    for s in summary:
        if s["case"] == case and s["contender"] == label:
            return s[key]
    return math.nan


def _no_nan(value):
    """``value`` with every NaN float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write(path, text):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _git(*args):
    try:
        out = subprocess.run(
            ["git", "-C", str(HERE.parent), *args], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _environment():
    versions = {}
    for pkg in ("jwst", "stpipe", "gwcs", "numpy"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "absent"
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "src")
    if dirty:
        commit += " with uncommitted changes in src/"
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "versions": versions,
        "commit": commit,
    }


def main(argv=None):
    """Run the benchmark; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seeds", type=int, default=30, help="seeds per case (1, 2, ...)")
    parser.add_argument("--size", type=int, default=SIZE, help="image size, pixels")
    parser.add_argument("--exposures", type=int, default=EXPOSURES)
    parser.add_argument("--subsample", type=int, default=4, help="every n-th pixel per axis")
    parser.add_argument("--no-jwst", action="store_true", help="leave out jwst's step")
    parser.add_argument("--outdir", type=Path, default=HERE / "results")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"every case, {SMOKE['seeds']} seed, {SMOKE['exposures']} x {SMOKE['size']}^2",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.size < 32 or args.exposures < 2 or args.subsample < 1:
        parser.error("need --seeds >= 1, --size >= 32, --exposures >= 2, --subsample >= 1")
    if args.smoke:
        args.seeds, args.size, args.exposures = SMOKE["seeds"], SMOKE["size"], SMOKE["exposures"]
    command = "python benchmarks/bench_structure.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    args.command = command.strip()

    os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "true")  # jwst asks CRDS otherwise
    previous = logging.root.manager.disable
    # the steps' progress and the engine's warnings about skies with structure
    logging.disable(logging.WARNING)
    try:
        return _run(args)
    finally:
        logging.disable(previous)


def _run(args):
    """Run the cases and write the results (logging already quietened)."""
    env = _environment()
    contenders = [c for c in CONTENDERS if not (args.no_jwst and CONTENDERS[c] is None)]
    header = [
        f"Command: ``{args.command}`` (commit {env['commit']})",
        f"Machine: {env['machine']}, Python {env['python']}",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        f"Mosaics: {args.exposures} exposures of {args.size}x{args.size} pixels, overlap "
        f"{OVERLAP}, diffuse emission peak {DIFFUSE} MJy/sr, noise {NOISE} MJy/sr, seeds 1 to "
        f"{args.seeds}; surfaces on every {args.subsample}th pixel per axis.",
        "Cases: "
        + "; ".join(
            f"{n} ({', '.join(f'{k}={v}' for k, v in c.items()) or 'constant skies'})"
            for n, c in CASES.items()
            if n in args.cases
        )
        + ".",
    ]
    for line in header[:3]:
        print(line.replace("``", ""), flush=True)
    started = time.perf_counter()
    rows = []
    for case in args.cases:
        for seed in range(1, args.seeds + 1):
            t0 = time.perf_counter()
            new = run_case(
                case,
                seed,
                size=args.size,
                exposures=args.exposures,
                contenders=contenders,
                subsample=args.subsample,
            )
            rows.extend(new)
            print(
                f"{case} seed {seed}: "
                + ", ".join(
                    f"{r['contender']} {_fmt(r['surface'], UNIT)}/{_fmt(r['floor'], UNIT)}"
                    for r in new
                )
                + f" (1e-4 MJy/sr, error/floor; {time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    total = time.perf_counter() - started
    summary = summarize(rows)
    header.append(f"Total time {total:.0f} s.")
    args.outdir.mkdir(parents=True, exist_ok=True)
    _write(args.outdir / "structure.md", _markdown(summary, rows, header))
    _write(args.outdir / "structure.rst", _rst(summary, rows, header))
    payload = {
        "environment": env,
        "command": args.command,
        "settings": {
            "exposures": args.exposures,
            "size": args.size,
            "overlap": OVERLAP,
            "diffuse": DIFFUSE,
            "noise": NOISE,
            "seeds": args.seeds,
            "subsample": args.subsample,
            "unit": "MJy/sr",
            "cases": {n: CASES[n] for n in args.cases},
            "twin": TWIN,
        },
        "total_seconds": total,
        "summary": summary,
        "rows": rows,
    }
    _write(args.outdir / "structure.json", json.dumps(_no_nan(payload), indent=1) + "\n")
    _plot(summary, rows, args.outdir / "structure.png")
    print(_markdown(summary, [], header).split("\n\nPer seed")[0])
    return summary


if __name__ == "__main__":
    main()
