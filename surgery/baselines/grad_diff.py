"""Gradient difference baseline: `python surgery/baselines/grad_diff.py ARGS` is `codeunlearn baseline --method grad_diff ARGS` (see `--help`)."""

import sys

from codeunlearn.cli import main
from codeunlearn.cli.baseline import script_argv

if __name__ == "__main__":
    raise SystemExit(main(script_argv("grad_diff", sys.argv[1:])))
