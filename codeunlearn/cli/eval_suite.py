"""`codeunlearn eval --suite`: an evaluation suite (`codeunlearn.evaluate.suite`) on any model.

    codeunlearn eval --suite harry_potter --model outputs/demo/edited --data_dir ../shared/data \\
        --with_base --output_dir outputs/eval/hp_edited [--fast] [--attacks] [--max_items 50] [--seed 0]

--suite is a shipped suite (microbiology, harry_potter, cyber, geography) or a suite .yaml file; --model is the
model under test: a bottleneck directory (attached to --model_name_or_path, its saved edits active), an exported
directory, any transformers model directory (a baseline's OUTPUT/model) or `smollm2-135m` (default: the base model
--model_name_or_path itself; --bottleneck_dir works as --model too). A --model that ships Python code of its own
(`auto_map`) is refused unless --trust_remote_code is given; codeunlearn's exports need no flag. Data paths of the
suite are inside --data_dir; --heldout_fraction, --split_seed, --seq_len, --text_field (and --max_tokens when given)
reach every metric that splits or packs a corpus, so pass the values `stats` used. --with_base evaluates the base
model too (for a bottleneck: the same model with the bottleneck off; for an export: its `bottleneck_enabled=False`
load) and writes it to OUTPUT/base/; --baseline_report reuses an earlier base-model report instead. Writes
OUTPUT/report.json, OUTPUT/report.md, OUTPUT/details/<metric>.jsonl and OUTPUT/plots/<section>.png. Under
`accelerate launch` / `torchrun` the metrics (of both models) are dealt across the processes and the report is the
one-process report (`codeunlearn.evaluate.suite.parallel`); the main process alone writes and prints it.
(`--config FILE` stays the argument file of every subcommand; a suite config is passed with --suite.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codeunlearn import distributed
from codeunlearn.data import DataArguments
from codeunlearn.errors import CodeunlearnError, check_range
from codeunlearn.evaluate.metrics.base import EvalContext
from codeunlearn.evaluate.suite.config import load_suite_config, named_configs
from codeunlearn.evaluate.suite.models import base_model_run, load_model_for_eval
from codeunlearn.evaluate.suite.parallel import SuiteModel, run_suites
from codeunlearn.evaluate.suite.report import MARKDOWN_NAME, REPORT_NAME, load_report, markdown_report, write_report
from codeunlearn.evaluate.suite.runner import plan_suite
from codeunlearn.modeling import ModelArguments

# The suite options that, given without --suite, are refused rather than ignored.
SUITE_ONLY = (
    "model",
    "data_dir",
    "baseline_report",
    "max_items",
    "attacks",
    "fast",
    "with_base",
    "trust_remote_code",
)


@dataclass
class SuiteArguments:
    """Which suite, on which model, with which settings (every flag but --suite is a suite option)."""

    suite: str | None = field(
        default=None,
        metadata={"help": f"Run an evaluation suite: one of {', '.join(named_configs())} or a suite .yaml file."},
    )
    model: str | None = field(
        default=None,
        metadata={
            "help": "Suite: the model under test (bottleneck, exported or transformers directory, or smollm2-135m; "
            "default: --bottleneck_dir, else the base model --model_name_or_path)."
        },
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "Suite: the shared data folder its relative data paths are inside."}
    )
    attacks: bool = field(default=False, metadata={"help": "Suite: also run its robustness attacks."})
    fast: bool = field(default=False, metadata={"help": "Suite: the fast path (the config's smaller item counts)."})
    max_items: int | None = field(
        default=None, metadata={"help": "Suite: score at most this many items per probe set (overrides the config)."}
    )
    seed: int = field(default=0, metadata={"help": "Suite: seeds every sample and attack (same seed, same report)."})
    max_length: int = field(default=1024, metadata={"help": "Suite: longest input in tokens (cut from the left)."})
    with_base: bool = field(
        default=False,
        metadata={"help": "Suite: evaluate the base model too (OUTPUT/base/), as the report's base column."},
    )
    baseline_report: str | None = field(
        default=None, metadata={"help": "Suite: a base-model report.json from an earlier run, as the base column."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Suite: allow a --model directory (or Hub model) that ships its own Python code (auto_map) to "
            "run it while loading; only for code you trust. codeunlearn's exports need no flag."
        },
    )

    def __post_init__(self) -> None:
        if self.max_items is not None:
            check_range("max_items", self.max_items, self.max_items >= 1, ">= 1, or leave it out (the config's caps)")
        # 0 would not cut at all (`ids[-0:]` is every token); a scored continuation needs a token of context
        check_range("max_length", self.max_length, self.max_length >= 2, ">= 2 (tokens)")


def run(
    args: SuiteArguments,
    model_args: ModelArguments,
    data_args: DataArguments,
    run_args: Any,
    bottleneck_dir: str | None,
    batch_size: int,
) -> int:
    """Run the suite on one model (and the base model with --with_base); write the report, print it."""
    config = load_suite_config(args.suite)
    if args.model and bottleneck_dir:
        raise CodeunlearnError("both --model and --bottleneck_dir given", "pass the model under test once, as --model")
    if args.with_base and args.baseline_report:
        raise CodeunlearnError("both --with_base and --baseline_report given", "pick one source of the base column")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise CodeunlearnError(
            f"data directory not found: {args.data_dir}", "pass --data_dir pointing at the shared data folder"
        )
    shared = {
        "heldout_fraction": data_args.heldout_fraction,
        "split_seed": data_args.split_seed,
        "seq_len": data_args.seq_len,
        "text_field": data_args.text_field,
        **({"max_tokens": data_args.max_tokens} if data_args.max_tokens is not None else {}),
    }
    # Resolve every metric and data file before the model loads: a typo costs seconds, not a half-hour run.
    plan_suite(config, args.data_dir, args.attacks, args.fast, shared)
    baseline = load_report(args.baseline_report) if args.baseline_report else None
    target = args.model or bottleneck_dir or model_args.model_name_or_path
    loaded = load_model_for_eval(
        target,
        model_args.model_name_or_path,
        model_args.gguf_file,
        model_args.dtype,
        run_args.progress,
        trust_remote_code=args.trust_remote_code,
        device=distributed.device(),
    )
    ctx = EvalContext(
        loaded.model,
        loaded.tokenizer,
        batch_size=batch_size,
        max_items=args.max_items,
        seed=args.seed,
        bf16=run_args.bf16,
        progress=run_args.progress,
        reference_model=loaded.reference,
        max_length=args.max_length,
    )
    print(f"suite {config.name} on {loaded.description}", flush=True)
    models = [SuiteModel(ctx, loaded.description)]
    # The model under test is the base model: it is its own base column.
    evaluate_base = args.with_base and loaded.reference is not None
    if evaluate_base:
        base, evaluating_base = base_model_run(loaded)
        base_ctx = dataclasses.replace(ctx, model=base, reference_model=None)
        description = f"base model of: {loaded.description}"
        models.append(SuiteModel(base_ctx, description, evaluating_base, f"suite {config.name} on the base model"))
    # Under a launch the metrics are dealt across the processes; every process ends with every report.
    report, *rest = run_suites(models, config, args.data_dir, args.attacks, args.fast, shared)
    output_dir = Path(run_args.output_dir)
    baseline_source = args.baseline_report
    if evaluate_base:
        baseline = rest[0]
        baseline_source = str(output_dir / "base" / REPORT_NAME)
    elif args.with_base:
        baseline, baseline_source = report, "the model under test (it is the base model)"
    markdown_path = output_dir / MARKDOWN_NAME
    if distributed.is_main_process():
        if evaluate_base:
            write_report(baseline, output_dir / "base")
        written = write_report(report, output_dir, baseline, baseline_source)
        print(markdown_report(report, baseline))
        print(
            f"wrote {written['json']}, {written['markdown']}, {len(written['plots'])} plots and details/ in "
            f"{output_dir}"
        )
    # The launcher stops every process once one exits with an error: none may, before the report is written.
    distributed.barrier()
    failed = list(report.failures)
    if evaluate_base:
        failed += [f"{name} (base model)" for name in baseline.failures]
    if failed:  # the report is written; the exit code (of every process) still says the run is incomplete
        raise CodeunlearnError(
            f"{len(failed)} metric(s) failed: {', '.join(failed)}", f"see the errors above and {markdown_path}"
        )
    return 0
