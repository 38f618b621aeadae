"""Reproduce the value-clipping figure (SPEC section 12) (clipped_trip/_figures_adaptive.py).

Usage: python experiments/value_clipping.py [--quick] [--out DIR] [--quiet]
(same as: clipped-trip reproduce value-clipping; --help: its usage and run time)
"""

import sys

import clipped_trip._figures_adaptive  # noqa: F401  (registers the figure with the CLI)
from clipped_trip.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", "value-clipping", *sys.argv[1:]]))
