"""`codeunlearn export`: write the edited model as a directory that plain transformers loads (no codeunlearn needed).

    codeunlearn export --model smollm2-135m --bottleneck outputs/run/edited --out outputs/run/export
    codeunlearn export --model smollm2-135m --bottleneck outputs/run/bottleneck \\
        --edit outputs/run/edits/edit.json --eval_report outputs/run/eval/report.json --out outputs/run/export

Mode `bottleneck` (default): the base model, the bottleneck (a codebook, or SAEs: a codeunlearn SAE bottleneck or
sae-lens directories) and the edits (those saved in --bottleneck plus each --edit, after --undo) become one directory
with its own `model_type` and modeling file: `AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True)`.
Before it is moved into place the directory is reloaded that way and its logits compared with the in-memory edited
model's (`--no_verify` skips this).

Mode `linear`: a different method. Feature directions at decoder layer `--layer` are projected out of every write
into the residual stream up to that layer and folded into the stock weights: the result keeps the base `model_type`
and needs no remote code. The directions are `--rank` ones derived from the train split of --forget_corpora vs
--retain_corpora (difference of mean states), or read from `--directions FILE` (safetensors, key `directions`, shape
(k, hidden)), or the decoder rows of the features one SAE `--edit` selected (with its SAE `--bottleneck`; the layer
defaults to the edit's): a linear projection of their span from every token, not the edit's conditional clamp.
With corpora given, the held-out loss table (base vs projected, the same metric and split as `codeunlearn eval`) is
printed and stored in the export.

Mode `bake`: its own method too. The edited bottleneck model (--bottleneck with --edit) is distilled into a copy of
the base model on the train split of --forget_corpora (the edited model's next-token distributions) and
--retain_corpora (the base model's, or the edited model's with --retain_teacher edited); the result keeps the base
`model_type`, needs no remote code and has no switch that turns the edit off. `--mode bake --help` lists the
distillation's settings (`codeunlearn.export.bake.BakeConfig`); the held-out table (base, edited bottleneck, baked)
and the distillation's cost go into `codeunlearn_bake.json` and the card.

    codeunlearn export --mode bake --model smollm2-135m --bottleneck outputs/faithful/bottleneck \
        --edit outputs/faithful/forget_hp/edit.json --forget_corpora ../shared/data/demo/forget_harry_potter.txt \
        --retain_corpora ../shared/data/retain/openstax_us_history.jsonl ../shared/data/retain/wikitext2_raw_test.txt \
        --out outputs/faithful/bake_hp
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from torch import Tensor

from codeunlearn.bottleneck.edit import Edit
from codeunlearn.bottleneck.loading import attach_bottleneck, resolve_bottleneck_dir
from codeunlearn.bottleneck.registry import config_class_for
from codeunlearn.cli.apply import describe_edits
from codeunlearn.cli.arguments import parse_arguments, with_aliases
from codeunlearn.cli.common import check_output_dir_free
from codeunlearn.data import Corpora, DataArguments, read_corpora
from codeunlearn.errors import CodeunlearnError, check_range
from codeunlearn.evaluate.loss_table import TABLE_NOTE, loss_table
from codeunlearn.export.bake import (
    BakeConfig,
    bake,
    bake_spec,
    check_distillation_text,
    save_baked,
    scratch_training_arguments,
)
from codeunlearn.export.card import read_eval_report
from codeunlearn.export.linear import (
    directions_from_sae_edit,
    fold_checked,
    fold_with_losses,
    layer_states,
    mean_difference_directions,
    read_directions,
    save_linear_export,
)
from codeunlearn.export.save import save_pretrained
from codeunlearn.modeling import ModelArguments, load_model, load_tokenizer
from codeunlearn.runtime import run_arguments

DESCRIPTION = (
    "Export the edited model as a transformers directory (loads with trust_remote_code; as a stock model in linear "
    "and bake mode). `--mode bake --help` lists the distillation's settings."
)
MODES = ("bottleneck", "linear", "bake")

# `--model` is short for `--model_name_or_path`, `--out` for `--output_dir` (export's own spellings).
ExportModelArguments = with_aliases(ModelArguments, model_name_or_path=["--model"])
ExportRunArguments = with_aliases(
    run_arguments("output_dir", "overwrite", "progress", writes="the export (must be empty unless --overwrite)"),
    output_dir=["--out"],
)
BakeRunArguments = with_aliases(
    run_arguments(
        "output_dir", "overwrite", "progress", "bf16", writes="the baked model (must be empty unless --overwrite)"
    ),
    output_dir=["--out"],
)


@dataclass
class ExportArguments:
    """What to export and where."""

    mode: Literal[MODES] = field(
        default="bottleneck",
        metadata={
            "help": "`bottleneck`: the edited codebook/SAE model (remote code); `linear`: a different method, a "
            "linear projection folded into the stock weights (directions from corpora, a file, or an SAE edit's "
            "decoder rows: removed from every token, not clamped where the features fire); `bake`: the edited "
            "model distilled into the stock weights (`--mode bake --help`)."
        },
    )
    bottleneck_dir: str | None = field(
        default=None,
        metadata={
            "aliases": ["--bottleneck"],
            "help": "Bottleneck directory (its saved edits stay active) or sae-lens SAE directory; linear mode: the "
            "SAE of --edit.",
        },
    )
    edits: list[str] = field(
        default_factory=list,
        metadata={
            "aliases": ["--edit"],
            "help": "Edit files (from `codeunlearn forget`) to apply, in order; linear mode: one SAE edit whose "
            "features' decoder rows are projected out.",
        },
    )
    undo: list[str] = field(
        default_factory=list, metadata={"help": "Topics whose most recent saved edit is removed before --edits."}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer directory or name, when the model's own location has none."}
    )
    eval_report: str | None = field(
        default=None, metadata={"help": "report.json from `codeunlearn eval`, stored in the export and its card."}
    )
    license: str | None = field(
        default=None,
        metadata={"help": "License id for the model card (default: the base model's, where codeunlearn knows it)."},
    )
    layer: int | None = field(
        default=None,
        metadata={
            "help": "Linear mode: decoder layer whose output is cleaned (default with --edit: the edit's layer)."
        },
    )
    rank: int = field(default=1, metadata={"help": "Linear mode: number of directions derived from the corpora."})
    directions: str | None = field(
        default=None, metadata={"help": "Linear mode: safetensors file with a (k, hidden) tensor `directions`."}
    )
    batch_size: int = field(default=8, metadata={"help": "Linear mode: chunks per forward pass."})
    verify: bool = field(
        default=True, metadata={"help": "Reload the written directory and compare logits before moving it in place."}
    )

    def __post_init__(self) -> None:
        # the layer's upper end is the model's depth, checked once the model is loaded
        if self.layer is not None:
            check_range("layer", self.layer, self.layer >= 0, ">= 0 (a decoder layer index), or leave it out")
        check_range("rank", self.rank, self.rank >= 1, ">= 1 (directions)")
        check_range("batch_size", self.batch_size, self.batch_size >= 1, ">= 1")


@dataclass
class BakeArguments:
    """What `--mode bake` distils, and how the result is measured and recorded."""

    mode: Literal["bake"] = field(metadata={"help": "bake: distil the edited model into the stock weights."})
    bottleneck_dir: str | None = field(
        default=None,
        metadata={"aliases": ["--bottleneck"], "help": "Bottleneck directory (its saved edits stay active)."},
    )
    edits: list[str] = field(
        default_factory=list, metadata={"aliases": ["--edit"], "help": "Edit files to apply, in order."}
    )
    undo: list[str] = field(
        default_factory=list, metadata={"help": "Topics whose most recent saved edit is removed before --edits."}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer directory or name, when the model's own location has none."}
    )
    eval_report: str | None = field(
        default=None, metadata={"help": "report.json from `codeunlearn eval` of the baked model, stored with it."}
    )
    license: str | None = field(
        default=None,
        metadata={"help": "License id for the model card (default: the base model's, where codeunlearn knows it)."},
    )
    eval_max_tokens: int | None = field(
        default=None, metadata={"help": "Cap on held-out tokens per corpus for the table (default: --max_tokens)."}
    )
    eval_batch_size: int = field(default=8, metadata={"help": "Chunks per forward pass when measuring."})
    seed: int = field(default=0, metadata={"help": "Seeds the order of the distillation chunks and torch's RNG."})
    log_every: int = field(default=10, metadata={"help": "Record the distillation losses every N steps."})
    verify: bool = field(
        default=True, metadata={"help": "Reload the written directory and compare logits before moving it in place."}
    )

    def __post_init__(self) -> None:
        if self.eval_max_tokens is not None:
            check_range("eval_max_tokens", self.eval_max_tokens, self.eval_max_tokens >= 1, ">= 1, or leave it out")
        check_range("eval_batch_size", self.eval_batch_size, self.eval_batch_size >= 1, ">= 1")
        check_range("log_every", self.log_every, self.log_every >= 1, ">= 1")


def requested_mode(argv: Sequence[str]) -> str:
    """The `--mode` of `argv` (bake parses its own settings); a one-line error for an unknown one."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--mode", default="bottleneck")
    known, _ = pre.parse_known_args(list(argv))
    if known.mode not in MODES:
        raise CodeunlearnError(f"unknown export mode {known.mode!r}", f"use --mode {'|'.join(MODES)}")
    return known.mode


