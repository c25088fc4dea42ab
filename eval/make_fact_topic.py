"""Geography fact topic from known_1000: `python eval/make_fact_topic.py ARGS` is `codeunlearn fact-topic ARGS`
(see `--help`)."""

import sys

from codeunlearn.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["fact-topic", *sys.argv[1:]]))
