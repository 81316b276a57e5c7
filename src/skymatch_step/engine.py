"""The engine's building blocks, for scripts, notebooks and benchmarks.

A public face over the engine's private modules: the entry point and its
types, and the pieces it is built from (footprints, overlaps, statistics,
the least-squares solve, runners), each usable on plain arrays and WCS
callables. Nothing here imports a data model; `skymatch_step.model_input`
turns a data model into an `ImageInput`.
"""

from __future__ import annotations

from ._comparisons import Comparison, DifferencesComparison, StatisticsComparison
from ._engine import ImageInput, SkyResult, match
from ._footprints import bounding_cap, image_footprint, union_footprint
from ._options import MatchOptions
from ._overlaps import candidate_pairs, intersect_footprints, intersect_pair
from ._pairs import PairRecord
from ._runners import Execution, ProcessRunner, Runner, ThreadRunner
from ._solver import connected_sets, fit_offsets, solve_offsets
from ._statistics import SkyStatistics, sorted_values

__all__ = [
    "Comparison",
    "DifferencesComparison",
    "Execution",
    "ImageInput",
    "MatchOptions",
    "PairRecord",
    "ProcessRunner",
    "Runner",
    "SkyResult",
    "SkyStatistics",
    "StatisticsComparison",
    "ThreadRunner",
    "bounding_cap",
    "candidate_pairs",
    "connected_sets",
    "fit_offsets",
    "image_footprint",
    "intersect_footprints",
    "intersect_pair",
    "match",
    "solve_offsets",
    "sorted_values",
    "union_footprint",
]
