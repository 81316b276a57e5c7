"""Simulated JWST-like calibrated image mosaics with a known sky level.

The simulator writes ``*_cal.fits`` files that look enough like NIRCam
imaging products for `~jwst.datamodels.ModelLibrary` grouping, the
skymatch step and the Image3 pipeline (with tweakreg and source catalog
skipped) to run on them offline: a gwcs WCS built from astropy models with
a mild optical distortion, diffuse emission that is consistent across
tiles, stars, noise, cosmic rays, DQ flags with NaN bad pixels, and a
known additive sky level per exposure (optionally a different one per
detector), and optionally a large masked region (like a coronagraphic
mask) in chosen images. Optional structure that real skies have (all off
by default, so a default spec renders as it always did): a linear sky
gradient per exposure (``sky_gradient``), a different PSF width per
exposure (``seeing_scatter``) and 1/f-like row and column striping
(``striping``). `MosaicTruth.sky_image` gives the true sky surface of any
image, pixel by pixel.

From the command line, ``skymatch-simulate`` (or ``python -m
skymatch_step.simulate``) writes a mosaic and its association and prints
the true sky of every image.

Examples
--------
>>> from skymatch_step.simulate import MosaicSpec, write_mosaic
>>> truth = write_mosaic(MosaicSpec(n_exposures=4), "sim")  # doctest: +SKIP
>>> truth.asn_path  # doctest: +SKIP
PosixPath('sim/sim_asn.json')
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import numbers
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.coordinates import ICRS
from astropy.modeling import models
from gwcs import WCS, coordinate_frames

__all__ = [
    "MosaicSpec",
    "MosaicTruth",
    "TileSpec",
    "main",
    "make_gwcs",
    "make_image_model",
    "simulate_mosaic",
    "write_mosaic",
]

#: NIRCam short-wave-like pixel scale, arcsec per pixel.
DEFAULT_PIXEL_SCALE = 0.031

#: Shapes of the masked region (``MosaicSpec.masked_region``).
MASK_SHAPES = ("quadrant", "disc")

#: Gaussian sigma of the stars, in pixels, without ``seeing_scatter``.
DEFAULT_PSF_SIGMA = 1.5

#: Smallest star sigma ``seeing_scatter`` can give, in pixels.
MIN_PSF_SIGMA = 0.5

#: RMS of the column striping relative to the row striping (``striping``).
STRIPE_COLUMN_RATIO = 0.25


@dataclass(frozen=True)
class TileSpec:
    """Placement of one detector image on the sky.

    Parameters
    ----------
    offset : tuple of float
        Offset ``(east, north)`` of the tile centre from the mosaic centre,
        in arcseconds, in the mosaic's tangent plane. Despite its name,
        ``east`` grows towards *decreasing* right ascension (along +x of an
        unrotated detector, whose x axis points west); ``north`` grows with
        declination.
    rotation : float
        Position angle of the detector y axis, degrees east of north.
    exposure : int
        Exposure number (1-based). Tiles of one exposure form one sky group.
    detector : str
        Detector name, used in the file name.
    """

    offset: tuple[float, float]
    rotation: float
    exposure: int
    detector: str


@dataclass(frozen=True)
class MosaicSpec:
    """Parameters of a simulated mosaic.

    Parameters
    ----------
    n_exposures : int
        Number of exposures (dither/mosaic positions).
    detectors_per_exposure : int
        Detectors in each exposure (1, 2 or 4), laid out 2 x 2 with gaps;
        they share the exposure's sky group and, unless
        ``detector_sky_scatter`` is set, its sky level.
    shape : tuple of int
        Image shape ``(ny, nx)``.
    overlap : float
        Fraction of a tile's width shared with its neighbour in the mosaic
        grid.
    columns : int or None
        Exposures per mosaic row; by default about ``sqrt(n_exposures)``.
    pixel_scale : float
        Pixel scale in arcsec.
    sky_levels : sequence of float or None
        Sky level of each exposure (MJy/sr); random in ``[0.1, 0.5]`` if
        `None`.
    diffuse : float
        Peak surface brightness of the diffuse emission (MJy/sr).
    n_stars : int
        Number of stars over the whole mosaic.
    noise : float
        Standard deviation of the Gaussian pixel noise (MJy/sr).
    cosmic_ray_fraction : float
        Fraction of pixels hit by cosmic rays.
    bad_fraction : float
        Fraction of pixels flagged ``DO_NOT_USE`` and set to NaN.
    distortion : float
        Size of the quadratic optical distortion at the image corner, in
        pixels (0 for an undistorted TAN projection).
    rotation_jitter : float
        Random rotation of each exposure, degrees.
    center : tuple of float
        Mosaic centre ``(ra, dec)`` in degrees.
    gap : tuple of int or None
        Explicit ``(gap_x, gap_y)`` between mosaic positions, in
        columns/rows; `None` for a contiguous mosaic. A large gap gives
        disconnected sets of images.
    seed : int
        Seed of the random generator.
    detector_sky_scatter : float
        Standard deviation (MJy/sr) of a per-detector sky offset: each
        detector of an exposure gets the exposure's sky plus its own
        offset (normal, rounded to 1e-4), so the detectors of one sky
        group differ. 0 (the default) gives every detector the exposure's
        sky.
    masked_region : {None, 'quadrant', 'disc'}
        A large unusable region, like a coronagraphic mask, set to NaN and
        flagged ``DO_NOT_USE`` inside the image outline (the WCS footprint
        is unchanged): ``'quadrant'`` is the image's upper-right quarter
        (25% of the pixels), ``'disc'`` a centred disc whose radius is 0.3
        of the shorter side (about 28%). `None` (the default): no mask.
    masked_images : tuple of int
        Images that get ``masked_region``: 0-based positions in the order
        of `MosaicTruth.files` (exposure by exposure, detectors in turn).
    diffuse_step : int or None
        Spacing, in pixels, of the grid on which the diffuse emission is
        evaluated through the WCS (bilinear in between). `None` (the
        default): 1/16 of the image, at least 8 pixels, which is fast but
        lets overlapping tiles disagree slightly (about 1e-4 of the
        emission's peak) at the same sky position; 1 evaluates it at every
        pixel, so that it is exactly consistent across tiles.
    sky_gradient : float
        Linear sky gradients, MJy/sr: each exposure's sky becomes a plane
        ``level + gx * east + gy * north`` in the mosaic tangent plane
        (``east``, ``north`` in arcsec about `center`, ``east`` growing
        towards decreasing right ascension as in `TileSpec.offset`), with
        ``gx`` and ``gy`` drawn from a normal distribution of standard
        deviation ``sky_gradient / W`` (MJy/sr per arcsec), ``W`` the width
        of one exposure (all its detectors and gaps, along x) in arcsec: so
        ``sky_gradient`` is the RMS change of the sky across an exposure.
        The exposure's sky level (``sky_levels``) is the plane's value at
        the exposure's centre; its detectors share the plane (each shifted
        by its ``detector_sky_scatter`` offset, if any). See
        `MosaicTruth.sky_plane`. 0 (the default): flat skies.
    seeing_scatter : float
        Relative scatter of the PSF width between exposures: the stars of
        an exposure have Gaussian sigma ``1.5 * (1 + N(0, seeing_scatter))``
        pixels, at least 0.5 (`MosaicTruth.psf_sigma`). The diffuse
        emission has no structure on PSF scales and is not blurred. 0 (the
        default): sigma 1.5 pixels everywhere.
    striping : float
        RMS (MJy/sr) of row striping like JWST 1/f noise: every image gets a
        random offset per row, a 1/f-power-spectrum sequence along the row
        index scaled to exactly this RMS and zero mean, plus a column
        component made the same way with ``STRIPE_COLUMN_RATIO`` (0.25)
        times that RMS. Both have zero mean, so the image's mean sky is
        unchanged; see `MosaicTruth.striping` and `MosaicTruth.stripes`.
        0 (the default): no striping.
    """

    n_exposures: int = 4
    detectors_per_exposure: int = 1
    shape: tuple[int, int] = (256, 256)
    overlap: float = 0.15
    columns: int | None = None
    pixel_scale: float = DEFAULT_PIXEL_SCALE
    sky_levels: tuple[float, ...] | None = None
    diffuse: float = 0.3
    n_stars: int = 60
    noise: float = 0.01
    cosmic_ray_fraction: float = 5e-4
    bad_fraction: float = 1e-3
    distortion: float = 1.5
    rotation_jitter: float = 0.3
    center: tuple[float, float] = (53.16, -27.78)
    gap: tuple[int, int] | None = None
    seed: int = 1
    detector_sky_scatter: float = 0.0
    masked_region: str | None = None
    masked_images: tuple[int, ...] = (0,)
    diffuse_step: int | None = None
    sky_gradient: float = 0.0
    seeing_scatter: float = 0.0
    striping: float = 0.0

    def __post_init__(self):
        for name in ("sky_gradient", "seeing_scatter", "striping"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or not (math.isfinite(value) and value >= 0)
            ):
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        if self.diffuse_step is not None and not (
            isinstance(self.diffuse_step, int) and self.diffuse_step >= 1
        ):
            raise ValueError(
                f"diffuse_step must be None or a positive integer, not {self.diffuse_step!r}"
            )
        if self.masked_region not in (None, *MASK_SHAPES):
            raise ValueError(
                f"masked_region must be None or one of {MASK_SHAPES}, not {self.masked_region!r}"
            )
        if not self.detector_sky_scatter >= 0:
            raise ValueError(
                f"detector_sky_scatter must be >= 0 MJy/sr, not {self.detector_sky_scatter!r}"
            )


@dataclass
class MosaicTruth:
    """What the simulator put into each image.

    Attributes
    ----------
    files : list of pathlib.Path
        The ``_cal.fits`` files, or an empty list for in-memory mosaics.
    asn_path : pathlib.Path or None
        The level-3 association listing the files.
    sky : dict
        Sky level added to each image (the exposure's sky plus the
        detector's offset, if any), keyed by file name. With a
        ``sky_gradient``, the mean of the image's sky plane over all its
        pixels (the mean of `sky_image`), which is what a constant sky
        estimate such as ``BKGLEVEL`` should be compared with.
    exposure : dict
        Exposure number of each image, keyed by file name.
    scene : object or None
        The simulated sky without the exposure sky levels: its
        ``diffuse(ra, dec)`` method gives the diffuse emission (MJy/sr).
    masked_fraction : dict
        Fraction of each image's pixels inside the masked region (0 for
        images without one), keyed by file name.
    sky_plane : dict
        ``(level, gx, gy)`` of each image's sky plane, keyed by file name:
        the sky at mosaic tangent-plane offset ``(east, north)`` arcsec from
        ``spec.center`` is ``level + gx * east + gy * north``, so ``level``
        (MJy/sr) is the plane's value at the mosaic centre and ``gx``,
        ``gy`` are MJy/sr per arcsec. ``east`` grows towards decreasing
        right ascension, ``north`` with declination (the convention of
        `TileSpec.offset`). The detectors of one exposure share ``gx``,
        ``gy`` and (without ``detector_sky_scatter``) ``level``. Without a
        ``sky_gradient``: ``(sky, 0.0, 0.0)``.
    psf_sigma : dict
        Gaussian sigma of the stars in each image, pixels, keyed by file
        name (the same for the detectors of one exposure).
    striping : dict
        RMS (MJy/sr) of the stripe pattern (rows plus columns) added to
        each image, keyed by file name; 0 without ``striping``.
    stripes : dict
        ``(rows, columns)`` offset profiles (MJy/sr, lengths ``ny`` and
        ``nx``, each of zero mean) added to each striped image: pixel
        ``[y, x]`` got ``rows[y] + columns[x]``. Only for striped images.
    spec : MosaicSpec or None
        The simulated spec, for `sky_image`.
    tiles : dict
        `TileSpec` of each image, keyed by file name, for `sky_image`.
    """

    files: list[Path] = field(default_factory=list)
    asn_path: Path | None = None
    sky: dict[str, float] = field(default_factory=dict)
    exposure: dict[str, int] = field(default_factory=dict)
    scene: object = None
    masked_fraction: dict[str, float] = field(default_factory=dict)
    sky_plane: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    psf_sigma: dict[str, float] = field(default_factory=dict)
    striping: dict[str, float] = field(default_factory=dict)
    stripes: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    spec: MosaicSpec | None = None
    tiles: dict[str, TileSpec] = field(default_factory=dict)

    def sky_image(self, filename, step=None):
        """Return the true sky surface of one image, at every pixel.

        The sky level and plane (`sky_plane`) only: no diffuse emission,
        stars, stripes, noise or masks. The plane is evaluated through the
        image's WCS on a coarse pixel grid and interpolated bilinearly, as
        the simulator rendered it.

        Parameters
        ----------
        filename : str
            File name of the image (a key of `sky`); a path's name is used.
        step : int, optional
            Grid spacing in pixels; by default the grid the image was
            rendered with (``spec.diffuse_step`` or its default), which
            reproduces the rendered sky exactly. 1 evaluates the WCS at
            every pixel.

        Returns
        -------
        numpy.ndarray
            ``float64`` array of the image's shape, MJy/sr.

        Raises
        ------
        KeyError
            If ``filename`` is not an image of this mosaic.
        ValueError
            If the truth has no geometry (not made by the simulator), or
            ``step`` is not a positive integer.
        """
        name = Path(filename).name
        if name not in self.sky:
            raise KeyError(f"{name!r} is not an image of this mosaic")
        if self.spec is None or name not in self.tiles:
            raise ValueError(f"no geometry recorded for {name!r}: sky_image needs spec and tiles")
        if step is not None and not (isinstance(step, numbers.Integral) and step >= 1):
            raise ValueError(f"step must be None or a positive integer, not {step!r}")
        spec = self.spec
        if not spec.sky_gradient > 0:
            return np.full(spec.shape, self.sky[name], dtype=np.float64)
        wcs = _tile_wcs(spec, self.tiles[name])
        gx, gy = _coarse_grid(spec, step)
        gxx, gyy = np.meshgrid(gx, gy)
        ra, dec = wcs(gxx, gyy, with_bounding_box=False)
        return _plane_image(spec, self.sky_plane[name], ra, dec, gx, gy)


def make_gwcs(shape, ra, dec, rotation, *, pixel_scale=DEFAULT_PIXEL_SCALE, distortion=0.0):
    """Build an imaging gwcs from astropy models, without reference files.

    The transform is ``pixel -> (shift to centre) -> distortion -> scale
    and rotation -> TAN -> sky``. The distortion is a quadratic radial
    term whose inverse is a fitted polynomial, so the WCS has an explicit
    backward transform like the WCSs the JWST pipeline builds.

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(ny, nx)``.
    ra, dec : float
        Sky position of the image centre, degrees.
    rotation : float
        Position angle of the y axis, degrees east of north.
    pixel_scale : float, optional
        Arcsec per pixel.
    distortion : float, optional
        Displacement at the image corner, in pixels.

    Returns
    -------
    gwcs.WCS
        WCS with ``detector`` and ``world`` frames and a bounding box.
    """
    ny, nx = shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    centre = models.Shift(-cx) & models.Shift(-cy)

    rmax2 = cx * cx + cy * cy
    k = distortion / (rmax2**1.5) if rmax2 > 0 else 0.0  # corner shift
    dist_fwd = _radial_distortion(k)
    if k:
        dist_fwd.inverse = _fit_inverse(dist_fwd, cx, cy)
    else:
        dist_fwd = models.Identity(2)

    theta = np.deg2rad(rotation)
    scale = pixel_scale / 3600.0
    # y axis at position angle `rotation` (east of north); x axis to the
    # west (JWST-like parity: RA decreases with x).
    matrix = scale * np.array([[-np.cos(theta), -np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    matrix[:, 0] *= -1.0
    matrix[0, :] *= -1.0
    affine = models.AffineTransformation2D(matrix=matrix, translation=[0.0, 0.0])
    # Projection expects degrees in the intermediate world plane.
    sky = models.Pix2Sky_TAN() | models.RotateNative2Celestial(ra, dec, 180.0)
    forward = centre | dist_fwd | affine | sky

    detector = coordinate_frames.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    world = coordinate_frames.CelestialFrame(
        reference_frame=ICRS(), name="world", unit=(u.deg, u.deg)
    )
    wcs = WCS([(detector, forward), (world, None)])
    wcs.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    return wcs


def _radial_distortion(k):
    """Return ``(x, y) -> (x, y) * (1 + k r^2)``: a mild cubic radial distortion."""
    px = models.Polynomial2D(3, c1_0=1.0, c3_0=k, c1_2=k)
    py = models.Polynomial2D(3, c0_1=1.0, c0_3=k, c2_1=k)
    return models.Mapping((0, 1, 0, 1)) | (px & py)


def _fit_inverse(forward, cx, cy, degree=5):
    """Fit polynomials that invert ``forward`` over the image area."""
    g = np.linspace(-1.2, 1.2, 41)
    xx, yy = np.meshgrid(g * cx, g * cy)
    xd, yd = forward(xx.ravel(), yy.ravel())
    # Design matrix of monomials in the distorted coordinates.
    sx, sy = max(cx, 1.0), max(cy, 1.0)
    terms = [(i, j) for i in range(degree + 1) for j in range(degree + 1 - i)]
    design = np.stack([(xd / sx) ** i * (yd / sy) ** j for i, j in terms], axis=1)
    cxs, *_ = np.linalg.lstsq(design, xx.ravel(), rcond=None)
    cys, *_ = np.linalg.lstsq(design, yy.ravel(), rcond=None)

    def poly(coeffs):
        kwargs = {f"c{i}_{j}": c / (sx**i * sy**j) for (i, j), c in zip(terms, coeffs, strict=True)}
        return models.Polynomial2D(degree, **kwargs)

    return models.Mapping((0, 1, 0, 1)) | (poly(cxs) & poly(cys))


def _exposure_layout(spec):
    """Detector columns, rows and gap (pixels) and the exposure's width and height (pixels)."""
    ny, nx = spec.shape
    ndet = spec.detectors_per_exposure
    det_cols = 2 if ndet >= 2 else 1
    det_rows = 2 if ndet == 4 else 1
    det_gap = 0.02 * nx
    # Width of one exposure (all its detectors) in pixels.
    ex_w = det_cols * nx + (det_cols - 1) * det_gap
    ex_h = det_rows * ny + (det_rows - 1) * det_gap
    return det_cols, det_rows, det_gap, ex_w, ex_h


