"""The argument dataclasses every `codeunlearn` subcommand shares, and the one parser that reads them.

Every command takes its arguments through `transformers.HfArgumentParser` dataclasses, from flags, from a config
file, or both:

    codeunlearn train --layers 15 --corpora a.txt --output_dir out      # flags
    codeunlearn train configs/train.yaml                                # one .yaml/.yml/.json file
    codeunlearn train --config configs/train.yaml --value_steps 10      # a file, then flags that override it
    codeunlearn train configs/train.yaml --value_steps 10               # the same

A config file is a flat mapping whose keys are the flag names (`layers: [15]`, `learning_rate: 1.0e-3`).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import re
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from codeunlearn.bottleneck.config import DEFAULT_KIND, FLAT_LAYOUT, BottleneckConfig
from codeunlearn.bottleneck.edit import DEFAULT_MULTIPLIER
from codeunlearn.bottleneck.registry import config_class_for
from codeunlearn.cli.common import check_multiplier
from codeunlearn.errors import CodeunlearnError, check_range
from codeunlearn.kinds import INTERVENTIONS, KINDS
from codeunlearn.unlearn.selection import SCALES, SelectionRule

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def with_aliases(cls: type, **aliases: list[str]) -> type:
    """`cls` with more flag spellings for some of its fields (`--model` for `--model_name_or_path`); the fields stay
    declared once, in `cls`."""
    hints = typing.get_type_hints(cls)
    changed = [
        (
            f.name,
            hints[f.name],
            field(
                default=f.default,
                default_factory=f.default_factory,
                metadata={**f.metadata, "aliases": aliases[f.name]},
            ),
        )
        for f in dataclasses.fields(cls)
        if f.name in aliases
    ]
    return dataclasses.make_dataclass(cls.__name__, changed, bases=(cls,))


def attribute_docs(cls: type) -> dict[str, str]:
    """Field descriptions from the `Attributes:` sections of the docstrings of `cls` and its bases (Google style;
    an entry `a / b: text` describes both fields), as one-line help texts."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        lines = inspect.cleandoc(klass.__dict__.get("__doc__") or "").splitlines()
        start = next((i for i, line in enumerate(lines) if line.strip() == "Attributes:"), None)
        if start is None:
            continue
        entries: list[tuple[list[str], list[str]]] = []
        for line in lines[start + 1 :]:
            if line and not line.startswith(" "):
                break
            entry = re.match(r"^    ([a-z_][a-z0-9_ /]*): (.*)$", line)
            if entry:
                entries.append(([n.strip() for n in entry.group(1).split("/")], [entry.group(2)]))
            elif line.strip() and entries:
                entries[-1][1].append(line.strip())
        for names, text in entries:
            sentence = " ".join(text)
            # argparse formats help with %-interpolation: a literal percent sign is written twice.
            sentence = (sentence[0].upper() + sentence[1:]).replace("%", "%%")
            docs.update({name: sentence for name in names})
    return docs


def library_arguments(
    *classes: type, exclude: Iterable[str] = (), rename: dict[str, str] | None = None, order: Sequence[str] = ()
) -> type:
    """A dataclass of the fields of library dataclasses, as command-line arguments: type and default from the
    field, help from the class docstring's `Attributes:` section, so nothing is written twice. Fields met again in
    a later class are taken once; `rename` gives a field another flag name, `order` sorts the named fields first."""
    rename = rename or {}
    specs: dict[str, tuple[str, Any, Any]] = {}
    for cls in classes:
        hints, docs = typing.get_type_hints(cls), attribute_docs(cls)
        for f in dataclasses.fields(cls):
            if f.name in exclude or f.name in specs:
                continue
            help_text = docs.get(f.name, f.metadata.get("help", ""))
            default = field(default=f.default, default_factory=f.default_factory, metadata={"help": help_text})
            specs[f.name] = (rename.get(f.name, f.name), hints[f.name], default)
    rank = {name: index for index, name in enumerate(order)}
    ordered = sorted(specs, key=lambda name: rank.get(name, len(rank)))
    return dataclasses.make_dataclass("LibraryArguments", [specs[name] for name in ordered])


# The facts a bottleneck config reads off the model (and its bookkeeping): not arguments.
MODEL_FACTS = ("hidden_size", "num_hidden_layers", "model_type", "base_model", "extra", "inactive_fields")


