"""Reproduce the privacy figure (SPEC section 9) (clipped_trip/_figures_private.py).

DP-SGD on a one-pass stream: for each epsilon the ODE-optimal (clip, lr) and the final risk,
with SGD at each optimum (clipped_trip._privacy_utility.privacy_utility).

Usage: python experiments/privacy.py [--quick] [--out DIR] [--quiet]
(same as: clipped-trip reproduce privacy; --help: its usage and run time)
"""

import sys

from clipped_trip.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", "privacy", *sys.argv[1:]]))
