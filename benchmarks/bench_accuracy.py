"""Accuracy of the relative sky levels: jwst's skymatch against ours.

Every case is a simulated mosaic dominated by diffuse emission (a nebula
whose brightness varies across every overlap, with stars and cosmic rays)
with a known sky level per exposure. On the same in-memory models, in one
run, the script calls

* ``jwst.skymatch.SkyMatchStep`` with ``skymethod='match'`` and
  ``skystat='mode'`` (its default) and ``'median'``;
* ``skymatch_step.SkymatchStep`` with ``skymethod='match'`` and
  ``compare='statistics'`` (the default, jwst's way) and
  ``compare='differences'``.

The metric is the RMS error of the recovered *relative* sky levels: per
exposure group, recovered level minus true level, minus the mean of that
over the groups, then the root mean square (MJy/sr). The *floor* is what
the pixel errors alone allow: the ERR arrays propagated through the
weighted least-squares fit of the pair differences (see ``_noise_floor``
and docs/accuracy.rst).

Examples
--------
Full run (about 10-20 minutes on two loaded cores)::

    python benchmarks/bench_accuracy.py

Smoke test (seconds; no assertion)::

    python benchmarks/bench_accuracy.py --smoke --outdir /tmp/acc
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

#: Peak amplitude of the diffuse emission, MJy/sr. The exposure sky levels
#: are drawn in [0.1, 0.5] MJy/sr, so the emission is 10 to 50 times the sky
#: differences to be measured (a nebula mosaic).
DIFFUSE = 5.0
#: Default pixel noise, MJy/sr.
NOISE = 0.02

# name: (exposures, detectors per exposure, image size, overlap, noise)
CASES = {
    "9x512_15": (9, 1, 512, 0.15, NOISE),
    "9x512_6": (9, 1, 512, 0.06, NOISE),
    "16x512_5_noisy": (16, 1, 512, 0.05, 0.08),
    "4x2_1024": (4, 2, 1024, 0.15, NOISE),
}
SMOKE = {"smoke": (4, 1, 128, 0.15, NOISE)}

#: (label, which step, keyword arguments)
CONTENDERS = (
    ("jwst_mode", "jwst", {"skystat": "mode"}),
    ("jwst_median", "jwst", {"skystat": "median"}),
    ("ours_statistics", "ours", {"compare": "statistics", "skystat": "mode"}),
    ("ours_differences", "ours", {"compare": "differences", "skystat": "mode"}),
)
LABELS = {
    "jwst_mode": "jwst mode",
    "jwst_median": "jwst median",
    "ours_statistics": "ours statistics",
    "ours_differences": "ours differences",
    "floor": "noise floor",
    "floor_shared": "noise floor, shared pixels",
}


def _spec(name, case, seed):
    from skymatch_step.simulate import MosaicSpec

    n_exp, ndet, size, overlap, noise = case
    return MosaicSpec(
        n_exposures=n_exp,
        detectors_per_exposure=ndet,
        shape=(size, size),
        overlap=overlap,
        noise=noise,
        diffuse=DIFFUSE,
        n_stars=int(60 * n_exp * ndet * size * size / 1024**2) + 20,
        seed=seed,
        # the emission at every pixel: exactly the same sky in overlapping
        # tiles (the default coarse grid differs by ~1e-4 of its peak)
        diffuse_step=1,
    )


def _step_has_compare():
    from skymatch_step import SkymatchStep

    return "compare" in SkymatchStep.spec


def _levels_from_library(library):
    """Sky level recorded in each model of a step's output, by file name."""
    levels = {}
    with library:
        for index in range(len(library)):
            model = library.borrow(index)
            level = model.meta.background.level
            levels[model.meta.filename] = np.nan if level is None else float(level)
            library.shelve(model, index, modify=False)
    return levels


def _run_step(which, models, kwargs):
    """Call one step on copies of ``models``; sky level per file name."""
    if which == "jwst":
        from jwst.skymatch import SkyMatchStep as Step
    else:
        from skymatch_step import SkymatchStep as Step
    inputs = [copy.deepcopy(m) for m in models]
    out = Step.call(inputs, skymethod="match", subtract=False, **kwargs)
    return _levels_from_library(out)


