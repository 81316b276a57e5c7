"""Sky matching against peer tools on real and simulated mosaics, in one run.

Contenders (all on the same images, in one process, in alternating order
across ``--repeats``; the table gives each one's median wall time):

* ``none``: no correction;
* ``jwst default (mode)`` and ``jwst median``: ``jwst.skymatch.SkyMatchStep``
  with ``skymethod='match'``, ``skystat='mode'`` / ``'median'``;
* ``reproject``: astropy reproject's background matching (what
  ``reproject_and_coadd(match_background=True)`` computes, without the
  coadd): median of each overlap's difference, offsets solved by its SGD;
* ``Montage levels`` / ``Montage planes``: MontagePy's mProjExec, mOverlaps,
  mDiffExec, mFitExec, mBgModel (level only / planes);
* ``pjpipe level``, ``pjpipe level+slope (as shipped)`` and ``(fixed)``:
  PHANGS pjpipe's ``LevelMatchStep.calculate_delta`` and
  ``find_optimum_deltas``; "fixed" corrects pjpipe 1.3.0's row/column swap of
  the overlap coordinates in the plane fit;
* ``ours constant`` / ``ours plane``: ``skymatch_step.SkymatchStep`` with
  ``skymethod='match'``, ``compare='differences'`` and
  ``sky_model='constant'`` / ``'plane'`` (``n/a`` while the installed step
  has no ``sky_model``).

Every contender's correction becomes a sky surface ``S_k`` on each original
image ``k`` (a constant; a plane evaluated at each pixel through the WCSs
in the tool's own pixel frame; for the steps, input minus output of a run
with ``subtract=True``); the corrected image is ``image - S_k``.

Metrics:

* real data ("seams", in the images' units): for every overlapping pair,
  the second image is resampled (bilinear) onto the first's pixels in their
  overlap, the overlap is cut in two halves along its long axis and the
  median of the corrected difference taken in each half; seams = RMS of
  those medians over all halves of all pairs;
* simulated mosaics (vs truth, 1e-4 MJy/sr): RMS over all usable pixels of
  ``S_k - true_k`` after removing the best common plane (least squares over
  all pixels of all images in the mosaic tangent plane: no relative method
  can determine a common offset and gradient).

Timings cover each tool from its inputs (models in memory for the steps;
arrays and WCSs for reproject; FITS files already written for Montage and
pjpipe) to its corrections; writing the tools' input files and evaluating
the surfaces are not timed. See docs/peers.rst for the installation of the
peers, the data and the pitfalls.

Examples
--------
Everything (the M17 tiles: see docs/peers.rst)::

    python benchmarks/bench_peers.py --data /path/to/m17

A tiny simulated case with every installed contender (< 1 minute)::

    python benchmarks/bench_peers.py --smoke --outdir /tmp/peers
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

#: Simulated cases: MosaicSpec keywords on top of `SIM_BASE`.
SIM_BASE = {
    "n_exposures": 9,
    "shape": (512, 512),
    "overlap": 0.15,
    "diffuse": 5.0,
    "noise": 0.02,
    "n_stars": 155,
    # The peers need a FITS WCS: no optical distortion, so that a TAN
    # header reproduces the simulated gWCS exactly.
    "distortion": 0.0,
    # The emission at every pixel: the same sky in overlapping tiles.
    "diffuse_step": 1,
}
SKY_GRADIENT = 0.05  # MJy/sr RMS change of the sky across an exposure
SIM_CASES = {
    "sim-flat": ("9 x 512^2, 15% overlap, diffuse 5, noise 0.02, constant skies", {}),
    "sim-planes": (
        f"as sim-flat, with sky planes (sky_gradient={SKY_GRADIENT})",
        {"sky_gradient": SKY_GRADIENT},
    ),
    "sim-structured": (
        f"as sim-planes, plus seeing_scatter=0.3 and striping=0.01 (sky_gradient={SKY_GRADIENT})",
        {"sky_gradient": SKY_GRADIENT, "seeing_scatter": 0.3, "striping": 0.01},
    ),
}
SMOKE_CASE = (
    "smoke: 4 x 128^2, 15% overlap, diffuse 5, noise 0.02, sky planes",
    {"n_exposures": 4, "shape": (128, 128), "n_stars": 20, "sky_gradient": SKY_GRADIENT},
)

#: (key, label, family)
CONTENDERS = (
    ("none", "none (no correction)", "none"),
    ("jwst_mode", "jwst default (mode)", "jwst"),
    ("jwst_median", "jwst median", "jwst"),
    ("reproject", "reproject (match_background, level)", "reproject"),
    ("montage_levels", "Montage levels", "montage"),
    ("montage_planes", "Montage planes", "montage"),
    ("pjpipe_level", "pjpipe level", "pjpipe"),
    ("pjpipe_slope_shipped", "pjpipe level+slope (as shipped)", "pjpipe"),
    ("pjpipe_slope_fixed", "pjpipe level+slope (fixed)", "pjpipe"),
    ("ours_constant", "ours, differences, constant", "ours"),
    ("ours_plane", "ours, differences, plane", "ours"),
)
LABELS = {key: label for key, label, _ in CONTENDERS}
REFERENCE = "ours_constant"

#: What each family needs, and what to install when it is missing.
REQUIREMENTS = {
    "jwst": (("jwst",), "pip install jwst (comes with this project)"),
    "ours": (("skymatch_step",), "pip install -e . (this project)"),
    "reproject": (("reproject", "shapely"), "pip install reproject shapely"),
    "montage": (("MontagePy",), "pip install MontagePy"),
    "pjpipe": (
        (
            "pjpipe",
            "reproject",
            "stdatamodels",
            "photutils",
            "shapely",
            "tqdm",
            "threadpoolctl",
            "matplotlib",
        ),
        "pip install reproject shapely photutils tqdm threadpoolctl matplotlib "
        "&& pip install --no-deps pjpipe==1.3.0",
    ),
}

#: Panels of the real-data figure.
FIGURE_PANELS = (
    "none",
    "jwst_mode",
    "reproject",
    "montage_planes",
    "ours_constant",
    "ours_plane",
)


# ---------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------
@dataclass
class Case:
    """One mosaic and everything the contenders and the metrics need."""

    name: str
    kind: str  # "real" or "sim"
    description: str
    unit: str
    models: list
    data: list  # float32 arrays, NaN where unusable
    usable: list  # bool arrays
    wcs: list  # astropy.wcs.WCS (exact for real data, fitted TAN for simulations)
    headers: list  # FITS headers to write for the file-based tools
    err: list  # float32 arrays
    names: list
    workdir: Path
    truth: object = None
    seed: int | None = None
    source: str = ""
    _sky: dict = field(default_factory=dict)
    _pairs: list | None = None
    files: dict = field(default_factory=dict)

    def sky(self, k):
        """(ra, dec) of every pixel of image ``k`` (cached)."""
        if k not in self._sky:
            ny, nx = self.data[k].shape
            yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
            self._sky[k] = self.wcs[k].wcs_pix2world(xx, yy, 0)
        return self._sky[k]


def _usable(model):
    from stdatamodels.jwst.datamodels import dqflags

    data = np.asarray(model.data)
    return np.isfinite(data) & ((np.asarray(model.dq) & dqflags.pixel["DO_NOT_USE"]) == 0)


def _case_from_models(name, kind, description, unit, models, wcses, headers, workdir, **extra):
    data, usable, err = [], [], []
    for m in models:
        good = _usable(m)
        d = np.array(m.data, dtype=np.float32)
        d[~good] = np.nan
        data.append(d)
        usable.append(good)
        err.append(np.array(m.err, dtype=np.float32))
    names = [m.meta.filename for m in models]
    return Case(
        name, kind, description, unit, models, data, usable, wcses, headers, err, names,
        workdir, **extra,
    )  # fmt: skip


def real_case(directory, workdir, label=None):
    """The tiles of ``directory`` (see realdata.py) as a case named ``label``."""
    sys.path.insert(0, str(HERE))
    import realdata

    tiles = realdata.read_tiles(directory)
    models = realdata.tile_models(tiles)
    label = label or realdata.set_label(directory)
    unit = str(tiles[0].header.get("BUNIT", "DN")).strip() or "DN"
    desc = (
        f"{len(tiles)} tiles from {Path(directory).name} "
        f"({tiles[0].shape[1]}x{tiles[0].shape[0]} px; noise from {tiles[0].noise_source})"
    )
    source = realdata.SOURCES.get(label, str(directory))
    return _case_from_models(
        label, "real", desc, unit, models, [t.wcs for t in tiles], [t.header for t in tiles],
        workdir / label, source=source,
    )  # fmt: skip


def _data_arg(text):
    """``DIR`` or ``LABEL=DIR`` (a label without "/"): (label or None, Path)."""
    label, sep, rest = text.partition("=")
    if sep and label and "/" not in label:
        return label, Path(rest)
    return None, Path(text)


def sim_case(name, description, extra, seed, workdir):
    """A simulated mosaic (in memory) as a case."""
    from skymatch_step.simulate import MosaicSpec, simulate_mosaic

    spec = MosaicSpec(**{**SIM_BASE, **extra, "seed": seed})
    models, truth = simulate_mosaic(spec)
    wcses, headers = [], []
    for m in models:
        w = _fits_wcs_from_gwcs(m.meta.wcs, m.data.shape)
        wcses.append(w)
        hdr = _cd_header(w)
        hdr["BUNIT"] = "MJy/sr"
        headers.append(hdr)
    return _case_from_models(
        name, "sim", description, "MJy/sr", models, wcses, headers,
        workdir / f"{name}_s{seed}", truth=truth, seed=seed,
    )  # fmt: skip


def _fits_wcs_from_gwcs(gw, shape, n=21):
    """TAN FITS WCS fitted to an undistorted gWCS; raises if it is off by > 1e-4 pixel."""
    from astropy.coordinates import SkyCoord
    from astropy.wcs.utils import fit_wcs_from_points

    ny, nx = shape
    xs, ys = np.meshgrid(np.linspace(0, nx - 1, n), np.linspace(0, ny - 1, n))
    xs, ys = xs.ravel(), ys.ravel()
    ra, dec = gw(xs, ys, with_bounding_box=False)
    centre = SkyCoord(*gw((nx - 1) / 2.0, (ny - 1) / 2.0, with_bounding_box=False), unit="deg")
    w = fit_wcs_from_points((xs, ys), SkyCoord(ra, dec, unit="deg"), proj_point=centre)
    w.pixel_shape = (nx, ny)
    xb, yb = w.wcs_world2pix(ra, dec, 0)
    err = float(np.max(np.hypot(xb - xs, yb - ys)))
    if err > 1e-4:
        raise ValueError(f"TAN header off the simulated gWCS by {err:.3g} pixel (distortion?)")
    return w


def _cd_header(w):
    """FITS header with an explicit CDi_j matrix (Montage reads CDELT=1 from PC + CDELT=1)."""
    hdr = w.to_header()
    cd = w.wcs.cd if w.wcs.has_cd() else w.wcs.get_pc() * w.wcs.cdelt[:, None]
    for key in ("PC1_1", "PC1_2", "PC2_1", "PC2_2", "CDELT1", "CDELT2"):
        hdr.remove(key, ignore_missing=True)
    for i in range(2):
        for j in range(2):
            hdr[f"CD{i + 1}_{j + 1}"] = float(cd[i, j])
    return hdr


def prepare_files(case):
    """Write the FITS inputs of the file-based tools (not timed).

    ``plain/``: one primary HDU per image (Montage); ``pj/``: SCI and ERR
    extensions (pjpipe's stacked-image reader). NaN where unusable. Real
    tiles keep their archive header; simulated ones get a CD-matrix TAN
    header.
    """
    from astropy.io import fits

    if case.files:
        return case.files
    plain, pj = case.workdir / "plain", case.workdir / "pj"
    for d in (plain, pj):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    files = {"plain": [], "pj": []}
    for k, (name, data, err, hdr) in enumerate(
        zip(case.names, case.data, case.err, case.headers, strict=True)
    ):
        stem = Path(name).stem.removesuffix("_cal")
        hdr = _image_header(hdr)
        f = plain / f"{stem}.fits"
        fits.PrimaryHDU(data, header=hdr).writeto(f, overwrite=True)
        files["plain"].append(f)
        # pjpipe splits names on "_": keep the index first and a suffix last
        pf = pj / f"i{k:03d}_{stem.replace('_', '-')}_cal.fits"
        fits.HDUList(
            [
                fits.PrimaryHDU(),
                fits.ImageHDU(data, header=hdr, name="SCI"),
                fits.ImageHDU(err, header=hdr, name="ERR"),
            ]
        ).writeto(pf, overwrite=True)
        files["pj"].append(pf)
    case.files = files
    return files


def _image_header(hdr):
    """Copy of ``hdr`` without the structural keywords astropy writes itself."""
    hdr = hdr.copy()
    for key in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BLOCKED"):
        hdr.remove(key, ignore_missing=True)
    return hdr


# ---------------------------------------------------------------------------
# contenders: each returns (seconds, surfaces, note); surfaces[k] is a number
# or an array of image k's shape
# ---------------------------------------------------------------------------
class NotAvailable(Exception):
    """A contender that cannot run here (missing package or parameter)."""


def missing_packages(family):
    names, _ = REQUIREMENTS.get(family, ((), ""))
    return [n for n in names if n not in sys.modules and importlib.util.find_spec(n) is None]


def run_none(case, rep):
    return 0.0, [0.0] * len(case.data), ""


def _step_surfaces(case, originals, library):
    """Input minus output of a step run with subtract=True, per input image."""
    out = {}
    with library:
        for index in range(len(library)):
            model = library.borrow(index)
            out[model.meta.filename] = np.array(model.data, dtype=np.float64)
            library.shelve(model, index, modify=False)
    surfaces = []
    for name, orig in zip(case.names, originals, strict=True):
        surfaces.append(np.asarray(orig, dtype=np.float64) - out[name])
    return surfaces


def _run_step(step_class, case, kwargs):
    inputs = [copy.deepcopy(m) for m in case.models]
    originals = [np.array(m.data) for m in case.models]
    t0 = time.perf_counter()
    library = step_class.call(inputs, **kwargs)
    seconds = time.perf_counter() - t0
    return seconds, _step_surfaces(case, originals, library)


def run_jwst(case, rep, skystat):
    from jwst.skymatch import SkyMatchStep

    kwargs = {"skymethod": "match", "skystat": skystat, "subtract": True}
    seconds, surfaces = _run_step(SkyMatchStep, case, kwargs)
    return seconds, surfaces, ""


def run_ours(case, rep, sky_model):
    from skymatch_step import SkymatchStep

    kwargs = {"skymethod": "match", "compare": "differences", "subtract": True}
    try:
        seconds, surfaces = _run_step(SkymatchStep, case, {**kwargs, "sky_model": sky_model})
        return seconds, surfaces, ""
    except Exception as err:
        if "sky_model" not in str(err):
            raise
    if sky_model != "constant":
        raise NotAvailable("n/a (sky_model not available)")
    seconds, surfaces = _run_step(SkymatchStep, case, kwargs)
    return seconds, surfaces, "sky_model not available: the step's default (constant) sky"


def reproject_offsets(inputs, seed=0):
    """Constant corrections as ``reproject_and_coadd(match_background=True)`` computes them.

    Same steps as reproject 0.21's coadd (optimal celestial WCS, each input
    reprojected with reproject_interp onto its cutout of the output grid,
    `determine_offset_matrix` = median of each overlap's difference,
    `solve_corrections_sgd`), without the coadd. These functions are
    private to reproject. Correction k is what reproject subtracts from
    image k; the corrections have zero mean.
    """
    from astropy.wcs.utils import pixel_to_pixel
    from reproject import reproject_interp
    from reproject._array_utils import sample_array_edges
    from reproject.mosaicking import find_optimal_celestial_wcs
    from reproject.mosaicking._background import determine_offset_matrix, solve_corrections_sgd
    from reproject.mosaicking._subset_array import ReprojectedArraySubset

    wcs_out, shape_out = find_optimal_celestial_wcs(inputs)
    arrays = []
    for array_in, wcs_in in inputs:
        edges = sample_array_edges(array_in.shape, n_samples=11)[::-1]
        edges_out = pixel_to_pixel(wcs_in, wcs_out, *edges)[::-1]
        bounds = []
        for idim in range(2):
            imin = max(0, int(np.floor(edges_out[idim].min() + 0.5)))
            imax = min(shape_out[idim], int(np.ceil(edges_out[idim].max() + 0.5)))
            bounds.append((imin, imax))
        slc = tuple(slice(a, b) for a, b in bounds)
        arr, fp = reproject_interp(
            (array_in, wcs_in),
            output_projection=wcs_out[slc],
            shape_out=tuple(b - a for a, b in bounds),
        )
        bad = np.isnan(arr)
        arr[bad] = 0.0
        fp[bad] = 0.0
        arrays.append(ReprojectedArraySubset(arr, fp, bounds))
    matrix = determine_offset_matrix(arrays)
    # solve_corrections_sgd shuffles with numpy's global generator
    np.random.seed(seed)  # noqa: NPY002
    return solve_corrections_sgd(matrix)


def run_reproject(case, rep):
    inputs = [(d.astype(np.float64), w) for d, w in zip(case.data, case.wcs, strict=True)]
    t0 = time.perf_counter()
    corrections = reproject_offsets(inputs)
    seconds = time.perf_counter() - t0
    return seconds, [float(c) for c in corrections], ""


def _montage_ok(ret, name):
    if str(ret.get("status", "1")) != "0":
        raise RuntimeError(f"{name} failed: {ret}")
    return ret


def run_montage(case, rep, level_only):
    from astropy.io import ascii, fits
    from astropy.wcs import WCS
    from MontagePy.main import (
        mBgModel,
        mDiffExec,
        mFitExec,
        mImgtbl,
        mMakeHdr,
        mOverlaps,
        mProjExec,
    )

    files = prepare_files(case)
    raw = str(files["plain"][0].parent)
    w = case.workdir / f"montage_{'levels' if level_only else 'planes'}"
    shutil.rmtree(w, ignore_errors=True)
    proj, diff = w / "proj", w / "diff"
    for d in (w, proj, diff):
        d.mkdir(parents=True, exist_ok=True)

    def j(name):
        return str(w / name)

    t0 = time.perf_counter()
    _montage_ok(mImgtbl(raw, j("raw.tbl")), "mImgtbl")
    _montage_ok(mMakeHdr(j("raw.tbl"), j("template.hdr")), "mMakeHdr")
    _montage_ok(mProjExec(raw, j("raw.tbl"), j("template.hdr"), projdir=str(proj)), "mProjExec")
    _montage_ok(mImgtbl(str(proj), j("proj.tbl")), "mImgtbl proj")
    _montage_ok(mOverlaps(j("proj.tbl"), j("diffs.tbl")), "mOverlaps")
    _montage_ok(
        mDiffExec(str(proj), j("diffs.tbl"), j("template.hdr"), diffdir=str(diff)), "mDiffExec"
    )
    _montage_ok(
        mFitExec(j("diffs.tbl"), j("fits.tbl"), diffdir=str(diff), levelOnly=level_only),
        "mFitExec",
    )
    _montage_ok(
        mBgModel(
            j("proj.tbl"),
            j("fits.tbl"),
            j("corrections.tbl"),
            noslope=level_only,
            useall=False,
            niteration=10000,
        ),
        "mBgModel",
    )
    seconds = time.perf_counter() - t0

    # corrections.tbl: id a b c, id = cntr of proj.tbl; the plane is
    # a * (i - CRPIX1) + b * (j - CRPIX2) + c in the template's 0-based
    # pixels (i column, j row) and its CRPIX.
    ptbl = ascii.read(j("proj.tbl"), format="ipac")
    ctbl = ascii.read(j("corrections.tbl"), format="ipac")
    id2name = {int(r["cntr"]): re.sub(r"^hdu\d+_", "", Path(str(r["fname"])).name) for r in ptbl}
    planes = {id2name[int(r["id"])]: (float(r["a"]), float(r["b"]), float(r["c"])) for r in ctbl}
    thdr = fits.Header.fromtextfile(j("template.hdr"))
    tw = WCS(thdr)
    crpix = (float(thdr["CRPIX1"]), float(thdr["CRPIX2"]))
    surfaces, missing = [], []
    for k, f in enumerate(files["plain"]):
        if f.name not in planes:
            missing.append(f.name)
            surfaces.append(0.0)
            continue
        a, b, c = planes[f.name]
        if a == 0.0 and b == 0.0:
            surfaces.append(c)
            continue
        ra, dec = case.sky(k)
        x, y = tw.wcs_world2pix(ra, dec, 0)
        surfaces.append(a * (x - crpix[0]) + b * (y - crpix[1]) + c)
    note = f"no correction for {len(missing)} image(s)" if missing else ""
    return seconds, surfaces, note


def import_pjpipe_level_match(bounds_fix=False):
    """pjpipe's level_match_step, without running pjpipe/__init__.py.

    pjpipe's ``__init__`` imports every step (one needs ``spacepylot``,
    not on PyPI), sets ``CRDS_SERVER_URL`` and writes a log file into the
    working directory, so a stub parent package is registered instead
    (``pjpipe/utils/utils.py`` reads its ``__version__``). With
    ``bounds_fix``, an in-memory copy of the module with the row/column
    swap in ``get_level_match`` corrected (pjpipe 1.3.0 adds
    ``diff.bounds[1][0]`` to the row index and ``bounds[0][0]`` to the
    column index; bounds are in numpy (row, column) order). The swap
    shifts the overlap's coordinates in the 'level+slope' fit and so
    biases its intercepts; 'level' does not use them. Nothing is written
    to disk.
    """
    if "pjpipe" not in sys.modules:
        spec = importlib.util.find_spec("pjpipe")  # locates without executing __init__
        stub = types.ModuleType("pjpipe")
        stub.__path__ = list(spec.submodule_search_locations)
        stub.__version__ = importlib.metadata.version("pjpipe")
        stub.__spec__ = spec
        sys.modules["pjpipe"] = stub
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reproject.mosaicking.subset_array is private
        from pjpipe.level_match import level_match_step as lms
    if not bounds_fix:
        return lms
    name = "pjpipe.level_match._level_match_step_boundsfix"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("pjpipe.level_match.level_match_step")
    src = Path(spec.origin).read_text()
    bad = (
        "diff_ii = ii[valid_idx] + diff.bounds[1][0]",
        "diff_jj = jj[valid_idx] + diff.bounds[0][0]",
    )
    good = (
        "diff_ii = ii[valid_idx] + diff.bounds[0][0]",
        "diff_jj = jj[valid_idx] + diff.bounds[1][0]",
    )
    for b, g in zip(bad, good, strict=True):
        if b not in src:
            raise NotAvailable("n/a (pjpipe source changed: the bounds fix does not apply)")
        src = src.replace(b, g)
    mod = types.ModuleType(name)
    mod.__package__ = "pjpipe.level_match"
    mod.__file__ = spec.origin
    sys.modules[name] = mod
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(src, spec.origin, "exec"), mod.__dict__)
    return mod


def run_pjpipe(case, rep, fit_type, bounds_fix=False):
    lms = import_pjpipe_level_match(bounds_fix)
    files = [str(f) for f in prepare_files(case)["pj"]]
    tag = fit_type.replace("+", "_") + ("_fixed" if bounds_fix else "")
    out = case.workdir / f"pjpipe_{tag}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cwd = os.getcwd()
    pj_log = logging.getLogger("pjpipe")
    t0 = time.perf_counter()
    try:
        # the 'level+slope' fit always saves a plot named "None_plane_fit.*"
        # into the working directory
        os.chdir(out)
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            pj_log.disabled = True
            step = lms.LevelMatchStep(
                in_dir=str(Path(files[0]).parent),
                out_dir=str(out),
                step_ext="cal",
                procs=1,
                band="F200W",
                fit_type_dithers=fit_type,
                fit_type_mosaic_tiles=fit_type,
            )
            step.plot_dir = None  # no per-pair plots (honoured with procs set)
            dmat, npix, rms, lin, valid, owcs, oshape, _, _ = step.calculate_delta(
                files, fit_type=fit_type, stacked_image=True, procs=1
            )
            # find_optimum_deltas draws from numpy's and Python's global generators
            np.random.seed(0)  # noqa: NPY002
            random.seed(0)
            deltas = step.find_optimum_deltas(
                dmat, npix, rms, lin, valid, fit_type=fit_type, ref_idx=None
            )
    finally:
        os.chdir(cwd)
        pj_log.disabled = False
    seconds = time.perf_counter() - t0
    deltas = np.asarray(deltas, dtype=float)
    if fit_type == "level":
        return seconds, [float(d[0]) for d in deltas], ""
    # plane in the optimal WCS's 0-based pixels about its centre pixel
    ref_y, ref_x = np.asarray(oshape) // 2
    surfaces = []
    for k, d in enumerate(deltas):
        ra, dec = case.sky(k)
        x, y = owcs.wcs_world2pix(ra, dec, 0)
        surfaces.append(d[0] * (x - ref_x) + d[1] * (y - ref_y) + d[2])
    return seconds, surfaces, ""


RUNNERS = {
    "none": run_none,
    "jwst_mode": lambda c, r: run_jwst(c, r, "mode"),
    "jwst_median": lambda c, r: run_jwst(c, r, "median"),
    "reproject": run_reproject,
    "montage_levels": lambda c, r: run_montage(c, r, True),
    "montage_planes": lambda c, r: run_montage(c, r, False),
    "pjpipe_level": lambda c, r: run_pjpipe(c, r, "level"),
    "pjpipe_slope_shipped": lambda c, r: run_pjpipe(c, r, "level+slope"),
    "pjpipe_slope_fixed": lambda c, r: run_pjpipe(c, r, "level+slope", bounds_fix=True),
    "ours_constant": lambda c, r: run_ours(c, r, "constant"),
    "ours_plane": lambda c, r: run_ours(c, r, "plane"),
}
FAMILY = {key: family for key, _, family in CONTENDERS}


# ---------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------
def _surface(s, shape):
    return np.broadcast_to(np.asarray(s, dtype=np.float64), shape)


def overlap_pairs(case):
    """For each overlapping pair (i < j): tile i's overlap pixels, where they fall in j, halves.

    The overlap is the set of tile-i pixels whose position in tile j lies
    inside j's pixel grid (for bilinear interpolation); its long axis is
    the principal axis of those pixels' coordinates, and the halves are
    split at the median along it.
    """
    if case._pairs is not None:
        return case._pairs
    from astropy.wcs.utils import pixel_to_pixel

    pairs = []
    n = len(case.data)
    for i in range(n):
        ny, nx = case.data[i].shape
        yy, xx = np.mgrid[0:ny, 0:nx]
        for j in range(i + 1, n):
            nyj, nxj = case.data[j].shape
            xj, yj = pixel_to_pixel(case.wcs[i], case.wcs[j], xx.astype(float), yy.astype(float))
            inside = (xj >= 0) & (xj <= nxj - 1) & (yj >= 0) & (yj <= nyj - 1)
            if inside.sum() < 100:
                continue
            iy, ix = np.nonzero(inside)
            coords = np.stack([ix, iy], axis=1).astype(float)
            centred = coords - coords.mean(axis=0)
            _, vecs = np.linalg.eigh(centred.T @ centred)
            along = centred @ vecs[:, -1]
            half = along > np.median(along)
            pairs.append(
                {
                    "i": i,
                    "j": j,
                    "iy": iy,
                    "ix": ix,
                    "yj": yj[inside],
                    "xj": xj[inside],
                    "half": half,
                    "extent": (float(np.ptp(along)), float(np.ptp(centred @ vecs[:, 0]))),
                }
            )
    case._pairs = pairs
    return pairs


def seams(case, surfaces):
    """RMS of the median corrected difference in each half of every overlap; and the medians."""
    from scipy.ndimage import map_coordinates

    corrected = [
        d.astype(np.float64) - _surface(s, d.shape)
        for d, s in zip(case.data, surfaces, strict=True)
    ]
    medians = []
    for p in overlap_pairs(case):
        a = corrected[p["i"]][p["iy"], p["ix"]]
        b = map_coordinates(
            corrected[p["j"]], [p["yj"], p["xj"]], order=1, mode="constant", cval=np.nan
        )
        diff = a - b
        for h in (False, True):
            sel = (p["half"] == h) & np.isfinite(diff)
            medians.append(float(np.median(diff[sel])) if sel.any() else np.nan)
    medians = np.asarray(medians)
    return float(np.sqrt(np.nanmean(medians**2))), medians.tolist()


def _tangent(case, ra, dec):
    """Mosaic tangent-plane offsets (arcsec) about the simulation centre."""
    from astropy.modeling import models

    ra0, dec0 = case.truth.spec.center
    tan = models.Pix2Sky_TAN() | models.RotateNative2Celestial(ra0, dec0, 180.0)
    x, y = tan.inverse(ra, dec)
    return -x * 3600.0, y * 3600.0


def truth_rms(case, surfaces):
    """RMS of (S_k - true_k) over usable pixels after removing the best common plane."""
    res, east, north = [], [], []
    for k, (s, good) in enumerate(zip(surfaces, case.usable, strict=True)):
        true = case.truth.sky_image(case.names[k])
        r = _surface(s, good.shape) - true
        ra, dec = case.sky(k)
        e, n = _tangent(case, ra[good], dec[good])
        res.append(r[good])
        east.append(e)
        north.append(n)
    r = np.concatenate(res)
    e = np.concatenate(east)
    n = np.concatenate(north)
    design = np.stack([np.ones_like(e), e, n], axis=1)
    coef, *_ = np.linalg.lstsq(design, r, rcond=None)
    return float(np.sqrt(np.mean((r - design @ coef) ** 2)))


# ---------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------
def run_contenders(case, keys, repeats, log):
    """Run every contender ``repeats`` times (alternating order); metric from the first run."""
    results = {k: {"seconds": [], "surfaces": None, "note": "", "status": "ok"} for k in keys}
    for key in keys:
        missing = missing_packages(FAMILY[key])
        if missing:
            results[key]["status"] = "skipped"
            results[key]["note"] = (
                f"not installed ({', '.join(missing)}): {REQUIREMENTS[FAMILY[key]][1]}"
            )
    for rep in range(repeats):
        order = keys if rep % 2 == 0 else keys[::-1]
        for key in order:
            res = results[key]
            if res["status"] != "ok":
                continue
            try:
                seconds, surfaces, note = RUNNERS[key](case, rep)
            except NotAvailable as err:
                res["status"], res["note"] = "n/a", str(err)
                log(f"  {LABELS[key]}: {err}")
                continue
            except Exception as err:
                res["status"] = "failed"
                res["note"] = f"failed: {type(err).__name__}: {str(err)[:200]}"
                log(f"  {LABELS[key]}: FAILED\n" + traceback.format_exc(limit=3))
                continue
            res["seconds"].append(seconds)
            res["note"] = note or res["note"]
            if res["surfaces"] is None:
                res["surfaces"] = surfaces
            log(f"  [{rep + 1}/{repeats}] {LABELS[key]}: {seconds:.2f} s")
    for key in keys:
        if results[key]["status"] == "skipped":
            log(f"  skipped {LABELS[key]}: {results[key]['note']}")
    return results


def evaluate(case, results):
    rows = []
    for key, res in results.items():
        row = {
            "key": key,
            "label": LABELS[key],
            "status": res["status"],
            "note": res["note"],
            "seconds": res["seconds"],
            "median_s": float(np.median(res["seconds"])) if res["seconds"] else None,
            "metric": None,
        }
        if res["status"] == "ok":
            if case.kind == "real":
                row["metric"], row["half_medians"] = seams(case, res["surfaces"])
            else:
                row["metric"] = truth_rms(case, res["surfaces"])
            row["constant"] = all(np.ndim(s) == 0 for s in res["surfaces"])
        rows.append(row)
    return rows


def _block_median(image, block):
    """Median of ``block`` x ``block`` cells (NaN-aware), cropping the edges."""
    ny, nx = (n // block * block for n in image.shape)
    cells = image[:ny, :nx].reshape(ny // block, block, nx // block, block)
    return np.nanmedian(cells.transpose(0, 2, 1, 3).reshape(ny // block, nx // block, -1), axis=2)


def mosaic_figure(case, results, rows, path, log, resolution=2.0, block=8):
    """PNG grid of mosaics of the corrected images (common grid, common stretch).

    Each contender's corrected images are coadded (reproject_interp onto a
    common ``resolution`` arcsec grid, mean, no background matching), then
    median-filtered in ``block`` x ``block`` cells so that the noise and the
    stars do not hide DN-level seams, and shifted by their median (the
    methods fix the common level differently). One stretch for all panels,
    from the uncorrected mosaic: -6 to +12 times the noise of one cell.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy import units as u
    from reproject import reproject_interp
    from reproject.mosaicking import find_optimal_celestial_wcs, reproject_and_coadd

    inputs = list(zip(case.data, case.wcs, strict=True))
    wcs_out, shape_out = find_optimal_celestial_wcs(inputs, resolution=resolution * u.arcsec)
    mosaics = {}
    for key in FIGURE_PANELS:
        res = results.get(key)
        if res is None or res["status"] != "ok":
            mosaics[key] = None
            continue
        corrected = [
            (d.astype(np.float64) - _surface(s, d.shape), w)
            for (d, w), s in zip(inputs, res["surfaces"], strict=True)
        ]
        m, fp = reproject_and_coadd(
            corrected,
            wcs_out,
            shape_out=shape_out,
            reproject_function=reproject_interp,
            match_background=False,
        )
        m[fp == 0] = np.nan
        m = _block_median(m, block)
        mosaics[key] = m - np.nanmedian(m)
    base = mosaics.get("none")
    if base is None:
        base = next((m for m in mosaics.values() if m is not None), None)
    if base is None:
        return
    # noise of one cell, from differences of neighbouring cells (the nebula cancels)
    step = (base[:, 1:] - base[:, :-1]).ravel()
    step = step[np.isfinite(step)]
    noise = 1.4826 * np.median(np.abs(step - np.median(step))) / np.sqrt(2.0)
    lo, hi = -6.0 * noise, 12.0 * noise
    ncol = 3
    nrow = int(np.ceil(len(FIGURE_PANELS) / ncol))
    # pjpipe's modules change matplotlib's global rcParams when imported
    with plt.style.context("default"):
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 4.2 * nrow), squeeze=False)
        im = None
        for ax, key in zip(axes.ravel(), FIGURE_PANELS, strict=False):
            ax.set_xticks([])
            ax.set_yticks([])
            m = mosaics[key]
            title = LABELS[key]
            row = next((r for r in rows if r["key"] == key), None)
            if m is None:
                note = row["note"] if row else "not run"
                ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True, fontsize=8)
                ax.set_title(title, fontsize=9)
                continue
            im = ax.imshow(
                m, origin="lower", cmap="gray", vmin=lo, vmax=hi, interpolation="nearest"
            )
            ax.set_title(f"{title}\nseams {row['metric']:.3g} {case.unit}", fontsize=9)
        for ax in axes.ravel()[len(FIGURE_PANELS) :]:
            ax.axis("off")
        if im is not None:
            label = f"{case.unit} (minus median)"
            fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label=label)
        fig.suptitle(
            f'{case.name}: coadds of the corrected images ({resolution * block:g}" median cells), '
            "same stretch",
            fontsize=10,
        )
        tmp = path.with_name(path.stem + ".tmp.png")
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
    os.replace(tmp, path)
    log(f"wrote {path}")


