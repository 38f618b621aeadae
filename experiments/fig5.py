"""Reproduce figure fig5 of arXiv 2406.11733 (see clipped_trip/_figures.py and paper_notes.md).

Usage: python experiments/fig5.py [--quick] [--out DIR] [--quiet]
(same as: clipped-trip reproduce fig5; --help: its usage and run time)
"""

import sys

from clipped_trip.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", "fig5", *sys.argv[1:]]))
