"""Reproduce figure fig1 of arXiv 2406.11733 (see clipped_trip/_figures.py and paper_notes.md).

Usage: python experiments/fig1.py [--quick] [--out DIR] [--quiet]
(same as: clipped-trip reproduce fig1; --help: its usage and run time)
"""

import sys

from clipped_trip.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", "fig1", *sys.argv[1:]]))