def export_tokenizer(model_args: ModelArguments, tokenizer: str | None) -> Any:
    """The tokenizer to export: `tokenizer` if given, else the one stored with the model; a one-line error naming
    --tokenizer when there is none."""
    source = tokenizer or model_args.model_name_or_path
    try:
        return load_tokenizer(source, None if tokenizer else model_args.gguf_file)
    except (OSError, ValueError, TypeError) as err:
        first = " ".join(str(err).split())[:200]
        raise CodeunlearnError(
            f"no tokenizer found at {source} ({first})",
            "pass --tokenizer DIR_OR_NAME holding the base model's tokenizer",
        ) from None


def export_bottleneck(model_args: ModelArguments, run: Any, args: ExportArguments) -> int:
    """Mode `bottleneck`: the edited bottlenecked model as a remote-code transformers directory."""
    if args.bottleneck_dir is None:
        raise CodeunlearnError("no bottleneck given", "pass --bottleneck DIR (from `codeunlearn train` or `apply`)")
    bottleneck_dir = resolve_bottleneck_dir(args.bottleneck_dir)
    edits = [Edit.load(path) for path in args.edits]
    if args.eval_report is not None:
        read_eval_report(args.eval_report)
    tokenizer = export_tokenizer(model_args, args.tokenizer)
    model = load_model(model_args.model_name_or_path, model_args.gguf_file, model_args.dtype, run.progress)
    bmodel = attach_bottleneck(model, bottleneck_dir)
    for topic in args.undo:
        removed = bmodel.undo_edit(topic)
        print(f"undid {removed.topic!r} ({removed.num_codes} codes)")
    for edit in edits:
        bmodel.apply_edit(edit)
    result = save_pretrained(
        bmodel,
        run.output_dir,
        tokenizer,
        overwrite=run.overwrite,
        eval_report=args.eval_report,
        verify=args.verify,
        license=args.license,
    )
    print("active edits:")
    print(describe_edits(bmodel.edits))
    if result is not None:
        print(
            f"verified: reloaded logits match the in-memory edited model (max |difference| "
            f"{result.max_abs_difference:.2e} on {result.tokens} probe tokens)"
        )
    print(f"wrote {run.output_dir}")
    print(f"load it with AutoModelForCausalLM.from_pretrained({str(run.output_dir)!r}, trust_remote_code=True)")
    return 0


