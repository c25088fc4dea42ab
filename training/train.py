"""Train a codebook bottleneck: `python training/train.py ARGS` is `codeunlearn train ARGS` (see `--help`)."""

import sys

from codeunlearn.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
