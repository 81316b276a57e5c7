"""Real overlapping images for the benchmarks: FITS tiles as JWST-like ImageModels.

The real case of ``bench_peers.py`` is a set of 2MASS Atlas images of the
M17 (Omega Nebula) region in the Ks band: 8 tiles of 512 x 1024 pixels,
float32, 1 arcsec per pixel, orthographic (``SIN``) projection, in raw
data numbers (DN, no flux calibration applied; ``MAGZP`` in the header
holds the photometric zero point), forming 13 overlapping pairs. Their sky
level is about 640 DN and the sky noise about 4 DN; a bright, structured
nebula covers much of the field, which makes it a hard case for sky
matching by image statistics.

Provenance
    The tiles are ``m17/aK_asky_990502s*.fits.gz`` in the GitHub
    repository ``astropy/astropy-data`` at commit
    ``250737aeff8b14d558310dfc7f48c812e59e80aa`` ("Added Ks tiles from the
    2MASS survey towards M17, for examples in the reproject docs", Thomas
    Robitaille, 2019; the head of pull request 73, reachable through the
    ``refs/pull/73/head`` reference, not through a branch). They were
    retrieved from the 2MASS archive at IRSA
    (https://irsa.ipac.caltech.edu/Missions/2mass.html) and are used in the
    ``reproject`` documentation. The data are not part of this repository
    and nothing is downloaded by the benchmarks; see ``docs/peers.rst`` for
    how to get them, and their SHA-256 sums below.

What the headers hold
    ``CTYPE = RA---SIN/DEC--SIN``, ``CRPIX``, ``CRVAL``, ``CDELT`` (1 arcsec)
    and ``CROTA2`` (a twist of ~0.007 deg) — the old AIPS convention, no
    ``CD`` or ``PC`` matrix; ``EQUINOX = 2000`` (treated as ICRS: the
    frame difference does not matter for pixel-to-pixel mapping);
    ``SKYVAL`` (the archive's sky estimate, DN) and ``SKYSIG`` (its "Grid
    noise estimate", DN), ``MAGZP``, ``FILTER``, ``ORDATE``, ``SCANNO``.

What `load_tiles` builds
    One `~stdatamodels.jwst.datamodels.ImageModel` per file (via
    `skymatch_step.simulate.make_image_model`), each its own exposure and
    so its own sky group, with

    * a gWCS built from astropy models that reproduces the FITS WCS
      (`fits_gwcs`): shift of FITS's 1-based reference pixel to 0-based
      pixels, the linear part (``CD``; or ``PC`` times ``CDELT``; or
      ``CDELT`` rotated by ``CROTA2``), ``Pix2Sky_<projection>`` and
      ``RotateNative2Celestial``. It is checked against `astropy.wcs.WCS`
      on a grid over the image (`check_gwcs`: < 1e-9 deg on the sky and
      < 1e-6 pixel on the way back, else `ValueError`);
    * DQ: NaN pixels flagged ``DO_NOT_USE`` (about 2% of the pixels of the
      M17 and Orion tiles, in a few columns at one edge);
    * ERR and VAR_RNOISE: the header's ``SKYSIG`` (sky noise, DN) at every
      pixel when present, otherwise a robust per-tile estimate
      (`robust_noise`: MAD of differences of pixels two columns apart).
      Either is a sky-noise figure: the Poisson noise of the nebula and
      stars is not included;
    * ``BUNIT = DN`` and the real pixel scale in ``meta.wcsinfo`` and
      ``meta.photometry``.

From the command line, ``python benchmarks/realdata.py DIR`` prints the
tiles and their overlaps (`describe`).
"""

from __future__ import annotations