def _tile_layout(spec):
    """Place exposures on a grid and detectors within each exposure."""
    ny, nx = spec.shape
    rng = np.random.default_rng(spec.seed)
    ncol = spec.columns or max(1, int(np.ceil(np.sqrt(spec.n_exposures))))
    ndet = spec.detectors_per_exposure
    if ndet not in (1, 2, 4):
        raise ValueError(f"detectors_per_exposure must be 1, 2 or 4, not {ndet}")
    det_cols, det_rows, det_gap, ex_w, ex_h = _exposure_layout(spec)
    step_x = ex_w * (1.0 - spec.overlap)
    step_y = ex_h * (1.0 - spec.overlap)

    tiles = []
    nrow = int(np.ceil(spec.n_exposures / ncol))
    for e in range(spec.n_exposures):
        row, col = divmod(e, ncol)
        ex = (col - (ncol - 1) / 2.0) * step_x
        ey = (row - (nrow - 1) / 2.0) * step_y
        if spec.gap is not None:
            ex += spec.gap[0] * ex_w * (col >= ncol / 2)
            ey += spec.gap[1] * ex_h * (row >= nrow / 2)
        rot = rng.normal(0.0, spec.rotation_jitter)
        for d in range(ndet):
            drow, dcol = divmod(d, det_cols)
            dx = (dcol - (det_cols - 1) / 2.0) * (nx + det_gap)
            dy = (drow - (det_rows - 1) / 2.0) * (ny + det_gap)
            th = np.deg2rad(rot)
            # rotate detector offsets with the exposure
            ox = ex + dx * np.cos(th) - dy * np.sin(th)
            oy = ey + dx * np.sin(th) + dy * np.cos(th)
            off = (ox * spec.pixel_scale, oy * spec.pixel_scale)
            tiles.append(TileSpec(off, rot, e + 1, f"nrc{'ab'[d // 2 % 2]}{d % 2 + 1}"))
    return tiles


