"""Time the step with and without schema validation of the models it re-reads.

With ``in_memory=False`` the step opens each model again for its pixels
and for the write-back; those re-reads skip asdf's schema validation
(``skymatch_step._library.reread``), since the first read of the same file
validated it. This benchmark runs the step on an association both ways in
this process, alternating, and reports the medians and their ratio; the
levels of the two ways are compared too (they must be identical).

Example (the first 200 files of the 1,000-image mosaic written by
``benchmarks/bench_scale.py``)::

    python benchmarks/bench_reread.py /tmp/sdata/scale1000/first200_asn.json --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import time


def _levels(library):
    with library:
        out = []
        for index in range(len(library)):
            model = library.borrow(index)
            out.append(model.meta.background.level)
            library.shelve(model, index, modify=False)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("asn")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", default="1", help="maximum_cores")
    args = parser.parse_args(argv)
    os.environ["STPIPE_DISABLE_CRDS_STEPPARS"] = "true"
    logging.disable(logging.INFO)
    from skymatch_step import SkymatchStep, _library, _model_inputs

    ways = {"validated again": contextlib.nullcontext, "not validated again": _library.reread}
    times = {label: [] for label in ways}
    levels = {}
    try:
        for _ in range(args.repeats):
            for label, context in ways.items():
                _library.reread = _model_inputs.reread = context
                t0 = time.perf_counter()
                result = SkymatchStep.call(args.asn, in_memory=False, maximum_cores=args.cores)
                times[label].append(time.perf_counter() - t0)
                levels[label] = _levels(result)
                print(f"{label}: {times[label][-1]:.1f} s", flush=True)
    finally:
        _library.reread = _model_inputs.reread = ways["not validated again"]
        logging.disable(logging.NOTSET)
    medians = {label: statistics.median(t) for label, t in times.items()}
    for label, value in medians.items():
        print(f"median {label}: {value:.1f} s")
    ratio = medians["validated again"] / medians["not validated again"]
    print(f"ratio: {ratio:.2f}; levels identical: {len(set(map(tuple, levels.values()))) == 1}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
