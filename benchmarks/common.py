"""What the benchmark scripts share: the corpora they split, the options they all take, loading the model, held-out
losses, timing, and the provenance (command line, date, machine) every result file records.

The scripts run from the repository root, as files (`python benchmarks/forget_curves.py ...`) or as modules
(`python -m benchmarks.forget_curves ...`). Each imports its helpers with

    if __package__:
        from . import common
    else:  # run as a file: Python puts the script's own folder first on sys.path
        import common

so neither way edits `sys.path`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from codeunlearn.evaluate.evaluation import mean_loss
from codeunlearn.runtime import Stopwatch, bf16_is_fast
from codeunlearn.tables import markdown_table

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"  # the checkout's sibling shared/data
TOPICS = {  # forget corpora, relative to the data folder
    "micro": "topics/biology/corpus_openstax_microbiology.jsonl",
    "hp": "demo/forget_harry_potter.txt",
    "cyber": "topics/cyber/corpus_owasp_wstg.jsonl",
}
RETAIN = {"history": "retain/openstax_us_history.jsonl", "wiki": "retain/wikitext2_raw_test.txt"}
CORPORA = ("forget", *RETAIN)


# ---------------------------------------------------------------------------------------------------- arguments
def add_split_arguments(parser: argparse.ArgumentParser, data_help: str = "the shared data folder") -> None:
    """--data_dir, --topic and how every corpus is cut: --seq_len and the document split (--heldout_fraction,
    --split_seed). Statistics and training read the train documents, every loss the held-out ones."""
    parser.add_argument("--data_dir", help=f"{data_help} (required unless --tiny)")
    parser.add_argument("--topic", choices=sorted(TOPICS), default="micro", help="the forget corpus")
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--heldout_fraction", type=float, default=0.2)
    parser.add_argument("--split_seed", type=int, default=0)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --precision, --device and the hidden --tiny (a random tiny Llama and synthetic corpora, for smoke
    tests: see `benchmarks/tiny.py`)."""
    parser.add_argument("--model", default="smollm2-135m", help="base model (name, directory or .gguf)")
    parser.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="autocast of the frozen model; auto = bf16 where the device computes it natively (CUDA, "
        "AVX512-BF16/AMX CPUs), else fp32",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)


def resolve_precision(args: argparse.Namespace) -> None:
    """Set `args.bf16` from `args.precision`: on a CPU without bf16 kernels, bf16 autocast is several times slower
    than fp32, so `auto` takes bf16 only where it is fast."""
    args.bf16 = args.precision == "bf16" or (args.precision == "auto" and bf16_is_fast())


# ---------------------------------------------------------------------------------------------------- loading
def load_benchmark_model(args: argparse.Namespace, prefix: str) -> tuple[Any, Any, Path | None]:
    """The model `args.model` names (`codeunlearn.modeling`), or with `args.tiny` a random tiny Llama and synthetic
    corpora written to a temporary folder (then `args.data_dir` defaults to it). Returns (model, tokenizer, tiny_dir)."""
    tiny_dir = None
    if args.tiny:
        if __package__:
            from .tiny import build_tiny
        else:
            from tiny import build_tiny

        tiny_dir = Path(tempfile.mkdtemp(prefix=prefix))
        model, tokenizer = build_tiny(tiny_dir / "data", args.seq_len, TOPICS, RETAIN)
        args.data_dir = args.data_dir or str(tiny_dir / "data")
    else:
        from codeunlearn.modeling import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(args.model)
    return model.to(args.device), tokenizer, tiny_dir


def corpus_sources(data_dir: str | Path, topic: str) -> dict[str, Path]:
    """forget (the topic's corpus), history and wiki: their files in the data folder."""
    data_dir = Path(data_dir)
    return {"forget": data_dir / TOPICS[topic], **{name: data_dir / rel for name, rel in RETAIN.items()}}


def load_splits(
    sources: dict[str, Path], tokenizer, args: argparse.Namespace, max_tokens: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Every corpus split by document (`args.heldout_fraction`, `args.split_seed`) and packed into `args.seq_len`
    chunks, at most `max_tokens` per split: (train, heldout), keyed like `sources`."""
    from codeunlearn.data import load_split

    train, heldout = {}, {}
    for name, source in sources.items():
        train[name], heldout[name] = load_split(
            str(source), tokenizer, args.seq_len, args.heldout_fraction, args.split_seed, max_tokens=max_tokens
        )
    return train, heldout


def chunks_of(tokens: int, seq_len: int) -> int:
    """Chunks that hold `tokens` (at least one)."""
    return max(1, tokens // seq_len)


# ---------------------------------------------------------------------------------------------------- measuring
def heldout_losses(
    model,
    heldout: dict[str, torch.Tensor],
    batch_size: int,
    bf16: bool,
    skip_positions: int = 1,
    label: str | None = None,
) -> dict[str, float]:
    """Held-out mean next-token loss on forget, history and wiki (the first `skip_positions` targets of every chunk
    skipped: they have no context), plus `retain`, the token-weighted mean of history and wiki. A progress bar per
    corpus when `label` is given."""
    losses = {
        name: mean_loss(
            model,
            heldout[name],
            batch_size=batch_size,
            skip_positions=skip_positions,
            desc=label and f"{label}: {name}",
            bf16=bf16,
        )
        for name in CORPORA
    }
    weights = {name: len(heldout[name]) for name in RETAIN}  # same seq_len: chunks count tokens
    losses["retain"] = sum(losses[n] * w for n, w in weights.items()) / sum(weights.values())
    return losses


class Timer(Stopwatch):
    """The library's stage stopwatch, plus the result files' "Seconds per stage" section."""

    def markdown(self) -> list[str]:
        """The "Seconds per stage" section of a result file."""
        table = markdown_table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in self.seconds.items()])
        return ["## Seconds per stage", "", *table.split("\n")]

    def summary(self) -> str:
        return "seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items())


# ---------------------------------------------------------------------------------------------------- provenance
def command_line() -> str:
    """The command as typed (for the result files: how to run it again)."""
    return "python " + shlex.join(sys.argv)


def now() -> datetime.datetime:
    return datetime.datetime.now().astimezone()


def machine_info() -> dict:
    """Where a number was measured: platform, CPUs, torch and its threads, bf16 speed, GPU."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_is_fast": bf16_is_fast(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def machine_summary() -> str:
    """One line for a result file: platform, CPUs, torch version and threads."""
    return f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"


# ---------------------------------------------------------------------------------------------------- writing
def fmt(value: float | None, signed: bool = False, pct: bool = False) -> str:
    """A table cell: 4 decimals (signed for a change), a percentage, or – for no value."""
    if value is None:
        return "–"
    if pct:
        return f"{100 * value:.1f}%"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def markdown_safe(text: str) -> str:
    """Text (e.g. a token) that cannot break a markdown table or code span."""
    return text.replace("\n", "⏎").replace("|", "¦").replace("`", "'")


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def write_markdown(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")
