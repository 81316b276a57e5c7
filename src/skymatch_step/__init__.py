"""Sky background matching for JWST imaging mosaics, as an stpipe step.

The step (`SkymatchStep`, also importable as `SkyMatchStep`), the Image3
pipeline that uses it (`SkymatchImage3Pipeline`) and the engine entry
point (`match`, which works on plain arrays and WCS callables).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._methods import ImageInput, SkyResult, match
from ._pairs import PairRecord
from ._statistics import SkyStatistics
from .exceptions import GeometryError, MissingDependencyError, SkymatchError
from .step import SkyMatchStep, SkymatchStep

try:
    __version__ = version("skymatch-step")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "GeometryError",
    "ImageInput",
    "MissingDependencyError",
    "PairRecord",
    "SkyMatchStep",
    "SkyResult",
    "SkyStatistics",
    "SkymatchError",
    "SkymatchImage3Pipeline",
    "SkymatchStep",
    "__version__",
    "match",
]


def __getattr__(name):
    # The pipeline imports every jwst Image3 step (~100 MB); load it only
    # when asked for, so that using the step alone stays light.
    if name == "SkymatchImage3Pipeline":
        from .pipeline import SkymatchImage3Pipeline

        return SkymatchImage3Pipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
