"""Reproduce the bias figure (SPEC section 10) (clipped_trip/_figures_private.py).

Non-centred data and skewed noise: clipped SGD converges to a biased point (it walks away from
x*); the perturbation clip(g + k zeta) trades the bias for noise; unclipped SGD has no bias.

Usage: python experiments/bias.py [--quick] [--out DIR] [--quiet]
(same as: clipped-trip reproduce bias; --help: its usage and run time)
"""

import sys

from clipped_trip.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", "bias", *sys.argv[1:]]))