# ---------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------
def summarize(case_rows):
    """Per case name: quadratic mean of the metric over seeds, median of all times."""
    out = {}
    for entry in case_rows:
        out.setdefault(entry["case"], []).append(entry)
    summary = {}
    for name, entries in out.items():
        rows = []
        for key in [r["key"] for r in entries[0]["rows"]]:
            per = [next(r for r in e["rows"] if r["key"] == key) for e in entries]
            metrics = [r["metric"] for r in per if r["metric"] is not None]
            seconds = [s for r in per for s in r["seconds"]]
            ok = len(metrics) == len(per)
            rows.append(
                {
                    "key": key,
                    "label": LABELS[key],
                    "metric": float(np.sqrt(np.mean(np.square(metrics)))) if ok else None,
                    "median_s": float(np.median(seconds)) if seconds else None,
                    "note": next((r["note"] for r in per if r["note"]), ""),
                    "status": per[0]["status"],
                }
            )
        ref = next((r for r in rows if r["key"] == REFERENCE and r["metric"] is not None), None)
        for r in rows:
            r["metric_ratio"] = (
                r["metric"] / ref["metric"]
                if ref and r["metric"] is not None and ref["metric"] > 0
                else None
            )
            r["time_ratio"] = (
                r["median_s"] / ref["median_s"]
                if ref and r["median_s"] and r["key"] != "none" and ref["median_s"] > 0
                else None
            )
        summary[name] = {
            "kind": entries[0]["kind"],
            "description": entries[0]["description"],
            "source": entries[0].get("source", ""),
            "pairs": entries[0].get("pairs"),
            "unit": entries[0]["unit"],
            "seeds": [e["seed"] for e in entries],
            "rows": rows,
        }
    return summary


