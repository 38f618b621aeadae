"""Reproduce the adaptive figure (SPEC section 11) (clipped_trip/_figures_adaptive.py).

Usage: python experiments/adaptive.py [--quick] [--out DIR] [--quiet]
(same as: clipped-trip reproduce adaptive; --help: its usage and run time)
"""

import sys

import clipped_trip._figures_adaptive  # noqa: F401  (registers the figure with the CLI)
from clipped_trip.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", "adaptive", *sys.argv[1:]]))
