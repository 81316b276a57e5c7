"""stpipe entry point: the steps and pipelines this package provides."""

from __future__ import annotations

__all__ = ["get_steps"]


def get_steps():
    """Describe this package's stpipe steps without importing them.

    jwst already registers the alias ``skymatch`` for its own step; a
    second registration would make ``strun skymatch`` ambiguous for every
    jwst user, so this package registers aliases of its own.

    Returns
    -------
    list of tuple of (str, str, bool)
        Fully qualified class name, ``strun`` alias, and whether the class
        is a pipeline.
    """
    return [
        ("skymatch_step.step.SkymatchStep", "skymatch_step", False),
        ("skymatch_step.pipeline.SkymatchImage3Pipeline", "skymatch_image3", True),
    ]
