"""Push an exported model to the Hugging Face Hub: `python surgery/push.py ARGS` is `codeunlearn push ARGS` (see `--help`)."""

import sys

from codeunlearn.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["push", *sys.argv[1:]]))
