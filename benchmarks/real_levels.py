"""This step's levels and their uncertainties on a directory of real FITS tiles.

Loads the tiles as `realdata.py` does (one sky group per tile), matches
them with ``compare='differences'`` and each sky model, and prints every
tile's level (a plane's mean over the tile) and 1-sigma uncertainty,
relative to the set's mean. Real data have no truth: this shows what the
uncertainties are, and, run against another checkout of the package
(``PYTHONPATH=OTHER/src``), how a change moves them; the seams beside the
peers are ``bench_peers.py``'s.

Example (the M17 tiles, see ``docs/peers.rst``)::

    python benchmarks/real_levels.py astropy-data/m17
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import realdata


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="folder of FITS tiles")
    args = parser.parse_args(argv)
    from skymatch_step import match, model_input

    logging.getLogger("skymatch_step").setLevel(logging.WARNING)
    models = realdata.load_tiles(args.directory)
    inputs = [model_input(m) for m in models]
    print(f"{'tile':40s} {'sky model':9s} {'level':>10s} {'uncertainty':>12s}")
    for sky_model in ("constant", "plane"):
        result = match(inputs, skymethod="match", compare="differences", sky_model=sky_model)
        for name, level, sigma in zip(
            result.names, result.levels, result.uncertainties, strict=True
        ):
            print(f"{name:40s} {sky_model:9s} {level:10.4f} {sigma:12.4f}")


if __name__ == "__main__":
    main()