def _fmt(value, digits=3):
    return "-" if value is None else f"{value:.{digits}g}"


def _table(name, s):
    if s["kind"] == "real":
        metric = f"seams ({s['unit']})"
        title = f"{name} (real): {s['description']}, {s['pairs']} overlapping pairs"
    else:
        metric = "RMS (1e-4 MJy/sr)"
        seeds = ", ".join(str(x) for x in s["seeds"])
        title = f"{name} (simulated, seeds {seeds}): {s['description']}"
    scale = 1.0 if s["kind"] == "real" else 1e4
    head = ["method", metric, "median s", "metric / ours", "time / ours", "note"]
    body = []
    for r in s["rows"]:
        if r["metric"] is None:
            cells = [r["label"], r["note"] or r["status"], "-", "-", "-", ""]
        else:
            cells = [
                r["label"],
                _fmt(r["metric"] * scale),
                _fmt(r["median_s"]),
                _fmt(r["metric_ratio"]),
                _fmt(r["time_ratio"]),
                r["note"],
            ]
        body.append(cells)
    return title, head, body


def markdown(summary, header):
    lines = [*header, ""]
    for name, s in summary.items():
        title, head, body = _table(name, s)
        lines += [f"**{title}**", ""]
        if s.get("source"):
            lines += [f"Data: {s['source']}", ""]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join("---" for _ in head) + "|")
        lines += ["| " + " | ".join(c.replace("|", "/") for c in cells) + " |" for cells in body]
        lines.append("")
    lines.append(
        "Simulated metric: quadratic mean over the seeds; times: median over all runs. "
        f"Ratios to '{LABELS[REFERENCE]}'."
    )
    return "\n".join(lines) + "\n"


