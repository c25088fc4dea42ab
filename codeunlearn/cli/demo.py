"""`codeunlearn demo`: the whole pipeline on the shipped SmolLM2-135M and the demo corpora, timed stage by stage.

    codeunlearn demo --data_dir ../shared/data --output_dir outputs/demo

1. load     SmolLM2-135M-Instruct from its GGUF; the forget (Harry Potter plot summaries) and retain (U.S. history
            textbook, WikiText) corpora, each split by document into train and held-out parts
2. train    the faithful codebook bottleneck at one middle residual layer (k-means keys on cached states), on the
            train split of the retain corpora only: it never sees the topic it will forget
3. retain   code firing counts on the retain train split, kept in bottleneck/statistics/ (paid once per bottleneck)
4. forget   code firing counts on the forget train split, then the codes the forget text uses far more than the
            retain text -> edit.json (+ a random-codes control): the part a new topic costs
5. apply    the edit (milliseconds: only masks change)
6. eval     held-out forget/retain loss: base / bottleneck / edited / random control
7. save     the edited bottleneck directory (edited/)
8. reload   a fresh base model + `BottleneckedModel.from_pretrained(edited/)`, evaluated again

Bottleneck, training and selection settings come from configs/demo.yaml (or --config FILE); any flag overrides
them. Relative corpus paths are taken inside --data_dir. Writes OUTPUT/bottleneck/, OUTPUT/stats/, OUTPUT/edit.json,
OUTPUT/random_control.json, OUTPUT/edited/, OUTPUT/report.md and OUTPUT/report.json.
"""

from __future__ import annotations

import gc
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from codeunlearn.bottleneck.edit import Edit
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.cli.arguments import (
    BottleneckArguments,
    SelectionArguments,
    parse_arguments,
    to_flat_dict,
)
from codeunlearn.cli.common import check_skip_positions
from codeunlearn.cli.forget import CONTROL_NAME, EDIT_NAME, make_edits, summarize
from codeunlearn.data import Corpora, DataArguments, read_corpora
from codeunlearn.errors import CodeunlearnError, check_range
from codeunlearn.evaluate.loss_table import (
    TABLE_NOTE,
    RowSpec,
    evaluate_rows,
    fidelity_rows,
    fidelity_table,
    loss_table,
)
from codeunlearn.io import atomic_write_text
from codeunlearn.kinds.codebook.config import CodebookConfig
from codeunlearn.modeling import ModelArguments
from codeunlearn.runtime import Stopwatch
from codeunlearn.tables import markdown_table
from codeunlearn.train import TrainingArguments, train_bottleneck
from codeunlearn.unlearn.budget import choose_num_codes, describe_walk
from codeunlearn.unlearn.selection import random_control
from codeunlearn.unlearn.statistics import CodeStatistics, collect_code_statistics
from codeunlearn.unlearn.statistics_cache import save_retain_statistics

DESCRIPTION = (
    "Run the whole pipeline (load, train, stats, select, apply, eval, save, reload) on SmolLM2 and the demo corpora."
)
MARKER = ".codeunlearn-demo"  # marks a directory this demo wrote, so a re-run may replace it
STAGES = ("load", "train", "retain", "forget", "apply", "eval", "save", "reload")
DEFAULTS: dict[str, Any] = {
    "output_dir": "outputs/demo",
    "topic": "harry_potter",
    "forget_corpora": ["demo/forget_harry_potter.txt"],
    "retain_corpora": ["retain/openstax_us_history.jsonl", "retain/wikitext2_raw_test.txt"],
}


@dataclass
class DemoArguments:
    """Where the data is, and demo-only switches."""

    data_dir: str = field(
        metadata={"help": "Folder holding the shared data (demo/forget_harry_potter.txt, demo/retain_wikitext.txt)."}
    )
    eval_max_tokens: int | None = field(
        default=None, metadata={"help": "Cap on held-out tokens per corpus for the loss table (default: --max_tokens)."}
    )
    skip_positions: int = field(
        default=0, metadata={"help": "Ignore the first N targets of every chunk in the losses."}
    )
    retain_statistics_tokens: int = field(
        default=32768, metadata={"help": "Retain train-split tokens per corpus counted for the retain statistics."}
    )

    def __post_init__(self) -> None:
        if self.eval_max_tokens is not None:
            check_range("eval_max_tokens", self.eval_max_tokens, self.eval_max_tokens >= 1, ">= 1, or leave it out")
        check_range("skip_positions", self.skip_positions, self.skip_positions >= 0, ">= 0")
        check_range(  # unlike `train`'s, 0 is no option: the demo's edit is selected against these statistics
            "retain_statistics_tokens", self.retain_statistics_tokens, self.retain_statistics_tokens >= 1, ">= 1"
        )