@dataclass
class BottleneckArguments(
    library_arguments(
        *(config_class_for(name) for name in KINDS),
        exclude=MODEL_FACTS,
        # `seed` is taken by TrainingArguments (data order); this one seeds the bottleneck's initialisation.
        rename={"seed": "bottleneck_seed"},
        order=FLAT_LAYOUT,
    )
):
    """The shape of the bottleneck: the fields of every kind's config (`codeunlearn.kinds`, as the flat
    `bottleneck_config.json` holds them), minus the facts read off the model; `kind` picks the config class."""

    kind: Literal[KINDS] = field(
        default=DEFAULT_KIND,
        metadata={
            "help": "Bottleneck kind: `vq` (codebook) or `sae` (sparse autoencoder).",
            "aliases": ["--bottleneck"],
        },
    )

    def to_config(self) -> BottleneckConfig:
        """The library config these arguments describe (model facts are filled in by `attach`)."""
        values = dataclasses.asdict(self)
        values["seed"] = values.pop("bottleneck_seed")
        return BottleneckConfig.from_dict(values)


@dataclass
class SelectionArguments(library_arguments(SelectionRule)):
    """Which codes a topic removes (the fields of `codeunlearn.unlearn.selection.SelectionRule`) and how: the topic's
    name, the edit's intervention, the random control and the rule that picks the number of codes."""

    topic: str = field(default="topic", metadata={"help": "Name of the topic to forget (recorded in the edit)."})
    intervention: Literal[INTERVENTIONS] | None = field(
        default=None,
        metadata={
            "help": "Codebook: `substitute` (default; replace the code by the data mean) or `exclude` (drop it from "
            "the search). SAE: `clamp` (default; firing features set to multiplier x scale) or `zero`; a guardrail "
            "is made from either with `codeunlearn calibrate`."
        },
    )
    control_seed: int = field(default=0, metadata={"help": "Seed of the random-codes control edit."})
    max_retain_cost: float | None = field(
        default=None,
        metadata={
            "help": "Choose the number of codes by rule: the largest N (grid 128, 256, 512, 768, 1024, 1536, ... up "
            "to --num_codes) whose edit raises the loss on validation retain text (train-split text after the "
            "first --validation_skip_tokens per corpus, never held-out text) by at most this many nat/token."
        },
    )
    validation_tokens: int = field(
        default=4096, metadata={"help": "Validation retain tokens per corpus for --max_retain_cost."}
    )
    validation_skip_tokens: int = field(
        default=65536,
        metadata={
            "help": "Train-split tokens per retain corpus the bottleneck and its retain statistics may have read "
            "(the faithful recipe's --max_tokens); validation text starts after them."
        },
    )
    multiplier: float | None = field(
        default=None,
        metadata={
            "help": f"SAE clamp: firing features are set to multiplier x scale; negative (default {DEFAULT_MULTIPLIER})."
        },
    )
    clamp_scale: Literal[SCALES] = field(
        default="mean",
        metadata={"help": "SAE clamp scale per feature: its `mean` or `max` activation on the forget text."},
    )

    def __post_init__(self) -> None:
        # Ranges checked when the flags are parsed, before statistics are read or counted (the library rule checks
        # only what it must, and this file mirrors it without its own __post_init__).
        check_range("num_codes", self.num_codes, self.num_codes >= 1, ">= 1 (codes removed per layer)")
        check_range("min_forget_count", self.min_forget_count, self.min_forget_count >= 0, ">= 0 (e.g. 5)")
        check_range("max_retain_frequency", self.max_retain_frequency, 0 <= self.max_retain_frequency <= 1, "in [0, 1]")
        # any real threshold is a rule (scores are log ratios or differences, either sign); nan selects nothing and
        # -inf would admit codes that fire less on the forget text than on the retain text
        check_range("min_score", self.min_score, math.isfinite(self.min_score), "a finite number (e.g. 0)")
        if self.max_retain_cost is not None:
            check_range("max_retain_cost", self.max_retain_cost, self.max_retain_cost >= 0, ">= 0 (nat/token)")
        check_range("validation_tokens", self.validation_tokens, self.validation_tokens >= 1, ">= 1")
        check_range("validation_skip_tokens", self.validation_skip_tokens, self.validation_skip_tokens >= 0, ">= 0")
        check_multiplier(self.multiplier, "--intervention zero")

    def rule(self) -> SelectionRule:
        """The library selection rule these arguments describe."""
        names = {f.name for f in dataclasses.fields(SelectionRule)}
        return SelectionRule(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


# ------------------------------------------------------------------------------------------------ parsing


class ArgumentParser(HfArgumentParser):
    """HfArgumentParser whose usage errors are `CodeunlearnError`s (one line, exit code 2) instead of argparse's
    usage dump."""

    def error(self, message: str) -> typing.NoReturn:  # argparse API
        raise CodeunlearnError(f"{self.prog}: {message}", f"see `{self.prog} --help`")


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Convert a config-file value to a field's type (PyYAML reads `1e-3` as a string, JSON has no ints vs floats)."""

    def bad() -> CodeunlearnError:
        return CodeunlearnError(
            f"{source}: {key}={value!r} is not a valid {getattr(hint, '__name__', hint)}", f"fix `{key}` in {source}"
        )

    origin = typing.get_origin(hint)
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(hint)):
            return None
        return _coerce(value, args[0], key, source)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise CodeunlearnError(
                f"{source}: {key}={value!r} is not one of {list(choices)}", f"fix `{key}` in {source}"
            )
        return value
    if origin is list:
        (item,) = typing.get_args(hint)
        values = value if isinstance(value, list) else [value]
        return [_coerce(v, item, key, source) for v in values]
    try:
        if hint is bool:
            return value if isinstance(value, bool) else string_to_bool(str(value))
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise bad()
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise bad()
            return float(value)
        if hint is str:
            if value is None or isinstance(value, (list, dict)):  # `null` is no path or name ("None" would be one)
                raise bad()
            return str(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise bad() from None
    return value


def read_config_file(path: str | Path, dataclass_types: Sequence[type]) -> dict[str, Any]:
    """Read a flat YAML/JSON config, check its keys against the dataclasses and convert values to field types."""
    import yaml

    path = Path(path)
    if path.suffix not in CONFIG_SUFFIXES:
        raise CodeunlearnError(f"config file {path} is not .yaml/.yml/.json", "pass a YAML or JSON config file")
    if not path.is_file():
        raise CodeunlearnError(f"config file not found: {path}", "check the path")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except UnicodeDecodeError as err:
        raise CodeunlearnError(
            f"config file {path} is not UTF-8 text (byte {err.start})", "save it as UTF-8 (e.g. iconv -t UTF-8)"
        ) from None
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        first = str(err).replace("\n", " ")
        raise CodeunlearnError(f"config file {path} does not parse ({first})", "fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CodeunlearnError(
            f"config file {path} is not a mapping of argument names to values", "write `name: value` lines"
        )
    hints: dict[str, Any] = {}
    for dtype in dataclass_types:
        type_hints = typing.get_type_hints(dtype)
        hints.update({f.name: type_hints[f.name] for f in dataclasses.fields(dtype) if f.init})
    unknown = sorted(map(str, set(data) - set(hints)))  # YAML keys may be numbers
    if unknown:
        raise CodeunlearnError(f"config file {path} has unknown keys {unknown}", "use the flag names listed by --help")
    return {key: _coerce(value, hints[key], key, str(path)) for key, value in data.items()}


def parse_arguments(
    dataclass_types: Sequence[type],
    argv: Sequence[str],
    prog: str,
    description: str,
    defaults: dict[str, Any] | None = None,
    default_config: str | Path | None = None,
) -> tuple[Any, ...]:
    """Parse `argv` into one instance of each dataclass.

    Precedence, lowest first: dataclass defaults, `defaults`, the config file (`--config FILE`, a single
    `FILE.yaml`/`FILE.json` argument, or else `default_config`), flags on the command line.
    """
    parser = ArgumentParser(dataclass_types, prog=prog, description=description)
    if "bf16" in {action.dest for action in parser._actions} and "--no_bf16" not in parser._option_string_actions:
        # argparse adds `--no_X` only to flags whose declared default is True; bf16's default may be turned on when
        # the command runs (`defaults`), so its off switch is always there.
        parser.add_argument("--no_bf16", action="store_false", dest="bf16", help="Turn bf16 autocast off.")
    parser.add_argument(
        "--config",
        default=str(default_config) if default_config else None,
        help="YAML/JSON file of argument values (keys are the flag names); flags on the command line override it",
    )
    argv = list(argv)
    if argv and argv[0].endswith(CONFIG_SUFFIXES) and not argv[0].startswith("-"):
        argv = ["--config", *argv]  # `codeunlearn train config.yaml [--flag value ...]`
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    values = dict(defaults or {})
    config_path = known.config or default_config
    if config_path:
        values.update(read_config_file(config_path, dataclass_types))
    if values:
        parser.set_defaults(**values)
        for action in parser._actions:  # a value from the file satisfies a required flag
            if action.dest in values:
                action.required = False
    *outputs, remaining = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True, look_for_args_file=False
    )
    if remaining:
        raise CodeunlearnError(f"{prog}: unrecognized arguments {remaining}", f"see `{prog} --help`")
    return tuple(outputs[: len(dataclass_types)])


def to_flat_dict(*objects: Any) -> dict[str, Any]:
    """Merge dataclass instances into one flat dict: a config file that `parse_arguments` reads back."""
    merged: dict[str, Any] = {}
    for obj in objects:
        merged.update(dataclasses.asdict(obj))
    return merged