import argparse
import itertools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: SHA-256 of the M17 files at astropy/astropy-data@250737ae (m17/), sha256sum format.
M17_SHA256SUMS = """\
3ee9fc18024dfffa883b1386b2c03d079cdf23c4899f607cd04f2bd424ac749f  aK_asky_990502s1350080.fits.gz
b32765d50fb9d1d74b696ba2c228c7799563860e4fe68fbafd86457aa2a28eac  aK_asky_990502s1350092.fits.gz
909f9e2c57158a745540b2d128884ea55b3f2c6661c3169a4a6176c191bd7b2e  aK_asky_990502s1420186.fits.gz
f29751358e574cf84826d21eee0626e08a979bd138a30d9ad76118f02bb50c70  aK_asky_990502s1420198.fits.gz
9f7819937f86a25d04469855af81007dd714ba70c397904c5245883a48e5b70c  aK_asky_990502s1430080.fits.gz
a8713b86da24d640f45e9387ecfb151c81c37b8c5da68fd3b0547c0d70f54ce1  aK_asky_990502s1430092.fits.gz
1d36f9a5c1b802ec88c99559bb831271af94b3f59dd4587f62b27e99528854b3  aK_asky_990502s1440186.fits.gz
d7c2a73beec4fde9535791ff902fde18980a03ca74d873ede77e4b5fa568de0a  aK_asky_990502s1440198.fits.gz
"""
M17_SOURCE = (
    "astropy/astropy-data@250737aeff8b14d558310dfc7f48c812e59e80aa (refs/pull/73/head), m17/; "
    "originally 2MASS Atlas images from IRSA"
)
#: Provenance of the real sets the benchmarks know, by `set_label`.
SOURCES = {
    "m17": M17_SOURCE,
    "orion": (
        "krzysztofxkwiecien/montage-workflow@e8f172fbb9c9e8c2d2a093b502b8f5944429d4cd, "
        "data-container/montage0.25/input/ (10 2MASS Atlas J tiles of the Orion Nebula)"
    ),
}

#: File name prefixes of the known sets (every FITS file of the folder has it).
KNOWN_PREFIXES = {"m17": "aK_asky_990502s", "orion": "2mass-atlas-001124n-j08"}


def set_label(directory):
    """Short name of a folder of tiles: a known set's, else the folder name up to "_"."""
    names = [p.name for p in tile_files(directory)]
    for label, prefix in KNOWN_PREFIXES.items():
        if all(n.startswith(prefix) for n in names):
            return label
    return Path(directory).resolve().name.split("_")[0].lower() or "real"


#: Projections `fits_gwcs` accepts (zenithal: native pole at the reference point).
ZENITHAL = ("TAN", "SIN", "ARC", "ZEA", "STG", "ZPN", "AZP", "SZP", "AIR")
#: File name patterns `read_tiles` picks up.
PATTERNS = ("*.fits", "*.fits.gz", "*.fit", "*.fit.gz", "*.fts")
#: Round-trip tolerances of `check_gwcs`.
MAX_SKY_DEG = 1e-9
MAX_PIX = 1e-6


@dataclass
class Tile:
    """One FITS image as read: pixels, header, both WCSs and the noise used."""

    name: str
    path: Path
    data: np.ndarray  # float32, NaN where unusable
    header: object  # astropy.io.fits.Header
    wcs: object  # astropy.wcs.WCS (celestial)
    gwcs: object  # gwcs.WCS, 0-based pixels
    dq: np.ndarray
    noise: float
    noise_source: str

    @property
    def shape(self):
        return self.data.shape


def linear_matrix(header):
    """Return the 2 x 2 matrix from pixel offsets to intermediate world coordinates (deg).

    ``CDi_j`` if any is present; else ``PCi_j`` (default identity) times
    ``CDELTi``; else ``CDELTi`` rotated by ``CROTA2`` (Calabretta & Greisen
    2002, eq. 189).
    """
    if any(f"CD{i}_{j}" in header for i in (1, 2) for j in (1, 2)):
        return np.array([[float(header.get(f"CD{i}_{j}", 0.0)) for j in (1, 2)] for i in (1, 2)])
    cdelt = np.array([float(header.get("CDELT1", 1.0)), float(header.get("CDELT2", 1.0))])
    if any(f"PC{i}_{j}" in header for i in (1, 2) for j in (1, 2)):
        pc = np.array(
            [
                [float(header.get(f"PC{i}_{j}", 1.0 if i == j else 0.0)) for j in (1, 2)]
                for i in (1, 2)
            ]
        )
        return pc * cdelt[:, None]
    rho = np.deg2rad(float(header.get("CROTA2", 0.0)))
    c, s = np.cos(rho), np.sin(rho)
    return np.array([[cdelt[0] * c, -cdelt[1] * s], [cdelt[0] * s, cdelt[1] * c]])


