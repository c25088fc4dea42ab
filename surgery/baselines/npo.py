"""NPO baseline: `python surgery/baselines/npo.py ARGS` is `codeunlearn baseline --method npo ARGS` (see `--help`)."""

import sys

from codeunlearn.cli import main
from codeunlearn.cli.baseline import script_argv

if __name__ == "__main__":
    raise SystemExit(main(script_argv("npo", sys.argv[1:])))