def _linear_sae_edit(args: ExportArguments) -> Edit | None:
    """Linear mode's SAE edit (the source of its directions), or None; one-line errors for a wrong combination."""
    if not args.edits and not args.bottleneck_dir:
        return None
    if len(args.edits) != 1 or not args.bottleneck_dir:
        raise CodeunlearnError(
            "linear mode takes its directions from one SAE edit and its SAE",
            "pass exactly one --edit with its --bottleneck (or neither, with --directions or corpora)",
        )
    if args.directions:
        raise CodeunlearnError("both --directions and --edit give directions", "pass one of them")
    if args.undo:
        raise CodeunlearnError("--undo belongs to the bottleneck mode", "drop it, or use --mode bottleneck")
    edit = Edit.load(args.edits[0])
    if not config_class_for(edit.kind).has_activations:
        raise CodeunlearnError(
            f"edit {edit.topic!r} is a {edit.kind!r} edit; linear mode reads decoder rows of SAE features",
            "pass an SAE edit, or use --mode bottleneck for a codebook edit",
        )
    return edit


def _linear_directions(
    model: Any,
    tokenizer: Any,
    args: ExportArguments,
    given: Tensor | None,
    sae_edit: Edit | None,
    corpora: tuple[Corpora, Corpora] | None,
) -> tuple[Tensor, str, dict[str, Any]]:
    """(directions, how they were made, provenance): those of --directions, of the SAE edit, or of the corpora
    (sets `args.layer` to the edit's layer when it was not given)."""
    if given is not None:
        return given, f"read from {args.directions}", {}
    if sae_edit is not None:
        directions, args.layer = directions_from_sae_edit(model, args.bottleneck_dir, sae_edit, args.layer)
        how = (
            f"decoder rows of the {len(directions)} SAE features of edit {sae_edit.topic!r} at layer {args.layer}, "
            "orthonormalised (QR)"
        )
        source = {
            "topic": sae_edit.topic,
            "intervention": sae_edit.intervention,
            "features": sae_edit.layers[args.layer].codes,
            "bottleneck": str(args.bottleneck_dir),
            "edit_file": str(args.edits[0]),
        }
        return directions, how, {"topic": sae_edit.topic, "sae_edit": source}
    forget, retain = corpora
    forget_states = layer_states(model, forget.pack(tokenizer, "train"), args.layer, args.batch_size)
    retain_states = layer_states(model, retain.pack(tokenizer, "train"), args.layer, args.batch_size)
    directions = mean_difference_directions(forget_states, retain_states, args.rank)
    how = f"difference of mean layer-{args.layer} states, forget vs retain (train split), rank {args.rank}"
    return directions, how, {}


