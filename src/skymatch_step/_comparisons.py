"""How two overlapping sky groups are compared: the comparison strategies.

A comparison turns the pixels of the images into one `PairRecord` per
overlapping pair of groups (what the fit then solves). It is a small
object that says what it needs:

- ``keeps_transforms``: the pixel pass needs every image's WCS transforms
  (not only the image's own);
- ``runs_remotely``: each image can be measured on its own, in another
  process (a Dask worker), from a picklable description.

`Comparison.start` returns the run's state, which gives the per-image work
(`ComparisonRun.image_work`) and, once every image was measured, the pair
records (`ComparisonRun.records`). The engine does not branch on the
comparison's name.

Two comparisons are provided: `StatisticsComparison` (jwst's way: each
group's sky statistic over the overlap polygon) and `DifferencesComparison`
(the pixel differences of the two groups at the same sky positions).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from ._differences import DifferenceCollector
from ._overlaps import overlap_regions, region_mask
from ._pairs import PairRecord
from ._statistics import sorted_values, try_statistic

__all__ = [
    "COMPARISONS",
    "NO_COMPARISON",
    "Comparison",
    "ComparisonRun",
    "DifferencesComparison",
    "StatisticsComparison",
    "comparison",
]


class Comparison(ABC):
    """A way of comparing overlapping sky groups (see the module docstring)."""

    #: The name users give it (``compare=``).
    name: ClassVar[str] = ""
    #: Whether the pixel pass needs the WCS transforms of every image.
    keeps_transforms: ClassVar[bool] = False
    #: Whether each image can be measured on its own in another process.
    runs_remotely: ClassVar[bool] = False
    #: Whether it measures at sky positions (what a plane sky model needs).
    gives_positions: ClassVar[bool] = False

    @abstractmethod
    def start(self, layout, stats, sky_model=None):
        """Begin comparing the images of ``layout``.

        Parameters
        ----------
        layout : Layout
            The images, groups and overlapping pairs.
        stats : SkyStatistics
            The statistic settings (clipping, usable range).
        sky_model : SkyModel, optional
            The sky model; it completes each pair's measurement.

        Returns
        -------
        ComparisonRun
        """

    def __str__(self):
        return self.name


class ComparisonRun(ABC):
    """One comparison of the images of a layout."""

    @abstractmethod
    def image_work(self, k):
        """Return what to do with the pixels of image ``k``.

        Returns
        -------
        callable
            ``work(image, data, mask, problems)`` returns the image's
            measurements of its overlaps (a dict; possibly empty) and has an
            ``abort()`` method, called when the image could not be read.
            Picklable when the comparison ``runs_remotely``.
        """

    @abstractmethod
    def records(self, measurements, members):
        """Return the pair records, once every image was measured.

        Parameters
        ----------
        measurements : list of Measurement
            What each image's work returned, as ``measurement.overlaps``.
        members : list of list of int
            Image indices of every group.

        Returns
        -------
        list of PairRecord
            Sorted by group pair ``(a, b)``, ``a < b``.
        """


# -- statistics (jwst's way) ----------------------------------------------


@dataclass(frozen=True)
class OverlapStatistics:
    """Sky statistic of one image over its overlap with each neighbouring group.

    Picklable: it travels to a Dask worker with the image's description.

    Attributes
    ----------
    index : int
        The image.
    neighbours : list of int
        Images of other groups whose footprints overlap it.
    pair_overlaps : dict
        ``{(i, j): PairOverlap}`` of its pairs.
    groups : dict
        ``{image: group}`` of its neighbours.
    stats : SkyStatistics
    name : str
        Image name, for messages.
    """

    index: int
    neighbours: list
    pair_overlaps: dict
    groups: dict
    stats: object
    name: str

    def __call__(self, image, data, mask, problems):
        """Return ``{group: (statistic or None, npix, area)}`` for every neighbouring group.

        Nothing for an image without usable pixels.
        """
        if not mask.any():
            return {}
        regions = overlap_regions(
            self.index, self.neighbours, self.pair_overlaps, image.inverse, self.groups
        )
        out = {}
        for g, region in regions.items():
            if region.area == 0.0:
                out[g] = (None, 0, 0.0)
                continue
            where, sub = region_mask(region.polygons, data.shape, self.name)
            if where is None:
                out[g] = (None, 0, region.area)
                continue
            sel = sub & mask[where]
            stat = try_statistic(self.stats, sorted_values(data[where], sel), problems)
            out[g] = (*(stat or (None, 0)), region.area)
        return out

    def abort(self):
        """Nothing waits for this image."""


@dataclass(frozen=True)
class StatisticsComparison(Comparison):
    """Each group's sky statistic over the overlap polygon (jwst's comparison).

    The pair's equation is ``d_a - d_b = s_a - s_b``, weighted by the mean
    pixel count of the two sides, as in jwst.
    """

    name: ClassVar[str] = "statistics"
    runs_remotely: ClassVar[bool] = True

    def start(self, layout, stats, sky_model=None):
        return _StatisticsRun(layout, stats)


class _StatisticsRun(ComparisonRun):
    def __init__(self, layout, stats):
        self._layout = layout
        self._stats = stats

    def image_work(self, k):
        layout = self._layout
        neighbours = layout.neighbours[k]
        return OverlapStatistics(
            index=k,
            neighbours=list(neighbours),
            pair_overlaps={
                (min(k, j), max(k, j)): layout.pair_overlaps[min(k, j), max(k, j)]
                for j in neighbours
            },
            groups={j: layout.groups[j] for j in neighbours},
            stats=self._stats,
            name=layout.names[k],
        )

    def records(self, measurements, members):
        groups = self._layout.groups
        linked = set()
        for k, m in enumerate(measurements):
            for h in m.overlaps:
                g = groups[k]
                linked.add((min(g, h), max(g, h)))
        records = []
        for i, j in sorted(linked):
            a = _group_overlap(i, j, members, measurements)
            b = _group_overlap(j, i, members, measurements)
            if a is None or b is None:
                continue
            # jwst's equation: d_i - d_j = s_i - s_j, weighted by the mean pixel
            # count. The difference is taken in float64 whatever the scalar type.
            records.append(
                PairRecord(
                    a=i,
                    b=j,
                    npix_a=int(a[1]),
                    npix_b=int(b[1]),
                    value_a=float(a[0]),
                    value_b=float(b[0]),
                    difference=float(a[0]) - float(b[0]),
                    error=float("nan"),
                    weight=0.5 * (float(b[1]) + float(a[1])),
                )
            )
        return records


def _group_overlap(g, h, members, measurements):
    """Sky of group ``g`` where it overlaps group ``h``: (value, weight) or None.

    A single image reports its own statistic; a group reports the
    pixel-count-weighted mean of its members' statistics (as jwst does).
    """
    area = 0.0
    entries = []
    for k in members[g]:
        entry = measurements[k].overlaps.get(h)
        if entry is None:
            continue
        value, npix, a = entry
        area += a
        if value is not None and npix > 0:
            entries.append((value, npix))
    if area == 0.0 or not entries:
        return None
    if len(members[g]) == 1:
        return entries[0]
    wsum = 0.0
    weight = 0
    for value, npix in entries:
        wsum += value * npix
        weight += npix
    return wsum / weight, weight


# -- pixel differences ---------------------------------------------------


@dataclass(frozen=True)
class DifferencesComparison(Comparison):
    """Pixel differences of the two groups at the same sky positions.

    Diffuse emission cancels in the differences; the pair's robust mean
    difference and its error (which weights the pair, ``1 / error``) come
    from `skymatch_step._differences`.

    Parameters
    ----------
    grid_step : int
        Initial spacing, in pixels, of the nodes where the WCSs are
        evaluated to map one image's pixels into the other.
    grid_tolerance : float
        Largest interpolation error of the mapped positions, in pixels.
    """

    name: ClassVar[str] = "differences"
    keeps_transforms: ClassVar[bool] = True
    gives_positions: ClassVar[bool] = True

    grid_step: int = 32
    grid_tolerance: float = 0.005

    def start(self, layout, stats, sky_model=None):
        collector = DifferenceCollector(
            layout,
            stats,
            grid_step=self.grid_step,
            grid_tolerance=self.grid_tolerance,
            sky_model=sky_model,
        )
        return _DifferencesRun(collector)


class _DifferencesRun(ComparisonRun):
    def __init__(self, collector):
        self._collector = collector

    def image_work(self, k):
        return _Visit(self._collector, k)

    def records(self, measurements, members):
        return [
            PairRecord(
                a=d.a,
                b=d.b,
                npix_a=int(d.npix),
                npix_b=int(d.npix),
                value_a=float("nan"),
                value_b=float("nan"),
                difference=float(d.difference),
                error=float(d.error),
                weight=1.0 / float(d.error),
                pixel_error=float(d.pixel_error),
                block_error=float(d.block_error),
                centre=d.centre,
                plane=d.plane,
                plane_cov=d.plane_cov,
                moments=d.moments,
            )
            for d in self._collector.results()
        ]


@dataclass(frozen=True)
class _Visit:
    """Hand one image's pixels to the difference collector."""

    collector: DifferenceCollector
    index: int

    def __call__(self, image, data, mask, problems):
        # Called even for an unusable image: its partners wait for it.
        self.collector.visit(self.index, data, mask)
        return {}

    def abort(self):
        self.collector.abort(self.index)


@dataclass(frozen=True)
class _NoComparison:
    """The per-image work when nothing is compared (``local``, ``global``)."""

    def __call__(self, image, data, mask, problems):
        return {}

    def abort(self):
        """Nothing waits for the image."""


#: Per-image work of the methods that compare nothing.
NO_COMPARISON = _NoComparison()

#: The comparisons by name.
COMPARISONS = {"statistics": StatisticsComparison, "differences": DifferencesComparison}


def comparison(value):
    """Return the comparison strategy for ``value`` (a name or a `Comparison`).

    Parameters
    ----------
    value : str or Comparison

    Returns
    -------
    Comparison

    Raises
    ------
    ValueError
        For an unknown name.
    """
    if isinstance(value, Comparison):
        return value
    if value in COMPARISONS:
        return COMPARISONS[value]()
    raise ValueError(f"Unknown compare {value!r}; valid choices are {', '.join(COMPARISONS)}.")
