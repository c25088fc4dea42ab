"""Calibrate an SAE guardrail: `python surgery/calibrate.py ARGS` is `codeunlearn calibrate ARGS` (see `--help`)."""

import sys

from codeunlearn.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["calibrate", *sys.argv[1:]]))