def export_linear(model_args: ModelArguments, data_args: DataArguments, run: Any, args: ExportArguments) -> int:
    """Mode `linear`: directions projected out of the residual stream, folded into the stock weights."""
    sae_edit = _linear_sae_edit(args)
    if args.layer is None and sae_edit is None:
        raise CodeunlearnError(
            "linear mode needs a layer", "pass --layer L (the decoder layer whose output is cleaned)"
        )
    has_corpora = bool(data_args.forget_corpora and data_args.retain_corpora)
    if args.directions is None and sae_edit is None and not has_corpora:
        raise CodeunlearnError(
            "linear mode needs directions",
            "pass --forget_corpora and --retain_corpora, --directions FILE, or an SAE --edit with its --bottleneck",
        )
    forget = read_corpora(data_args.forget_corpora, data_args, "forget_corpora") if has_corpora else None
    retain = read_corpora(data_args.retain_corpora, data_args, "retain_corpora") if has_corpora else None
    given = read_directions(args.directions) if args.directions else None
    tokenizer = export_tokenizer(model_args, args.tokenizer)
    model = load_model(model_args.model_name_or_path, model_args.gguf_file, model_args.dtype, run.progress)
    directions, how, provenance = _linear_directions(
        model, tokenizer, args, given, sae_edit, (forget, retain) if has_corpora else None
    )
    report = None
    if has_corpora:
        heldout = {"forget": forget.pack(tokenizer, "heldout"), "retain": retain.pack(tokenizer, "heldout")}
        rows = fold_with_losses(model, directions, args.layer, heldout, args.batch_size)
        report = {
            "method": "linear",
            "model": model_args.model_name_or_path,
            "layer": args.layer,
            "heldout_tokens": {k: v.numel() for k, v in heldout.items()},
            "forget_corpora": forget.sources,
            "retain_corpora": retain.sources,
            "data": asdict(data_args),
            "rows": rows,
        }
        print(loss_table(rows))
        print(TABLE_NOTE.replace("unedited bottleneck", "base model"))
    else:
        fold_checked(model, directions, args.layer)
    provenance.update(forget_corpora=data_args.forget_corpora, retain_corpora=data_args.retain_corpora)
    save_linear_export(
        model,
        tokenizer,
        run.output_dir,
        directions,
        args.layer,
        overwrite=run.overwrite,
        directions_method=how,
        provenance=provenance,
        eval_report=report,
        verify=args.verify,
        license=args.license,
    )
    print(f"wrote {run.output_dir} (model_type {model.config.model_type}; load it with plain from_pretrained)")
    return 0


