"""The engine's second pass: every image's pixels, read once.

Everything an image contributes is measured in one visit of its pixels:
its own sky statistic (for the methods that need it) and its part of the
comparison of overlapping groups (the comparison's per-image work). The
visits run on the pixel runner: threads of this process, or Dask workers
that open each image from its ``source``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ._progress import Progress
from ._statistics import sorted_values, try_statistic

__all__ = ["ImageTask", "Measurement", "measure_all"]

log = logging.getLogger(__name__)


@dataclass
class Measurement:
    """What one image contributes: its own sky and its overlap measurements.

    Attributes
    ----------
    usable : bool
        Whether the image has usable pixels.
    local : tuple or None
        ``(statistic, npix)`` of the whole image (None when not measured or
        not measurable).
    overlaps : dict
        The comparison's per-image measurements (see `ComparisonRun`).
    problems : list of str
        Messages for the log (named with the image).
    """

    usable: bool = False
    local: tuple[float, int] | None = None
    overlaps: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)


@dataclass(frozen=True)
class ImageTask:
    """What measuring one image needs (picklable when the comparison runs remotely).

    Attributes
    ----------
    index : int
        The image.
    name : str
        Its name, for messages.
    stats : SkyStatistics or None
        The statistic of the image's own sky; None when not needed.
    work : callable
        The comparison's per-image work (`ComparisonRun.image_work`).
    source : callable or None
        Opens the image (`ImageInput.source`) on a remote worker.
    """

    index: int
    name: str
    stats: Any
    work: Any
    source: Any = None


def measure_all(layout, tasks, runner):
    """Measure every image on ``runner``; return the `Measurement` of each.

    Parameters
    ----------
    layout : Layout
        The images (used in this process; a remote runner opens each
        image through its task's ``source``).
    tasks : list of ImageTask
    runner : Runner

    Returns
    -------
    list of Measurement
    """
    progress = Progress(log, "Measured", len(tasks))

    def report(k, result):
        for problem in result.problems:
            log.warning("Image %s: %s.", layout.names[k], problem)
        progress.advance()

    if runner.remote:
        out = runner.map(measure_task, tasks, on_result=report)
        progress.finish(" on Dask")
        return out
    out = runner.map(partial(_measure_here, layout.images), tasks, on_result=report)
    progress.finish()
    return out


def _measure_here(images, task):
    """Measure one image of this process; release the comparison if it fails."""
    try:
        return measure_image(images[task.index], task)
    except BaseException:
        task.work.abort()
        raise


def measure_task(task):
    """Open one image through its source and measure it (on a worker)."""
    with task.source() as image:
        return measure_image(image, task)


def measure_image(image, task):
    """Read one image's pixels once and compute everything it contributes.

    Parameters
    ----------
    image : ImageInput
        The image; opened through its ``source`` when it has no pixel
        reader.
    task : ImageTask

    Returns
    -------
    Measurement
    """
    if image.pixels is None:
        with image.source() as opened:
            return measure_image(opened, task)
    result = Measurement()
    problems = set()
    try:
        with image.pixels() as (data, mask):
            if data.shape != tuple(image.shape):
                raise ValueError(
                    f"image {task.name}: pixel array shape {data.shape} != declared {image.shape}"
                )
            result.usable = bool(mask.any())
            if result.usable and task.stats is not None:
                # The usable pixels, sorted once in native float32 (the
                # statistics work in float32; data read from FITS is
                # big-endian): at most two image-sized copies per thread.
                values = sorted_values(data, mask)
                result.local = try_statistic(task.stats, values, problems)
                del values
            result.overlaps = task.work(image, data, mask, problems)
    except BaseException:
        for problem in sorted(problems):
            log.warning("Image %s: %s.", task.name, problem)
        raise
    result.problems = sorted(problems)
    return result