def rst(summary, header):
    lines = [*(f"| {h}" for h in header), ""]
    for name, s in summary.items():
        title, head, body = _table(name, s)
        table = [head, *body]
        widths = [max(len(r[i]) for r in table) or 1 for i in range(len(head))]
        rule = "  ".join("=" * w for w in widths)

        def line(cells, widths=widths):
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

        lines += [f"**{title}**", ""]
        if s.get("source"):
            lines += [f"Data: {s['source']}", ""]
        lines += [rule, line(head), rule]
        lines += [line(r) for r in body]
        lines += [rule, ""]
    lines.append(
        "Simulated metric: quadratic mean over the seeds; times: median over all runs. "
        f"Ratios to '{LABELS[REFERENCE]}'."
    )
    return "\n".join(lines) + "\n"


def _write(path, text):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _git_commit():
    """Short commit of the checkout, with "+uncommitted src" if src/ has local changes."""
    try:
        out = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip() + (" +uncommitted src" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment():
    versions = {}
    for pkg in ("skymatch-step", "jwst", "reproject", "MontagePy", "pjpipe", "astropy", "numpy"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "versions": versions,
        "commit": _git_commit(),
    }


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="contender keys:\n"
        + "\n".join(f"  {k:22s} {v}" for k, v, _ in CONTENDERS)
        + "\n\nSee the module docstring and docs/peers.rst for the metrics and the setup.",
    )
    parser.add_argument(
        "--data",
        type=_data_arg,
        action="append",
        default=[],
        metavar="DIR",
        help="folder of real FITS tiles (e.g. the M17 2MASS tiles; see docs/peers.rst), "
        "or LABEL=DIR to name the case; may be given more than once (known sets are "
        "named m17 and orion, others after their folder)",
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        default=None,
        choices=["real", *SIM_CASES],
        metavar="CASE",
        help="cases to run: real, " + ", ".join(SIM_CASES) + " (default: real if --data is "
        "given, and every simulated case)",
    )
    parser.add_argument(
        "--contenders",
        nargs="+",
        default=[k for k, _, _ in CONTENDERS],
        choices=[k for k, _, _ in CONTENDERS],
        metavar="KEY",
        help="contenders to run (keys below; default: all)",
    )
    parser.add_argument(
        "--outdir",
        type=Path,
        default=HERE / "results",
        help="where peers.md/.rst/.json and peers_<case>.png go (default: benchmarks/results)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each contender (default: 3)"
    )
    parser.add_argument(
        "--seeds", type=int, default=3, help="seeds 1..N of each simulated case (default: 3)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)"
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep the scratch files")
    parser.add_argument("--no-figure", action="store_true", help="skip the real-data figure")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="one tiny simulated case, one seed, one repeat (results: peers_smoke.*)",
    )
    args = parser.parse_args(argv)
    if args.cases is None:
        args.cases = (["real"] if args.data else []) + list(SIM_CASES)
    if "real" in args.cases and not args.data and not args.smoke:
        parser.error("the real case needs --data DIR")
    if args.repeats < 1 or args.seeds < 1:
        parser.error("--repeats and --seeds must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "true")  # jwst asks CRDS otherwise
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)  # the steps' progress messages
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _run(args, argv)
    finally:
        logging.disable(previous)


