"""The installed version of skymatch_step."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("skymatch-step")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
