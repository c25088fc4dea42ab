"""RMU baseline: `python surgery/baselines/rmu.py ARGS` is `codeunlearn baseline --method rmu ARGS` (see `--help`)."""

import sys

from codeunlearn.cli import main
from codeunlearn.cli.baseline import script_argv

if __name__ == "__main__":
    raise SystemExit(main(script_argv("rmu", sys.argv[1:])))
