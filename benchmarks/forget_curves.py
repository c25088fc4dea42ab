"""Forgetting curves: held-out forget loss against retain loss as more topic codes are removed.

Statistics are computed on the training documents of the forget corpus and of the two retain corpora (U.S. history
and WikiText together); codes are selected once with `SelectionRule(num_codes=max(N), min_forget_count=5)` (both
flags, plus `--max_retain_frequency`) and every curve point is the top-N prefix of that ranking (`truncate`). For
each N the held-out losses are measured with the edit applied as `substitute`, as `exclude`, and for a random-codes
control of the same size (`substitute`). All
deltas are relative to the unedited bottleneck; the base model (bottleneck disabled) is a reference row.

Next to each edit's share of the code slots it takes on the statistics text, the same share on the held-out text
(one more truncated pass): codes picked because they never fired on the retain statistics can still fire on held-out
retain text, and the gap between the two columns shows how far the selection over-fits its statistics sample.
`--statistics_cache DIR` keeps the statistics (file names carry the bottleneck fingerprint, the corpus, the split,
the chunk count and the document split's fraction and seed) so that another selection rule on the same bottleneck skips the statistics passes;
`--validation_tokens V` adds statistics of V more training tokens per corpus (the chunks after the statistics
ones), on which `selection_coverage.py` compares rules without touching the held-out text.

    python benchmarks/forget_curves.py --data_dir ../shared/data --bottleneck DIR --topic micro \\
        --num_codes 256 512 1024 2048 4096 --stats_tokens 100000 --eval_tokens 16384 --out outputs/curves/micro

Writes OUT/curves.json, OUT/curves.md (command line, timings, table, selection report) and OUT/curves.png.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from codeunlearn.bottleneck.codebook import QuantizeOutput, flat_code_ids
from codeunlearn.bottleneck.config import CodebookConfig
from codeunlearn.bottleneck.edit import Edit
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.data import load_split, shuffled_chunks
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.evaluation import mean_loss
from codeunlearn.runtime import autocast, batches, model_device
from codeunlearn.unlearn.selection import SelectionRule, random_control, select_codes, truncate
from codeunlearn.unlearn.statistics import CodeStatistics, collect_code_statistics

TOPICS = {
    "micro": "topics/biology/corpus_openstax_microbiology.jsonl",
    "hp": "demo/forget_harry_potter.txt",
    "cyber": "topics/cyber/corpus_owasp_wstg.jsonl",
}
RETAIN = {"history": "retain/openstax_us_history.jsonl", "wiki": "retain/wikitext2_raw_test.txt"}
METHODS = ("substitute", "exclude", "random")  # topic codes x 2 interventions, random codes (substitute)
METRICS = ("forget", "history", "wiki", "retain")


# ---------------------------------------------------------------------------------------------------- helpers
class Timer:
    """Seconds per stage, printed as each stage ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[name] = round(self.seconds.get(name, 0.0) + elapsed, 2)
            print(f"[time] {name}: {elapsed:.1f}s", flush=True)


