"""Sky differences of overlapping images, measured at the same sky positions.

For every overlapping pair of images ``(i, j)``, ``i < j``, in different sky
groups:

* the *sample grid* is the usable pixels of image ``i`` inside the overlap
  polygon (selected with the gwcs scan rule, as for the statistics);
* their centres are mapped through ``i``'s forward and ``j``'s inverse WCS
  into ``j``. The two transforms are evaluated on a coarse grid of nodes
  over the samples' bounding box and the positions are interpolated
  bilinearly in between; the node spacing is refined until the
  interpolation error, checked at the centres of the grid cells, is below
  ``grid_tolerance`` pixels;
* ``j`` is interpolated bilinearly at the mapped positions, where all four
  neighbouring pixels lie inside ``j`` and are usable;
* the differences ``data_i - data_j`` at the same sky positions are pooled
  over all image pairs joining two groups (with the sign of
  ``sky(a) - sky(b)``, ``a < b``) and reduced to a robust estimate
  (`PairDifference`).

Each image, whatever its diffuse emission, is compared with its partner at
the same positions, so the emission cancels; a statistic taken by each
image over the overlap polygon sees it over different pixels (masked ones,
edges) and does not.

The reduction starts with a sigma-clipped median: ``nclip`` iterations
keep the differences within ``[median - lsigma * s, median + usigma * s]``
of the current selection, with ``s = 1.4826 * MAD`` (a spread that cosmic
rays and unmasked stars do not inflate); iterations stop early when nothing
is clipped. The estimate is then the mean of the differences within
``3 s`` of it (re-centred on that mean until the selection no longer
changes): stars and cosmic rays of one image make one-sided tails, which
the median and the narrow window keep out, while the mean of the
Gaussian core is about 1.25 times more precise than the median (it halves
the distance to the noise floor in the accuracy benchmark). When the
spread is 0 (noise-free images) the median is kept.

The error of the difference is the standard error of that mean,
``std / sqrt(n)``, corrected for the correlations that bilinear
interpolation brings: neighbouring samples share pixels of ``j``. With
weights ``w`` of the four neighbours of a sample, ``std**2`` estimates
``sigma_i**2 + sigma_j**2 * q`` (``q = sum(w**2)``, averaged over the
samples), while the variance of the sum of the ``N`` differences is
``N * sigma_i**2 + sigma_j**2 * sum_p W_p**2``, ``W_p`` being the total
weight pixel ``p`` of ``j`` receives; ``sum_p W_p**2 = N * rho``, where
``rho`` is the number of pixels of ``i`` per pixel of ``j`` (1 for equal
pixel scales; from the Jacobian of the mapped grid). The variance of the
mean is thus inflated by ``(1 + r * rho) / (1 + r * q)``, ``r =
sigma_j**2 / sigma_i**2``, estimated from differences of neighbouring
pixels of each image (smooth emission cancels in them): 1 for aligned
pixel grids, up to 1.6 for half-pixel offsets. Checked by simulation
(tests): the errors match the scatter of repeated measurements for
aligned and offset grids and noise ratios from 0.5 to 2. (When the median
is kept, its error is ``1.2533 s / sqrt(n)``, with the excess of the
inflation over 1 scaled by ``2 / pi``: the signs of two normal variables
of small correlation ``c`` correlate by ``2 c / pi``.) A floor,
``1e-7 * (1 + mean |data_i|) / sqrt(n)`` (float32 rounding), keeps the
error positive and finite for noise-free images.

Which image of a pair is the sample grid is fixed by the image indices,
and pooled differences are concatenated in image-pair order, so results
do not depend on the order in which threads finish (bit-identical for any
number of workers).

Image arrays are not kept. `DifferenceCollector` keeps, for a pair whose
second image has not been visited yet, the first image's samples: their
column in the overlap's bounding box (uint16) and value (float32 for
float32 data, else float64), about 6 bytes per overlap pixel, plus a count
per row; for a group pair not complete yet, the float32 differences of its
finished image pairs. Both are dropped as soon as they are used.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

import numpy as np

from ._overlaps import region_mask
from ._statistics import SkyStatistics

__all__ = [
    "DifferenceCollector",
    "DifferencesAborted",
    "PairDifference",
    "Pooled",
    "clipped_mean",
    "clipped_median",
    "collect_samples",
    "compare_samples",
    "reduce_differences",
]

log = logging.getLogger(__name__)

#: 1.4826: MAD to standard deviation of a normal distribution.
_MAD_TO_SIGMA = 1.482602218505602
#: sqrt(pi / 2): standard error of the median over that of the mean.
_MEDIAN_SE = 1.2533141373155003
#: 2 / pi: for normal variables of small correlation c, the signs, which
#: make the median, correlate by about 2 c / pi.
_MEDIAN_CORRELATION = 2.0 / math.pi
#: Relative floor of the error (about float32 rounding).
_ERROR_FLOOR = 1e-7

#: Half-width, in robust sigmas, of the differences averaged around their
#: clipped median.
_MEAN_WIDTH = 3.0


class DifferencesAborted(RuntimeError):
    """A visit waiting for its partner was woken by `DifferenceCollector.abort`."""


@dataclass
class PairDifference:
    """The sky difference of two overlapping groups.

    Attributes
    ----------
    a, b : int
        Group indices, ``a < b``.
    npix : int
        Number of pixel differences used (after clipping).
    difference : float
        Robust estimate of ``sky(a) - sky(b)`` at the same sky positions.
    error : float
        Estimated error of ``difference``; positive and finite.
    spread : float
        Robust standard deviation of the pixel differences
        (``1.4826 * MAD`` of the clipped selection).
    pixel_error : float
        The error the pixel noise alone gives (``error`` unless the sky
        model found more scatter between parts of the overlap).
    block_error : float
        The error from the scatter of the difference between blocks of the
        overlap (a block jackknife); NaN when not measured.
    centre : tuple of float or None
        ``(xi, eta)`` tangent-plane centroid of the differences used
        (degrees); None when positions were not recorded.
    plane : ndarray or None
        ``sky(a) - sky(b)`` as a plane in the tangent plane, ``(value at
        the centroid, d/dxi, d/deta)`` (per degree); ``difference`` is its
        value at the centroid (see `PairRecord.plane`).
    plane_cov : ndarray or None
        3x3 covariance of ``plane``.
    moments : ndarray or None
        2x2 covariance of the differences' positions about ``centre``
        (degrees squared): the overlap's extent, for the plane fit and
        the uncertainties.
    """

    a: int
    b: int
    npix: int
    difference: float
    error: float
    spread: float
    pixel_error: float = math.nan
    block_error: float = math.nan
    centre: tuple | None = None
    plane: np.ndarray | None = None
    plane_cov: np.ndarray | None = None
    moments: np.ndarray | None = None

    def __post_init__(self):
        if math.isnan(self.pixel_error):
            self.pixel_error = self.error


@dataclass
class _Samples:
    """Usable pixels of the first image of a pair inside the overlap."""

    origin: tuple[int, int]  # (row, column) of the bounding box
    box: tuple[int, int]  # (height, width)
    counts: np.ndarray  # number of samples in each row of the box
    cols: np.ndarray  # column in the box of each sample (row-major order)
    values: np.ndarray  # the pixel values

    @property
    def nbytes(self):
        return self.counts.nbytes + self.cols.nbytes + self.values.nbytes

    def rows(self):
        """Row in the box of each sample."""
        return np.repeat(np.arange(self.counts.size), self.counts)


@dataclass
class _Part:
    """Differences of one image pair, with the sign of its group pair."""

    diffs: np.ndarray  # float32
    # Variance of the sum of the differences, and sum of their variances,
    # in units of image i's pixel variance (module docstring).
    noise_sum: float = 0.0
    noise_marginal: float = 0.0
    sum_abs: float = 0.0  # sum of |data_i| over the samples
    # Position of each difference in the mosaic's tangent plane (degrees,
    # float32), when the collector was given one.
    xi: np.ndarray | None = None
    eta: np.ndarray | None = None


_EMPTY_PART = _Part(np.zeros(0, dtype=np.float32))


def clipped_median(values, *, nclip=5, lsigma=4.0, usigma=4.0, subsample=1 << 15):
    """Sigma-clipped median of ``values``, with a MAD-based spread.

    Parameters
    ----------
    values : ndarray
        Finite values (1-D).
    nclip : int
        Maximum number of clipping iterations; each keeps the values of
        the current selection within ``[median - lsigma * s, median +
        usigma * s]``, ``s = 1.4826 * MAD``. They stop early when nothing
        is clipped or ``s`` is 0.
    lsigma, usigma : float
        Lower and upper clipping limits, in units of ``s``.
    subsample : int
        With more values than this, the clipping limits are found on an
        evenly spaced subset of about this size; the median and spread
        returned are still exactly those of all the values within the
        limits. (Partial sorts of all the values in every iteration were
        the slowest part of comparing two large images.)

    Returns
    -------
    median : float
        Median of the final selection (NaN when ``values`` is empty).
    spread : float
        ``1.4826 * MAD`` of the final selection.
    npix : int
        Size of the final selection.
    """
    values = np.asarray(values).ravel()
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(float)
    if values.size == 0:
        return math.nan, math.nan, 0
    stride = -(-values.size // subsample) if subsample else 1
    sel = values[::stride] if stride > 1 else values
    lo, hi = -math.inf, math.inf
    for iteration in range(int(nclip) + 1):
        med, spread = _median_spread(sel)
        if iteration == nclip or spread == 0.0:
            break
        lo, hi = med - lsigma * spread, med + usigma * spread
        keep = sel >= lo
        keep &= sel <= hi
        if keep.all():
            break
        sel = sel[keep]
    if stride > 1:
        sel = values
        if lo > -math.inf:
            keep = values >= lo
            keep &= values <= hi
            if not keep.all():
                sel = values[keep]
        med, spread = _median_spread(sel, guess=(med, spread))
    return med, spread, int(sel.size)


def clipped_mean(values, median, spread, *, width=_MEAN_WIDTH, iterations=5):
    """Mean and standard deviation of the values within ``width * spread`` of the centre.

    The centre starts at ``median`` and moves to the mean of the kept
    values, at most ``iterations`` times (until the selection no longer
    changes). Returns ``(mean, std, n, kept)``, ``kept`` the selection;
    ``n = 0`` (and ``kept`` None) when ``spread`` is not positive.
    """
    if not spread > 0:
        return math.nan, math.nan, 0, None
    centre = median
    kept = None
    for _ in range(iterations):
        lo = centre - width * spread
        hi = centre + width * spread
        keep = values >= lo
        keep &= values <= hi
        if kept is not None and np.array_equal(keep, kept):
            break
        kept = keep
        sel = values[keep]
        if sel.size < 2:
            return math.nan, math.nan, 0, None
        centre = float(np.mean(sel, dtype=np.float64))
    std = float(np.std(sel, dtype=np.float64, ddof=1))
    return centre, std, int(sel.size), kept


def _median_spread(values, guess=None):
    """Median and ``1.4826 * MAD`` of a non-empty array.

    ``guess``, a close estimate of both, lets each be found by a partial
    sort of the values near it only; the result is the same.
    """
    med_guess = mad_guess = None
    if guess is not None and guess[1] > 0:
        med_guess = guess[0], 0.1 * guess[1]
        mad_guess = guess[1] / _MAD_TO_SIGMA, 0.1 * guess[1] / _MAD_TO_SIGMA
    med = _middle(values, med_guess)
    dev = values - values.dtype.type(med)
    np.abs(dev, out=dev)
    return med, _MAD_TO_SIGMA * _middle(dev, mad_guess)


def _middle(values, guess=None):
    """Median of ``values`` (the mean of the two middle values for an even size).

    With ``guess = (centre, halfwidth)``, only the values within
    ``centre +- halfwidth`` are partially sorted when the middle values
    lie among them (checked by counting); otherwise all are.
    """
    n = values.size
    ks = [(n - 1) // 2, n // 2]
    pool, offset = values, 0
    if guess is not None:
        lo = values.dtype.type(guess[0] - guess[1])
        hi = values.dtype.type(guess[0] + guess[1])
        below = int(np.count_nonzero(values < lo))
        inside = values >= lo
        inside &= values <= hi
        window = values[inside]
        if below <= ks[0] and ks[1] < below + window.size:
            pool, offset = window, below
    part = np.partition(pool, [k - offset for k in ks])
    return 0.5 * (float(part[ks[0] - offset]) + float(part[ks[1] - offset]))


def _nodes(start, size, step):
    """Node positions every ``step`` pixels over ``start .. start+size-1``, ends included."""
    last = start + size - 1
    nodes = np.arange(start, last + 1, step, dtype=float)
    if nodes[-1] != last:
        nodes = np.r_[nodes, float(last)]
    if nodes.size == 1:
        nodes = np.r_[nodes, nodes[0] + 1.0]
    return nodes


def _through(forward, inverse, x, y):
    ra, dec = forward(x, y)
    xj, yj = inverse(ra, dec)
    return np.asarray(xj, dtype=float), np.asarray(yj, dtype=float)


def _cells(nodes, coords):
    """Cell index and fraction of ``coords`` on a 1-D grid of ``nodes``."""
    cell = np.searchsorted(nodes, coords, side="right") - 1
    np.clip(cell, 0, nodes.size - 2, out=cell)
    frac = (coords - nodes[cell]) / (nodes[cell + 1] - nodes[cell])
    return cell, frac


class _PositionMap:
    """Pixel positions of one image in another, interpolated from a coarse grid.

    The map is built over a box of the first image: ``forward`` then
    ``inverse`` are evaluated on nodes every ``step`` pixels (box edges
    included); the step is reduced until bilinear interpolation of the
    nodes reproduces the exact map at the cell centres to ``tolerance``
    pixels (a step of 1 is exact).
    """

    def __init__(self, forward, inverse, origin, box, *, step=32, tolerance=0.005, tangent=None):
        r0, c0 = origin
        h, w = box
        step = max(1, int(step))
        while True:
            xs = _nodes(c0, w, step)
            ys = _nodes(r0, h, step)
            gx, gy = np.meshgrid(xs, ys)
            mx, my = _through(forward, inverse, gx, gy)
            if step == 1:
                self.error = 0.0
                break
            cx = 0.5 * (xs[:-1] + xs[1:])
            cy = 0.5 * (ys[:-1] + ys[1:])
            ex, ey = _through(forward, inverse, *np.meshgrid(cx, cy))
            ax = 0.25 * (mx[:-1, :-1] + mx[:-1, 1:] + mx[1:, :-1] + mx[1:, 1:])
            ay = 0.25 * (my[:-1, :-1] + my[:-1, 1:] + my[1:, :-1] + my[1:, 1:])
            dev = np.hypot(ex - ax, ey - ay)
            dev = dev[np.isfinite(dev)]
            self.error = float(dev.max()) if dev.size else 0.0
            if self.error <= tolerance:
                break
            # The error of bilinear interpolation scales as step**2.
            step = max(1, min(step // 2, int(step * math.sqrt(tolerance / self.error) * 0.9)))
        self.step = step
        self.origin = (r0, c0)
        self.width = w
        ccell, self._cfrac = _cells(xs, np.arange(c0, c0 + w, dtype=float))
        rcell, rfrac = _cells(ys, np.arange(r0, r0 + h, dtype=float))
        # Interpolate the node rows to every row of the box: (h, nodes in x).
        rf = rfrac[:, None]
        self._rows_x = mx[rcell] * (1.0 - rf) + mx[rcell + 1] * rf
        self._rows_y = my[rcell] * (1.0 - rf) + my[rcell + 1] * rf
        self._ccell = ccell
        self._nxn = xs.size
        self._xs, self._ys, self._mx, self._my = xs, ys, mx, my
        self._rows_sky = None
        if tangent is not None:
            # The samples' positions in the mosaic's tangent plane, from the
            # same nodes (smooth over a node cell, like the pixel positions).
            xi, eta = tangent(*forward(gx, gy))
            self._rows_sky = (
                xi[rcell] * (1.0 - rf) + xi[rcell + 1] * rf,
                eta[rcell] * (1.0 - rf) + eta[rcell + 1] * rf,
            )

    def __call__(self, row, col):
        """Positions ``(x, y)`` in the second image of box pixels ``(row, col)``."""
        return self._interpolate((self._rows_x, self._rows_y), row, col)

    def sky(self, row, col):
        """Tangent-plane positions ``(xi, eta)`` (float32) of box pixels ``(row, col)``."""
        xi, eta = self._interpolate(self._rows_sky, row, col)
        return xi.astype(np.float32), eta.astype(np.float32)

    def _interpolate(self, grids, row, col):
        k = row * self._nxn
        k += self._ccell[col]
        f = self._cfrac[col]
        k1 = k + 1
        out = []
        for grid in grids:
            flat = grid.reshape(-1)
            lo = flat[k]
            hi = flat[k1]
            hi -= lo
            hi *= f
            hi += lo
            out.append(hi)
        return out[0], out[1]

    def density(self):
        """Mean number of first-image pixels per second-image pixel (1 / |Jacobian|)."""
        jx = np.diff(self._mx, axis=1)[:-1] / np.diff(self._xs)
        jy = np.diff(self._my, axis=0)[:, :-1] / np.diff(self._ys)[:, None]
        kx = np.diff(self._my, axis=1)[:-1] / np.diff(self._xs)
        ky = np.diff(self._mx, axis=0)[:, :-1] / np.diff(self._ys)[:, None]
        det = np.abs(jx * jy - kx * ky)
        det = det[np.isfinite(det) & (det > 0)]
        return float(np.mean(1.0 / det)) if det.size else 1.0


def _flat(array):
    """Return a 1-D view of ``array`` (a copy if needed) and its row and column strides."""
    ny, nx = array.shape
    if array.flags.c_contiguous:
        return array.reshape(-1), nx, 1
    if array.flags.f_contiguous:
        return array.T.reshape(-1), 1, ny
    return np.ascontiguousarray(array).reshape(-1), nx, 1


def _robust_variance(values):
    """Square of ``1.4826 * MAD`` (NaN for fewer than 16 values)."""
    values = values[np.isfinite(values)]
    if values.size < 16:
        return math.nan
    dev = np.abs(values - np.median(values))
    return (_MAD_TO_SIGMA * float(np.median(dev))) ** 2


def _adjacent_variance(values, rows, cols, count=8192):
    """Pixel noise variance from differences of horizontally adjacent samples.

    Smooth emission hardly changes from one pixel to the next, so
    ``(v[k+1] - v[k]) / sqrt(2)`` measures the noise; about ``count``
    evenly spaced pairs are used.
    """
    if values.size < 2:
        return math.nan
    k = np.arange(0, values.size - 1, max(1, (values.size - 1) // count))
    adjacent = (cols[k + 1].astype(np.intp) == cols[k].astype(np.intp) + 1) & (
        rows[k + 1] == rows[k]
    )
    k = k[adjacent]
    return _robust_variance(values[k + 1].astype(float) - values[k]) / 2.0


def _within(values, lower, upper):
    ok = np.isfinite(values)
    if lower is not None:
        ok &= values >= lower
    if upper is not None:
        ok &= values <= upper
    return ok


class DifferenceCollector:
    """Measure the sky differences of overlapping groups while images are read.

    Every image is visited once, with its pixels (`visit`), in any order
    of threads, as long as image ``k``'s visit starts only after the visits
    of all lower-indexed images have started (``ThreadPoolExecutor.map``
    over ``range(n)`` does this; so does a serial loop). For each image
    pair ``(i, j)``, ``i < j``, the visit of ``i`` stores ``i``'s usable
    pixels in the overlap; the visit of ``j`` waits until they are stored,
    samples ``j`` at their sky positions and drops them. The results do not
    depend on thread timing.

    Parameters
    ----------
    layout : Layout
        The images (only ``shape``, ``forward`` and ``inverse`` are used),
        their names, group indices, overlapping image pairs ``(i, j)``,
        ``i < j``, in different groups, and the pairs' overlaps
        (``first``, image ``i``'s polygons, defines the sample grid).
    stats : SkyStatistics, optional
        ``nclip``, ``lsigma`` and ``usigma`` clip the differences (see
        `clipped_median`); ``lower`` and ``upper`` limit the usable pixel
        values in both images of a pair.
    grid_step : int, optional
        Initial spacing, in pixels, of the nodes where the WCSs are
        evaluated (see the module docstring).
    grid_tolerance : float, optional
        Largest interpolation error of the mapped positions, in pixels.
    sky_model : SkyModel, optional
        Completes each pair's measurement from its pooled differences and
        their positions in ``layout.tangent`` (`reduce_differences`).

    Attributes
    ----------
    pending_bytes : int
        Bytes of stored samples waiting for their partner.
    pooled_bytes : int
        Bytes of differences waiting for the rest of their group pair.
    peak_bytes : int
        Largest ``pending_bytes + pooled_bytes`` seen.

    Notes
    -----
    `visit` must be called for every image, also for one without usable
    pixels (an all-False mask): a later partner waits for it. If the
    caller cannot visit an image (its pixels failed to load), it must call
    `abort`, which wakes every waiting visit with `DifferencesAborted`.
    A visit that raises releases its partners itself. Since a visit may
    wait for the visits of lower-indexed images, it must not be made while
    holding a lock that those need.
    """

    def __init__(self, layout, stats=None, *, grid_step=32, grid_tolerance=0.005, sky_model=None):
        self._images = list(layout.images)
        n = len(self._images)
        self._groups = [int(g) for g in layout.groups]
        if len(self._groups) != n:
            raise ValueError(f"groups has {len(self._groups)} entries for {n} images")
        self._names = [str(s) for s in layout.names]
        if not grid_tolerance > 0:
            raise ValueError(f"grid_tolerance must be positive, not {grid_tolerance!r}.")
        stats = SkyStatistics() if stats is None else stats
        self._clip = {"nclip": int(stats.nclip), "lsigma": stats.lsigma, "usigma": stats.usigma}
        self._range = (stats.lower, stats.upper)
        self._grid = {"step": int(grid_step), "tolerance": float(grid_tolerance)}
        self._sky_model = sky_model
        self._tangent = getattr(layout, "tangent", None) if sky_model is not None else None
        self._overlaps = layout.pair_overlaps
        self._below = [[] for _ in range(n)]  # partners i < k
        self._above = [[] for _ in range(n)]  # partners j > k
        self._remaining = {}
        for i, j in layout.pairs:
            self._file_pair(i, j, n)
        for lst in (*self._below, *self._above):
            lst.sort()
        self._parts = {key: {} for key in self._remaining}
        self._results = {}
        self._samples = {}
        self._visited = [False] * n
        self._aborted = False
        self._failed = set()
        self._cond = threading.Condition()
        self.pending_bytes = 0
        self.pooled_bytes = 0
        self.peak_bytes = 0

    def _file_pair(self, i, j, n):
        """Check one image pair and note who waits for whom."""
        if not 0 <= i < j < n:
            raise ValueError(f"image pair {(i, j)!r} is not (i, j) with 0 <= i < j < {n}")
        gi, gj = self._groups[i], self._groups[j]
        if gi == gj:
            raise ValueError(
                f"images {self._names[i]} and {self._names[j]} are both in group {gi}; "
                "pairs must join different groups"
            )
        self._below[j].append(i)
        self._above[i].append(j)
        key = (min(gi, gj), max(gi, gj))
        self._remaining[key] = self._remaining.get(key, 0) + 1

    # -- public API -----------------------------------------------------

    def visit(self, k: int, data: np.ndarray, mask: np.ndarray) -> None:
        """Contribute image ``k``'s pixels.

        Stores ``k``'s samples for its partners ``j > k``, then compares
        ``k`` with each partner ``i < k``, waiting until ``i`` has stored
        its samples.

        Parameters
        ----------
        k : int
            Image index.
        data : ndarray
            The image's 2-D science array.
        mask : ndarray of bool
            True where a pixel is usable.

        Raises
        ------
        DifferencesAborted
            If `abort` was called while waiting for a partner.
        """
        with self._cond:
            if self._visited[k]:
                raise ValueError(f"image {self._names[k]} (index {k}) was already visited")
            self._visited[k] = True
        image = self._images[k]
        stored = []
        try:
            data = np.asarray(data)
            mask = np.asarray(mask, dtype=bool)
            if data.shape != tuple(image.shape) or mask.shape != data.shape:
                raise ValueError(
                    f"image {self._names[k]}: data shape {data.shape} and mask shape "
                    f"{mask.shape} must equal the declared shape {tuple(image.shape)}"
                )
            for j in self._above[k]:
                samples = self._collect(k, j, data, mask)
                self._store(k, j, samples)
                stored.append(j)
            if self._below[k]:
                flat = (_flat(data), _flat(mask))
            for i in self._below[k]:
                samples = self._take(i, k)
                part = self._compare(i, k, samples, *flat)
                del samples
                self._add(i, k, part)
        finally:
            for j in self._above[k]:
                if j not in stored:
                    self._store(k, j, None)

    def abort(self, failed=None) -> None:
        """Give up on image ``failed`` (or on all images when None).

        Visits waiting for the samples of a given-up image raise
        `DifferencesAborted`; others go on waiting for their partners.

        Parameters
        ----------
        failed : int, optional
            Index of the image whose task failed before its visit.
        """
        with self._cond:
            if failed is None:
                self._aborted = True
            else:
                self._failed.add(int(failed))
            self._cond.notify_all()

    def results(self) -> list[PairDifference]:
        """Return the differences of every group pair with at least one pixel difference.

        Returns
        -------
        list of PairDifference
            Sorted by ``(a, b)``.
        """
        with self._cond:
            missing = [self._names[k] for k, v in enumerate(self._visited) if not v]
            if missing:
                shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
                raise RuntimeError(
                    f"differences are incomplete: {len(missing)} image(s) not visited ({shown})"
                )
            if any(self._remaining.values()):
                raise RuntimeError(
                    "differences are incomplete: a visit failed before comparing all its pairs"
                )
            return [self._results[key] for key in sorted(self._results)]

    # -- internals -------------------------------------------------------

    def _track(self, pending=0, pooled=0):
        # Called with the condition's lock held.
        self.pending_bytes += pending
        self.pooled_bytes += pooled
        self.peak_bytes = max(self.peak_bytes, self.pending_bytes + self.pooled_bytes)

    def _store(self, i, j, samples):
        with self._cond:
            self._samples[(i, j)] = samples
            if samples is not None:
                self._track(pending=samples.nbytes)
            self._cond.notify_all()

    def _take(self, i, k):
        with self._cond:
            while (i, k) not in self._samples:
                if self._aborted or i in self._failed:
                    raise DifferencesAborted(
                        f"comparison of {self._names[i]} and {self._names[k]} aborted: "
                        f"{self._names[i]} was not visited"
                    )
                self._cond.wait()
            samples = self._samples.pop((i, k))
            if samples is not None:
                self._track(pending=-samples.nbytes)
        return samples

    def _collect(self, i, j, data, mask):
        """Usable pixels of image ``i`` in its overlap with ``j`` (None if none)."""
        area, pieces = self._overlaps[(i, j)].first
        inverse = self._images[i].inverse
        return collect_samples(
            pieces if area != 0.0 else [], inverse, data, mask, self._names[i], self._range
        )

    def _compare(self, i, j, samples, data, mask):
        """Differences ``data_i - data_j`` of one image pair, signed for its group pair.

        ``data`` and ``mask`` are image ``j``'s, as `_flat` returns them.
        """
        if samples is None:
            return _EMPTY_PART
        return compare_samples(
            samples,
            self._images[i],
            self._images[j],
            data,
            mask,
            grid=self._grid,
            value_range=self._range,
            names=(self._names[i], self._names[j]),
            flip=self._groups[i] > self._groups[j],
            tangent=self._tangent,
        )

    def _add(self, i, k, part):
        key = (min(self._groups[i], self._groups[k]), max(self._groups[i], self._groups[k]))
        with self._cond:
            parts = self._parts[key]
            parts[(i, k)] = part
            self._track(pooled=part.diffs.nbytes)
            self._remaining[key] -= 1
            if self._remaining[key]:
                return
            del self._parts[key]
        result = reduce_differences(key, parts, self._clip, self._sky_model)
        with self._cond:
            self._track(pooled=-sum(p.diffs.nbytes for p in parts.values()))
            if result is not None:
                self._results[key] = result


def collect_samples(pieces, inverse, data, mask, name, value_range):
    """Usable pixels of an image inside its overlap polygons, as `_Samples`.

    Parameters
    ----------
    pieces : list of tuple of ndarray
        The overlap's closed ``(ra, dec)`` polygons (empty: no overlap).
    inverse : callable
        The image's ``inverse(ra, dec) -> (x, y)``.
    data, mask : ndarray
        Its pixels and usable-pixel mask.
    name : str
        Its name, for warnings.
    value_range : tuple
        ``(lower, upper)`` usable pixel values (None: no limit).

    Returns
    -------
    _Samples or None
        None when no usable pixel lies inside.
    """
    if not pieces:
        return None
    polygons = []
    for ra, dec in pieces:
        x, y = inverse(ra, dec)
        polygons.append((np.asarray(x, float), np.asarray(y, float)))
    where, sub = region_mask(polygons, data.shape, name)
    if where is None:
        return None
    values = data[where]
    usable = sub & mask[where]
    usable &= _within(values, *value_range)
    counts = np.count_nonzero(usable, axis=1)
    if not counts.any():
        return None
    cols = np.nonzero(usable)[1]
    # Native float32 for float32 data (any byte order), else float64.
    single = values.dtype.kind == "f" and values.dtype.itemsize == 4
    values = values[usable].astype(np.float32 if single else np.float64)
    return _Samples(
        origin=(where[0].start, where[1].start),
        box=sub.shape,
        counts=counts.astype(np.int32),
        cols=cols.astype(np.uint16 if sub.shape[1] <= 65536 else np.int32),
        values=values,
    )


@dataclass
class _Sampled:
    """Image ``j`` interpolated at the positions of the samples of image ``i``."""

    values: np.ndarray  # interpolated values (non-finite where unusable)
    good: np.ndarray  # bool: all four neighbours usable and the value finite
    sel: np.ndarray | None  # samples inside j (None: all)
    weights: tuple  # (fx, fy, gx, gy) bilinear weights
    corners: tuple  # the four neighbours' values


def _sample_bilinear(x, y, flat_data, flat_mask, shape, value_range):
    """Interpolate image ``j`` (flat, see `_flat`) bilinearly at pixel positions ``(x, y)``.

    Positions outside ``j`` are dropped (``sel``); a sample is good where
    its four neighbours are usable, within ``value_range``, and the value
    is finite.
    """
    ny, nx = shape
    sel = None
    inside = (x >= 0) & (x <= nx - 1) & (y >= 0) & (y <= ny - 1)
    if not inside.all():
        sel = np.flatnonzero(inside)
        x = x[sel]
        y = y[sel]
    del inside
    # Lower-left neighbour; a position on the last row or column uses
    # the cell before it (with weight 1 on the far side).
    x0 = np.minimum(x.astype(np.intp), nx - 2)
    y0 = np.minimum(y.astype(np.intp), ny - 2)
    fx = x
    fx -= x0
    fy = y
    fy -= y0
    del x, y
    mask, mrs, mcs = flat_mask
    data, drs, dcs = flat_data
    p = y0 * mrs
    p += x0 * mcs
    good = mask[p]
    good &= mask[p + mcs]
    good &= mask[p + mrs]
    good &= mask[p + (mrs + mcs)]
    if (drs, dcs) != (mrs, mcs):
        p = y0 * drs
        p += x0 * dcs
    del x0, y0
    corners = (data[p], data[p + dcs], data[p + drs], data[p + (drs + dcs)])
    if value_range[0] is not None or value_range[1] is not None:
        for c in corners:
            good &= _within(c, *value_range)
    gx = 1.0 - fx
    gy = 1.0 - fy
    v00, v01, v10, v11 = corners
    # A non-finite neighbour makes the sum non-finite (NaN * 0 is NaN).
    with np.errstate(over="ignore", invalid="ignore"):
        sampled = (v00 * gx + v01 * fx) * gy + (v10 * gx + v11 * fx) * fy
    del v00, v01, v10, v11, p
    good &= np.isfinite(sampled)
    return _Sampled(sampled, good, sel, (fx, fy, gx, gy), corners)


def compare_samples(
    samples, image_i, image_j, flat_data, flat_mask, *, grid, value_range, names, flip, tangent=None
):
    """Differences ``data_i - data_j`` of one image pair at the same sky positions.

    Parameters
    ----------
    samples : _Samples
        Image ``i``'s usable pixels in the overlap.
    image_i, image_j : ImageInput
        The two images (``forward`` of ``i``, ``inverse`` and ``shape`` of ``j``).
    flat_data, flat_mask : tuple
        Image ``j``'s pixels and mask, as `_flat` returns them.
    grid : dict
        ``step`` and ``tolerance`` of the `_PositionMap`.
    value_range : tuple
        ``(lower, upper)`` usable pixel values.
    names : tuple of str
        The two images' names, for messages.
    flip : bool
        Negate the differences (image ``i``'s group is the pair's second).
    tangent : TangentPlane, optional
        Also record each difference's position in this plane.

    Returns
    -------
    _Part
    """
    ny, nx = image_j.shape
    if nx < 2 or ny < 2:
        return _EMPTY_PART
    pmap = _PositionMap(
        image_i.forward, image_j.inverse, samples.origin, samples.box, **grid, tangent=tangent
    )
    log.debug(
        "Positions of %s in %s interpolated every %d pixels (error %.2g pixel).",
        names[0],
        names[1],
        pmap.step,
        pmap.error,
    )
    rows = samples.rows()
    var_i = _adjacent_variance(samples.values, rows, samples.cols)
    x, y = pmap(rows, samples.cols)
    if tangent is None:
        del rows
    sampled = _sample_bilinear(x, y, flat_data, flat_mask, (ny, nx), value_range)
    del x, y
    good = sampled.good
    own = samples.values if sampled.sel is None else samples.values[sampled.sel]
    with np.errstate(over="ignore", invalid="ignore"):
        diffs = own - sampled.values
    sampled.values = None
    # Differences are kept as float32: beyond its range they overflow.
    overflow = good & ~(np.abs(diffs) <= np.finfo(np.float32).max)
    if overflow.any():
        log.warning(
            "Images %s and %s: %d pixel difference(s) overflow float32 and are not used.",
            names[0],
            names[1],
            int(np.count_nonzero(overflow)),
        )
        good &= ~overflow
    del overflow
    keep = np.flatnonzero(good) if not good.all() else None
    if keep is not None:
        own, diffs = own[keep], diffs[keep]
    n = diffs.size
    if n == 0:
        return _EMPTY_PART
    if flip:
        np.negative(diffs, out=diffs)
    ratio, q = _noise_terms(sampled, keep, n, var_i)
    xi = eta = None
    if tangent is not None:
        where = np.arange(rows.size) if sampled.sel is None else sampled.sel
        if keep is not None:
            where = where[keep]
        xi, eta = pmap.sky(rows[where], samples.cols[where])
    return _Part(
        diffs.astype(np.float32),
        noise_sum=n * (1.0 + ratio * pmap.density()),
        noise_marginal=n * (1.0 + ratio * q),
        sum_abs=float(np.sum(np.abs(own), dtype=np.float64)),
        xi=xi,
        eta=eta,
    )


def _noise_terms(sampled, keep, n, var_i):
    """Noise ratio ``var_j / var_i`` and mean sum of squared bilinear weights.

    From an evenly spaced subset of the kept samples (module docstring):
    the noise of ``j`` from differences of neighbouring pixels.
    """
    sub = slice(None, None, max(1, n // 8192))
    sub = keep[sub] if keep is not None else sub
    fx, fy, gx, gy = (w[sub] for w in sampled.weights)
    q = float(np.mean((gx * gx + fx * fx) * (gy * gy + fy * fy)))
    corners = sampled.corners
    var_j = _robust_variance(corners[1][sub].astype(float) - corners[0][sub]) / 2.0
    ratio = var_j / var_i if var_i > 0 and np.isfinite(var_i + var_j) else 1.0
    return ratio, q


def reduce_differences(key, parts, clip, sky_model=None):
    """Pool a group pair's differences (in image-pair order) and reduce them.

    Parameters
    ----------
    key : tuple of int
        The group pair ``(a, b)``.
    parts : dict
        ``{(i, j): _Part}`` of its image pairs.
    clip : dict
        ``nclip``, ``lsigma`` and ``usigma`` of `clipped_median`.
    sky_model : SkyModel, optional
        Completes the measurement from the pooled differences and their
        positions (`SkyModel.measure_pair`): the error from the scatter
        between parts of the overlap, a plane. Without it, the difference
        and its pixel-noise error.

    Returns
    -------
    PairDifference or None
        None when there is no usable pixel difference.
    """
    ordered = [parts[pair] for pair in sorted(parts)]
    n_all = sum(p.diffs.size for p in ordered)
    if n_all == 0:
        log.debug("Groups %d and %d: no usable pixel differences.", *key)
        return None
    diffs = np.concatenate([p.diffs for p in ordered]) if len(ordered) > 1 else ordered[0].diffs
    med, spread, npix = clipped_median(diffs, **clip)
    scale, correlation = _MEDIAN_SE * spread, _MEDIAN_CORRELATION
    mean, std, nmean, kept = clipped_mean(diffs, med, spread)
    if nmean > 1 and std > 0:
        # The mean of the differences near the median: about 1.25 times
        # more precise than the median for Gaussian noise.
        med, scale, correlation, npix = mean, std, 1.0, nmean
    else:
        kept = None
    noise_sum = sum(p.noise_sum for p in ordered)
    noise_marginal = sum(p.noise_marginal for p in ordered)
    # For the mean; the median feels correlations less (module docstring).
    inflation = noise_sum / noise_marginal if noise_marginal > 0 else 1.0
    inflation = 1.0 + correlation * (inflation - 1.0)
    error = scale * math.sqrt(inflation / npix)
    typical = sum(p.sum_abs for p in ordered) / n_all
    floor = _ERROR_FLOOR * (1.0 + typical) / math.sqrt(npix)
    if not error >= floor:
        error = floor
    log.debug(
        "Groups %d and %d: difference %.6g +- %.2g from %d of %d pixel differences.",
        key[0],
        key[1],
        med,
        error,
        npix,
        n_all,
    )
    result = PairDifference(
        a=key[0], b=key[1], npix=npix, difference=med, error=error, spread=spread
    )
    if sky_model is None:
        return result
    pooled = Pooled(diffs, _pooled_positions(ordered), kept, inflation, floor)
    return sky_model.measure_pair(result, pooled)


@dataclass
class Pooled:
    """A group pair's pooled differences, for the sky model's measurement.

    Attributes
    ----------
    diffs : ndarray of float32
        Every pixel difference, ``sky(a) - sky(b)``.
    positions : tuple of ndarray or None
        ``(xi, eta)`` of each difference in the mosaic's tangent plane
        (degrees); None when not recorded.
    kept : ndarray of bool or None
        The differences the pair's mean used (near its clipped median);
        None when the median was kept (noise-free data).
    inflation : float
        Factor on the variance of a mean of the differences from the
        correlations of bilinear interpolation (module docstring).
    floor : float
        Floor of the error of the mean (float32 rounding).
    """

    diffs: np.ndarray
    positions: tuple | None
    kept: np.ndarray | None
    inflation: float
    floor: float


def _pooled_positions(ordered):
    if any(p.xi is None for p in ordered if p.diffs.size):
        return None
    xi = np.concatenate([p.xi for p in ordered if p.diffs.size])
    eta = np.concatenate([p.eta for p in ordered if p.diffs.size])
    return xi, eta
