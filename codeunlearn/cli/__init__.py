"""The `codeunlearn` command line: one subcommand per step of the pipeline.

    codeunlearn train   attach a codebook bottleneck to a frozen model and train it
    codeunlearn stats   count which codes fire on a corpus
    codeunlearn forget  select a topic's codes -> edit.json (+ a random-codes control)
    codeunlearn apply   write an edited bottleneck directory
    codeunlearn inspect what an edit's codes/features fire on: top contexts, frequencies, logit lens (HTML page)
    codeunlearn eval    held-out forget/retain loss table of base, bottleneck and edits
    codeunlearn calibrate  turn an SAE edit into a guardrail calibrated on retain text
    codeunlearn export  write the edited model as a directory plain transformers loads
    codeunlearn push    upload an exported directory to the Hugging Face Hub with a model card
    codeunlearn demo    the whole pipeline on the shipped SmolLM2 and the demo corpora
    codeunlearn baseline  unlearn with a gradient baseline (GA, GradDiff, NPO, RMU) for comparison
    codeunlearn relearn   relearning attack: fine-tune on forget text, report the recovery curve
    codeunlearn fact-topic  write the geography fact topic (known_1000) as forget/retain corpora and probes

Every subcommand reads `transformers.HfArgumentParser` dataclasses: flags, a single .yaml/.json file, or
`--config FILE` plus overriding flags. A mistake the user can fix ends as one `error: ...` line and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from codeunlearn import __version__, distributed
from codeunlearn.errors import CodeunlearnError

# Subcommand -> (module, one-line summary). Modules are imported only when run, so `codeunlearn --help` is instant.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("codeunlearn.cli.train", "attach a codebook bottleneck to a frozen model and train it"),
    "stats": ("codeunlearn.cli.stats", "count which codes fire on a corpus (train split by default)"),
    "forget": ("codeunlearn.cli.forget", "select a topic's codes -> edit.json and a random-codes control"),
    "apply": ("codeunlearn.cli.apply", "apply/undo edits and write an edited bottleneck directory"),
    "inspect": (
        "codeunlearn.cli.inspect",
        "what an edit's codes/features fire on: top contexts, frequencies, logit lens -> inspect.html",
    ),
    "eval": ("codeunlearn.cli.eval", "held-out forget/retain loss of base, bottleneck and edits, plus FVU"),
    "calibrate": ("codeunlearn.cli.calibrate", "turn an SAE edit into a guardrail calibrated on retain text"),
    "export": ("codeunlearn.cli.export", "write the edited model as a directory plain transformers loads"),
    "push": ("codeunlearn.cli.push", "upload an exported directory to the Hugging Face Hub with a model card"),
    "demo": ("codeunlearn.cli.demo", "the whole pipeline on SmolLM2-135M and the demo corpora"),
    "baseline": ("codeunlearn.cli.baseline", "unlearn with a gradient baseline (ga, grad_diff, npo, rmu) to compare"),
    "relearn": ("codeunlearn.cli.relearn", "relearning attack: fine-tune on forget text, report the recovery curve"),
    "fact-topic": (
        "codeunlearn.cli.fact_topic",
        "write the geography fact topic (known_1000) as forget/retain corpora and probes",
    ),
}

# Commands that split their work across the processes of `accelerate launch` / `torchrun` and reduce it
# (docs/multi-gpu.md); every other command refuses such a launch rather than run N copies of itself.
DATA_PARALLEL = ("train", "stats", "eval", "baseline")


def usage() -> str:
    """The top-level help text."""
    width = max(map(len, COMMANDS))
    lines = [
        "usage: codeunlearn COMMAND [ARGS ...] | codeunlearn COMMAND CONFIG.yaml",
        "",
        "Train a codebook bottleneck into a frozen causal LM once, then forget a topic by removing its codes.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()),
        "",
        "`codeunlearn COMMAND --help` lists a command's arguments.",
    ]
    return "\n".join(lines)


def one_line(err: CodeunlearnError) -> str:
    """The error as a single line (messages quoting files or exceptions may carry newlines)."""
    return " ".join(str(err).split())


def run(command: str, argv: Sequence[str]) -> int:
    """Run one subcommand and return its exit code (raises `CodeunlearnError` for user errors)."""
    if command not in COMMANDS:
        raise CodeunlearnError(f"unknown command {command!r}", f"use one of {', '.join(COMMANDS)} (codeunlearn --help)")
    module = importlib.import_module(COMMANDS[command][0])
    from codeunlearn.runtime import progress_bars  # imports torch: not before a command runs (`--help` is instant)

    with progress_bars(progress_wanted(argv)):
        return _run_module(module, command, argv)


def _run_module(module: Any, command: str, argv: Sequence[str]) -> int:
    if distributed.requested_world_size() == 1:
        return int(module.main(list(argv)) or 0)
    if command not in DATA_PARALLEL:
        processes = distributed.requested_world_size()
        raise CodeunlearnError(
            f"`codeunlearn {command}` runs in one process, but it was launched as {processes} processes",
            f"run it without accelerate launch / torchrun (data-parallel commands: {', '.join(DATA_PARALLEL)})",
        )
    distributed.join()
    if distributed.is_main_process():
        return int(module.main(list(argv)) or 0)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # the main process prints the summary
        return int(module.main(list(argv)) or 0)


class _QuietParser(argparse.ArgumentParser):
    """A pre-parser whose mistakes are left to the command's own parser (argparse would print usage and exit)."""

    def error(self, message: str) -> typing.NoReturn:  # argparse API
        raise ValueError(message)


