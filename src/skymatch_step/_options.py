"""The engine's options: one frozen object, checked once when it is made."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np

from ._comparisons import Comparison, comparison
from ._sky_models import SkyModel, sky_model
from ._statistics import SkyStatistics

__all__ = ["SKYMETHODS", "MatchOptions", "check_stepsize"]

#: Sky methods computed by the engine ('user' is handled by the step).
SKYMETHODS = ("local", "global", "match", "global+match")


def is_positive_int(value):
    """Whether ``value`` is an integer (not a bool) of at least 1."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def is_positive_number(value):
    """Whether ``value`` is a finite real number (not a bool) above 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return bool(np.isfinite(value) and value > 0)


@dataclass(frozen=True)
class MatchOptions:
    """How `match` computes the sky levels.

    Every value is checked when the object is made; a bad one raises a
    `ValueError` naming it and the valid choices.

    Parameters
    ----------
    skymethod : {'local', 'global', 'match', 'global+match'}
        ``local``: the sky of each group on its own (lowest of its
        members). ``global``: the lowest ``local`` sky, for every group.
        ``match``: offsets that equalise the sky in the overlaps, relative
        to the lowest (``match_down``) or highest. ``global+match``: the
        ``match`` offsets plus the lowest sky left after applying them.
    match_down : bool
        Match to the lowest (True) or the highest (False) sky.
    stats : SkyStatistics
        The sky statistic and its clipping.
    stepsize : int or None
        Spacing of footprint vertices along image edges, in pixels; None
        uses the corners only.
    compare : {'statistics', 'differences'} or Comparison
        How two overlapping groups are compared (see
        `skymatch_step._comparisons`): ``statistics`` (jwst's way), each
        group's sky statistic over the overlap polygon; ``differences``,
        the pixel differences of the two groups at the same sky positions.
        Stored as the strategy object.
    anchor_sets : bool
        Match each set of mutually overlapping groups on its own: with
        ``match`` each set's lowest (or highest) offset is zero, with
        ``global+match`` each set gets its own global level.
    min_pair_pixels : int
        Pairs measured on fewer usable pixels (on either side) are left out
        of the fit.
    reject_sigma : float or None
        Leave out of the fit, one at a time, pairs whose normalized residual
        exceeds this; None keeps every pair.
    reject_iterations : int
        Largest number of pairs rejected as outliers.
    sky_model : {'constant', 'plane'} or SkyModel
        What each group's sky is (see `skymatch_step._sky_models`): one
        level (jwst's model) or a plane in the mosaic's tangent plane
        (needs ``compare='differences'``). Stored as the strategy object.
    """

    skymethod: str = "match"
    match_down: bool = True
    stats: SkyStatistics = field(default_factory=SkyStatistics)
    stepsize: int | None = None
    compare: Comparison | str = "statistics"
    anchor_sets: bool = False
    min_pair_pixels: int = 1
    reject_sigma: float | None = None
    reject_iterations: int = 10
    sky_model: SkyModel | str = "constant"

    def __post_init__(self):
        if self.skymethod not in SKYMETHODS:
            raise ValueError(
                f"Unknown skymethod {self.skymethod!r}; valid choices are {', '.join(SKYMETHODS)}."
            )
        if self.stats is None:
            object.__setattr__(self, "stats", SkyStatistics())
        elif not isinstance(self.stats, SkyStatistics):
            raise ValueError(f"stats={self.stats!r} must be a SkyStatistics.")
        object.__setattr__(self, "compare", comparison(self.compare))
        object.__setattr__(self, "sky_model", sky_model(self.sky_model))
        if self.sky_model.needs_positions and not self.compare.gives_positions:
            raise ValueError(
                f"sky_model={self.sky_model.name!r} needs compare='differences' (got "
                f"compare={self.compare.name!r}): the plane is fitted to pixel differences at "
                "the same sky positions; jwst's per-image statistics give one number per overlap."
            )
        check_stepsize(self.stepsize)
        if not is_positive_int(self.min_pair_pixels):
            raise ValueError(
                f"min_pair_pixels={self.min_pair_pixels!r} must be a positive integer."
            )
        if self.reject_sigma is not None and not is_positive_number(self.reject_sigma):
            raise ValueError(
                f"reject_sigma={self.reject_sigma!r} must be a positive number or None."
            )
        if not is_positive_int(self.reject_iterations):
            raise ValueError(
                f"reject_iterations={self.reject_iterations!r} must be a positive integer."
            )

    @property
    def matches(self):
        """Whether the method matches the groups to each other."""
        return "match" in self.skymethod

    @property
    def measures_local(self):
        """Whether the method needs each group's own sky."""
        return self.skymethod != "match"

    def replace(self, **changes):
        """Return a copy with ``changes`` (checked like a new object).

        Parameters
        ----------
        **changes
            Field values, by name.

        Returns
        -------
        MatchOptions

        Raises
        ------
        TypeError
            For a name that is not an option.
        """
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            valid = ", ".join(sorted(names))
            raise TypeError(f"Unknown option(s) {', '.join(unknown)}; the options are {valid}.")
        return replace(self, **changes)


def check_stepsize(stepsize):
    """Reject a ``stepsize`` that is neither None nor a positive integer.

    The step's spec keeps jwst's ``integer(default=None)`` so that jwst
    parameter files load unchanged; the sign is checked here.
    """
    if stepsize is None or is_positive_int(stepsize):
        return
    raise ValueError(
        f"stepsize={stepsize!r} is not valid: use None (image corners only) or a "
        "positive integer (maximum spacing of footprint vertices, in pixels)."
    )
