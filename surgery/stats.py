"""Count code firings on a corpus: `python surgery/stats.py ARGS` is `codeunlearn stats ARGS` (see `--help`)."""

import sys

from codeunlearn.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["stats", *sys.argv[1:]]))
