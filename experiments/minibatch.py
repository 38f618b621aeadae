"""Reproduce the minibatch figure (SPEC section 8) (clipped_trip/_figures_batch.py).

Usage: python experiments/minibatch.py [--quick] [--out DIR] [--quiet]
(same as: clipped-trip reproduce minibatch; --help: its usage and run time)
"""

import sys

from clipped_trip.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", "minibatch", *sys.argv[1:]]))
