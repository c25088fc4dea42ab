"""Gradient ascent baseline: `python surgery/baselines/ga.py ARGS` is `codeunlearn baseline --method ga ARGS` (see `--help`)."""

import sys

from codeunlearn.cli import main
from codeunlearn.cli.baseline import script_argv

if __name__ == "__main__":
    raise SystemExit(main(script_argv("ga", sys.argv[1:])))