def default_config() -> Path | None:
    """configs/demo.yaml of the source checkout this package runs from (None for an installed wheel)."""
    path = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    return path if path.is_file() else None


def prepare_output_dir(path: Path, overwrite: bool) -> None:
    """Start from an empty directory; replace an earlier demo's output, refuse anything else unless --overwrite."""
    if path.exists() and not path.is_dir():
        raise CodeunlearnError(f"{path} exists and is not a directory", "choose another --output_dir")
    if path.is_dir() and any(path.iterdir()):
        if not (path / MARKER).is_file() and not overwrite:
            raise CodeunlearnError(
                f"output directory {path} is not empty and was not written by the demo",
                "pass --overwrite or choose a new --output_dir",
            )
        print(f"replacing the previous contents of {path}")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("written by `codeunlearn demo`; a re-run replaces this directory\n")


def in_data_dir(sources: list[str], data_dir: Path) -> list[str]:
    """Relative corpus paths are taken inside --data_dir (the package never guesses where data lives)."""
    return [str((data_dir / source).resolve()) for source in sources]  # absolute: demo_args.json is reusable


def training_summary(metrics: list[dict]) -> dict[str, Any]:
    """The last logged record of each training phase (nested per-layer dicts dropped)."""
    last: dict[str, Any] = {}
    for record in metrics:
        last[record.get("phase", "?")] = {k: v for k, v in record.items() if not isinstance(v, dict)}
    return last


@dataclass
class DemoText:
    """The token chunks every stage reads, cut once after the model loads."""

    train: Tensor  # retain train split: what the bottleneck trains on
    retain_stats: Tensor  # retain train split, capped: the retain statistics
    validation: Tensor | None  # retain train split after what training read: the N rule's text
    forget_train: Tensor
    forget_heldout: Tensor
    retain_heldout: Tensor

    def sizes(self) -> dict[str, int]:
        """Tokens per part, as printed and reported."""
        return {
            "train": self.train.numel(),
            "forget_train": self.forget_train.numel(),
            "retain_train": self.retain_stats.numel(),
            "forget_heldout": self.forget_heldout.numel(),
            "retain_heldout": self.retain_heldout.numel(),
        }


def parse(argv: Sequence[str]) -> tuple[Any, ...]:
    """The demo's arguments (configs/demo.yaml under the flags), checked before anything slow runs; the corpus
    paths made absolute inside --data_dir."""
    dataclass_types = (
        ModelArguments,
        DataArguments,
        BottleneckArguments,
        TrainingArguments,
        SelectionArguments,
        DemoArguments,
    )  # --overwrite comes with TrainingArguments (one flag, declared once in RunArguments)
    parsed = parse_arguments(
        dataclass_types, argv, "codeunlearn demo", DESCRIPTION, defaults=DEFAULTS, default_config=default_config()
    )
    _, data_args, bottleneck_args, _, selection, demo = parsed
    data_dir = Path(demo.data_dir)
    if not data_dir.is_dir():
        raise CodeunlearnError(
            f"data directory not found: {data_dir}",
            "pass --data_dir pointing at the shared data folder (e.g. ../shared/data)",
        )
    data_args.forget_corpora = in_data_dir(data_args.forget_corpora, data_dir)
    data_args.retain_corpora = in_data_dir(data_args.retain_corpora, data_dir)
    if selection.max_retain_cost is not None and (
        data_args.max_tokens is None or selection.validation_skip_tokens < data_args.max_tokens
    ):
        raise CodeunlearnError(
            "the N rule's validation text would overlap the text the bottleneck trains on",
            "set --max_tokens and a --validation_skip_tokens at least as large",
        )
    check_skip_positions(demo.skip_positions, data_args.seq_len)
    if data_args.corpora:
        raise CodeunlearnError(
            "the demo trains its bottleneck on --retain_corpora", "name the general text with --retain_corpora"
        )
    if not isinstance(bottleneck_args.to_config(), CodebookConfig):
        raise CodeunlearnError(
            "the demo runs the codebook pipeline",
            "run the SAE one with train --kind sae, stats, forget, calibrate, eval",
        )
    return parsed


