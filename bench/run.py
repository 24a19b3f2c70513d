#!/usr/bin/env python3
"""The benchmark driver: bench/run.py SCENARIO [--runs N] [--quick] [--write-doc] [key=value ...]

See bench/README.md; `bench/run.py --list` lists the scenarios, `bench/run.py NAME --show`
their knobs.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bicache_bench.harness import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
