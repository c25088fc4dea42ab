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
import json
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from codeunlearn.bottleneck import INTERVENTIONS, KINDS
from codeunlearn.bottleneck.config import (
    DEFAULT_KIND,
    SAE_ARCHITECTURES,
    SITES,
    BottleneckConfig,
    CodebookConfig,
    SAEConfig,
)
from codeunlearn.bottleneck.edit import DEFAULT_MULTIPLIER
from codeunlearn.errors import CodeunlearnError
from codeunlearn.unlearn.selection import SCALES, SCORES, SelectionRule

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


def _default(cls: type, name: str) -> Any:
    """The default of a library dataclass field, so the CLI never restates (and drifts from) library defaults."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


@dataclass
class BottleneckArguments:
    """The shape of the bottleneck (`codeunlearn.bottleneck.config.BottleneckConfig`, minus the facts read off the model)."""

    layers: list[int] = field(metadata={"help": "Decoder-layer indices whose output goes through a bottleneck."})
    kind: Literal[KINDS] = field(
        default=DEFAULT_KIND,
        metadata={
            "help": "Bottleneck kind: `vq` (codebook) or `sae` (sparse autoencoder).",
            "aliases": ["--bottleneck"],
        },
    )
    site: Literal[SITES] = field(
        default=_default(BottleneckConfig, "site"),
        metadata={
            "help": "`residual`: quantize the whole residual stream; `block_output`: only what the layer writes."
        },
    )
    num_heads: int = field(
        default=_default(CodebookConfig, "num_heads"),
        metadata={"help": "Code pieces per stage (divides the hidden size)."},
    )
    codebook_size: int = field(
        default=_default(CodebookConfig, "codebook_size"), metadata={"help": "Codes per head and stage."}
    )
    num_stages: int = field(
        default=_default(CodebookConfig, "num_stages"), metadata={"help": "Residual-quantization stages."}
    )
    passthrough_first_position: bool = field(
        default=_default(BottleneckConfig, "passthrough_first_position"),
        metadata={"help": "Leave position 0 (attention sink) unquantized."},
    )
    massive_norm_factor: float = field(
        default=_default(BottleneckConfig, "massive_norm_factor"),
        metadata={"help": "Leave tokens with norm above this multiple of the typical norm unquantized (0 disables)."},
    )
    ema_decay: float = field(
        default=_default(CodebookConfig, "ema_decay"), metadata={"help": "EMA decay of the search keys."}
    )
    kmeans_iters: int = field(
        default=_default(CodebookConfig, "kmeans_iters"),
        metadata={"help": "k-means iterations of the key initialisation."},
    )
    dead_code_threshold: float = field(
        default=_default(CodebookConfig, "dead_code_threshold"),
        metadata={"help": "EMA usage below which a code is replaced."},
    )
    adapter_rank: int = field(
        default=_default(BottleneckConfig, "adapter_rank"),
        metadata={
            "help": "Rank of LoRA adapters on the layers after the first bottleneck (0 = none; base weights never change)."
        },
    )
    # `seed` is taken by TrainingArguments (data order); this one seeds the rotation and k-means.
    bottleneck_seed: int = field(
        default=_default(BottleneckConfig, "seed"), metadata={"help": "Seeds the rotation and k-means init."}
    )
    sae_architecture: Literal[SAE_ARCHITECTURES] = field(
        default=_default(SAEConfig, "sae_architecture"),
        metadata={"help": "SAE (kind sae): `relu` (MSE + L1) or `topk` (k active features, aux-k loss)."},
    )
    sae_width: int = field(
        default=_default(SAEConfig, "sae_width"),
        metadata={"help": "SAE features per layer (0: sae_expansion_factor x hidden size)."},
    )
    sae_expansion_factor: int = field(
        default=_default(SAEConfig, "sae_expansion_factor"),
        metadata={"help": "SAE width as a multiple of the hidden size (when sae_width is 0)."},
    )
    sae_k: int = field(
        default=_default(SAEConfig, "sae_k"), metadata={"help": "Active features per token of a topk SAE."}
    )
    sae_l1_coefficient: float = field(
        default=_default(SAEConfig, "sae_l1_coefficient"),
        metadata={"help": "L1 sparsity weight of a relu SAE (inputs scaled to norm sqrt(d_in))."},
    )
    sae_error_term: bool = field(
        default=_default(SAEConfig, "sae_error_term"),
        metadata={"help": "Keep the SAE error term (an unedited SAE then changes nothing)."},
    )

    def to_config(self) -> BottleneckConfig:
        """The library config these arguments describe (model facts are filled in by `attach`)."""
        values = dataclasses.asdict(self)
        values["seed"] = values.pop("bottleneck_seed")
        return BottleneckConfig.from_dict(values)


@dataclass
class SelectionArguments:
    """Which codes a topic removes (`codeunlearn.unlearn.selection.SelectionRule`) and how."""

    topic: str = field(default="topic", metadata={"help": "Name of the topic to forget (recorded in the edit)."})
    num_codes: int = field(
        default=_default(SelectionRule, "num_codes"),
        metadata={"help": "Codes to remove per layer (the top-scoring eligible ones)."},
    )
    min_forget_count: int = field(
        default=_default(SelectionRule, "min_forget_count"),
        metadata={"help": "A code must fire at least this often on the forget corpus."},
    )
    max_retain_frequency: float = field(
        default=_default(SelectionRule, "max_retain_frequency"),
        metadata={"help": "Codes firing on more than this fraction of retain tokens are kept."},
    )
    min_score: float = field(
        default=_default(SelectionRule, "min_score"),
        metadata={"help": "Only codes with log-enrichment above this are eligible."},
    )
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
    score: Literal[SCORES] = field(
        default=_default(SelectionRule, "score"),
        metadata={
            "help": "`frequency_ratio` (log-enrichment of firing frequency) or, for an SAE, "
            "`mean_activation_difference` (mean activation on forget minus retain tokens)."
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
            if isinstance(value, (list, dict)):
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
    unknown = sorted(set(data) - set(hints))
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