def fits_gwcs(header, shape):
    """Build a gWCS (0-based pixels -> ICRS degrees) equal to a celestial FITS WCS.

    ``pixel -> Shift(1 - CRPIX) -> linear part -> Pix2Sky_<proj> ->
    RotateNative2Celestial(CRVAL1, CRVAL2, LONPOLE)``, for zenithal
    projections in degrees without distortion (no SIP, no ``PVi_m`` other
    than ``PV2_1``, ``PV2_2`` of ``SIN``).
    """
    from astropy import units as u
    from astropy.coordinates import ICRS
    from astropy.modeling import models
    from gwcs import WCS, coordinate_frames

    ctype = (str(header["CTYPE1"]).upper(), str(header["CTYPE2"]).upper())
    if not (ctype[0][:4] == "RA--" and ctype[1][:4] == "DEC-"):
        raise ValueError(f"need RA/Dec axes, not {ctype}")
    proj = ctype[0][5:8]
    if proj != ctype[1][5:8] or proj not in ZENITHAL or ctype[0][8:]:
        raise ValueError(f"unsupported projection {ctype} (zenithal, no distortion: {ZENITHAL})")
    for axis in (1, 2):
        unit = str(header.get(f"CUNIT{axis}", "deg")).strip().lower()
        if unit not in ("deg", ""):
            raise ValueError(f"CUNIT{axis} = {unit!r}: only degrees supported")
    pv = {k: float(header[k]) for k in header if str(k).startswith("PV")}
    extra = {}
    if proj == "SIN":
        extra = {"xi": pv.pop("PV2_1", 0.0), "eta": pv.pop("PV2_2", 0.0)}
    if pv or "A_ORDER" in header:
        raise ValueError(f"distortion / projection parameters not supported: {sorted(pv)}")
    crpix = (float(header["CRPIX1"]), float(header["CRPIX2"]))
    crval = (float(header["CRVAL1"]), float(header["CRVAL2"]))
    lonpole = float(header.get("LONPOLE", 0.0 if crval[1] >= 90.0 else 180.0))
    matrix = linear_matrix(header)
    forward = (
        (models.Shift(1.0 - crpix[0]) & models.Shift(1.0 - crpix[1]))
        | models.AffineTransformation2D(matrix=matrix, translation=[0.0, 0.0])
        | getattr(models, f"Pix2Sky_{proj}")(**extra)
        | models.RotateNative2Celestial(crval[0], crval[1], lonpole)
    )
    detector = coordinate_frames.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    world = coordinate_frames.CelestialFrame(
        reference_frame=ICRS(), name="world", unit=(u.deg, u.deg)
    )
    wcs = WCS([(detector, forward), (world, None)])
    ny, nx = shape
    wcs.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    return wcs


