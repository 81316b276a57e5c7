"""What a sky group's background is: the sky models (``sky_model``).

A sky model is a small strategy object that says what each group's sky is
and how it is measured and fitted:

- `ConstantSky` (``'constant'``, jwst's model): one level per group;
- `PlaneSky` (``'plane'``): a plane in the mosaic's tangent plane
  (`skymatch_step._tangent`), ``a + b * xi + c * eta``, so that the
  detectors of one exposure share one plane.

With ``compare='differences'`` a model completes each pair's measurement
from the pooled pixel differences and their positions (`measure_pair`):

- the *honest error*: pixel noise is not the only thing that makes a
  pair's difference uncertain; sky structure (gradients, scattered light,
  PSF differences, stripes) makes it vary across the overlap. The overlap
  is cut into blocks and the scatter of the difference between them (a
  block jackknife) is measured; where it exceeds what the pixel noise
  allows (an F test at 99.9%), it becomes the pair's error. On skies with
  pixel noise only, 99.9% of the pairs keep their pixel-noise error.
- for a plane, the pair's plane of differences and its covariance, by
  iteratively clipped least squares, with the same block jackknife.

`fit` then solves for every group (`skymatch_step._fit`), adds an excess
variance when the pairs still disagree with each other more than their
errors allow, and gives every group's level a 1-sigma uncertainty.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
from scipy.stats import chi2

from ._differences import clipped_mean, clipped_median

__all__ = ["SKY_MODELS", "ConstantSky", "PlaneSky", "SkyModel", "sky_model"]

#: Blocks along the long and the short axis of an overlap (block jackknife).
_BLOCKS = (4, 4)

#: Blocks of a plane fit's block medians, along and across the overlap.
_PLANE_BLOCKS = (16, 4)

#: Fewest differences (and blocks with differences) for a block jackknife.
_MIN_JACKKNIFE = 256
_MIN_BLOCKS = 6

#: Confidence at which the scatter between blocks is taken as real.
_CONFIDENCE = 0.999

#: Clipping of the plane fit's residuals, in robust sigmas, and rounds.
_PLANE_CLIP = 3.0
_PLANE_ROUNDS = 5

_MAD_TO_SIGMA = 1.482602218505602

#: Variance of a median over that of a mean, for normal noise.
_MEDIAN_EFFICIENCY = math.pi / 2.0


class SkyModel(ABC):
    """What a sky group's background is (see the module docstring)."""

    #: The name users give it (``sky_model=``).
    name: ClassVar[str] = ""
    #: Coefficients per group.
    dim: ClassVar[int] = 1
    #: Whether the model needs positions (and hence ``compare='differences'``).
    needs_positions: ClassVar[bool] = False

    @abstractmethod
    def measure_pair(self, result, pooled):
        """Complete a pair's measurement from its pooled differences.

        Parameters
        ----------
        result : PairDifference
            The robust mean difference and its pixel-noise error.
        pooled : Pooled
            The differences, their positions and selection.

        Returns
        -------
        PairDifference
        """

    def __str__(self):
        return self.name


@dataclass(frozen=True)
class ConstantSky(SkyModel):
    """One sky level per group (jwst's model)."""

    name: ClassVar[str] = "constant"

    def measure_pair(self, result, pooled):
        positions, kept = pooled.positions, pooled.kept
        if positions is None or kept is None:
            return result
        diffs = pooled.diffs[kept].astype(float)
        xi, eta = positions[0][kept], positions[1][kept]
        centre = (float(np.mean(xi, dtype=float)), float(np.mean(eta, dtype=float)))
        labels = _blocks(xi, eta)
        if labels is None:
            return replace(result, centre=centre)
        var, nblocks = _jackknife_mean(diffs, labels)
        block_error = math.sqrt(var) if var >= 0 else math.nan
        # The overlap's extent and the slopes of its differences (for the
        # uncertainties only: `skymatch_step._uncertainty`).
        moments = np.cov(np.vstack([xi, eta]))
        slopes = _block_mean_plane(diffs, xi - centre[0], eta - centre[1], labels)
        measured = {"block_error": block_error, "centre": centre, "moments": moments}
        if slopes is not None:
            measured["plane"] = np.array([result.difference, slopes[0][1], slopes[0][2]])
            measured["plane_cov"] = slopes[1]
            measured["plane_cov"][0, 0] = result.error**2
        if not (nblocks >= _MIN_BLOCKS and var > result.error**2 * _f_limit(nblocks - 1)):
            return replace(result, **measured)
        # Structure in the overlap: its error is the blocks' scatter, and its
        # level the median of the differences, which skewed structure (the
        # wings of a nebula, a gradient) moves less than their mean.
        difference = float(np.median(diffs))
        if slopes is not None:
            measured["plane"][0] = difference
            measured["plane_cov"][0, 0] = block_error**2
        return replace(result, difference=difference, error=block_error, **measured)