def _engine_inputs(models):
    """Describe the models to the engine as the step does (DQ: ~DO_NOT_USE)."""
    from skymatch_step import model_input

    return [
        model_input(model, group=int(model.meta.observation.exposure_number)) for model in models
    ]


def _run_engine(models, compare):
    """Run the engine's ``match``; sky level per file name and the result."""
    from skymatch_step import SkyStatistics, match

    inputs = _engine_inputs(models)
    result = match(inputs, skymethod="match", compare=compare, stats=SkyStatistics())
    levels = {
        name: float(sum(terms)) if ok else np.nan
        for name, terms, ok in zip(result.names, result.terms, result.valid, strict=True)
    }
    return levels, result


def _noise_floor(models, result, *, shared=False):
    """RMS error of the relative group levels that the pixel errors allow.

    For each overlapping pair of groups ``(a, b)`` measured on ``n`` pixel
    differences, the variance of the mean difference is
    ``v = (<err_a**2> + <err_b**2>) / n`` (``<>``: mean over the group's
    usable pixels). The weighted least-squares offsets have covariance
    ``C = pinv(A^T W A)``, ``W = diag(1 / v)``, ``A`` the pair incidence
    matrix; projected to zero-mean levels (``P C P``, ``P = I - 1/G``),
    the floor is ``sqrt(mean(diag))``. With ``shared``, also the floor
    that counts the pixels several pairs reuse (`_pair_covariance`).
    """
    from skymatch_step import model_input

    ngroups = len(result.group_labels)
    err2_sum = np.zeros(ngroups)
    err2_n = np.zeros(ngroups)
    for model, g in zip(models, result.groups, strict=True):
        with model_input(model).pixels() as (_, usable):
            good = usable & np.isfinite(model.err)
        err = np.asarray(model.err, dtype=float)[good]
        err2_sum[g] += np.sum(err**2)
        err2_n[g] += err.size
    err2 = err2_sum / np.maximum(err2_n, 1)
    normal = np.zeros((ngroups, ngroups))
    npairs = 0
    for rec in result.pairs:
        if rec.rejected or rec.npix_a < 1:
            continue
        var = (err2[rec.a] + err2[rec.b]) / rec.npix_a
        row = np.zeros(ngroups)
        row[rec.a], row[rec.b] = 1.0, -1.0
        normal += np.outer(row, row) / var
        npairs += 1
    inverse = np.linalg.pinv(normal)
    proj = np.eye(ngroups) - 1.0 / ngroups
    floor = float(np.sqrt(np.mean(np.diag(proj @ inverse @ proj))))
    if not shared:
        return floor, npairs
    # The same weighted fit when pairs reusing the same pixels are
    # correlated: sandwich covariance M A^T W S W A M, M = pinv(A^T W A).
    used = [rec for rec in result.pairs if not rec.rejected and rec.npix_a >= 1]
    design = np.zeros((len(used), ngroups))
    for k, rec in enumerate(used):
        design[k, rec.a], design[k, rec.b] = 1.0, -1.0
    pair_cov = _pair_covariance(models, result, used, err2)
    weights = 1.0 / np.diag(pair_cov)
    gain = inverse @ (design.T * weights)
    cov = proj @ gain @ pair_cov @ gain.T @ proj
    return floor, npairs, float(np.sqrt(np.mean(np.diag(cov))))