def check_gwcs(gw, aw, shape, n=17):
    """Compare a gWCS with an astropy WCS on an ``n x n`` grid; raise if they differ.

    Forward: angular separation of the sky positions < `MAX_SKY_DEG`.
    Backward: astropy's sky positions through the gWCS inverse back to the
    grid within `MAX_PIX` pixels. Returns ``(max_deg, max_pix)``.
    """
    ny, nx = shape
    xs, ys = np.meshgrid(np.linspace(-0.5, nx - 0.5, n), np.linspace(-0.5, ny - 0.5, n))
    xs, ys = xs.ravel(), ys.ravel()
    ra_a, dec_a = aw.all_pix2world(xs, ys, 0)
    ra_g, dec_g = gw(xs, ys, with_bounding_box=False)
    r1, d1, r2, d2 = (np.deg2rad(v) for v in (ra_a, dec_a, ra_g, dec_g))
    # haversine: accurate for tiny angles
    hav = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    sep = np.rad2deg(2 * np.arcsin(np.sqrt(hav)))
    xb, yb = gw.invert(ra_a, dec_a, with_bounding_box=False)
    pix = np.hypot(xb - xs, yb - ys)
    max_deg, max_pix = float(np.max(sep)), float(np.max(pix))
    if not (max_deg < MAX_SKY_DEG and max_pix < MAX_PIX):
        raise ValueError(
            f"gWCS differs from the FITS WCS: {max_deg:.3g} deg, {max_pix:.3g} pix "
            f"(limits {MAX_SKY_DEG} deg, {MAX_PIX} pix)"
        )
    return max_deg, max_pix


def robust_noise(data):
    """Robust per-image noise (same units): 1.4826 MAD of ``d[:, k+2] - d[:, k]`` / sqrt(2).

    Differences of pixels two columns apart cancel smooth emission;
    resampled images have noise correlated over about a pixel, so the
    neighbour one column over would underestimate it.
    """
    diff = (data[:, 2:] - data[:, :-2]).ravel()
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return float("nan")
    mad = np.median(np.abs(diff - np.median(diff)))
    return float(1.4826 * mad / np.sqrt(2.0))


