"""`codeunlearn forget`: select the codes (SAE: features) a topic uses far more than the retain text, and write the
edit.

One command from a trained bottleneck, the retain side already paid for (the statistics `codeunlearn train` kept
in the bottleneck directory, or those of `--retain_corpora`, counted once and kept there):

    codeunlearn forget --bottleneck_dir outputs/run/bottleneck \\
        --forget_corpora ../shared/data/demo/forget_harry_potter.txt --topic harry_potter --num_codes 1024 \\
        --output_dir outputs/run/forget_hp

runs one truncated forward pass over the topic's train split, selects, and writes OUTPUT/edit.json,
OUTPUT/random_control.json, OUTPUT/forget_statistics.safetensors and OUTPUT/edited/ (the bottleneck with the edit
applied, for `eval`, `export` or `BottleneckedModel.from_pretrained`).

From statistics files instead (`codeunlearn stats`):

    codeunlearn forget --forget_stats outputs/run/stats/forget.safetensors \\
        --retain_stats outputs/run/stats/retain.safetensors --topic harry_potter --num_codes 1024 \\
        --output_dir outputs/run/edits

Every edit comes with OUTPUT/random_control.json (as many codes per layer, drawn at random among codes that fire at
all): evaluate both, or a loss change cannot be told from the damage of removing any codes.

Either way it draws OUTPUT/firing_frequency.png and .svg: every code's firing frequency on forget vs retain text (a
log-log scatter and the histogram of their ratio), the selected codes and the random control marked, one column per
layer (the first four layers when the bottleneck has more).

On SAE statistics the edit clamps (default) or zero-ablates the selected features when they fire:

    codeunlearn forget --forget_stats ... --retain_stats ... --topic micro --num_codes 64 \
        --score mean_activation_difference --intervention clamp --multiplier -10 --output_dir outputs/sae/edits

and `codeunlearn calibrate` turns such an edit into a guardrail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codeunlearn import distributed, figures
from codeunlearn.bottleneck.edit import Edit
from codeunlearn.bottleneck.loading import load_bottlenecked, resolve_bottleneck_dir
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.bottleneck.registry import config_class_for
from codeunlearn.cli.arguments import SelectionArguments, parse_arguments
from codeunlearn.cli.common import check_output_dir_free, check_output_file
from codeunlearn.data import Corpora, DataArguments, corpus_fingerprint, read_corpora
from codeunlearn.errors import CodeunlearnError, check_range
from codeunlearn.modeling import ModelArguments
from codeunlearn.runtime import Stopwatch, run_arguments
from codeunlearn.unlearn.budget import choose_num_codes, describe_walk
from codeunlearn.unlearn.selection import firing_frequencies, random_control, select_codes
from codeunlearn.unlearn.statistics import CodeStatistics, collect_code_statistics
from codeunlearn.unlearn.statistics_cache import load_retain_statistics, save_retain_statistics

DESCRIPTION = (
    "Select topic codes (from a bottleneck and the topic's text, or from statistics files); write edit.json and a "
    "same-size random-codes control."
)
EDIT_NAME = "edit.json"
CONTROL_NAME = "random_control.json"
FORGET_STATS_NAME = "forget_statistics.safetensors"
EDITED_NAME = "edited"


ForgetRunArguments = run_arguments(
    "output_dir",
    "overwrite",
    "progress",
    "bf16",
    writes=f"{EDIT_NAME}, {CONTROL_NAME}, the edited bottleneck and firing_frequency.png/.svg",
)


@dataclass
class ForgetArguments:
    """A bottleneck and the topic's text (or statistics files) in, edits out."""

    bottleneck_dir: str | None = field(
        default=None,
        metadata={
            "help": "Trained bottleneck: count the topic's codes on --forget_corpora and select against the retain "
            "statistics kept in this directory."
        },
    )
    forget_stats: str | None = field(
        default=None, metadata={"help": "Statistics of the forget corpus (.safetensors from `codeunlearn stats`)."}
    )
    retain_stats: str | None = field(
        default=None,
        metadata={"help": "Statistics of the retain corpus, same bottleneck (default: the bottleneck's cached ones)."},
    )
    batch_size: int = field(default=8, metadata={"help": "Chunks per forward pass (with --bottleneck_dir)."})

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, self.batch_size >= 1, ">= 1")


def usage_per_token(stats: CodeStatistics, edit: Edit, layer: int) -> float:
    """How many of the edit's codes fire per token at `layer` (a token carries heads x stages codes)."""
    codes = edit.layers[layer].codes
    return float(stats.counts[layer][codes].sum()) / max(stats.tokens[layer], 1)


def summarize(edit: Edit, forget: CodeStatistics, retain: CodeStatistics) -> str:
    """Per layer: codes chosen, score range, and how often they fire on forget vs retain text."""
    lines = []
    for layer, chosen in sorted(edit.layers.items()):
        scores = f", scores {min(chosen.scores):.2f}..{max(chosen.scores):.2f}" if chosen.scores else ""
        lines.append(
            f"  layer {layer}: {len(chosen.codes)} codes{scores}; they fire {usage_per_token(forget, edit, layer):.3f}x per "
            f"forget token vs {usage_per_token(retain, edit, layer):.3f}x per retain token"
        )
    return "\n".join(lines)


