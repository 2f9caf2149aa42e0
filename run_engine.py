#!/usr/bin/env python3
"""scapecast command line (same as the `scapecast` console script). See `python run_engine.py --help`."""

import sys

from engine.cli import main

if __name__ == "__main__":
    sys.exit(main())
