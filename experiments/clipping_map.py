"""Reproduce the clipping-map figure (where clipping helps over tail index and clip; SPEC 3-5)
(clipped_trip/_figures_phase.py).

Usage: python experiments/clipping_map.py [--quick] [--out DIR] [--quiet]
(same as: clipped-trip reproduce clipping-map; --help: its usage and run time)
"""

import sys

import clipped_trip._figures_phase  # noqa: F401  (registers the figure, if the CLI does not yet)
from clipped_trip.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", "clipping-map", *sys.argv[1:]]))
