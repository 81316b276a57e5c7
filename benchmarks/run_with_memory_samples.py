"""Run the step on an association with ``in_memory=False``, sampling its memory.

The step logs as stpipe sets it up (INFO, with its progress lines); every
``--every`` seconds this prints the resident and peak memory of the process, so that
a run too long to wait for still shows how far each pass got and what it
held. Example (the 10,000-image mosaic of ``benchmarks/bench_scale.py``)::

    python benchmarks/run_with_memory_samples.py /tmp/sdata/scale10000/scale10000_asn.json

With ``--dask-scheduler`` the step runs its per-image passes on that Dask
scheduler (its ``dask_scheduler`` parameter: ``local``, an address such as
``tcp://127.0.0.1:8786``, or a scheduler file); the samples are then those
of this (the driver's) process only.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time


def _rss_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return -1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("asn")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--dask-scheduler", default=None, help="the step's dask_scheduler")
    args = parser.parse_args(argv)
    os.environ["STPIPE_DISABLE_CRDS_STEPPARS"] = "true"
    from skymatch_step import SkymatchStep

    start = time.perf_counter()

    def sample():
        while True:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
            print(
                f"SAMPLE t={time.perf_counter() - start:.0f}s rss={_rss_mb()}MB peak={peak}MB",
                flush=True,
            )
            time.sleep(args.every)

    threading.Thread(target=sample, daemon=True).start()
    SkymatchStep.call(args.asn, in_memory=False, dask_scheduler=args.dask_scheduler)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"DONE in {time.perf_counter() - start:.0f} s, peak {peak} MB", file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
