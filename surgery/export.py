"""Export the edited model as a transformers directory: `python surgery/export.py ARGS` is `codeunlearn export ARGS` (see `--help`)."""

import sys

from codeunlearn.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["export", *sys.argv[1:]]))