@dataclass(frozen=True)
class PlaneSky(SkyModel):
    """A plane per group in the mosaic's tangent plane: ``a + b xi + c eta``."""

    name: ClassVar[str] = "plane"
    dim: ClassVar[int] = 3
    needs_positions: ClassVar[bool] = True

    def measure_pair(self, result, pooled):
        if pooled.positions is None:
            raise ValueError("a plane sky model needs the positions of the differences")
        fit = _fit_plane(pooled)
        if fit is None:
            # Too few differences for a plane: its level only, slopes unknown.
            return result
        plane, cov, pixel_cov, centre, npix, moments = fit
        return replace(
            result,
            difference=float(plane[0]),
            error=math.sqrt(cov[0, 0]),
            pixel_error=math.sqrt(pixel_cov[0, 0]),
            npix=npix,
            centre=centre,
            plane=plane,
            plane_cov=cov,
            moments=moments,
        )


def _f_limit(dof):
    """Ratio of two variance estimates that chance alone exceeds 0.1% of the time."""
    return float(chi2.ppf(_CONFIDENCE, dof) / dof)


def _blocks(xi, eta, shape=_BLOCKS):
    """Block label of every position: quantile cells along the overlap's axes.

    None when there are too few positions for a jackknife.
    """
    n = xi.size
    if n < _MIN_JACKKNIFE:
        return None
    x = xi.astype(float) - float(np.mean(xi, dtype=float))
    y = eta.astype(float) - float(np.mean(eta, dtype=float))
    cov = np.cov(np.vstack([x, y]))
    if not np.all(np.isfinite(cov)):
        return None
    _, vecs = np.linalg.eigh(cov)
    along = x * vecs[0, 1] + y * vecs[1, 1]  # largest eigenvalue last
    across = x * vecs[0, 0] + y * vecs[1, 0]
    labels = np.zeros(n, dtype=np.intp)
    for axis, count, factor in ((along, shape[0], shape[1]), (across, shape[1], 1)):
        edges = np.quantile(axis[:: max(1, n // 20000)], np.linspace(0, 1, count + 1)[1:-1])
        labels += np.searchsorted(edges, axis) * factor
    return labels


def _jackknife_mean(values, labels):
    """Delete-one-block jackknife variance of the mean; and the number of blocks."""
    sums = np.bincount(labels, values)
    counts = np.bincount(labels).astype(float)
    used = counts > 0
    sums, counts = sums[used], counts[used]
    nblocks = int(used.sum())
    if nblocks < 2:
        return math.nan, nblocks
    total, n = sums.sum(), counts.sum()
    means = (total - sums) / (n - counts)
    var = (nblocks - 1) / nblocks * float(np.sum((means - means.mean()) ** 2))
    return var, nblocks


def _block_mean_plane(d, x, y, labels):
    """Plane through the means of the jackknife blocks: ``(plane, cov)`` per degree, or None.

    Cheap (the blocks are those of the jackknife): the slopes of a pair's
    differences, for the gradient term of the constant sky's uncertainties.
    """
    counts = np.bincount(labels).astype(float)
    used = counts >= 8
    if used.sum() < _MIN_BLOCKS:
        return None
    w = counts[used]
    mean = np.bincount(labels, d)[used] / w
    bx = np.bincount(labels, x)[used] / w
    by = np.bincount(labels, y)[used] / w
    scale = float(np.sqrt(np.average(bx**2 + by**2, weights=w)))
    if not scale > 0:
        return None
    design = np.column_stack([np.ones(w.size), bx / scale, by / scale]) * np.sqrt(w)[:, None]
    try:
        inverse = np.linalg.inv(design.T @ design)
    except np.linalg.LinAlgError:
        return None
    coef = inverse @ design.T @ (mean * np.sqrt(w))
    resid = mean * np.sqrt(w) - design @ coef
    cov = float(resid @ resid) / max(w.size - 3, 1) * inverse
    jac = np.diag([1.0, 1.0 / scale, 1.0 / scale])
    return jac @ coef, jac @ cov @ jac.T


def _fit_plane(pooled):
    """Robust plane of a pair's differences, or None when there are too few.

    Returns ``(plane, cov, pixel_cov, centre, npix, moments)``: ``plane`` the value
    at the centroid and the slopes per degree of ``xi`` and ``eta``, ``cov``
    its covariance, ``pixel_cov`` the part pixel noise alone explains.

    The slopes come from the *medians* of the differences in blocks of the
    overlap (`_PLANE_BLOCKS` along and across it), fitted by least squares
    weighted by the blocks' counts, blocks more than `_PLANE_CLIP` robust
    sigmas off the plane left out: stars and cosmic rays, local in a few
    blocks, then move no slope. The level at the centroid is the clipped
    mean of the differences once the slopes are taken out, as precise as a
    constant sky's. The covariance comes from the scatter of the block
    medians about the plane (pixel noise and sky structure alike), the
    level's variance being at least the pixel-noise one.
    """
    diffs = pooled.diffs.astype(float)
    keep = pooled.kept if pooled.kept is not None else np.ones(diffs.size, dtype=bool)
    if keep.sum() < _MIN_JACKKNIFE:
        return None
    d = diffs[keep]
    xi = pooled.positions[0][keep].astype(float)
    eta = pooled.positions[1][keep].astype(float)
    centre = (float(xi.mean()), float(eta.mean()))
    scale = float(np.sqrt(np.mean((xi - centre[0]) ** 2 + (eta - centre[1]) ** 2)))
    labels = _blocks(xi, eta, _PLANE_BLOCKS)
    if not scale > 0 or labels is None:
        return None
    blocks = _block_medians(d, (xi - centre[0]) / scale, (eta - centre[1]) / scale, labels)
    if blocks is None:
        return None
    coef, cov, nblocks = blocks
    # The level: clipped mean of the differences with the slopes taken out.
    detrended = d - coef[1] * (xi - centre[0]) / scale - coef[2] * (eta - centre[1]) / scale
    med, spread, _ = clipped_median(detrended)
    level, std, npix, _ = clipped_mean(detrended, med, spread)
    if npix < 2:
        level, std, npix = med, _MAD_TO_SIGMA * spread, d.size
    pixel_var = max(std**2 * pooled.inflation / npix, pooled.floor**2)
    # The block medians scatter pi/2 times more than means would: compare
    # like with like; the level is the pixel-noise one unless the blocks
    # disagree beyond it (structure in the overlap).
    block_var = cov[0, 0] / _MEDIAN_EFFICIENCY
    cov[0, 0] = block_var if block_var > pixel_var * _f_limit(nblocks - 3) else pixel_var
    pixel_cov = cov.copy()
    pixel_cov[0, 0] = pixel_var
    jac = np.diag([1.0, 1.0 / scale, 1.0 / scale])
    plane = jac @ np.array([level, coef[1], coef[2]])
    moments = np.cov(np.vstack([xi, eta]))
    return plane, jac @ cov @ jac.T, jac @ pixel_cov @ jac.T, centre, int(npix), moments


def _block_medians(d, x, y, labels):
    """Plane ``(level, slope_x, slope_y)`` through block medians and its covariance."""
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels)
    used = np.flatnonzero(counts >= 8)
    if used.size < _MIN_BLOCKS:
        return None
    bounds = np.r_[0, np.cumsum(counts)]
    med = np.empty(used.size)
    bx = np.empty(used.size)
    by = np.empty(used.size)
    for n, b in enumerate(used):
        idx = order[bounds[b] : bounds[b + 1]]
        med[n] = np.median(d[idx])
        bx[n] = x[idx].mean()
        by[n] = y[idx].mean()
    w = counts[used].astype(float)
    design = np.column_stack([np.ones(used.size), bx, by])
    keep = np.ones(used.size, dtype=bool)
    for _ in range(_PLANE_ROUNDS):
        sw = np.sqrt(w[keep])
        coef, *_ = np.linalg.lstsq(design[keep] * sw[:, None], med[keep] * sw, rcond=None)
        norm = (med - design @ coef) * np.sqrt(w)
        sigma = _MAD_TO_SIGMA * float(np.median(np.abs(norm[keep])))
        new = np.abs(norm) <= _PLANE_CLIP * sigma if sigma > 0 else keep
        if np.array_equal(new, keep) or new.sum() < _MIN_BLOCKS:
            break
        keep = new
    x_w = design[keep] * np.sqrt(w[keep])[:, None]
    resid = (med[keep] - design[keep] @ coef) * np.sqrt(w[keep])
    dof = max(int(keep.sum()) - 3, 1)
    try:
        inverse = np.linalg.inv(x_w.T @ x_w)
    except np.linalg.LinAlgError:
        return None
    # The median's variance is pi/2 times the mean's: the block medians'
    # scatter already holds that factor.
    cov = float(resid @ resid) / dof * inverse
    return coef, cov, int(keep.sum())


#: The sky models by name.
SKY_MODELS = {"constant": ConstantSky, "plane": PlaneSky}


def sky_model(value):
    """Return the sky model for ``value`` (a name or a `SkyModel`).

    Parameters
    ----------
    value : str or SkyModel

    Returns
    -------
    SkyModel

    Raises
    ------
    ValueError
        For an unknown name.
    """
    if isinstance(value, SkyModel):
        return value
    if value in SKY_MODELS:
        return SKY_MODELS[value]()
    raise ValueError(f"Unknown sky_model {value!r}; valid choices are {', '.join(SKY_MODELS)}.")
