"""Select a topic's codes and write the edit: `python surgery/forget.py ARGS` is `codeunlearn forget ARGS` (see `--help`)."""

import sys

from codeunlearn.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["forget", *sys.argv[1:]]))
