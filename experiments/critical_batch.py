"""Reproduce the critical-batch figure (SPEC section 8) (clipped_trip/_figures_batch.py).

Usage: python experiments/critical_batch.py [--quick] [--out DIR] [--quiet]
(same as: clipped-trip reproduce critical-batch; --help: its usage and run time)
"""

import sys

from clipped_trip.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", "critical-batch", *sys.argv[1:]]))