def machine_info() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def native_bf16() -> bool:
    """Whether bf16 matmuls run natively; on CPUs without AVX512-BF16/AMX bf16 autocast is emulated and several times
    slower than fp32."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def command_line() -> str:
    return "python " + shlex.join(sys.argv)


def split_flat_id(code: int, num_heads: int, codebook_size: int) -> tuple[int, int, int]:
    """flat id -> (stage, head, code within the head's codebook)."""
    slot, index = divmod(code, codebook_size)
    stage, head = divmod(slot, num_heads)
    return stage, head, index


def coverage(stats: CodeStatistics, edit: Edit, slots_per_token: int) -> float:
    """Fraction of the corpus' code slots (tokens x stages x heads, summed over layers) taken by the edit's codes."""
    used = sum(int(stats.counts[layer][codes.codes].sum()) for layer, codes in edit.layers.items() if codes.codes)
    total = sum(stats.tokens[layer] * slots_per_token for layer in edit.layers)
    return used / max(total, 1)


def restrict_layers(edit: Edit, layers: list[int]) -> Edit:
    kept = {layer: codes for layer, codes in edit.layers.items() if layer in layers}
    return Edit(
        edit.topic, kept, edit.intervention, {**edit.rule, "layers": layers}, edit.bottleneck_fingerprint, edit.kind
    )


def markdown_safe(text: str) -> str:
    return text.replace("\n", "⏎").replace("|", "¦").replace("`", "'")


# ---------------------------------------------------------------------------------------------------- tiny mode
def build_tiny(workdir: Path, seq_len: int):
    """A random tiny Llama, a word-level tokenizer and a synthetic corpus laid out like shared/data (smoke tests)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(0)
    common = [f"the{i}" for i in range(40)]
    vocab_by_corpus = {name: [f"{name}{i}" for i in range(30)] for name in ("micro", "hp", "cyber", "history", "wiki")}
    words = ["<unk>", "<eos>", "=", *common, *(w for ws in vocab_by_corpus.values() for w in ws)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")

    def doc(name: str, length: int) -> str:
        return " ".join(
            rng.choice(vocab_by_corpus[name]) if rng.random() < 0.3 else rng.choice(common) for _ in range(length)
        )

    def write_jsonl(rel: str, name: str, docs: int) -> None:
        path = workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "".join(json.dumps({"id": i, "text": doc(name, rng.randint(200, 600))}) + "\n" for i in range(docs))
        )

    write_jsonl(TOPICS["micro"], "micro", 40)
    write_jsonl(TOPICS["cyber"], "cyber", 40)
    write_jsonl(RETAIN["history"], "history", 40)
    (workdir / TOPICS["hp"]).parent.mkdir(parents=True, exist_ok=True)
    (workdir / TOPICS["hp"]).write_text("".join(doc("hp", rng.randint(300, 700)) + "\n" for _ in range(7)))
    wiki_lines = []
    for article in range(30):
        wiki_lines.append(f" = wiki{article % 30} = ")
        wiki_lines.extend(doc("wiki", rng.randint(50, 150)) for _ in range(4))
    (workdir / RETAIN["wiki"]).write_text("\n".join(wiki_lines) + "\n")

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max(seq_len, 64),
        eos_token_id=1,
        pad_token_id=1,
        bos_token_id=1,
    )
    model = LlamaForCausalLM(config).eval()
    model.requires_grad_(False)
    return model, tokenizer


def load_benchmark_model(args: argparse.Namespace, prefix: str):
    """The real model named by `args.model`, or with `args.tiny` a random tiny Llama plus a synthetic corpus
    written to a temporary folder (then `args.data_dir` defaults to it). Returns (model, tokenizer, tiny_dir)."""
    tiny_dir = None
    if args.tiny:
        tiny_dir = Path(tempfile.mkdtemp(prefix=prefix))
        model, tokenizer = build_tiny(tiny_dir / "data", args.seq_len)
        args.data_dir = args.data_dir or str(tiny_dir / "data")
    else:
        from codeunlearn.modeling import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(args.model)
    return model.to(args.device), tokenizer, tiny_dir


def train_tiny_bottleneck(model, chunks: torch.Tensor, directory: Path) -> None:
    from codeunlearn.train import TrainingArguments, train_bottleneck

    bmodel = BottleneckedModel.attach(model, CodebookConfig(layers=[1, 2], num_heads=4, codebook_size=64, num_stages=1))
    args = TrainingArguments(
        output_dir=str(directory / "train"),
        key_steps=3,
        value_steps=2,
        batch_size=4,
        kmeans_init_tokens=2048,
        checkpoint_every=1000,
        log_every=1000,
        progress=False,
        bf16=native_bf16(),
    )
    train_bottleneck(bmodel, chunks, args)
    bmodel.save_pretrained(directory / "bottleneck", overwrite=True, with_edits=False)
    bmodel.detach()


# ---------------------------------------------------------------------------------------------------- evaluation
def evaluate(model, heldout: dict[str, torch.Tensor], args, label: str | None = None) -> dict[str, float]:
    """Held-out loss on forget, history and wiki, plus the token-weighted retain mean (a progress bar per corpus when
    `label` is given)."""
    losses = {
        name: mean_loss(
            model,
            heldout[name],
            batch_size=args.batch_size,
            skip_positions=1,
            desc=label and f"{label}: {name}",
            bf16=args.bf16,
        )
        for name in ("forget", "history", "wiki")
    }
    weights = {name: len(heldout[name]) for name in ("history", "wiki")}  # same seq_len: chunks count tokens
    losses["retain"] = sum(losses[n] * w for n, w in weights.items()) / sum(weights.values())
    return losses


def cached_statistics(
    bmodel: BottleneckedModel, chunks: torch.Tensor, corpus: str, split: str, args, cache: Path | None
) -> CodeStatistics:
    """Code statistics of `chunks`, loaded from `cache` when a file for this bottleneck, corpus, split, chunk count
    and document split is there, else computed (and saved there)."""
    documents = f"heldout{args.heldout_fraction:g}_seed{args.split_seed}"
    name = f"{corpus.replace('+', '_')}_{split}_{len(chunks)}x{chunks.shape[1]}_{documents}_{bmodel.fingerprint()}"
    path = cache / f"{name}.safetensors" if cache is not None else None
    if path is not None and path.is_file():
        stats = CodeStatistics.load(path)
        print(f"  statistics of {corpus} ({split}) loaded from {path}", flush=True)
        return stats
    stats = collect_code_statistics(bmodel, chunks, args.batch_size, corpus=corpus, bf16=args.bf16)
    if path is not None:
        cache.mkdir(parents=True, exist_ok=True)
        stats.save(path)
    return stats


def make_row(
    n: int | None,
    method: str,
    edit: Edit | None,
    losses: dict,
    reference: dict,
    forget: CodeStatistics,
    retain: CodeStatistics,
    slots: int,
    heldout: tuple[CodeStatistics, CodeStatistics] | None = None,
) -> dict:
    row = {
        "num_codes_per_layer": n,
        "method": method,
        "codes_removed": edit.num_codes if edit is not None else 0,
        "loss": {k: round(v, 5) for k, v in losses.items()},
        "delta": {k: round(losses[k] - reference[k], 5) for k in METRICS},
    }
    if edit is not None:
        row["forget_slot_coverage"] = round(coverage(forget, edit, slots), 5)
        row["retain_slot_coverage"] = round(coverage(retain, edit, slots), 5)
        if heldout is not None:
            row["heldout_forget_slot_coverage"] = round(coverage(heldout[0], edit, slots), 5)
            row["heldout_retain_slot_coverage"] = round(coverage(heldout[1], edit, slots), 5)
    return row


# ---------------------------------------------------------------------------------------------------- selection report
@torch.no_grad()
def find_examples(
    bmodel: BottleneckedModel, chunks: torch.Tensor, wanted: dict[int, list[int]], per_code: int, args
) -> dict:
    """Positions (chunk, position) where each wanted code fires, scanning `chunks` until every code has `per_code`."""
    config = bmodel.config
    found: dict[tuple[int, int], list[tuple[int, int]]] = {
        (layer, c): [] for layer, codes in wanted.items() for c in codes
    }
    offset = 0

    def observe(layer: int, states: torch.Tensor, result: QuantizeOutput) -> None:
        if layer not in wanted:
            return
        ids = flat_code_ids(result.codes, config.num_heads, config.codebook_size)  # (B, T, S, H)
        ids = ids.flatten(2).cpu()
        for code in wanted[layer]:
            hits = found[(layer, code)]
            if len(hits) >= per_code:
                continue
            for b, t in torch.nonzero((ids == code).any(-1)).tolist():
                if len(hits) >= per_code:
                    break
                hits.append((offset + b, t))

    device = model_device(bmodel)
    with autocast(device, args.bf16):
        for batch in batches(chunks, args.batch_size, desc="selection examples"):
            bmodel.run_to_deepest(batch.to(device), observe)
            offset += len(batch)
            if all(len(hits) >= per_code for hits in found.values()):
                break
    return found


def context_string(tokenizer, chunk: torch.Tensor, position: int, left: int = 8, right: int = 3) -> tuple[str, str]:
    ids = chunk.tolist()
    token = tokenizer.decode(ids[position : position + 1])
    before = tokenizer.decode(ids[max(0, position - left) : position])
    after = tokenizer.decode(ids[position + 1 : position + 1 + right])
    return token, f"{before}[{token}]{after}"


def selection_report(
    bmodel, tokenizer, edit: Edit, forget: CodeStatistics, retain: CodeStatistics, forget_chunks, args
) -> dict:
    config = bmodel.config
    report: dict = {"layers": {}}
    wanted = {layer: codes.codes[: args.example_codes] for layer, codes in edit.layers.items()}
    examples = (
        find_examples(bmodel, forget_chunks, wanted, args.examples_per_code, args) if args.example_codes > 0 else {}
    )
    for layer, codes in sorted(edit.layers.items()):
        top = []
        for rank, (code, score) in enumerate(
            zip(codes.codes[: args.top_codes], codes.scores[: args.top_codes], strict=True), start=1
        ):
            stage, head, index = split_flat_id(code, config.num_heads, config.codebook_size)
            entry = {
                "rank": rank,
                "code": code,
                "stage": stage,
                "head": head,
                "index": index,
                "score": score,
                "forget_count": int(forget.counts[layer][code]),
                "retain_count": int(retain.counts[layer][code]),
                "forget_freq": float(forget.frequency(layer)[code]),
                "retain_freq": float(retain.frequency(layer)[code]),
            }
            hits = examples.get((layer, code), [])
            if hits:
                entry["examples"] = [
                    dict(zip(("token", "context"), context_string(tokenizer, forget_chunks[c], t), strict=True))
                    for c, t in hits
                ]
            top.append(entry)
        report["layers"][layer] = {"eligible_codes": len(codes.codes), "top": top}
    return report


def selection_markdown(report: dict, args) -> list[str]:
    lines = ["## Selection report", ""]
    lines.append(
        f"Top {args.top_codes} codes per layer by score log((f_forget + a) / (f_retain + a)), a = 1 / retain tokens; counts are "
        "firings on the statistics (train) split. Examples: the token at which the code fires (in brackets) with its left "
        "context, from forget-train text."
    )
    for layer, data in report["layers"].items():
        lines += ["", f"### Layer {layer} ({data['eligible_codes']} eligible codes selected)", ""]
        lines.append(
            "| rank | code | stage/head/index | forget count | retain count | forget freq | retain freq | score |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for e in data["top"]:
            lines.append(
                f"| {e['rank']} | {e['code']} | {e['stage']}/{e['head']}/{e['index']} | {e['forget_count']} | {e['retain_count']} "
                f"| {e['forget_freq']:.2e} | {e['retain_freq']:.2e} | {e['score']:.3f} |"
            )
        with_examples = [e for e in data["top"] if e.get("examples")]
        if with_examples:
            lines += ["", "Example firings:", ""]
            for e in with_examples:
                tokens = ", ".join(f"`{markdown_safe(x['token'])}`" for x in e["examples"])
                lines.append(f"- code {e['code']} (rank {e['rank']}), tokens: {tokens}")
                for x in e["examples"][:3]:
                    lines.append(f"  - `{markdown_safe(x['context'])}`")
    return lines


# ---------------------------------------------------------------------------------------------------- output
def fmt(value: float, signed: bool = False) -> str:
    return f"{value:+.4f}" if signed else f"{value:.4f}"


COVERAGE_COLUMNS = {
    "forget_slot_coverage": "forget slots",
    "retain_slot_coverage": "retain slots",
    "heldout_forget_slot_coverage": "held-out forget slots",
    "heldout_retain_slot_coverage": "held-out retain slots",
}


def table_markdown(rows: list[dict]) -> list[str]:
    coverage_keys = [k for k in COVERAGE_COLUMNS if any(k in r for r in rows)]
    header = ["N/layer", "method", "codes removed", *(f"Δ{m}" for m in METRICS), *METRICS]
    header += [COVERAGE_COLUMNS[k] for k in coverage_keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        n = "–" if r["num_codes_per_layer"] is None else str(r["num_codes_per_layer"])
        if "skipped" in r:
            lines.append(
                f"| {n} | {r['method']} | {r['codes_removed']} | skipped: {markdown_safe(r['skipped'])} |"
                + " |" * (len(header) - 4)
            )
            continue
        cover = [f"{100 * r[k]:.2f}%" if k in r else "–" for k in coverage_keys]
        deltas = [fmt(r["delta"][k], signed=True) for k in METRICS]
        losses = [fmt(r["loss"][k]) for k in METRICS]
        lines.append(f"| {n} | {r['method']} | {r['codes_removed']} | " + " | ".join(deltas + losses + cover) + " |")
    return lines


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    colors = {"substitute": "tab:red", "exclude": "tab:orange", "random": "tab:gray"}
    labels = {
        "substitute": "topic codes, substitute",
        "exclude": "topic codes, exclude",
        "random": "random codes, substitute",
    }
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in METHODS:
        points = sorted(
            (
                (r["codes_removed"], r["delta"])
                for r in rows
                if r["method"] == method and r["codes_removed"] > 0 and "delta" in r
            ),
            key=lambda p: p[0],
        )
        if not points:
            continue
        xs = [p[0] for p in points]
        ax.plot(xs, [p[1]["forget"] for p in points], "-o", color=colors[method], label=f"{labels[method]}: forget")
        ax.plot(
            xs,
            [p[1]["retain"] for p in points],
            "--s",
            color=colors[method],
            label=f"{labels[method]}: retain",
            markerfacecolor="none",
        )
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("codes removed (all layers)")
    ax.set_ylabel("Δ held-out loss vs unedited bottleneck (nat/token)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", help="shared/data directory (required unless --tiny)")
    parser.add_argument("--bottleneck", help="trained bottleneck directory (BottleneckedModel.save_pretrained)")
    parser.add_argument("--topic", choices=sorted(TOPICS), default="micro")
    parser.add_argument(
        "--num_codes",
        type=int,
        nargs="+",
        default=[256, 512, 1024, 2048, 4096],
        help="codes removed per layer (curve points)",
    )
    parser.add_argument("--stats_tokens", type=int, default=100_000, help="statistics tokens per corpus (train split)")
    parser.add_argument("--eval_tokens", type=int, default=16_384, help="held-out tokens per corpus")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--model", default="smollm2-135m", help="base model (name, directory or .gguf)")
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=None,
        help="restrict the edit to these bottleneck layers (default: all of the bottleneck config)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="curve methods to evaluate (topic codes substituted / excluded, random codes substituted)",
    )
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--heldout_fraction", type=float, default=0.2)
    parser.add_argument("--split_seed", type=int, default=0)
    parser.add_argument("--min_forget_count", type=int, default=5)
    parser.add_argument(
        "--max_retain_frequency",
        type=float,
        default=1.0,
        help="never remove a code firing on more than this fraction of the retain statistics tokens",
    )
    parser.add_argument(
        "--statistics_cache",
        help="directory to save the statistics in and load them from on a later run with the same bottleneck and data",
    )
    parser.add_argument(
        "--validation_tokens",
        type=int,
        default=0,
        help="statistics of this many more training tokens per corpus, saved to --statistics_cache for selection_coverage.py",
    )
    parser.add_argument(
        "--heldout_coverage",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also report the code slots each edit takes on the held-out text (one more truncated pass)",
    )
    parser.add_argument("--random_seed", type=int, default=0, help="seed of the random-codes control")
    parser.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="autocast of the frozen model; auto = bf16 where the device computes it natively (CUDA, AVX512-BF16/AMX CPUs), else fp32",
    )
    parser.add_argument(
        "--selection_report",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add the top codes with example tokens to curves.md",
    )
    parser.add_argument("--top_codes", type=int, default=20, help="codes per layer listed in the selection report")
    parser.add_argument("--example_codes", type=int, default=5, help="codes per layer shown with example tokens")
    parser.add_argument("--examples_per_code", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # random tiny Llama + synthetic corpus
    args = parser.parse_args(argv)
    if not args.tiny and (args.data_dir is None or args.bottleneck is None):
        parser.error("--data_dir and --bottleneck are required")
    if min(args.num_codes) < 1:
        parser.error("--num_codes must be positive")
    if args.validation_tokens and not args.statistics_cache:
        parser.error("--validation_tokens needs --statistics_cache (the validation statistics are only saved)")
    args.num_codes = sorted(set(args.num_codes))
    args.bf16 = args.precision == "bf16" or (args.precision == "auto" and native_bf16())
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    timer = Timer()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now().astimezone()
    print(command_line(), flush=True)
    torch.manual_seed(0)

    with timer.stage("load model"):
        model, tokenizer, tiny_dir = load_benchmark_model(args, "forget_curves_tiny_")

    with timer.stage("load data"):
        data_dir = Path(args.data_dir)
        sources = {"forget": data_dir / TOPICS[args.topic], **{name: data_dir / rel for name, rel in RETAIN.items()}}
        cap = max(args.stats_tokens + args.validation_tokens, args.eval_tokens)
        stats_chunks = max(1, args.stats_tokens // args.seq_len)
        train, validation, heldout = {}, {}, {}
        for name, source in sources.items():
            tr, held = load_split(
                str(source), tokenizer, args.seq_len, args.heldout_fraction, args.split_seed, max_tokens=cap
            )
            train[name] = tr[:stats_chunks]
            validation[name] = tr[stats_chunks : stats_chunks + args.validation_tokens // args.seq_len]
            heldout[name] = held[: max(1, args.eval_tokens // args.seq_len)]
        token_counts = {name: {"train": train[name].numel(), "heldout": heldout[name].numel()} for name in sources}
        for name, counts in token_counts.items():
            print(
                f"  {name}: {sources[name].relative_to(data_dir)}: stats {counts['train']} tokens, eval {counts['heldout']} tokens",
                flush=True,
            )
        if any(len(heldout[name]) == 0 for name in sources):
            raise SystemExit("a corpus has no held-out chunk: raise --heldout_fraction or lower --seq_len")
        if args.validation_tokens and any(len(validation[name]) == 0 for name in sources):
            raise SystemExit("a corpus has no training chunk left for validation: lower --stats_tokens")

    if args.tiny and args.bottleneck is None:
        with timer.stage("train tiny bottleneck"):
            train_tiny_bottleneck(model, shuffled_chunks(list(train.values()), seed=0), tiny_dir)
            args.bottleneck = str(tiny_dir / "bottleneck")

    with timer.stage("load bottleneck"):
        bmodel = BottleneckedModel.from_pretrained(model, args.bottleneck)
        if bmodel.edits:
            print(
                f"  note: {args.bottleneck} holds saved edits {[e.topic for e in bmodel.edits]}; they are cleared (curves start from the unedited bottleneck)"
            )
            bmodel.clear_edits()
        config = bmodel.config
        layers = args.layers or bmodel.layers
        missing = sorted(set(layers) - set(bmodel.layers))
        if missing:
            raise SystemExit(f"--layers {missing} have no bottleneck; the bottleneck is at layers {bmodel.layers}")
        slots = config.num_stages * config.num_heads
        print(
            f"  bottleneck layers {bmodel.layers} (edit layers {layers}), site {config.site}, {config.num_stages} stage(s) x "
            f"{config.num_heads} heads x {config.codebook_size} codes = {config.codes_per_layer} codes/layer",
            flush=True,
        )
        if max(args.num_codes) > config.codes_per_layer:
            raise SystemExit(f"--num_codes {max(args.num_codes)} exceeds the {config.codes_per_layer} codes of a layer")

    cache = Path(args.statistics_cache) if args.statistics_cache else None
    with timer.stage("statistics: forget"):
        forget_stats = cached_statistics(bmodel, train["forget"], args.topic, "train", args, cache)
    with timer.stage("statistics: retain"):
        retain_chunks = torch.cat([train["history"], train["wiki"]])
        retain_stats = cached_statistics(bmodel, retain_chunks, "history+wiki", "train", args, cache)
    heldout_stats = None
    if args.heldout_coverage:
        with timer.stage("statistics: held-out"):
            heldout_stats = (
                cached_statistics(bmodel, heldout["forget"], args.topic, "heldout", args, cache),
                cached_statistics(
                    bmodel, torch.cat([heldout["history"], heldout["wiki"]]), "history+wiki", "heldout", args, cache
                ),
            )
    if args.validation_tokens:
        with timer.stage("statistics: validation"):
            cached_statistics(bmodel, validation["forget"], args.topic, "validation", args, cache)
            retain_validation = torch.cat([validation["history"], validation["wiki"]])
            cached_statistics(bmodel, retain_validation, "history+wiki", "validation", args, cache)

    with timer.stage("selection"):
        rule = SelectionRule(
            num_codes=max(args.num_codes),
            min_forget_count=args.min_forget_count,
            max_retain_frequency=args.max_retain_frequency,
        )
        full_edit = restrict_layers(
            select_codes(forget_stats, retain_stats, rule, args.topic, intervention="substitute"), layers
        )
        eligible = {layer: len(c.codes) for layer, c in full_edit.layers.items()}
        print(f"  selected codes per layer (max {rule.num_codes}): {eligible}", flush=True)
        points = []
        for n in args.num_codes:
            topic = truncate(full_edit, n)
            control = random_control(topic, forget_stats, retain_stats, seed=args.random_seed).with_intervention(
                "substitute"
            )
            edits = {"substitute": topic, "exclude": topic.with_intervention("exclude"), "random": control}
            points.append((n, {method: edits[method] for method in args.methods}))
            if any(len(c.codes) < n for c in full_edit.layers.values()):
                print(
                    f"  note: N={n}: fewer eligible codes than N at some layer; {topic.num_codes} codes removed in all",
                    flush=True,
                )

    with timer.stage("eval: references"):
        with bmodel.disabled():
            base_losses = evaluate(bmodel, heldout, args, "base")
        unedited = evaluate(bmodel, heldout, args, "unedited")
    rows = [
        make_row(None, "base model (bottleneck off)", None, base_losses, unedited, forget_stats, retain_stats, slots),
        make_row(None, "unedited bottleneck", None, unedited, unedited, forget_stats, retain_stats, slots),
    ]

    with timer.stage("eval: edits"):
        bar = tqdm([(n, m, e) for n, edits in points for m, e in edits.items()], desc="edits", unit="edit")
        for n, method, edit in bar:
            bar.set_postfix(N=n, method=method)
            try:
                with bmodel.edited(edit):
                    losses = evaluate(bmodel, heldout, args)
            except CodeunlearnError as err:  # e.g. `exclude` would take every code of a head
                rows.append(
                    {"num_codes_per_layer": n, "method": method, "codes_removed": edit.num_codes, "skipped": str(err)}
                )
                tqdm.write(f"  N={n:>6} {method:<10} skipped: {err}")
                continue
            row = make_row(n, method, edit, losses, unedited, forget_stats, retain_stats, slots, heldout_stats)
            rows.append(row)
            d = row["delta"]
            tqdm.write(
                f"  N={n:>6} {method:<10} codes {row['codes_removed']:>6}  Δforget {d['forget']:+.4f}  Δretain {d['retain']:+.4f}  (Δhistory {d['history']:+.4f}, Δwiki {d['wiki']:+.4f})"
            )

    report = None
    if args.selection_report:
        with timer.stage("selection report"):
            report = selection_report(bmodel, tokenizer, full_edit, forget_stats, retain_stats, train["forget"], args)

    with timer.stage("write outputs"):
        table = table_markdown(rows)
        name = "/".join(Path(args.bottleneck).resolve().parts[-2:])
        title = f"{args.topic}: held-out loss change ({name}, layers {layers})"
        plot(rows, out / "curves.png", title)
        result = {
            "command": command_line(),
            "date": started.isoformat(timespec="seconds"),
            "machine": machine_info(),
            "args": {k: v for k, v in vars(args).items()},
            "corpora": {name: str(sources[name].relative_to(data_dir)) for name in sources},
            "tokens": token_counts,
            "bottleneck": {
                "path": args.bottleneck,
                "config": config.to_dict(),
                "fingerprint": forget_stats.bottleneck_fingerprint,
            },
            "statistics_tokens": {"forget": forget_stats.tokens, "retain": retain_stats.tokens},
            "selected_codes_per_layer": eligible,
            "reference": {"base": base_losses, "unedited": unedited},
            "rows": rows,
            "edits": {str(n): truncate(full_edit, n).to_dict() for n, _ in points[-1:]},
            "selection_report": report,
            "seconds": timer.seconds,
        }
        md = [
            f"# Forgetting curves: {args.topic}",
            "",
            "```",
            command_line(),
            "```",
            "",
            f"- date: {result['date']}; machine: {machine_info()['platform']}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads",
            f"- bottleneck: `{args.bottleneck}` (layers {bmodel.layers}, edit layers {layers}, {config.num_stages}x{config.num_heads}x{config.codebook_size}, site {config.site}, fingerprint {forget_stats.bottleneck_fingerprint})",
            f"- forget: `{result['corpora']['forget']}`; retain: `{result['corpora']['history']}` + `{result['corpora']['wiki']}`; document split {1 - args.heldout_fraction:.0%}/{args.heldout_fraction:.0%}, seed {args.split_seed}; seq_len {args.seq_len}; {'bf16 autocast' if args.bf16 else 'fp32'} (--precision {args.precision})",
            "- tokens (statistics / held-out eval): "
            + ", ".join(f"{n} {c['train']} / {c['heldout']}" for n, c in token_counts.items()),
            f"- selection: SelectionRule(num_codes={rule.num_codes}, min_forget_count={rule.min_forget_count}, max_retain_frequency={rule.max_retain_frequency}); selected per layer: {eligible}; N = codes per layer; random control seed {args.random_seed}",
            "- Δ = held-out mean next-token loss (nat/token, first target of each chunk skipped) minus the unedited bottleneck's; retain = token-weighted mean of history and wiki; slots = share of code slots (tokens x stages x heads) on the statistics split taken by the removed codes (held-out slots: the same on the held-out text)",
            "",
            "## Results",
            "",
            *table,
            "",
            "![curves](curves.png)",
            "",
        ]
        if report is not None:
            md += [*selection_markdown(report, args), ""]
        md += ["## Seconds per stage", "", "| stage | seconds |", "|---|---|"]
        md += [f"| {k} | {v:.1f} |" for k, v in timer.seconds.items()]
        (out / "curves.md").write_text("\n".join(md) + "\n")
        (out / "curves.json").write_text(json.dumps(result, indent=1, default=str) + "\n")

    print()
    print("\n".join(table))
    print()
    print("seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in timer.seconds.items()))
    print(f"wrote {out / 'curves.md'}, {out / 'curves.json'}, {out / 'curves.png'}")


if __name__ == "__main__":
    main()
