"""Exceptions raised by skymatch_step."""

from __future__ import annotations

__all__ = ["GeometryError", "MissingDependencyError", "SkymatchError"]


class SkymatchError(Exception):
    """Base class of the errors raised by skymatch_step."""


class GeometryError(SkymatchError):
    """A footprint or overlap could not be computed from an image's WCS."""


class MissingDependencyError(SkymatchError, ImportError):
    """An optional dependency needed for what was asked is not installed.

    The message names the package extra to install.
    """
