"""`codeunlearn baseline`: unlearn a topic with a gradient baseline (GA, GradDiff, NPO, RMU) on the same data.

    codeunlearn baseline --method npo --forget_corpora ../shared/data/topics/biology/corpus_openstax_microbiology.jsonl \\
        --retain_corpora ../shared/data/retain/openstax_us_history.jsonl ../shared/data/retain/wikitext2_raw_test.txt \\
        --output_dir outputs/baselines/npo
    codeunlearn baseline configs/baselines/rmu.yaml
    codeunlearn baseline --method rmu --help          # the method's hyperparameters and their defaults

The method trains on the TRAIN split of the corpora (same --heldout_fraction / --split_seed as every other command);
the held-out forget/retain loss of the base model and of the unlearned model is measured on the HELD-OUT split
(`--no_evaluate` skips it). Writes OUTPUT/model (save_pretrained, loads with AutoModelForCausalLM), OUTPUT/result.json
(method, config, resolved values, wall time of the training loop), OUTPUT/metrics.jsonl, OUTPUT/report.{json,md} and
OUTPUT/run_args.json (`codeunlearn baseline --config OUTPUT/run_args.json --resume` continues a checkpointed run).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from codeunlearn import distributed
from codeunlearn.baselines import METHODS, method_class
from codeunlearn.baselines.trainer import BaselineTrainingArguments, check_output_dir, train_baseline
from codeunlearn.cli.arguments import (
    CONFIG_SUFFIXES,
    parse_arguments,
    read_config_file,
    to_flat_dict,
)
from codeunlearn.cli.common import check_skip_positions
from codeunlearn.data import Corpora, DataArguments, read_corpora
from codeunlearn.errors import CodeunlearnError, check_range
from codeunlearn.evaluate.evaluation import mean_loss
from codeunlearn.evaluate.loss_table import add_deltas, loss_table
from codeunlearn.io import atomic_write_text
from codeunlearn.modeling import ModelArguments

PROG = "codeunlearn baseline"
DESCRIPTION = (
    "Unlearn with a gradient baseline (--method ga|grad_diff|npo|rmu) on the train split; report held-out forget/"
    "retain loss and wall time. `--method M --help` lists M's hyperparameters."
)
REFERENCE_ROW = "base"


@dataclass
class BaselineRunArguments:
    """Which method, and how the before/after comparison is measured."""

    method: Literal[tuple(METHODS)] = field(metadata={"help": "Unlearning method."})
    evaluate: bool = field(
        default=True, metadata={"help": "Measure held-out forget/retain loss before and after (base vs unlearned)."}
    )
    eval_max_tokens: int | None = field(
        default=None, metadata={"help": "Cap on held-out tokens per corpus for the report (default: --max_tokens)."}
    )
    eval_batch_size: int = field(default=8, metadata={"help": "Chunks per forward pass when measuring."})
    skip_positions: int = field(default=0, metadata={"help": "Ignore the first N targets of every chunk."})

    def __post_init__(self) -> None:
        if self.eval_max_tokens is not None:
            check_range("eval_max_tokens", self.eval_max_tokens, self.eval_max_tokens >= 1, ">= 1, or leave it out")
        check_range("eval_batch_size", self.eval_batch_size, self.eval_batch_size >= 1, ">= 1")
        check_range("skip_positions", self.skip_positions, self.skip_positions >= 0, ">= 0")


def requested_method(argv: Sequence[str]) -> str | None:
    """The method named by `--method` or by the config file's `method:` key (needed to pick its dataclass)."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--method", action="append", default=[])
    pre.add_argument("--config", default=None)
    argv = list(argv)
    if len(argv) == 1 and argv[0].endswith(CONFIG_SUFFIXES) and not argv[0].startswith("-"):
        argv = ["--config", argv[0]]
    known, _ = pre.parse_known_args(argv)
    if len(set(known.method)) > 1:
        raise CodeunlearnError(f"conflicting --method values {known.method}", "name one method")
    if known.method:
        return known.method[0]
    if known.config is not None:
        path = Path(known.config)
        if not path.is_file() or path.suffix not in CONFIG_SUFFIXES:
            read_config_file(path, ())  # raises its one-line error
        import yaml

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML
        except yaml.YAMLError:
            read_config_file(path, ())  # raises its one-line parse error
            raise
        if isinstance(data, dict) and isinstance(data.get("method"), str):
            return data["method"]
    return None


def script_argv(method: str, argv: Sequence[str]) -> list[str]:
    """The `codeunlearn` argv of a per-method script (`surgery/baselines/ga.py ARGS`), config-file shortcut kept."""
    argv = list(argv)
    if len(argv) == 1 and argv[0].endswith(CONFIG_SUFFIXES) and not argv[0].startswith("-"):
        argv = ["--config", argv[0]]
    return ["baseline", "--method", method, *argv]


def parse(argv: Sequence[str]) -> tuple[Any, ...]:
    """(model, data, run, training, method config) arguments; `--help` without a method lists the shared ones."""
    name = requested_method(argv)
    if name is None:
        if any(a in ("-h", "--help") for a in argv):
            parse_arguments(
                (ModelArguments, DataArguments, BaselineRunArguments, BaselineTrainingArguments),
                argv,
                PROG,
                DESCRIPTION,
            )
        raise CodeunlearnError(
            "no --method given", f"pass --method {'|'.join(METHODS)} (or `method:` in the config file)"
        )
    config_class = method_class(name).config_class
    return parse_arguments(
        (ModelArguments, DataArguments, BaselineRunArguments, BaselineTrainingArguments, config_class),
        argv,
        PROG,
        DESCRIPTION,
    )


