"""Apply or undo edits and save the edited bottleneck: `python surgery/apply.py ARGS` is `codeunlearn apply ARGS` (see `--help`)."""

import sys

from codeunlearn.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["apply", *sys.argv[1:]]))