def cut_text(
    tokenizer: Any,
    forget: Corpora,
    retain: Corpora,
    data_args: DataArguments,
    selection: SelectionArguments,
    demo: DemoArguments,
) -> DemoText:
    """Pack the corpora into the parts the stages read."""
    cap = min(demo.retain_statistics_tokens, data_args.max_tokens or demo.retain_statistics_tokens)
    validation = None
    if selection.max_retain_cost is not None:
        # Train-split text after the part the bottleneck trained on: read by the N rule only.
        validation = retain.pack(
            tokenizer, "train", selection.validation_tokens, skip_tokens=selection.validation_skip_tokens
        )
    return DemoText(
        # General text only: the bottleneck never sees the topic it will be asked to forget.
        train=retain.pack(tokenizer, "train"),
        retain_stats=retain.pack(tokenizer, "train", cap),
        validation=validation,
        forget_train=forget.pack(tokenizer, "train"),
        forget_heldout=forget.pack(tokenizer, "heldout", demo.eval_max_tokens),
        retain_heldout=retain.pack(tokenizer, "heldout", demo.eval_max_tokens),
    )


def train(
    model: Any, config: CodebookConfig, text: DemoText, training_args: TrainingArguments, retain: Corpora
) -> tuple[BottleneckedModel, dict[str, Any]]:
    """Attach and train the codebook on general text; returns the bottleneck and the last record of each phase."""
    bmodel = BottleneckedModel.attach(model, config)
    print(
        f"bottleneck at layers {bmodel.layers}: {config.num_heads} heads x {config.codebook_size} codes x "
        f"{config.num_stages} stage(s) = {bmodel.config.bits_per_token:.0f} bits/token; k-means keys on "
        f"{training_args.kmeans_init_tokens:,} tokens of {', '.join(retain.sources)}"
    )
    metrics = train_bottleneck(bmodel, text.train, training_args)
    # The demo always starts from scratch, so its resumable checkpoints are only disk weight.
    shutil.rmtree(Path(training_args.output_dir) / "checkpoints", ignore_errors=True)
    trained = training_summary(metrics)
    for phase, record in trained.items():
        print(f"training, last {phase} record: " + ", ".join(f"{k}={v}" for k, v in record.items() if k != "phase"))
    return bmodel, trained


def select(
    bmodel: BottleneckedModel,
    forget_stats: CodeStatistics,
    retain_stats: CodeStatistics,
    text: DemoText,
    selection: SelectionArguments,
    training_args: TrainingArguments,
) -> tuple[Edit, Edit, str]:
    """The topic edit and its random control; N by the config's rule on validation text when it sets one."""
    edit, control = make_edits(forget_stats, retain_stats, selection)
    if selection.max_retain_cost is None:
        return edit, control, ""
    edit, walk = choose_num_codes(
        bmodel, edit, text.validation, selection.max_retain_cost, training_args.batch_size, bf16=training_args.bf16
    )
    control = random_control(edit, forget_stats, retain_stats, seed=selection.control_seed)
    budget_walk = describe_walk(walk, selection.max_retain_cost)
    print(budget_walk)
    return edit, control, budget_walk


def reload_rows(
    model_args: ModelArguments,
    training_args: TrainingArguments,
    demo: DemoArguments,
    edit: Edit,
    rows: list[dict[str, Any]],
    text: DemoText,
) -> tuple[BottleneckedModel, list[dict[str, Any]], float]:
    """A fresh base model with the saved edited bottleneck, its edited row measured again against the in-memory
    unedited bottleneck; returns (reloaded, its rows, largest difference to the in-memory edited row)."""
    fresh, _ = model_args.load(training_args.progress)
    reloaded = BottleneckedModel.from_pretrained(fresh, Path(training_args.output_dir) / "edited")
    # Only the edited row is measured again (each row is a full pass over the held-out text).
    specs = [RowSpec(f"edited ({edit.topic} codes), reloaded", list(reloaded.edits))]
    again = evaluate_rows(
        reloaded,
        text.forget_heldout,
        text.retain_heldout,
        specs,
        training_args.batch_size,
        demo.skip_positions,
        training_args.bf16,
        training_args.progress,
    )
    reference, edited_row = rows[1], rows[2]  # the unedited bottleneck measured before saving, the edited row
    for row in again:
        row["delta_forget"] = row["forget_loss"] - reference["forget_loss"]
        row["delta_retain"] = row["retain_loss"] - reference["retain_loss"]
        row["selectivity"] = row["delta_forget"] - row["delta_retain"]
    mismatch = max(abs(again[0][k] - edited_row[k]) for k in ("forget_loss", "retain_loss"))
    return reloaded, again, mismatch