def heldout_losses(model, forget, retain, args: BaselineRunArguments, bf16: bool) -> dict[str, float]:
    """Mean held-out next-token loss (nat/token) on forget and retain text."""
    return {
        "forget_loss": mean_loss(model, forget, args.eval_batch_size, args.skip_positions, bf16=bf16),
        "retain_loss": mean_loss(model, retain, args.eval_batch_size, args.skip_positions, bf16=bf16),
    }


def write_report(
    output_dir: Path,
    rows: list[dict[str, Any]],
    summary: str,
    method: str,
    model_args: ModelArguments,
    data_args: DataArguments,
    run_args: BaselineRunArguments,
    config: Any,
    result: Any,
    heldout: dict[str, Any],
    corpora: dict[str, Corpora],
) -> None:
    """OUTPUT/report.json and report.md: the held-out loss table of the base model and the unlearned one."""
    report = {
        "method": method,
        "model": model_args.model_name_or_path,
        "config": config.to_dict(),
        "resolved": result.resolved,
        "train_seconds": result.train_seconds,
        "tokens": result.tokens,
        "heldout_tokens": {"forget": heldout["forget"].numel(), "retain": heldout["retain"].numel()},
        "forget_corpora": corpora["forget"].sources,
        "retain_corpora": corpora["retain"].sources,
        "data": asdict(data_args),
        "skip_positions": run_args.skip_positions,
        "rows": rows,
    }
    markdown = "\n\n".join(
        [
            f"# codeunlearn baseline: {method}",
            f"`{model_args.model_name_or_path}`; {summary}. Held-out tokens: forget {heldout['forget'].numel():,}, "
            f"retain {report['heldout_tokens']['retain']:,} (split_seed {data_args.split_seed}, heldout_fraction "
            f"{data_args.heldout_fraction}).",
            loss_table(rows),
            "Losses: mean next-token cross-entropy (nat/token) on held-out documents. Δ: change against the base "
            "model. Selectivity: Δ forget − Δ retain.",
        ]
    )
    atomic_write_text(output_dir / "report.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(output_dir / "report.md", markdown + "\n")


def main(argv: Sequence[str]) -> int:
    """Run `codeunlearn baseline` with command-line arguments `argv` (without the subcommand name)."""
    model_args, data_args, run_args, train_args, config = parse(argv)
    check_skip_positions(run_args.skip_positions, data_args.seq_len)
    method = method_class(run_args.method)(config)
    forget_corpora = read_corpora(data_args.forget_corpora, data_args, "forget_corpora")
    retain_corpora = (
        read_corpora(data_args.retain_corpora, data_args, "retain_corpora") if data_args.retain_corpora else None
    )
    if method.needs_retain and retain_corpora is None:
        raise CodeunlearnError(f"{method.name} trains on retain text and none was given", "pass --retain_corpora FILE")
    if run_args.evaluate and retain_corpora is None:
        raise CodeunlearnError("the report needs retain text", "pass --retain_corpora FILE, or --no_evaluate")
    check_output_dir(train_args)  # before the slow model load
    model, tokenizer = model_args.load(train_args.progress)
    forget_train = forget_corpora.pack(tokenizer, "train")
    retain_train = retain_corpora.pack(tokenizer, "train") if retain_corpora is not None else None
    output_dir = Path(train_args.output_dir)
    distributed.barrier()  # every process has checked the output directory before the first one writes to it
    if distributed.is_main_process():  # written first, so that an interrupted run can be resumed from it
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            output_dir / "run_args.json",
            json.dumps(to_flat_dict(model_args, data_args, run_args, train_args, config), indent=1) + "\n",
        )
    rows: list[dict[str, Any]] = []
    if run_args.evaluate:
        forget_heldout = forget_corpora.pack(tokenizer, "heldout", run_args.eval_max_tokens)
        retain_heldout = retain_corpora.pack(tokenizer, "heldout", run_args.eval_max_tokens)
        base = heldout_losses(model, forget_heldout, retain_heldout, run_args, train_args.bf16)
        rows.append({"row": REFERENCE_ROW, "codes_removed": None, **base})
    print(
        f"{method.name}: {config.max_steps} steps x {config.batch_size} chunks x {forget_train.shape[1]} tokens "
        f"(train split: forget {len(forget_train)} chunks"
        + ("" if retain_train is None else f", retain {len(retain_train)} chunks")
        + ")"
    )
    result = train_baseline(model, method, forget_train, retain_train, train_args, tokenizer)
    if not result.finished:
        print(
            f"stopped at step {result.steps} of {config.max_steps} after {result.train_seconds:.1f} s; continue with --resume"
        )
        return 0
    resolved = {k: v for k, v in result.resolved.items() if k != "trained_parameters"}
    summary = (
        f"trained {result.trainable_parameters:,} parameters for {result.steps} steps in {result.train_seconds:.1f} s"
    )
    if resolved:
        summary += f" ({', '.join(f'{k}={v}' for k, v in resolved.items())})"
    print(summary)
    if run_args.evaluate:
        after = heldout_losses(model, forget_heldout, retain_heldout, run_args, train_args.bf16)
        rows.append({"row": f"{method.name} ({result.steps} steps)", "codes_removed": None, **after})
        add_deltas(rows, REFERENCE_ROW)
        heldout = {"forget": forget_heldout, "retain": retain_heldout}
        corpora = {"forget": forget_corpora, "retain": retain_corpora}
        if distributed.is_main_process():
            write_report(
                output_dir,
                rows,
                summary,
                method.name,
                model_args,
                data_args,
                run_args,
                config,
                result,
                heldout,
                corpora,
            )
        print(loss_table(rows))
    print(f"wrote {result.model_dir or output_dir}")
    return 0