def export_bake(
    model_args: ModelArguments, data_args: DataArguments, run: Any, args: BakeArguments, config: BakeConfig
) -> int:
    """Mode `bake`: distil the edited bottleneck model into a copy of the base model and save it as a stock model."""
    if args.bottleneck_dir is None:
        raise CodeunlearnError("no bottleneck given", "pass --bottleneck DIR (from `codeunlearn train` or `apply`)")
    if not (data_args.forget_corpora and data_args.retain_corpora):
        raise CodeunlearnError(
            "bake distils on forget and retain text", "pass --forget_corpora FILE ... and --retain_corpora FILE ..."
        )
    bottleneck_dir = resolve_bottleneck_dir(args.bottleneck_dir)
    edits = [Edit.load(path) for path in args.edits]
    if args.eval_report is not None:
        read_eval_report(args.eval_report)
    forget = read_corpora(data_args.forget_corpora, data_args, "forget_corpora")
    retain = read_corpora(data_args.retain_corpora, data_args, "retain_corpora")
    tokenizer = export_tokenizer(model_args, args.tokenizer)
    train = {"forget": forget.pack(tokenizer, "train"), "retain": retain.pack(tokenizer, "train")}
    for name, chunks in train.items():
        check_distillation_text(name, chunks, data_args.seq_len)
    cap = args.eval_max_tokens
    heldout = {"forget": forget.pack(tokenizer, "heldout", cap), "retain": retain.pack(tokenizer, "heldout", cap)}
    teacher = attach_bottleneck(
        load_model(model_args.model_name_or_path, model_args.gguf_file, model_args.dtype, run.progress), bottleneck_dir
    )
    for topic in args.undo:
        teacher.undo_edit(topic)
    for edit in edits:
        teacher.apply_edit(edit)
    print("teacher's active edits:")
    print(describe_edits(teacher.edits))
    student = load_model(model_args.model_name_or_path, model_args.gguf_file, model_args.dtype, run.progress)
    scratch, train_args = scratch_training_arguments(run.output_dir, args.seed, run.bf16, run.progress, args.log_every)
    with scratch:
        outcome = bake(
            teacher, student, train["forget"], train["retain"], config, train_args, heldout, args.eval_batch_size
        )
    spec = bake_spec(
        outcome,
        teacher,
        model_args.model_name_or_path,
        str(args.bottleneck_dir),
        config,
        forget.sources,
        retain.sources,
        data_args.seq_len,
    )
    spec["heldout_tokens"] = {name: chunks.numel() for name, chunks in heldout.items()}
    spec["data"] = asdict(data_args)
    save_baked(
        student,
        tokenizer,
        run.output_dir,
        spec,
        outcome.metrics,
        overwrite=run.overwrite,
        eval_report=args.eval_report,
        verify=args.verify,
        license=args.license,
    )
    print(loss_table(outcome.rows))
    print(TABLE_NOTE.replace("unedited bottleneck", "base model"))
    result = outcome.result
    print(
        f"distilled {result.steps} steps on {sum(result.tokens.values()):,} tokens in {result.train_seconds:.1f} s "
        f"({result.trainable_parameters:,} trained parameters)"
    )
    print(f"wrote {run.output_dir} (model_type {student.config.model_type}; load it with plain from_pretrained)")
    return 0


def main(argv: Sequence[str]) -> int:
    """Run `codeunlearn export` with command-line arguments `argv` (without the subcommand name)."""
    if requested_mode(argv) == "bake":
        model_args, data_args, run, args, config = parse_arguments(
            (ExportModelArguments, DataArguments, BakeRunArguments, BakeArguments, BakeConfig),
            argv,
            "codeunlearn export",
            DESCRIPTION,
        )
        check_output_dir_free(run.output_dir, run.overwrite)  # before the slow model loads and the distillation
        return export_bake(model_args, data_args, run, args, config)
    model_args, data_args, run, args = parse_arguments(
        (ExportModelArguments, DataArguments, ExportRunArguments, ExportArguments),
        argv,
        "codeunlearn export",
        DESCRIPTION,
    )
    check_output_dir_free(run.output_dir, run.overwrite)  # before the slow model load
    if args.mode == "linear":
        return export_linear(model_args, data_args, run, args)
    return export_bottleneck(model_args, run, args)
