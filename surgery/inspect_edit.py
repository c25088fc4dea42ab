"""Inspect an edit's codes: `python surgery/inspect_edit.py ARGS` is `codeunlearn inspect ARGS` (see `--help`).

Not `surgery/inspect.py`: a script's folder comes first on `sys.path`, so a file named `inspect.py` there would be
imported in place of the standard library's `inspect` module by everything the script imports."""

import sys

from codeunlearn.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["inspect", *sys.argv[1:]]))
