"""What an ``in_memory=False`` run keeps per image: objects and memory after each image.

Runs the step on an association with ``in_memory=False`` and records, after
every image of the one-thread passes (the WCS pass and the write-back),
the number of objects the garbage collector holds frozen and the peak
resident memory. Halfway through and at the end of each pass it also
counts the live objects (everything unfrozen, collected and counted): the
growth of that count per image over the second half of a pass is what the
step (or something it calls) keeps per image. Use at least 300 images: asdf
keeps the schema resolvers of the last 128 files it read, so the first 128
images each add about 330 objects that are later replaced, not added to.

Example (the 1,000-image mosaic of ``benchmarks/bench_scale.py``; any
association works)::

    python benchmarks/probe_memory_growth.py /tmp/sdata/scale1000/first200_asn.json
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import time


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("asn")
    parser.add_argument("--cores", default="1", help="maximum_cores")
    args = parser.parse_args(argv)
    os.environ["STPIPE_DISABLE_CRDS_STEPPARS"] = "true"
    logging.disable(logging.INFO)
    from skymatch_step import SkymatchStep, _memory, _model_inputs, _writeback

    with open(args.asn) as f:
        n_images = len(json.load(f)["products"][0]["members"])
    marks = {n_images // 2, n_images, n_images + n_images // 2, 2 * n_images}
    records = []
    live = {}
    release = _memory.release

    def probe(on_disk, *, settle=False, pixels=None):
        release(on_disk, settle=settle, pixels=pixels)
        if settle:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
            records.append((gc.get_freeze_count(), peak))
            if len(records) in marks:
                gc.unfreeze()
                gc.collect()
                live[len(records)] = (len(gc.get_objects()), peak)
                gc.freeze()

    _model_inputs.release = _writeback.release = probe
    try:
        t0 = time.perf_counter()
        SkymatchStep.call(args.asn, in_memory=False, maximum_cores=args.cores)
        elapsed = time.perf_counter() - t0
    finally:
        _model_inputs.release = _writeback.release = release
        logging.disable(logging.NOTSET)
    n = len(records) // 2
    print(f"step: {elapsed:.1f} s for {n} images")
    print("| after | frozen objects | peak MB |\n|---|---|---|")
    for k in sorted({0, 1, n // 2, n - 1, n, len(records) - 1}):
        if 0 <= k < len(records):
            where = f"WCS pass image {k + 1}" if k < n else f"write-back image {k - n + 1}"
            print(f"| {where} | {records[k][0]} | {records[k][1]} |")
    for name, (a, b) in (("WCS pass", (n // 2, n)), ("write-back", (n + n // 2, 2 * n))):
        if a in live and b in live and b > a:
            per = (live[b][0] - live[a][0]) / (b - a)
            mb = (live[b][1] - live[a][1]) / (b - a)
            print(
                f"{name}: {per:.1f} live objects and {mb:.3f} MB of peak memory added per image "
                f"over its second half ({live[a][0]} -> {live[b][0]} objects, "
                f"{live[a][1]} -> {live[b][1]} MB)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