CONFIG_SUFFIXES = (".yaml", ".yml", ".json")  # as `codeunlearn.cli.arguments` (which imports transformers)


def _as_bool(value: Any) -> bool | None:
    """A flag or config value as HfArgumentParser reads a bool; None where it is not one (its parser says so)."""
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    return True if text in ("yes", "true", "t", "y", "1") else False if text in ("no", "false", "f", "n", "0") else None


def progress_wanted(argv: Sequence[str]) -> bool:
    """Whether the command's progress bars are on (`--no_progress`, `--progress false`, or `progress: false` in its
    config file turn them off), read before the command runs so that `progress_bars` can also silence the bars of
    libraries that no `progress` argument reaches. Unparseable input counts as on: the command's own parser reports
    it."""
    argv = list(argv)
    if argv and argv[0].endswith(CONFIG_SUFFIXES) and not argv[0].startswith("-"):
        argv = ["--config", *argv]
    pre = _QuietParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--progress", dest="progress", nargs="?", const="true", default=None)
    pre.add_argument("--no_progress", dest="progress", action="store_const", const="false")
    pre.add_argument("--config", default=None)
    try:
        known, _ = pre.parse_known_args(argv)
    except ValueError:
        return True
    if known.progress is not None:  # the command line overrides the config file
        return _as_bool(known.progress) is not False
    if known.config:
        try:
            values = yaml.safe_load(Path(known.config).read_text())  # YAML reads JSON too
        except (OSError, yaml.YAMLError):
            return True
        if isinstance(values, dict) and "progress" in values:
            return _as_bool(values["progress"]) is not False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `codeunlearn` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv and argv[0] == "--version":
        print(f"codeunlearn {__version__}")
        return 0
    finished = False
    try:
        if not argv:
            raise CodeunlearnError("no command given", f"use one of {', '.join(COMMANDS)} (codeunlearn --help)")
        code = run(argv[0], argv[1:])
        finished = True
        return code
    except CodeunlearnError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # unreadable input, unwritable output, full disk: the user's to fix, not a bug
        print(f"error: {type(err).__name__}: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # argparse's --help
        return exit_.code if isinstance(exit_.code, int) else 0
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.leave(wait=finished)
