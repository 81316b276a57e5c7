"""Sky background matching for JWST imaging mosaics, as an stpipe step.

The step (`SkymatchStep`, also importable as `SkyMatchStep`), the Image3
pipeline that uses it (`SkymatchImage3Pipeline`), and the engine, which
works on plain arrays and WCS callables: `match`, its options
(`MatchOptions`, `SkyStatistics`), its inputs (`ImageInput`, or
`model_input` for a data model) and results (`SkyResult`, `PairRecord`),
and where it runs (`Execution`).
"""

from __future__ import annotations

from ._comparisons import Comparison, DifferencesComparison, StatisticsComparison
from ._engine import ImageInput, SkyResult, match
from ._model_inputs import model_input
from ._options import MatchOptions
from ._pairs import PairRecord
from ._runners import Execution
from ._statistics import SkyStatistics
from ._version import __version__
from .exceptions import GeometryError, MissingDependencyError, SkymatchError
from .step import SkyMatchStep, SkymatchStep

__all__ = [
    "Comparison",
    "DifferencesComparison",
    "Execution",
    "GeometryError",
    "ImageInput",
    "MatchOptions",
    "MissingDependencyError",
    "PairRecord",
    "SkyMatchStep",
    "SkyResult",
    "SkyStatistics",
    "SkymatchError",
    "SkymatchImage3Pipeline",
    "SkymatchStep",
    "StatisticsComparison",
    "__version__",
    "match",
    "model_input",
]


def __getattr__(name):
    # The pipeline imports every jwst Image3 step (~100 MB); load it only
    # when asked for, so that using the step alone stays light.
    if name == "SkymatchImage3Pipeline":
        from .pipeline import SkymatchImage3Pipeline

        return SkymatchImage3Pipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