def check_sums(directory, sums=M17_SHA256SUMS):
    """Compare the files of ``directory`` named in ``sums`` with their SHA-256.

    Returns ``(matched, problems)``: names whose sum matches, and messages
    for missing files and mismatches (an empty list when all is well).
    """
    import hashlib

    matched, problems = [], []
    for line in sums.strip().splitlines():
        digest, name = line.split()
        path = Path(directory) / name
        if not path.exists():
            problems.append(f"{name}: missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            problems.append(f"{name}: SHA-256 differs")
        else:
            matched.append(name)
    return matched, problems


def tile_files(directory):
    """FITS files of ``directory`` (sorted by name)."""
    directory = Path(directory)
    files = sorted({p for pattern in PATTERNS for p in directory.glob(pattern)})
    if not files:
        raise FileNotFoundError(f"no FITS files ({', '.join(PATTERNS)}) in {directory}")
    return files


def read_tiles(directory, *, check=True):
    """Read every FITS image of ``directory`` into a `Tile` (gWCS checked unless told not to)."""
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning
    from stdatamodels.jwst.datamodels import dqflags

    tiles = []
    for path in tile_files(directory):
        with fits.open(path) as hdul:
            hdu = next(h for h in hdul if h.is_image and h.data is not None and h.data.ndim == 2)
            header = hdu.header.copy()
            data = np.array(hdu.data, dtype=np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            aw = WCS(header).celestial
        gw = fits_gwcs(header, data.shape)
        if check:
            check_gwcs(gw, aw, data.shape)
        bad = ~np.isfinite(data)
        data[bad] = np.nan
        dq = np.where(bad, dqflags.pixel["DO_NOT_USE"], 0).astype(np.uint32)
        if "SKYSIG" in header and float(header["SKYSIG"]) > 0:
            noise, source = float(header["SKYSIG"]), "SKYSIG"
        else:
            noise, source = robust_noise(data), "robust"
        name = path.name
        for suffix in (".gz", ".fits", ".fit", ".fts"):
            name = name.removesuffix(suffix)
        tiles.append(Tile(name, path, data, header, aw, gw, dq, noise, source))
    return tiles


def tile_models(tiles):
    """ImageModels of `read_tiles`'s tiles: one exposure (sky group) each."""
    from skymatch_step.simulate import make_image_model

    models = []
    for k, tile in enumerate(tiles, start=1):
        var = np.full(tile.shape, tile.noise**2, np.float32)
        model = make_image_model(
            tile.data,
            tile.gwcs,
            dq=tile.dq,
            var=var,
            exposure=k,
            filename=f"{tile.name}_cal.fits",
        )
        scale = np.sqrt(abs(np.linalg.det(linear_matrix(tile.header))))  # deg / pixel
        model.meta.bunit_data = "DN"
        model.meta.bunit_err = "DN"
        w = model.meta.wcsinfo
        w.cdelt1 = w.cdelt2 = float(scale)
        w.ctype1, w.ctype2 = str(tile.header["CTYPE1"]), str(tile.header["CTYPE2"])
        model.meta.photometry.pixelarea_steradians = float(np.deg2rad(scale) ** 2)
        model.meta.photometry.pixelarea_arcsecsq = float((scale * 3600.0) ** 2)
        models.append(model)
    return models


def load_tiles(directory):
    """Load the FITS tiles of ``directory`` as JWST-like ImageModels (see the module docstring).

    Parameters
    ----------
    directory : str or pathlib.Path
        Folder of FITS images (gzipped is fine), one 2-D celestial image each.

    Returns
    -------
    list of stdatamodels.jwst.datamodels.ImageModel
    """
    return tile_models(read_tiles(directory))


def overlaps(models, step=4):
    """Overlapping pairs ``(i, j, frac_i, frac_j)``: fraction of each image covered by the other.

    Sampled every ``step`` pixels through the WCSs.
    """
    out = []
    for i, j in itertools.combinations(range(len(models)), 2):
        frac = []
        for a, b in ((i, j), (j, i)):
            ma, mb = models[a], models[b]
            ny, nx = ma.data.shape
            yy, xx = np.mgrid[0:ny:step, 0:nx:step]
            ra, dec = ma.meta.wcs(xx.ravel(), yy.ravel(), with_bounding_box=False)
            xb, yb = mb.meta.wcs.invert(ra, dec, with_bounding_box=False)
            nyb, nxb = mb.data.shape
            inside = (xb > -0.5) & (xb < nxb - 0.5) & (yb > -0.5) & (yb < nyb - 0.5)
            frac.append(float(np.mean(inside)))
        if frac[0] > 0 or frac[1] > 0:
            out.append((i, j, frac[0], frac[1]))
    return out


def describe(models):
    """Print each model's size, units, noise and sky range, and the overlapping pairs."""
    for k, m in enumerate(models):
        d = np.asarray(m.data, dtype=float)
        good = np.isfinite(d)
        q = np.percentile(d[good], [5, 50, 95]) if good.any() else [np.nan] * 3
        ra, dec = m.meta.wcs(
            (d.shape[1] - 1) / 2.0, (d.shape[0] - 1) / 2.0, with_bounding_box=False
        )
        print(
            f"{k:2d} {m.meta.filename:36s} {d.shape[1]}x{d.shape[0]} "
            f"{m.meta.bunit_data:6s} centre {float(ra):9.5f} {float(dec):+9.5f}  "
            f"p5/p50/p95 {q[0]:9.2f} {q[1]:9.2f} {q[2]:9.2f}  "
            f"err {float(np.nanmedian(m.err)):.3g}  bad {1 - good.mean():.3%}"
        )
    pairs = overlaps(models)
    print(f"{len(pairs)} overlapping pairs of {len(models)} images (fraction of each covered):")
    for i, j, fi, fj in pairs:
        print(f"  {i:2d}-{j:<2d} {fi:6.3f} {fj:6.3f}")
    return pairs


def main(argv=None):
    parser = argparse.ArgumentParser(description="Describe a directory of FITS tiles.")
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    matched, problems = check_sums(args.directory)
    if matched:
        print(f"M17 files: {len(matched)} match their SHA-256; problems: {problems or 'none'}")
    tiles = read_tiles(args.directory)
    for t in tiles:
        print(f"{t.name}: noise {t.noise:.3f} ({t.noise_source})")
    describe(tile_models(tiles))


if __name__ == "__main__":
    main()
