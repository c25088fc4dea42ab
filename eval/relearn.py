"""Relearning attack: `python eval/relearn.py ARGS` is `codeunlearn relearn ARGS` (see `--help`)."""

import sys

from codeunlearn.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["relearn", *sys.argv[1:]]))