def _pair_covariance(models, result, pairs, err2, *, cell=4):
    """Covariance of the pairs' mean differences, counting shared pixels.

    Pairs that share an image and overlap on the sky (a strip and the
    corner of four images inside it) reuse that image's pixels, so their
    mean differences are correlated: ``cov(D_p, D_q) = |S_p & S_q| *
    sum_g s_p(g) s_q(g) <err_g**2> / (n_p n_q)``, ``s_p(g)`` = +1 or -1 for
    the groups of pair ``p`` (0 otherwise), ``S_p`` its overlap area. The
    areas come from coverage maps of the groups on a common tangent-plane
    grid of ``cell`` x ``cell`` pixels (in pixels, from the cell counts).
    """
    from astropy.modeling import models as amodels

    ra0, dec0 = (float(v) for v in models[0].meta.wcs(0.0, 0.0))
    tan = amodels.Pix2Sky_TAN() | amodels.RotateNative2Celestial(ra0, dec0, 180.0)
    boxes, scales = [], []
    for model in models:
        ny, nx = model.data.shape
        ra, dec = model.meta.wcs(
            np.array([0, nx - 1, nx - 1, 0, 0.0]), np.array([0, 0, ny - 1, ny - 1, 1.0])
        )
        x, y = tan.inverse(ra, dec)
        boxes.append((x[:4].min(), x[:4].max(), y[:4].min(), y[:4].max()))
        scales.append(np.hypot(x[4] - x[0], y[4] - y[0]))  # degrees per pixel
    step = cell * float(np.median(scales))
    x0, y0 = min(b[0] for b in boxes), min(b[2] for b in boxes)
    gx = np.arange(x0, max(b[1] for b in boxes) + step, step)
    gy = np.arange(y0, max(b[3] for b in boxes) + step, step)
    ngroups = len(result.group_labels)
    cover = np.zeros((ngroups, gy.size, gx.size), dtype=bool)
    for model, box, g in zip(models, boxes, result.groups, strict=True):
        ix = slice(int((box[0] - x0) // step), int((box[1] - x0) // step) + 2)
        iy = slice(int((box[2] - y0) // step), int((box[3] - y0) // step) + 2)
        xx, yy = np.meshgrid(gx[ix], gy[iy])
        px, py = model.meta.wcs.invert(*tan(xx, yy), with_bounding_box=False)
        ny, nx = model.data.shape
        cover[g, iy, ix] |= (px >= 0) & (px <= nx - 1) & (py >= 0) & (py <= ny - 1)
    sign = np.zeros((len(pairs), ngroups))
    areas = []
    for k, rec in enumerate(pairs):
        sign[k, rec.a], sign[k, rec.b] = 1.0, -1.0
        areas.append(cover[rec.a] & cover[rec.b])
    areas = np.array(areas).reshape(len(pairs), -1).astype(float)
    counts = areas.sum(axis=1)
    shared = areas @ areas.T  # cells common to two pairs' overlaps
    npix = np.array([rec.npix_a for rec in pairs], dtype=float)
    frac = shared / np.sqrt(np.outer(counts, counts))  # |S_p & S_q| / sqrt(|S_p| |S_q|)
    noise = (sign * err2) @ sign.T  # sum_g s_p(g) s_q(g) <err_g**2>
    return frac * noise / np.sqrt(np.outer(npix, npix))


def _relative_rms(levels, truth):
    """RMS of the recovered minus true group levels, after removing their mean."""
    groups = sorted(set(truth.exposure.values()))
    errors = []
    for g in groups:
        names = [n for n, e in truth.exposure.items() if e == g]
        found = np.mean([levels[n] for n in names])
        errors.append(found - truth.sky[names[0]])
    errors = np.asarray(errors)
    if not np.all(np.isfinite(errors)):
        return float("nan")
    errors -= errors.mean()
    return float(np.sqrt(np.mean(errors**2)))


def run_case(name, case, seed, *, use_step):
    """Simulate one mosaic and measure every contender on it."""
    from skymatch_step.simulate import simulate_mosaic

    t0 = time.perf_counter()
    models, truth = simulate_mosaic(_spec(name, case, seed))
    row = {"case": name, "seed": seed, "simulate_s": time.perf_counter() - t0}
    engine_levels, engine_result = _run_engine(models, "differences")
    for label, which, kwargs in CONTENDERS:
        t0 = time.perf_counter()
        if which == "ours" and not use_step:
            if kwargs["compare"] == "differences":
                levels = engine_levels
            else:
                levels, _ = _run_engine(models, kwargs["compare"])
        else:
            levels = _run_step(which, models, kwargs)
        row[f"{label}_s"] = time.perf_counter() - t0
        row[label] = _relative_rms(levels, truth)
        if label == "ours_differences":
            step_rms = row[label]
    row["engine_differences"] = _relative_rms(engine_levels, truth)
    row["step_matches_engine"] = bool(np.isclose(step_rms, row["engine_differences"]))
    row["floor"], row["pairs"], row["floor_shared"] = _noise_floor(
        models, engine_result, shared=True
    )
    row["pair_pixels"] = [int(r.npix_a) for r in engine_result.pairs if not r.rejected]
    row["differences_over_floor"] = row["ours_differences"] / row["floor"]
    row["differences_over_floor_shared"] = row["ours_differences"] / row["floor_shared"]
    row["jwst_mode_over_differences"] = row["jwst_mode"] / row["ours_differences"]
    row["groups"] = len(engine_result.group_labels)
    row["images"] = len(models)
    for m in models:
        m.close()
    return row


def _summary(rows):
    """Quadratic mean over the seeds of each case (rows with seed 'all')."""
    out = []
    for name in dict.fromkeys(r["case"] for r in rows):
        sel = [r for r in rows if r["case"] == name]
        s = {"case": name, "seed": "all"}
        for key in (*(c[0] for c in CONTENDERS), "floor", "floor_shared"):
            s[key] = float(np.sqrt(np.mean([r[key] ** 2 for r in sel])))
        s["differences_over_floor"] = s["ours_differences"] / s["floor"]
        s["differences_over_floor_shared"] = s["ours_differences"] / s["floor_shared"]
        s["jwst_mode_over_differences"] = s["jwst_mode"] / s["ours_differences"]
        out.append(s)
    return out


COLUMNS = (
    ("case", "Case", None),
    ("seed", "Seed", None),
    ("jwst_mode", "jwst mode", 1e3),
    ("jwst_median", "jwst median", 1e3),
    ("ours_statistics", "ours statistics", 1e3),
    ("ours_differences", "ours differences", 1e3),
    ("floor", "floor", 1e3),
    ("floor_shared", "floor, shared pixels", 1e3),
    ("differences_over_floor", "differences / floor", 1),
    ("differences_over_floor_shared", "differences / shared floor", 1),
    ("jwst_mode_over_differences", "jwst mode / differences", 1),
)


def _cells(row):
    cells = []
    for key, _, scale in COLUMNS:
        value = row[key]
        if scale is None:
            cells.append(str(value))
        elif scale == 1:
            cells.append(f"{value:.2f}")
        else:
            cells.append(f"{value * scale:.3g}")
    return cells


def _markdown(rows, summary, header):
    lines = [*header, ""]
    lines.append("| " + " | ".join(title for _, title, _ in COLUMNS) + " |")
    lines.append("|" + "|".join("---" for _ in COLUMNS) + "|")
    for row in [*rows, *summary]:
        cells = _cells(row)
        if row["seed"] == "all":
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "RMS errors in 10^-3 MJy/sr; seed 'all': quadratic mean over the seeds."]
    return "\n".join(lines) + "\n"


def _rst(rows, summary, header):
    table = [[title for _, title, _ in COLUMNS]] + [_cells(r) for r in [*rows, *summary]]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    rule = "  ".join("=" * w for w in widths)

    def line(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    lines = [*(f"| {h}" for h in header), "", rule, line(table[0]), rule]
    lines += [line(r) for r in table[1:]]
    lines += [rule, "", "RMS errors in 10\\ :sup:`-3` MJy/sr; seed ``all``: quadratic mean over"]
    lines += ["the seeds."]
    return "\n".join(lines) + "\n"


def _plot(rows, summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["case"] for s in summary]
    x = np.arange(len(names))
    keys = (*(c[0] for c in CONTENDERS), "floor", "floor_shared")
    markers = {"jwst_mode": "s", "jwst_median": "D", "ours_statistics": "^"}
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for k, key in enumerate(keys):
        dx = (k - (len(keys) - 1) / 2) * 0.1
        per_seed = [[r[key] for r in rows if r["case"] == n] for n in names]
        for i, values in enumerate(per_seed):
            ax.scatter([x[i] + dx] * len(values), values, s=12, alpha=0.35, color=f"C{k}")
        ax.plot(
            x + dx,
            [s[key] for s in summary],
            linestyle="--" if key.startswith("floor") else "-",
            marker=markers.get(key, "o"),
            color={"floor": "k", "floor_shared": "0.5"}.get(key, f"C{k}"),
            label=LABELS[key],
        )
    ax.set_yscale("log")
    ax.set_xticks(x, names)
    ax.set_ylabel("RMS error of relative sky levels (MJy/sr)")
    ax.set_title("Line: quadratic mean over seeds; dots: single seeds")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", axis="y", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _write(path, text):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _git_commit():
    try:
        out = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _environment():
    versions = {pkg: importlib.metadata.version(pkg) for pkg in ("jwst", "stpipe", "gwcs", "numpy")}
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "versions": versions,
        "commit": _git_commit(),
    }


def main(argv=None):
    """Run the benchmark; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seeds", type=int, default=3, help="seeds per case (1, 2, ...)")
    parser.add_argument("--outdir", type=Path, default=HERE / "results")
    parser.add_argument("--smoke", action="store_true", help="one tiny case, one seed")
    args = parser.parse_args(argv)
    args.argv = argv

    os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "true")  # jwst asks CRDS otherwise
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)  # the steps' progress messages
    try:
        return _run(args)
    finally:
        logging.disable(previous)


def _run(args):
    """Run the cases and write the results (logging already quietened)."""
    argv = args.argv

    cases = SMOKE if args.smoke else {n: CASES[n] for n in args.cases}
    seeds = 1 if args.smoke else args.seeds
    use_step = _step_has_compare()
    env = _environment()
    command = "python benchmarks/bench_accuracy.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    print(f"Machine: {env['machine']}, Python {env['python']}")
    print("Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    print(f"Command: {command.strip()} (commit {env['commit']})")
    if not use_step:
        print("NOTE: SkymatchStep has no 'compare' parameter yet; ours runs through match().")

    rows = []
    for name, case in cases.items():
        for seed in range(1, seeds + 1):
            t0 = time.perf_counter()
            row = run_case(name, case, seed, use_step=use_step)
            rows.append(row)
            print(
                f"{name} seed {seed}: "
                + ", ".join(f"{c[0]} {row[c[0]]:.2e}" for c in CONTENDERS)
                + f", floor {row['floor']:.2e} (diff/floor {row['differences_over_floor']:.2f},"
                f" jwst/diff {row['jwst_mode_over_differences']:.0f};"
                f" {time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    summary = _summary(rows)
    met = all(s["differences_over_floor"] <= 1.5 for s in summary)
    met_all = all(r["differences_over_floor"] <= 1.5 for r in rows)

    header = [
        f"Machine: {env['machine']}, Python {env['python']}",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        f"Command: ``{command.strip()}`` (commit {env['commit']})",
        f"Diffuse emission peak {DIFFUSE} MJy/sr; exposure skies in [0.1, 0.5] MJy/sr.",
        "Target differences/floor <= 1.5: "
        f"{'met' if met else 'NOT met'} on the per-case quadratic means, "
        f"{'met' if met_all else 'NOT met'} on every single seed.",
    ]
    args.outdir.mkdir(parents=True, exist_ok=True)
    _write(args.outdir / "accuracy.md", _markdown(rows, summary, header))
    _write(args.outdir / "accuracy.rst", _rst(rows, summary, header))
    payload = {
        "environment": env,
        "command": command.strip(),
        "step_called_for_ours": use_step,
        "diffuse": DIFFUSE,
        "cases": {
            n: dict(zip(("exposures", "detectors", "size", "overlap", "noise"), c, strict=True))
            for n, c in cases.items()
        },
        "rows": rows,
        "summary": summary,
        "target_met_on_means": met,
        "target_met_every_seed": met_all,
    }
    _write(args.outdir / "accuracy.json", json.dumps(payload, indent=1) + "\n")
    _plot(rows, summary, args.outdir / "accuracy.png")
    print(_markdown(rows, summary, header))


if __name__ == "__main__":
    main()
