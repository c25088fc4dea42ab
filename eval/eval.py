"""Held-out forget/retain loss table: `python eval/eval.py ARGS` is `codeunlearn eval ARGS` (see `--help`)."""

import sys

from codeunlearn.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["eval", *sys.argv[1:]]))
