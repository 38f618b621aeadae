"""Reproduce the dscaling figure (the SGD-to-ODE gap against d) (clipped_trip/_figures.py).

Usage: python experiments/dscaling.py [--quick] [--out DIR] [--quiet]
(same as: clipped-trip reproduce dscaling; --help: its usage and run time)
"""

import sys

import clipped_trip._figures  # noqa: F401  (registers the figure with the CLI)
from clipped_trip.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", "dscaling", *sys.argv[1:]]))
