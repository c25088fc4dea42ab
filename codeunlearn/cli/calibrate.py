"""`codeunlearn calibrate`: turn an SAE zero/clamp edit into a guardrail calibrated on retain text.

    codeunlearn calibrate --bottleneck_dir outputs/sae/bottleneck --edit outputs/sae/edits/edit.json \\
        --retain_corpora ../shared/data/retain/openstax_us_history.jsonl \\
        --forget_corpora ../shared/data/topics/biology/corpus_openstax_microbiology.jsonl \\
        --window 32 --target_fpr 0.02 --output_file outputs/sae/edits/guardrail.json

The guardrail intervenes (with the edit's zero/clamp) only at tokens where the mean number of the edit's features
firing over the last --window tokens is above a per-layer threshold. The threshold is set on the TRAIN split of the
retain corpora so that at most --target_fpr of their windows are gated; the false-positive rate on their
HELD-OUT split (same --split_seed / --heldout_fraction as `stats`) and the share of held-out forget windows gated
are printed and recorded in the edit. Apply or evaluate the result like any edit (`codeunlearn apply` / `eval`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from codeunlearn import distributed
from codeunlearn.bottleneck.edit import GUARDRAIL_ACTIONS, Edit
from codeunlearn.bottleneck.loading import load_bottlenecked
from codeunlearn.bottleneck.registry import config_class_for
from codeunlearn.cli.arguments import parse_arguments
from codeunlearn.cli.common import check_multiplier, check_output_file
from codeunlearn.data import DataArguments, read_corpora
from codeunlearn.errors import CodeunlearnError, check_range
from codeunlearn.modeling import ModelArguments
from codeunlearn.runtime import bf16_is_fast, run_arguments
from codeunlearn.unlearn.guardrail import DEFAULT_TARGET_FPR, DEFAULT_WINDOW, calibrate_guardrail, gate_rate

DESCRIPTION = "Calibrate a local-window guardrail for an SAE edit on retain text (target false-positive rate)."


@dataclass
class CalibrateArguments:
    """Edit in, guardrail edit out."""

    bottleneck_dir: str = field(metadata={"help": "SAE bottleneck directory the edit was selected on."})
    edit: str = field(metadata={"help": "SAE edit file (zero or clamp, from `codeunlearn forget`)."})
    output_file: str = field(metadata={"help": "Guardrail edit file to write (.json)."})
    window: int = field(default=DEFAULT_WINDOW, metadata={"help": "Tokens in the gate's causal window."})
    target_fpr: float = field(
        default=DEFAULT_TARGET_FPR, metadata={"help": "Fraction of retain windows the gate may fire on."}
    )
    action: Literal[GUARDRAIL_ACTIONS] | None = field(
        default=None, metadata={"help": "What the open gate does: `zero` or `clamp` (default: the edit's own)."}
    )
    multiplier: float | None = field(
        default=None, metadata={"help": "Clamp multiplier (negative; default: the edit's own)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Chunks per forward pass."})

    def __post_init__(self) -> None:
        # The library checks these too, but only once the corpora are read and the model is loaded.
        check_range("window", self.window, self.window >= 1, ">= 1 (tokens, e.g. 32)")
        check_range("target_fpr", self.target_fpr, 0 < self.target_fpr < 1, "in (0, 1) (e.g. 0.02)")
        check_multiplier(self.multiplier, "--action zero")
        check_range("batch_size", self.batch_size, self.batch_size >= 1, ">= 1")


def main(argv: Sequence[str]) -> int:
    """Run `codeunlearn calibrate` with command-line arguments `argv` (without the subcommand name)."""
    model_args, data_args, args, run = parse_arguments(
        (ModelArguments, DataArguments, CalibrateArguments, run_arguments("overwrite", "progress", "bf16")),
        argv,
        "codeunlearn calibrate",
        DESCRIPTION,
        defaults={"bf16": bf16_is_fast()},
    )
    output = check_output_file(args.output_file, run.overwrite)
    if output.suffix != ".json":
        raise CodeunlearnError(f"--output_file {output} does not end in .json", "name it like guardrail.json")
    edit = Edit.load(args.edit)
    if "guardrail" not in config_class_for(edit.kind).interventions:
        raise CodeunlearnError(f"edit {args.edit} is for a {edit.kind!r} bottleneck", "calibrate an SAE edit")
    retain = read_corpora(data_args.retain_corpora, data_args, "retain_corpora")
    forget = read_corpora(data_args.forget_corpora, data_args, "forget_corpora") if data_args.forget_corpora else None
    bmodel, tokenizer = load_bottlenecked(args.bottleneck_dir, model_args, run.progress, distributed.device())
    if bmodel.edits:
        print(
            f"note: setting aside the saved edits {[e.topic for e in bmodel.edits]} (the gate reads the unedited SAE)"
        )
        bmodel.clear_edits()
    guard = calibrate_guardrail(
        bmodel,
        edit,
        retain.pack(tokenizer, "train"),
        window=args.window,
        target_fpr=args.target_fpr,
        action=args.action,
        multiplier=args.multiplier,
        batch_size=args.batch_size,
        bf16=run.bf16,
        corpus=f"{retain.name} (train split)",
    )
    record = guard.guardrail.calibration
    if all(split.heldout for split in retain.splits):
        record["heldout_fpr"] = gate_rate(bmodel, guard, retain.pack(tokenizer, "heldout"), args.batch_size, run.bf16)
    if forget is not None and all(split.heldout for split in forget.splits):
        held = forget.pack(tokenizer, "heldout")
        record["forget_heldout_gated"] = gate_rate(bmodel, guard, held, args.batch_size, run.bf16)
    output.parent.mkdir(parents=True, exist_ok=True)
    guard.save(output)
    thresholds = ", ".join(f"layer {k}: {v:.4f}" for k, v in sorted(guard.guardrail.thresholds.items()))
    print(
        f"guardrail for {guard.topic!r}: window {args.window}, action {guard.guardrail.action}, thresholds {thresholds}"
    )
    print(f"  retain train windows gated: {record['fpr']} (target {args.target_fpr})")
    if "heldout_fpr" in record:
        print(f"  retain held-out windows gated (false positives): {record['heldout_fpr']['any']:.2%}")
    if "forget_heldout_gated" in record:
        print(f"  forget held-out windows gated: {record['forget_heldout_gated']['any']:.2%}")
    print(f"wrote {output}")
    return 0
