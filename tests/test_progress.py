"""Progress lines on long passes, and what the engine keeps per image."""

from __future__ import annotations

import contextlib
import logging

import numpy as np

from conftest import scale_shift_wcs
from skymatch_step import ImageInput, match
from skymatch_step._layout import read_layout
from skymatch_step._progress import Progress
from skymatch_step._runners import Runner


def _inputs(n, *, source=False):
    images = []
    for k in range(n):
        wcs = scale_shift_wcs(20.0 * k, 0.0)
        data = np.full((30, 30), 1.0 + k, dtype=np.float32)
        image = ImageInput.from_arrays(
            data, None, wcs.forward_transform, wcs.backward_transform, id=f"im{k}"
        )
        if source:
            full = image

            @contextlib.contextmanager
            def opener(full=full):
                yield full

            image = ImageInput(
                id=image.id,
                shape=image.shape,
                forward=image.forward,
                inverse=image.inverse,
                pixels=None,
                source=opener,
            )
        images.append(image)
    return images


def test_progress_logs_fifths_and_a_closing_line(caplog):
    log = logging.getLogger("skymatch_step.test")
    with caplog.at_level(logging.INFO, logger="skymatch_step"):
        progress = Progress(log, "Measured", 25)
        for _ in range(25):
            progress.advance()
        progress.finish()
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines[:-1]] == [
        f"Measured {k} of 25 images" for k in (5, 10, 15, 20)
    ]
    assert lines[-1].startswith("Measured 25 images in ")


def test_short_passes_log_only_the_closing_line(caplog):
    with caplog.at_level(logging.INFO, logger="skymatch_step"):
        progress = Progress(logging.getLogger("skymatch_step.test"), "Read", 19, "models")
        for _ in range(19):
            progress.advance()
        progress.finish(" on Dask")
    assert [r.getMessage().split(" in ")[0] for r in caplog.records] == ["Read 19 models on Dask"]


def test_engine_reports_every_pass(caplog):
    with caplog.at_level(logging.INFO, logger="skymatch_step"):
        result = match(_inputs(21), skymethod="match")
    text = caplog.text
    assert "Footprints of 21 image(s) and intersections of 39 candidate pair(s) in" in text
    assert "Measured 5 of 21 images (" in text
    assert "Measured 21 images in" in text
    assert "Fitted 21 group offset(s) to 20 pair(s) in" in text
    assert np.allclose(result.levels, np.arange(21.0))


def test_images_with_a_source_are_kept_without_transforms():
    # On-disk inputs: once the footprint is known only it stays; the
    # pixel pass re-opens the image through its source.
    layout = read_layout(
        _inputs(3, source=True),
        stepsize=None,
        runner=Runner(),
        intersect=True,
        keep_transforms=False,
    )
    assert all(im.forward is None and im.inverse is None for im in layout.images)
    assert len(layout.footprints) == 3
    kept = read_layout(
        _inputs(3, source=True),
        stepsize=None,
        runner=Runner(),
        intersect=True,
        keep_transforms=True,
    )
    assert all(im.forward is not None for im in kept.images)
    plain = match(_inputs(4), skymethod="global+match")
    sourced = match(_inputs(4, source=True), skymethod="global+match")
    assert np.array_equal(plain.levels, sourced.levels)