def _run(args, argv):
    env = environment()
    command = "python benchmarks/bench_peers.py " + " ".join(sys.argv[1:] if argv is None else argv)

    def log(msg):
        print(msg, flush=True)

    log(f"Machine: {env['machine']}, Python {env['python']}")
    log("Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    keys = [k for k, _, _ in CONTENDERS if k in args.contenders]
    for family in dict.fromkeys(FAMILY[k] for k in keys):
        missing = missing_packages(family)
        if missing:
            log(
                f"NOTE: {family} contenders skipped: {', '.join(missing)} not installed; "
                f"to include them: {REQUIREMENTS[family][1]}"
            )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_peers_"))
    workdir.mkdir(parents=True, exist_ok=True)
    prefix = "peers_smoke" if args.smoke else "peers"
    repeats = 1 if args.smoke else args.repeats
    seeds = 1 if args.smoke else args.seeds
    case_rows = []
    figures = {}
    try:
        plans = []
        if args.smoke:
            plans.append(("smoke", None, SMOKE_CASE, 1))
        else:
            if "real" in args.cases:
                plans += [("real", d, None, None) for d in args.data]
            for name in args.cases:
                if name in SIM_CASES:
                    plans += [(name, None, SIM_CASES[name], s) for s in range(1, seeds + 1)]
        for name, directory, sim, seed in plans:
            t0 = time.perf_counter()
            if directory is not None:
                case = real_case(directory[1], workdir, label=directory[0])
            else:
                case = sim_case(name, sim[0], sim[1], seed, workdir)
            prepare_files(case)
            log(f"\n== {case.name}{'' if seed is None else f' seed {seed}'}: {case.description}")
            results = run_contenders(case, keys, repeats, log)
            rows = evaluate(case, results)
            scale = 1.0 if case.kind == "real" else 1e4
            unit = case.unit if case.kind == "real" else "1e-4 MJy/sr"
            for r in rows:
                value = "-" if r["metric"] is None else f"{r['metric'] * scale:.4g} {unit}"
                log(f"  {r['label']:38s} {value:>22s}  {_fmt(r['median_s'])} s  {r['note']}")
            case_rows.append(
                {
                    "case": case.name,
                    "kind": case.kind,
                    "description": case.description,
                    "unit": case.unit,
                    "seed": seed,
                    "source": case.source,
                    "pairs": len(overlap_pairs(case)) if case.kind == "real" else None,
                    "rows": rows,
                }
            )
            if case.kind == "real" and not args.no_figure:
                if importlib.util.find_spec("reproject") and importlib.util.find_spec("matplotlib"):
                    path = args.outdir / f"{prefix}_{case.name}.png"
                    args.outdir.mkdir(parents=True, exist_ok=True)
                    mosaic_figure(case, results, rows, path, log)
                    figures[case.name] = path.name
                else:
                    log("no figure: needs reproject and matplotlib")
            log(f"  ({time.perf_counter() - t0:.0f} s for the case)")
            for m in case.models:
                m.close()
    finally:
        if not args.keep_workdir and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    summary = summarize(case_rows)
    header = [
        f"Machine: {env['machine']}, Python {env['python']}",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        f"Command: ``{command.strip()}`` (commit {env['commit']})",
        f"Repeats: {repeats} per contender (alternating order).",
    ]
    args.outdir.mkdir(parents=True, exist_ok=True)
    md = markdown(summary, header)
    _write(args.outdir / f"{prefix}.md", md)
    _write(args.outdir / f"{prefix}.rst", rst(summary, header))
    payload = {
        "environment": env,
        "command": command.strip(),
        "repeats": repeats,
        "sim_base": {k: list(v) if isinstance(v, tuple) else v for k, v in SIM_BASE.items()},
        "sim_cases": {k: v[1] for k, v in SIM_CASES.items()},
        "figures": figures,
        "runs": case_rows,
        "summary": summary,
    }
    _write(args.outdir / f"{prefix}.json", json.dumps(payload, indent=1) + "\n")
    print("\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