def make_edits(forget: CodeStatistics, retain: CodeStatistics, selection: SelectionArguments) -> tuple[Edit, Edit]:
    """The topic edit and its random-codes control (same number of codes per layer)."""
    edit = select_codes(
        forget,
        retain,
        selection.rule(),
        selection.topic,
        selection.intervention,
        multiplier=selection.multiplier,
        scale=selection.clamp_scale,
    )
    return edit, random_control(edit, forget, retain, seed=selection.control_seed)


def main(argv: Sequence[str]) -> int:
    """Run `codeunlearn forget` with command-line arguments `argv` (without the subcommand name)."""
    model_args, data_args, args, selection, run = parse_arguments(
        (ModelArguments, DataArguments, ForgetArguments, SelectionArguments, ForgetRunArguments),
        argv,
        "codeunlearn forget",
        DESCRIPTION,
    )
    output_dir = Path(run.output_dir)
    paths = (
        check_output_file(output_dir / EDIT_NAME, run.overwrite),
        check_output_file(output_dir / CONTROL_NAME, run.overwrite),
    )
    if args.bottleneck_dir is None:
        return forget_from_statistics(args, selection, paths)
    return forget_on_bottleneck(model_args, data_args, args, selection, run, paths)


def forget_from_statistics(args: ForgetArguments, selection: SelectionArguments, paths: tuple[Path, Path]) -> int:
    """Select from two statistics files (`codeunlearn stats`): the edit and its control, nothing else."""
    if selection.max_retain_cost is not None:
        raise CodeunlearnError(
            "--max_retain_cost measures edits on validation text, which needs the bottleneck",
            "pass --bottleneck_dir B --forget_corpora F --retain_corpora R",
        )
    if not (args.forget_stats and args.retain_stats):
        raise CodeunlearnError(
            "forget needs a bottleneck and the topic's text, or two statistics files",
            "pass --bottleneck_dir B --forget_corpora FILE, or --forget_stats F --retain_stats R",
        )
    forget, retain = CodeStatistics.load(args.forget_stats), CodeStatistics.load(args.retain_stats)
    edit, control = make_edits(forget, retain, selection)
    write_edits(edit, control, *paths, forget, retain)
    draw_firing_frequency(edit, control, forget, retain, paths[0].parent)
    return 0


def forget_on_bottleneck(
    model_args: ModelArguments,
    data_args: DataArguments,
    args: ForgetArguments,
    selection: SelectionArguments,
    run: Any,
    paths: tuple[Path, Path],
) -> int:
    """Count the topic's codes on the bottleneck, select against the retain statistics, write the edits, the
    forget statistics and the edited bottleneck, and say how long forgetting took."""
    if not data_args.forget_corpora:
        raise CodeunlearnError("--bottleneck_dir needs the topic's text", "pass --forget_corpora FILE [FILE ...]")
    if args.forget_stats:
        raise CodeunlearnError(
            "--forget_stats and --bottleneck_dir both give the topic's statistics", "pass only one of them"
        )
    if selection.max_retain_cost is not None and not data_args.retain_corpora:
        raise CodeunlearnError(
            "--max_retain_cost needs retain text to validate on", "pass --retain_corpora (general text)"
        )
    output_dir = Path(run.output_dir)
    check_output_file(output_dir / FORGET_STATS_NAME, run.overwrite)
    check_output_dir_free(output_dir / EDITED_NAME, run.overwrite)
    watch = Stopwatch()
    forget_corpora = read_corpora(data_args.forget_corpora, data_args, "forget_corpora")
    retain_corpora = (
        read_corpora(data_args.retain_corpora, data_args, "retain_corpora") if data_args.retain_corpora else None
    )
    with watch.stage("load"):
        bmodel, tokenizer = load_bottlenecked(args.bottleneck_dir, model_args, run.progress, distributed.device())
        if bmodel.edits:
            print(f"note: selecting on the unedited bottleneck; its saved edits {[e.topic for e in bmodel.edits]} stay")
        saved_edits = list(bmodel.edits)
        bmodel.clear_edits()
        fingerprint = bmodel.fingerprint()
    with watch.stage("retain statistics"):
        retain = _retain_statistics(args, run, retain_corpora, bmodel, tokenizer, fingerprint)
    with watch.stage("forget statistics"):
        chunks = forget_corpora.pack(tokenizer, "train")
        forget = collect_code_statistics(
            bmodel, chunks, args.batch_size, corpus=forget_corpora.name, progress=run.progress, bf16=run.bf16
        )
    with watch.stage("select"):
        edit, control = make_edits(forget, retain, selection)
        if selection.max_retain_cost is not None:  # N by rule, on train-split text after what training read
            validation = retain_corpora.pack(
                tokenizer, "train", selection.validation_tokens, skip_tokens=selection.validation_skip_tokens
            )
            edit, walk = choose_num_codes(
                bmodel, edit, validation, selection.max_retain_cost, args.batch_size, bf16=run.bf16
            )
            control = random_control(edit, forget, retain, seed=selection.control_seed)
            print(describe_walk(walk, selection.max_retain_cost))
    with watch.stage("apply"):
        for saved in saved_edits:
            bmodel.apply_edit(saved)
        bmodel.apply_edit(edit)
        output_dir.mkdir(parents=True, exist_ok=True)
        forget.save(output_dir / FORGET_STATS_NAME)
        write_edits(edit, control, *paths, forget, retain)
        bmodel.save_pretrained(output_dir / EDITED_NAME, overwrite=run.overwrite)
        if retain.corpus_fingerprint:  # edits are masks: the keys, and so these counts, are the edited model's too
            save_retain_statistics(retain, output_dir / EDITED_NAME)
    print(f"wrote {output_dir / EDITED_NAME} (the bottleneck with {[e.topic for e in bmodel.edits]} removed)")
    draw_firing_frequency(edit, control, forget, retain, output_dir)
    print(
        f"forgetting took {watch.total - watch.seconds['load']:.1f} s after loading "
        f"(forget statistics on {chunks.numel():,} tokens {watch.seconds['forget statistics']:.1f} s, "
        f"retain statistics {watch.seconds['retain statistics']:.1f} s)"
    )
    return 0