def _tangent_to_sky(center, east, north):
    """Gnomonic offsets (arcsec) about `center` to (ra, dec) degrees."""
    tan = models.Pix2Sky_TAN() | models.RotateNative2Celestial(center[0], center[1], 180.0)
    return tan(-np.asarray(east) / 3600.0, np.asarray(north) / 3600.0)


def _sky_to_tangent(center, ra, dec):
    tan = models.Pix2Sky_TAN() | models.RotateNative2Celestial(center[0], center[1], 180.0)
    x, y = tan.inverse(ra, dec)
    return -x * 3600.0, y * 3600.0


class _Scene:
    """Surface brightness of the simulated sky, in mosaic tangent arcsec."""

    def __init__(self, spec, extent):
        rng = np.random.default_rng(spec.seed + 1000)
        self.spec = spec
        n_blobs = 4
        self.blob_xy = rng.uniform(-extent, extent, size=(n_blobs, 2))
        self.blob_sigma = rng.uniform(0.3, 0.7, size=n_blobs) * extent
        self.blob_amp = spec.diffuse * rng.uniform(0.4, 1.0, size=n_blobs)
        self.star_xy = rng.uniform(-extent, extent, size=(spec.n_stars, 2))
        self.star_flux = spec.diffuse * 30.0 * rng.pareto(1.5, size=spec.n_stars)

    def diffuse(self, ra, dec):
        """Diffuse emission (MJy/sr) at sky positions in degrees."""
        east, north = _sky_to_tangent(self.spec.center, ra, dec)
        return self.diffuse_tangent(east, north)

    def diffuse_tangent(self, east, north):
        out = np.zeros(np.shape(east))
        for (bx, by), s, a in zip(self.blob_xy, self.blob_sigma, self.blob_amp, strict=True):
            out += a * np.exp(-0.5 * ((east - bx) ** 2 + (north - by) ** 2) / s**2)
        return out


