"""Reproduce figure fig7 of arXiv 2406.11733 (see clipped_trip/_figures.py and paper_notes.md).

Usage: python experiments/fig7.py [--quick] [--out DIR] [--quiet] [--data DIR]
(same as: clipped-trip reproduce fig7; --help: its usage and run time)
"""

import sys

from clipped_trip.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", "fig7", *sys.argv[1:]]))