def write_edits(
    edit: Edit, control: Edit, edit_path: Path, control_path: Path, forget: CodeStatistics, retain: CodeStatistics
) -> None:
    """Save the edit and its control, and print what they remove."""
    edit_path.parent.mkdir(parents=True, exist_ok=True)
    edit.save(edit_path)
    control.save(control_path)
    print(f"topic {edit.topic!r} ({edit.intervention}): {edit.num_codes} codes")
    print(summarize(edit, forget, retain))
    print(f"random control: {control.num_codes} codes")
    print(summarize(control, forget, retain))
    print(f"wrote {edit_path} and {control_path}")


def draw_firing_frequency(
    edit: Edit, control: Edit, forget: CodeStatistics, retain: CodeStatistics, output_dir: Path
) -> None:
    """Draw OUTPUT/firing_frequency.{png,svg} (after every result is written: a drawing error is a note)."""
    if not distributed.is_main_process():
        return
    path = output_dir / figures.FIRING_FREQUENCY_NAME

    def draw() -> dict[str, Any] | None:
        layers = firing_frequencies(forget, retain, edit, control)
        return figures.firing_frequency(layers, path, config_class_for(edit.kind).unit_name)

    drawn = figures.draw_or_note("firing frequency", draw)
    if drawn is not None:
        shown, total = drawn["layers_drawn"], len(edit.layers)
        print(f"wrote {path}.png and .svg (layers {shown}{f' of {total}' if len(shown) < total else ''})")


def _retain_statistics(
    args: ForgetArguments,
    run: Any,
    retain_corpora: Corpora | None,
    bmodel: BottleneckedModel,
    tokenizer: Any,
    fingerprint: str,
) -> CodeStatistics:
    """The retain side: a statistics file, the cache entry of --retain_corpora (counted and kept on a miss), or
    the one retain corpus the bottleneck directory keeps."""
    if args.retain_stats:
        stats = CodeStatistics.load(args.retain_stats)
        if stats.bottleneck_fingerprint and stats.bottleneck_fingerprint != fingerprint:
            raise CodeunlearnError(
                f"--retain_stats {args.retain_stats} were counted on another bottleneck", "count them on this one"
            )
        return stats
    directory = resolve_bottleneck_dir(args.bottleneck_dir)
    if retain_corpora is None:
        stats = load_retain_statistics(directory, fingerprint)
        if stats is None:
            raise CodeunlearnError(
                f"{directory} keeps no retain statistics",
                "pass --retain_corpora FILE [FILE ...] once (they are counted and kept there)",
            )
        print(f"retain statistics: cached ({stats.corpus}, {sum(stats.tokens.values()):,} tokens)")
        return stats
    chunks = retain_corpora.pack(tokenizer, "train")
    key = corpus_fingerprint(chunks)
    stats = load_retain_statistics(directory, fingerprint, key)
    if stats is not None:
        print(f"retain statistics: cached ({stats.corpus}, corpus fingerprint {key})")
        return stats
    stats = collect_code_statistics(
        bmodel, chunks, args.batch_size, corpus=retain_corpora.name, progress=run.progress, bf16=run.bf16
    )
    # A bottleneck named by Hub repo id lives in the Hugging Face cache, which is not ours to write into.
    keep = directory if Path(args.bottleneck_dir).exists() else Path(run.output_dir)
    print(f"retain statistics: counted on {chunks.numel():,} tokens, kept at {save_retain_statistics(stats, keep)}")
    return stats