def main(argv: Sequence[str]) -> int:
    """Run `codeunlearn demo` with command-line arguments `argv` (without the subcommand name).

    The pipeline reads top to bottom, one timed stage after another (the module docstring lists them); what a stage
    does at length lives in the functions above."""
    parsed = parse(argv)
    model_args, data_args, bottleneck_args, training_args, selection, demo = parsed
    output_dir, watch = Path(training_args.output_dir), Stopwatch()
    batch, bf16, progress = training_args.batch_size, training_args.bf16, training_args.progress
    with watch.stage("load"):
        forget_corpora = read_corpora(data_args.forget_corpora, data_args, "forget_corpora")
        retain_corpora = read_corpora(data_args.retain_corpora, data_args, "retain_corpora")
        prepare_output_dir(output_dir, training_args.overwrite)
        atomic_write_text(output_dir / "demo_args.json", json.dumps(to_flat_dict(*parsed), indent=1) + "\n")
        model, tokenizer = model_args.load(progress)
        text = cut_text(tokenizer, forget_corpora, retain_corpora, data_args, selection, demo)
    print("tokens: " + ", ".join(f"{k} {v:,}" for k, v in text.sizes().items()))
    with watch.stage("train"):
        bmodel, trained = train(model, bottleneck_args.to_config(), text, training_args, retain_corpora)
    with watch.stage("retain"):  # once per bottleneck: every later topic reuses these counts
        retain_stats = collect_code_statistics(
            bmodel, text.retain_stats, batch, corpus=retain_corpora.name, progress=progress, bf16=bf16
        )
        save_retain_statistics(retain_stats, output_dir / "bottleneck")
    with watch.stage("forget"):  # what forgetting a new topic costs: one pass over its text, then selection
        forget_stats = collect_code_statistics(
            bmodel, text.forget_train, batch, corpus=forget_corpora.name, progress=progress, bf16=bf16
        )
        forget_stats.save(output_dir / "stats" / "forget.safetensors")
        edit, control, budget_walk = select(bmodel, forget_stats, retain_stats, text, selection, training_args)
        edit.save(output_dir / EDIT_NAME)
        control.save(output_dir / CONTROL_NAME)
    print(f"topic {edit.topic!r}: {edit.num_codes} codes ({edit.intervention})")
    print(summarize(edit, forget_stats, retain_stats))
    with watch.stage("apply"):
        bmodel.apply_edit(edit)
    with watch.stage("eval"):
        specs = [
            RowSpec("base", None),
            RowSpec("bottleneck", []),
            RowSpec(f"edited ({edit.topic} codes)", [edit]),
            RowSpec("random-codes control", [control]),
        ]
        heldout = (text.forget_heldout, text.retain_heldout)
        rows = evaluate_rows(bmodel, *heldout, specs, batch, demo.skip_positions, bf16, progress)
        fidelity = fidelity_rows(bmodel, {"forget": heldout[0], "retain": heldout[1]}, batch, bf16)
    print("\nheld-out losses (nat/token):")
    print(fidelity_line(rows))
    print(loss_table(rows))
    print()
    with watch.stage("save"):
        bmodel.save_pretrained(output_dir / "edited")  # weights + edits.json: the edited model on disk
    with watch.stage("reload"):
        del bmodel, model
        gc.collect()
        reloaded, again, mismatch = reload_rows(model_args, training_args, demo, edit, rows, text)
    print(
        "\nreloaded from disk (fresh base + BottleneckedModel.from_pretrained(edited/)); Δ against the bottleneck row above:"
    )
    print(loss_table(again))
    print(f"largest difference to the in-memory numbers: {mismatch:.2e} nat/token")
    report = {
        "model": model_args.model_name_or_path,
        "topic": edit.topic,
        "bottleneck": {k: v for k, v in reloaded.config.to_dict().items() if k != "extra"},
        "training": trained,
        "tokens": text.sizes(),
        "rows": rows,
        "reloaded_rows": again,
        "reload_max_difference": mismatch,
        "fidelity": fidelity,
        "num_codes_rule": budget_walk,
        "seconds": watch.seconds,
        "arguments": to_flat_dict(*parsed),
    }
    write_report(output_dir, report, edit.num_codes, selection, training_args, watch)
    return 0