def _tile_wcs(spec, tile):
    """Return the gwcs of ``tile``."""
    ra_c, dec_c = _tangent_to_sky(spec.center, *tile.offset)
    return make_gwcs(
        spec.shape,
        float(ra_c),
        float(dec_c),
        tile.rotation,
        pixel_scale=spec.pixel_scale,
        distortion=spec.distortion,
    )


def _coarse_grid(spec, step=None):
    """Pixel columns and rows of the grid smooth surfaces are evaluated on."""
    ny, nx = spec.shape
    step = step or spec.diffuse_step or max(8, min(nx, ny) // 16)
    gx = np.unique(np.r_[np.arange(0, nx, step), nx - 1])
    gy = np.unique(np.r_[np.arange(0, ny, step), ny - 1])
    return gx, gy


def _plane_image(spec, plane, ra, dec, gx, gy):
    """Sky plane ``(level, gx, gy)`` evaluated at (ra, dec) on the grid, at every pixel."""
    level, slope_x, slope_y = plane
    east, north = _sky_to_tangent(spec.center, ra, dec)
    ny, nx = spec.shape
    return _bilinear(level + slope_x * east + slope_y * north, gx, gy, nx, ny)


@dataclass
class _Tile:
    """One image to render: its placement, file name and what goes into it."""

    tile: TileSpec
    name: str
    sky: float
    masked: bool
    plane: tuple[float, float, float]
    psf_sigma: float
    stripes: tuple[np.ndarray, np.ndarray] | None


def _render(spec, scene, image, rng):
    """Return the WCS and pixel data, DQ and variance arrays of one image (float32).

    ``image`` is the `_Tile` to render. Its sky, mask, plane, PSF width
    and stripes do not draw from ``rng``, so a spec without them renders
    as before they existed.
    """
    from stdatamodels.jwst.datamodels import dqflags

    ny, nx = spec.shape
    wcs = _tile_wcs(spec, image.tile)
    # Diffuse emission: evaluate the WCS on a coarse grid and interpolate
    # (the emission is smooth on scales of many pixels).
    gx, gy = _coarse_grid(spec)
    gxx, gyy = np.meshgrid(gx, gy)
    ra, dec = wcs(gxx, gyy, with_bounding_box=False)
    coarse = scene.diffuse(ra, dec)
    data = _bilinear(coarse, gx, gy, nx, ny)

    # Stars: project the global catalogue into the tile.
    if scene.star_xy.size:
        sra, sdec = _tangent_to_sky(spec.center, scene.star_xy[:, 0], scene.star_xy[:, 1])
        sx, sy = wcs.invert(sra, sdec, with_bounding_box=False)
        inside = (sx > -10) & (sx < nx + 10) & (sy > -10) & (sy < ny + 10)
        _add_stars(data, sx[inside], sy[inside], scene.star_flux[inside], sigma=image.psf_sigma)

    if spec.sky_gradient > 0:
        data += _plane_image(spec, image.plane, ra, dec, gx, gy)
    else:
        data += image.sky
    if image.stripes is not None:
        rows, columns = image.stripes
        data += rows[:, None]
        data += columns[None, :]
    if spec.noise > 0:
        data += rng.normal(0.0, spec.noise, size=data.shape)
    dq = np.zeros(spec.shape, dtype=np.uint32)
    npix = nx * ny
    ncr = round(spec.cosmic_ray_fraction * npix)
    if ncr:
        idx = rng.choice(npix, size=ncr, replace=False)
        data.flat[idx] += rng.uniform(5.0, 50.0, size=ncr) * max(spec.diffuse, 0.1)
    nbad = round(spec.bad_fraction * npix)
    if nbad:
        idx = rng.choice(npix, size=nbad, replace=False)
        data.flat[idx] = np.nan
        dq.flat[idx] |= dqflags.pixel["DO_NOT_USE"] | dqflags.pixel["HOT"]
        # a few flagged but finite pixels (reference pixels, saturated)
        idx2 = rng.choice(npix, size=nbad, replace=False)
        dq.flat[idx2] |= dqflags.pixel["SATURATED"]
    if image.masked:
        region = _mask_region(spec.masked_region, spec.shape)
        data[region] = np.nan
        dq[region] |= dqflags.pixel["DO_NOT_USE"]
    var = np.full(spec.shape, max(spec.noise, 1e-4) ** 2, dtype=np.float32)
    return wcs, data.astype(np.float32), dq, var


def _mask_region(shape_name, shape):
    """Boolean mask of the masked region ``shape_name`` in an image of ``shape``."""
    ny, nx = shape
    yy, xx = np.ogrid[0:ny, 0:nx]
    if shape_name == "quadrant":
        return (yy >= ny // 2) & (xx >= nx // 2)
    radius = 0.3 * min(nx, ny)
    return (xx - (nx - 1) / 2.0) ** 2 + (yy - (ny - 1) / 2.0) ** 2 <= radius**2


def _tile_skies(spec, tiles):
    """Sky level of every tile: its exposure's, plus a detector offset if asked."""
    exposure_sky = spec_sky(spec)
    skies = [exposure_sky[t.exposure - 1] for t in tiles]
    if spec.detector_sky_scatter > 0:
        rng = np.random.default_rng(spec.seed + 3000)
        offsets = rng.normal(0.0, spec.detector_sky_scatter, len(tiles))
        skies = [float(np.round(s + o, 4)) for s, o in zip(skies, offsets, strict=True)]
    return skies


def _masked_tiles(spec, n_tiles):
    """Whether each tile gets the masked region; checks ``masked_images``."""
    if spec.masked_region is None:
        return [False] * n_tiles
    bad = [i for i in spec.masked_images if not 0 <= i < n_tiles]
    if bad:
        raise ValueError(
            f"masked_images {bad} out of range: the mosaic has {n_tiles} images "
            f"(0 to {n_tiles - 1})"
        )
    return [i in spec.masked_images for i in range(n_tiles)]


def _bilinear(coarse, gx, gy, nx, ny):
    """Bilinear interpolation of ``coarse`` (on grid gx, gy) to full size."""
    xi = np.interp(np.arange(nx), gx, np.arange(gx.size))
    yi = np.interp(np.arange(ny), gy, np.arange(gy.size))
    x0 = np.minimum(np.floor(xi).astype(int), gx.size - 2) if gx.size > 1 else np.zeros(nx, int)
    y0 = np.minimum(np.floor(yi).astype(int), gy.size - 2) if gy.size > 1 else np.zeros(ny, int)
    fx = xi - x0
    fy = (yi - y0)[:, None]
    c = coarse
    top = c[y0][:, x0] * (1 - fx) + c[y0][:, np.minimum(x0 + 1, gx.size - 1)] * fx
    y1 = np.minimum(y0 + 1, gy.size - 1)
    bot = c[y1][:, x0] * (1 - fx) + c[y1][:, np.minimum(x0 + 1, gx.size - 1)] * fx
    return top * (1 - fy) + bot * fy


def _add_stars(data, xs, ys, fluxes, sigma):
    ny, nx = data.shape
    half = int(np.ceil(4 * sigma))
    off = np.arange(-half, half + 1)
    for x, y, f in zip(xs, ys, fluxes, strict=True):
        ix, iy = round(float(x)), round(float(y))
        cols = ix + off
        rows = iy + off
        cm = (cols >= 0) & (cols < nx)
        rm = (rows >= 0) & (rows < ny)
        if not cm.any() or not rm.any():
            continue
        gx = np.exp(-0.5 * ((cols[cm] - x) / sigma) ** 2)
        gy = np.exp(-0.5 * ((rows[rm] - y) / sigma) ** 2)
        stamp = f * np.outer(gy, gx) / (2 * np.pi * sigma**2)
        data[np.ix_(rows[rm], cols[cm])] += stamp


def spec_sky(spec):
    """Return the sky level of every exposure of ``spec`` (MJy/sr)."""
    if spec.sky_levels is not None:
        if len(spec.sky_levels) != spec.n_exposures:
            raise ValueError(
                f"sky_levels has {len(spec.sky_levels)} values for {spec.n_exposures} exposures"
            )
        return [float(s) for s in spec.sky_levels]
    rng = np.random.default_rng(spec.seed + 2000)
    return [float(s) for s in np.round(rng.uniform(0.1, 0.5, spec.n_exposures), 4)]


def make_image_model(data, wcs, *, dq=None, var=None, exposure=1, detector="nrca1", filename=None):
    """Wrap arrays and a WCS into a JWST-like calibrated `ImageModel`.

    Parameters
    ----------
    data : ndarray
        2-D science array (MJy/sr).
    wcs : gwcs.WCS
        The image WCS.
    dq : ndarray, optional
        Data-quality flags; zeros if omitted.
    var : ndarray, optional
        Read-noise variance; a small constant if omitted.
    exposure : int, optional
        Exposure number; images with the same number form one sky group.
    detector : str, optional
        Detector name.
    filename : str, optional
        ``meta.filename``; by default built from exposure and detector.

    Returns
    -------
    stdatamodels.jwst.datamodels.ImageModel
    """
    from stdatamodels.jwst.datamodels import ImageModel

    data = np.asarray(data, dtype=np.float32)
    ny, nx = data.shape
    # Checked once, when saved: validating each of the ~60 assignments
    # below reloads schemas and was most of the time of writing a mosaic.
    model = ImageModel(data=data, validate_on_assignment=False)
    model.dq = np.zeros(data.shape, np.uint32) if dq is None else np.asarray(dq, np.uint32)
    var = np.full(data.shape, 1e-4, np.float32) if var is None else np.asarray(var, np.float32)
    model.var_rnoise = var
    model.var_poisson = np.zeros_like(var)
    model.var_flat = np.zeros_like(var)
    model.err = np.sqrt(var)
    model.meta.wcs = wcs
    model.meta.filename = filename or _file_name(exposure, detector)
    model.meta.bunit_data = "MJy/sr"
    model.meta.bunit_err = "MJy/sr"
    model.meta.telescope = "JWST"
    model.meta.instrument.name = "NIRCAM"
    model.meta.instrument.detector = detector.upper().replace("NRC", "NRC")
    model.meta.instrument.channel = "SHORT"
    model.meta.instrument.filter = "F200W"
    model.meta.instrument.pupil = "CLEAR"
    model.meta.instrument.module = "A"
    model.meta.exposure.type = "NRC_IMAGE"
    model.meta.exposure.exposure_time = 300.0
    model.meta.exposure.effective_exposure_time = 300.0
    model.meta.exposure.measurement_time = 300.0
    model.meta.exposure.duration = 310.0
    model.meta.exposure.start_time = 60000.0 + exposure * 0.01
    model.meta.exposure.mid_time = 60000.0 + exposure * 0.01 + 0.0018
    model.meta.exposure.end_time = 60000.0 + exposure * 0.01 + 0.0036
    model.meta.exposure.readpatt = "MEDIUM8"
    model.meta.exposure.nints = 1
    model.meta.exposure.ngroups = 8
    model.meta.exposure.nframes = 8
    model.meta.exposure.groupgap = 2
    model.meta.exposure.frame_time = 10.7
    model.meta.exposure.group_time = 107.0
    model.meta.exposure.integration_time = 300.0
    model.meta.observation.date = "2023-02-25"
    model.meta.observation.time = "12:00:00"
    model.meta.observation.program_number = "01234"
    model.meta.observation.observation_number = "001"
    model.meta.observation.visit_number = "001"
    model.meta.observation.visit_group = "01"
    model.meta.observation.sequence_id = "1"
    model.meta.observation.activity_id = "01"
    model.meta.observation.exposure_number = f"{exposure:05d}"
    model.meta.target.ra = 53.16
    model.meta.target.dec = -27.78
    model.meta.photometry.pixelarea_steradians = (DEFAULT_PIXEL_SCALE / 206264.806) ** 2
    model.meta.photometry.pixelarea_arcsecsq = DEFAULT_PIXEL_SCALE**2
    model.meta.photometry.conversion_megajanskys = 1.0
    model.meta.subarray.name = "FULL"
    model.meta.subarray.xstart = 1
    model.meta.subarray.ystart = 1
    model.meta.subarray.xsize = nx
    model.meta.subarray.ysize = ny
    model.meta.cal_step.assign_wcs = "COMPLETE"
    model.meta.cal_step.flat_field = "COMPLETE"
    model.meta.cal_step.photom = "COMPLETE"
    _set_wcsinfo(model, wcs, nx, ny)
    return model


def _set_wcsinfo(model, wcs, nx, ny):
    """Fill ``meta.wcsinfo`` (reference point, roll, s_region) from ``wcs``."""
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    ra0, dec0 = wcs(cx, cy, with_bounding_box=False)
    # position angle of the y axis from two points along it
    ra1, dec1 = wcs(cx, cy + 10.0, with_bounding_box=False)
    pa = np.rad2deg(
        np.arctan2(
            (ra1 - ra0) * np.cos(np.deg2rad(dec0)),
            dec1 - dec0,
        )
    )
    corners_x = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    corners_y = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    cra, cdec = wcs(corners_x, corners_y, with_bounding_box=False)
    w = model.meta.wcsinfo
    w.ra_ref = float(ra0)
    w.dec_ref = float(dec0)
    w.roll_ref = float(pa)
    w.v2_ref = 0.0
    w.v3_ref = 0.0
    w.v3yangle = 0.0
    w.vparity = -1
    w.crpix1 = cx + 1.0
    w.crpix2 = cy + 1.0
    w.crval1 = float(ra0)
    w.crval2 = float(dec0)
    w.cdelt1 = DEFAULT_PIXEL_SCALE / 3600.0
    w.cdelt2 = DEFAULT_PIXEL_SCALE / 3600.0
    w.ctype1 = "RA---TAN"
    w.ctype2 = "DEC--TAN"
    w.wcsaxes = 2
    w.s_region = "POLYGON ICRS " + " ".join(
        f"{r:.9f} {d:.9f}" for r, d in zip(cra, cdec, strict=True)
    )


def _tiles_and_scene(spec):
    tiles = _tile_layout(spec)
    ny, nx = spec.shape
    extent = max(
        max(abs(t.offset[0]) for t in tiles) + nx * spec.pixel_scale,
        max(abs(t.offset[1]) for t in tiles) + ny * spec.pixel_scale,
    )
    return tiles, _Scene(spec, extent)


def simulate_mosaic(spec):
    """Simulate a mosaic in memory.

    Parameters
    ----------
    spec : MosaicSpec
        What to simulate.

    Returns
    -------
    models : list of ImageModel
        One calibrated image per detector and exposure.
    truth : MosaicTruth
        The sky level and exposure of each image (keyed by file name).
    """
    models_out = []
    truth = MosaicTruth()
    for model in _models(spec, truth):
        models_out.append(model)
    return models_out, truth


def _models(spec, truth, share=None):
    """Render the mosaic's models one at a time, recording their truth.

    ``share`` ``(part, parts)``: build only every ``parts``-th model from
    ``part`` on (the others are rendered all the same, since rendering
    draws from the one random sequence, but not built), for `write_mosaic`
    to spread the writing over processes. The truth of every image is
    recorded.
    """
    images = _record_truth(spec, truth)
    rng = np.random.default_rng(spec.seed)
    for k, image in enumerate(images):
        wcs, data, dq, var = _render(spec, truth.scene, image, rng)
        if share is not None and k % share[1] != share[0]:
            continue
        tile = image.tile
        yield make_image_model(
            data, wcs, dq=dq, var=var, exposure=tile.exposure, detector=tile.detector
        )


def _record_truth(spec, truth):
    """Fill ``truth`` with the scene and each image's sky, without rendering.

    Returns a `_Tile` for every image, in the order they are rendered.
    The optional structure (gradients, seeing, striping) is drawn from
    generators of its own, and only when asked for.
    """
    tiles, scene = _tiles_and_scene(spec)
    skies = _tile_skies(spec, tiles)
    masked = _masked_tiles(spec, len(tiles))
    slopes = _exposure_slopes(spec)
    sigmas = _exposure_psf_sigmas(spec)
    stripe_rng = np.random.default_rng(spec.seed + 6000) if spec.striping > 0 else None
    centres = {
        e: np.mean([t.offset for t in tiles if t.exposure == e], axis=0)
        for e in range(1, spec.n_exposures + 1)
    }
    truth.scene = scene
    truth.spec = spec
    images = []
    for tile, sky, mask in zip(tiles, skies, masked, strict=True):
        name = _file_name(tile.exposure, tile.detector)
        slope_x, slope_y = slopes[tile.exposure - 1]
        if spec.sky_gradient > 0:
            # The exposure's sky is the plane's value at the exposure centre.
            east, north = centres[tile.exposure]
            plane = (float(sky - slope_x * east - slope_y * north), slope_x, slope_y)
        else:
            plane = (sky, 0.0, 0.0)
        stripes = None
        if stripe_rng is not None:
            ny, nx = spec.shape
            rows = _stripe_profile(stripe_rng, ny, spec.striping)
            columns = _stripe_profile(stripe_rng, nx, STRIPE_COLUMN_RATIO * spec.striping)
            stripes = (rows, columns)
        image = _Tile(tile, name, sky, mask, plane, sigmas[tile.exposure - 1], stripes)
        images.append(image)
        truth.exposure[name] = tile.exposure
        truth.tiles[name] = tile
        truth.sky_plane[name] = plane
        truth.sky[name] = sky
        if spec.sky_gradient > 0:
            truth.sky[name] = float(np.mean(truth.sky_image(name)))
        truth.psf_sigma[name] = image.psf_sigma
        truth.striping[name] = 0.0
        if stripes is not None:
            truth.stripes[name] = stripes
            # rows[y] + columns[x] over the image, exactly (both of zero mean)
            truth.striping[name] = float(
                np.sqrt(
                    np.mean(rows**2) + np.mean(columns**2) + 2.0 * np.mean(rows) * np.mean(columns)
                )
            )
        truth.masked_fraction[name] = (
            float(_mask_region(spec.masked_region, spec.shape).mean()) if mask else 0.0
        )
    return images


def _exposure_slopes(spec):
    """Sky gradient ``(gx, gy)`` of every exposure, MJy/sr per arcsec (zeros if off)."""
    if not spec.sky_gradient > 0:
        return [(0.0, 0.0)] * spec.n_exposures
    width = _exposure_layout(spec)[3] * spec.pixel_scale  # arcsec
    rng = np.random.default_rng(spec.seed + 4000)
    slopes = rng.normal(0.0, spec.sky_gradient / width, size=(spec.n_exposures, 2))
    return [(float(a), float(b)) for a, b in slopes]


def _exposure_psf_sigmas(spec):
    """Star sigma of every exposure, pixels."""
    if not spec.seeing_scatter > 0:
        return [DEFAULT_PSF_SIGMA] * spec.n_exposures
    rng = np.random.default_rng(spec.seed + 5000)
    factors = 1.0 + rng.normal(0.0, spec.seeing_scatter, spec.n_exposures)
    return [float(max(MIN_PSF_SIGMA, DEFAULT_PSF_SIGMA * f)) for f in factors]


def _stripe_profile(rng, n, rms):
    """Return ``n`` offsets with a 1/f power spectrum, zero mean and RMS ``rms``.

    Gaussian white noise of length ``2 n`` is filtered in Fourier space by
    ``f**-0.5`` (no constant term) and its first half kept, so the
    sequence is not periodic.
    """
    white = rng.standard_normal(2 * n)
    spectrum = np.fft.rfft(white)
    freq = np.arange(spectrum.size, dtype=float)
    spectrum[0] = 0.0
    spectrum[1:] /= np.sqrt(freq[1:])
    profile = np.fft.irfft(spectrum, 2 * n)[:n]
    profile -= profile.mean()
    size = np.sqrt(np.mean(profile**2))
    return profile * (rms / size) if size > 0 else np.zeros(n)


def _file_name(exposure, detector):
    """Default file name of the image of ``exposure`` on ``detector``."""
    return f"jw01234001001_01101_{exposure:05d}_{detector}_cal.fits"


def _write_share(spec, directory, share):
    """Write the files of one share of the mosaic (all with ``share=None``; see `_models`)."""
    for model in _models(spec, MosaicTruth(), share):
        model.save(Path(directory) / model.meta.filename)
        model.close()


def write_mosaic(spec, directory, *, product_name="sim", workers=1):
    """Simulate a mosaic and write its ``_cal.fits`` files and association.

    Parameters
    ----------
    spec : MosaicSpec
        What to simulate.
    directory : str or pathlib.Path
        Output directory (created if needed).
    product_name : str, optional
        Level-3 product name; the association is ``<product_name>_asn.json``.
    workers : int, optional
        Processes writing the files (each renders every image, since the
        images share one random sequence, and builds and saves its share).
        The files are the same for any number. The association is written
        last, once every file is.

    Returns
    -------
    MosaicTruth
        File paths, association path and the true sky of each image.
    """
    if int(workers) != workers or workers < 1:
        raise ValueError(f"workers must be a positive integer, not {workers!r}.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if workers == 1:
        # Render and write one image at a time: memory stays at one image.
        _write_share(spec, directory, None)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            shares = [(part, workers) for part in range(workers)]
            list(pool.map(_write_share, [spec] * workers, [directory] * workers, shares))
    truth = MosaicTruth()
    _record_truth(spec, truth)
    truth.files = [directory / name for name in truth.sky]
    truth.asn_path = write_association(
        truth.files, directory / f"{product_name}_asn.json", product_name=product_name
    )
    return truth


def write_association(files, path, *, product_name="sim"):
    """Write a level-3 image association listing ``files`` as science members.

    Parameters
    ----------
    files : list of str or pathlib.Path
        Member files; written by base name (relative to the association).
    path : str or pathlib.Path
        Where to write the JSON association.
    product_name : str, optional
        Name of the level-3 product.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    asn = {
        "asn_type": "image3",
        "asn_rule": "candidate_Asn_Lv3Image",
        "version_id": None,
        "code_version": "skymatch_step.simulate",
        "degraded_status": "No known degraded exposures in association.",
        "program": "01234",
        "constraints": "simulated",
        "asn_id": "o001",
        "target": "t001",
        "asn_pool": "simulated_pool",
        "products": [
            {
                "name": product_name,
                "members": [{"expname": Path(f).name, "exptype": "science"} for f in files],
            }
        ],
    }
    path.write_text(json.dumps(asn, indent=2))
    return path


def _parse(argv):
    p = argparse.ArgumentParser(
        prog="skymatch-simulate",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=(
            "Write a simulated JWST-like mosaic (NIRCam-like _cal.fits files with a known sky "
            "level per exposure) and its level-3 association, then print the association's "
            "path and the true sky of every image. No network or CRDS needed."
        ),
    )
    d = MosaicSpec()
    p.add_argument("--outdir", default="sim", help="output directory (default: ./sim)")
    p.add_argument("--product-name", default="sim", help="association product name (default sim)")
    p.add_argument("--exposures", type=int, default=d.n_exposures, help="number of exposures")
    p.add_argument(
        "--detectors",
        type=int,
        default=d.detectors_per_exposure,
        choices=(1, 2, 4),
        help="detectors per exposure (one sky group per exposure)",
    )
    p.add_argument("--size", type=int, default=d.shape[0], help="image size in pixels")
    p.add_argument(
        "--overlap",
        type=float,
        default=d.overlap,
        help="fraction of a tile shared with a neighbour",
    )
    p.add_argument("--noise", type=float, default=d.noise, help="pixel noise (MJy/sr)")
    p.add_argument(
        "--diffuse",
        type=float,
        default=d.diffuse,
        help=f"peak of the diffuse emission in MJy/sr (default {d.diffuse}; e.g. 5 for a nebula)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="random seed")
    p.add_argument(
        "--sky-levels",
        type=float,
        nargs="+",
        default=None,
        metavar="SKY",
        help="sky of each exposure in MJy/sr (default: random in [0.1, 0.5])",
    )
    p.add_argument(
        "--detector-sky-scatter",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="give each detector its own sky: exposure sky + normal offset of this spread (MJy/sr)",
    )
    p.add_argument(
        "--masked-region",
        choices=MASK_SHAPES,
        default=None,
        help="flag a large region (coronagraph-like mask) DO_NOT_USE and NaN",
    )
    p.add_argument(
        "--masked-images",
        type=int,
        nargs="+",
        default=[0],
        metavar="INDEX",
        help="0-based images (in file order) that get --masked-region (default: 0)",
    )
    p.add_argument(
        "--sky-gradient",
        type=float,
        default=d.sky_gradient,
        metavar="MJY_SR",
        help="RMS change of each exposure's sky across its width (MJy/sr): a random linear "
        "sky plane per exposure, shared by its detectors (0: flat skies)",
    )
    p.add_argument(
        "--seeing-scatter",
        type=float,
        default=d.seeing_scatter,
        metavar="FRACTION",
        help="relative scatter of the star PSF width between exposures "
        f"(sigma {DEFAULT_PSF_SIGMA} px times 1 + normal(0, FRACTION); 0: same PSF everywhere)",
    )
    p.add_argument(
        "--striping",
        type=float,
        default=d.striping,
        metavar="MJY_SR",
        help="RMS of 1/f-like row striping per image (MJy/sr), plus columns at "
        f"{STRIPE_COLUMN_RATIO} times that; zero mean (0: none)",
    )
    return p.parse_args(argv)


def main(argv=None):
    """Run the ``skymatch-simulate`` command.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0, or 2 for invalid options.
    """
    args = _parse(argv)
    try:
        for flag, value in (
            ("--sky-gradient", args.sky_gradient),
            ("--seeing-scatter", args.seeing_scatter),
            ("--striping", args.striping),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{flag} must be a finite number >= 0, not {value}")
        spec = MosaicSpec(
            n_exposures=args.exposures,
            detectors_per_exposure=args.detectors,
            shape=(args.size, args.size),
            overlap=args.overlap,
            noise=args.noise,
            diffuse=args.diffuse,
            seed=args.seed,
            sky_levels=None if args.sky_levels is None else tuple(args.sky_levels),
            detector_sky_scatter=args.detector_sky_scatter,
            masked_region=args.masked_region,
            masked_images=tuple(args.masked_images),
            sky_gradient=args.sky_gradient,
            seeing_scatter=args.seeing_scatter,
            striping=args.striping,
        )
        # Check the options before writing anything.
        _masked_tiles(spec, spec.n_exposures * spec.detectors_per_exposure)
        spec_sky(spec)
    except ValueError as err:
        print(f"skymatch-simulate: {err}", file=sys.stderr)
        return 2
    truth = write_mosaic(spec, args.outdir, product_name=args.product_name)
    print(f"Wrote {len(truth.files)} images and the association {truth.asn_path}")
    # Columns for the optional structure, only when it is on.
    extra = []
    if spec.sky_gradient > 0:
        extra.append(
            (
                f"{'gx':>10s} {'gy':>10s}",
                lambda n: "{1:10.3e} {2:10.3e}".format(*truth.sky_plane[n]),
            )
        )
    if spec.seeing_scatter > 0:
        extra.append((f"{'psf':>5s}", lambda n: f"{truth.psf_sigma[n]:5.2f}"))
    if spec.striping > 0:
        extra.append((f"{'stripes':>8s}", lambda n: f"{truth.striping[n]:8.4f}"))
    header = " ".join(
        [f"{'image':45s} {'exp':>3s} {'true sky':>9s} masked"] + [h for h, _ in extra]
    )
    print(header)
    print("-" * len(header))
    for path in truth.files:
        name = path.name
        masked = truth.masked_fraction[name]
        mark = f"{masked:.0%}" if masked else "-"
        row = f"{name:45s} {truth.exposure[name]:3d} {truth.sky[name]:9.4f} "
        if extra:
            row += " ".join([f"{mark:>6s}"] + [cell(name) for _, cell in extra])
        else:
            row += mark
        print(row)
    if spec.sky_gradient > 0:
        print(
            "(true sky: mean of the image's sky plane; gx, gy in MJy/sr per arcsec towards "
            "decreasing RA and increasing Dec)"
        )
    print(f"\nTry: strun skymatch_step {truth.asn_path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
