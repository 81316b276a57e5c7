"""Time the parts of one whole-image sky statistic (the ``global`` part of a run).

For each of the first ``--images`` files of an association this times, in
this process and one thread, the three stages the step runs for an image's
whole-image statistic: the good-pixel mask (finite pixels, DQ flags), the
sort of the usable values as float32, and the statistic itself (the
sigma-clipping passes and the histogram). Medians over ``--repeats`` rounds
per image, then over the images, in milliseconds. Example (64 NIRCam-size
images written by ``benchmarks/bench_skymatch.py``)::

    python benchmarks/bench_statistics.py /tmp/bdata/nircam64/nircam64_asn.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def time_image(path, repeats, settings):
    """Median seconds of (mask, sort, statistic) for the image at ``path``."""
    from stdatamodels.jwst import datamodels

    from skymatch_step._model_inputs import good_pixels
    from skymatch_step.engine import sorted_values

    with datamodels.open(path) as model:
        _ = (model.data, model.dq)  # read the arrays before timing
        stages = ([], [], [])
        value = None
        for _ in range(repeats):
            t0 = time.perf_counter()
            good = good_pixels(model, 0)
            t1 = time.perf_counter()
            values = sorted_values(model.data, good)
            t2 = time.perf_counter()
            value = settings(values)
            t3 = time.perf_counter()
            for stage, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                stage.append(seconds)
            del good, values
        return [statistics.median(s) for s in stages], model.data.shape, value


def main(argv=None):
    """Print the median time of each stage, per image, in milliseconds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("asn", help="association file")
    parser.add_argument("--images", type=int, default=8, help="files of the association to time")
    parser.add_argument("--repeats", type=int, default=5, help="rounds per image")
    args = parser.parse_args(argv)

    from skymatch_step import SkyStatistics

    asn = Path(args.asn)
    members = json.loads(asn.read_text())["products"][0]["members"]
    settings = SkyStatistics()  # the step's defaults: mode, 5 clipping passes of 4 sigma
    rows = []
    for member in members[: args.images]:
        stages, shape, _ = time_image(asn.parent / member["expname"], args.repeats, settings)
        rows.append(stages)
    medians = [1000 * statistics.median(r[k] for r in rows) for k in range(3)]
    print(
        f"{len(rows)} image(s) of {shape[0]}x{shape[1]}, {args.repeats} rounds each, one thread; "
        f"median ms per image: good-pixel mask {medians[0]:.1f}, sort {medians[1]:.1f}, "
        f"statistic {medians[2]:.1f}, total {sum(medians):.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