def write_report(
    output_dir: Path,
    report: dict[str, Any],
    num_codes: int,
    selection: SelectionArguments,
    training_args: TrainingArguments,
    watch: Stopwatch,
) -> None:
    """Print the stage timings; write OUTPUT/report.json and report.md."""
    timing = markdown_table(
        ["stage", "seconds"],
        [*([s, f"{watch.seconds.get(s, 0.0):.1f}"] for s in STAGES), ["total", f"{watch.total:.1f}"]],
        align="lr",
    )
    print("\nstage timings:")
    print(timing)
    atomic_write_text(output_dir / "report.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(
        output_dir / "report.md", render_report(report, num_codes, selection, training_args, timing) + "\n"
    )
    print(f"\nwrote {output_dir}/: bottleneck/, stats/, {EDIT_NAME}, {CONTROL_NAME}, edited/, report.md, report.json")


def fidelity_line(rows: list[dict[str, Any]]) -> str:
    """What the unedited bottleneck costs on held-out retain text, against the base model (goal: within 5%)."""
    base, bottleneck = rows[0]["retain_loss"], rows[1]["retain_loss"]
    return (
        f"The unedited bottleneck costs {bottleneck - base:+.3f} nat/token on held-out retain text "
        f"({(bottleneck - base) / base:+.1%} of the base model's {base:.3f})."
    )


def render_report(
    report: dict[str, Any], num_codes: int, selection: SelectionArguments, training: TrainingArguments, timing: str
) -> str:
    """report.md: setup, held-out loss table, reload check, fidelity and timings of this run."""
    bn, tokens = report["bottleneck"], report["tokens"]
    return "\n\n".join(
        [
            "# codeunlearn demo",
            f"Model `{report['model']}`; topic `{report['topic']}`. Numbers below were printed by this run of `codeunlearn demo`.",
            f"- Bottleneck: layers {bn['layers']} ({bn['site']}), {bn['num_heads']} heads × {bn['codebook_size']} codes × "
            f"{bn['num_stages']} stage(s).\n"
            f"- Training: k-means keys on {min(training.kmeans_init_tokens, tokens['train']):,} of "
            f"{tokens['train']:,} retain train-split tokens (general text only: the topic is never seen), "
            f"{training.key_steps - 1} further EMA key steps, {training.value_steps} value steps.\n"
            f"- Statistics on train splits: forget {tokens['forget_train']:,} tokens, retain {tokens['retain_train']:,} "
            "tokens (the retain counts are kept with the bottleneck and reused by every later topic).\n"
            f"- Selection: top codes per layer by log-enrichment (min_forget_count {selection.min_forget_count}); "
            f"{num_codes} codes removed by `{selection.intervention or CodebookConfig.default_intervention}`"
            + (
                f", N chosen by the rule fixed in the config ({report['num_codes_rule']})"
                if report["num_codes_rule"]
                else f" (--num_codes {selection.num_codes})"
            )
            + ".\n"
            f"- Evaluation on held-out documents: forget {tokens['forget_heldout']:,} tokens, retain {tokens['retain_heldout']:,} tokens.",
            "## Held-out losses",
            fidelity_line(report["rows"]),
            loss_table(report["rows"]),
            TABLE_NOTE,
            "## Reloaded from disk",
            "A fresh base model plus `BottleneckedModel.from_pretrained(edited/)` (Δ against the in-memory unedited bottleneck):",
            loss_table(report["reloaded_rows"]),
            f"Largest difference to the in-memory numbers: {report['reload_max_difference']:.2e} nat/token.",
            "## Bottleneck fidelity (held-out)",
            fidelity_table(report["fidelity"]),
            "## Stage timings (seconds)",
            timing,
        ]
    )
