"""Speed of the statistics pass against plain forward passes, measured in one run on the same batches.

Four measurements, each over the same --tokens (batches of --batch_size x --seq_len), in fp32 and in bf16 autocast:

  (a) truncated forward: the base decoder run on layers 0..L only (L = deepest bottleneck layer), by temporarily
      replacing the decoder-layer list with its slice [:L+1] and calling the base transformer (`model.model`): the
      true cost of running layers 0..L (plus embedding, rotary tables, mask and one final RMSNorm);
  (b) the statistics pass: `collect_code_statistics` (stops after layer L, quantizes, counts codes);
  (c) the full base forward with logits (bottleneck disabled);
  (d) code lookup alone: `bottleneck.quantize` on layer-L states cached beforehand;
  (e) the search GEMM alone: the distance GEMMs of an exhaustive nearest-code search (every stage, every head,
      every code; `codeunlearn.kinds.codebook.kmeans.nearest` without its argmin) on the same cached states.

The limit of a statistics pass is (a) + (e): the forward it needs plus the search it cannot skip; the table gives
the statistics pass as a share of that limit.

Repeats alternate (every repeat runs every measurement in both precisions, in a rotated order); the median of
--repeats is reported. Other processes on a shared machine slow everything down, so compare ratios within one run.

    python benchmarks/stats_speed.py --tokens 32768 --repeats 3                 # fresh k-means bottleneck at layer 15
    python benchmarks/stats_speed.py --bottleneck DIR --tokens 32768             # a trained bottleneck

Prints a table and appends it (date, machine, command line) to benchmarks/RESULTS.md under "Statistics pass speed".
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from codeunlearn.bottleneck.architectures import DECODER_LAYER_PATHS, model_type_of
from codeunlearn.bottleneck.loading import attach_bottleneck
from codeunlearn.bottleneck.model import BottleneckedModel, BottleneckLayer
from codeunlearn.kinds.codebook.config import CodebookConfig
from codeunlearn.kinds.codebook.kmeans import SEARCH_CHUNK, squared_norms
from codeunlearn.runtime import autocast
from codeunlearn.tables import markdown_table
from codeunlearn.unlearn.statistics import collect_code_statistics

if __package__:
    from . import common, tiny
else:  # run as a file: Python puts the script's own folder first on sys.path
    import common
    import tiny

HEADING = "## Statistics pass speed"
TEXT = "retain/wikitext2_raw_test.txt"
MEASURES = ("truncated", "stats", "full", "lookup", "gemm")


# ---------------------------------------------------------------------------------------------------- setup
def load_chunks(args, tokenizer, vocab_size: int) -> tuple[torch.Tensor, str]:
    """(num_chunks, seq_len) token ids: WikiText-2 test text when the data folder exists, else random ids."""
    num_chunks = max(1, args.tokens // args.seq_len)
    source = Path(args.data_dir or common.DEFAULT_DATA_DIR) / TEXT
    if tokenizer is not None and source.is_file():
        from codeunlearn.data import load_documents, pack_documents

        chunks = pack_documents(
            load_documents(str(source)), tokenizer, args.seq_len, max_tokens=num_chunks * args.seq_len
        )
        if len(chunks) >= num_chunks:
            return chunks[:num_chunks], str(source)
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (num_chunks, args.seq_len), generator=generator), "random token ids"


def fresh_bottleneck(model, chunks: torch.Tensor, args) -> BottleneckedModel:
    """Attach a bottleneck at --layers and run only the k-means initialisation of its keys (values = keys)."""
    from codeunlearn.train import TrainingArguments, train_bottleneck

    config = CodebookConfig(
        layers=list(args.layers),
        num_heads=args.num_heads,
        codebook_size=args.codebook_size,
        kmeans_iters=args.kmeans_iters,
    )
    bmodel = BottleneckedModel.attach(model, config)
    with tempfile.TemporaryDirectory(prefix="stats_speed_") as tmp:
        train_args = TrainingArguments(
            output_dir=tmp,
            key_steps=1,
            value_steps=0,
            batch_size=args.batch_size,
            kmeans_init_tokens=min(args.kmeans_tokens, chunks.numel()),  # the timed text is all there is
            checkpoint_every=10**9,
            log_every=10**9,
            progress=False,
            bf16=False,
        )
        train_bottleneck(bmodel, chunks, train_args)
    return bmodel


@contextlib.contextmanager
def truncated_decoder(model: nn.Module, last: int) -> Iterator[nn.Module]:
    """Yield the base transformer (e.g. `model.model`) with its decoder-layer list cut to layers 0..`last` (any
    bottleneck wrapper replaced by its plain layer); the full list is restored on exit."""
    parent_path, _, attribute = DECODER_LAYER_PATHS[model_type_of(model)].rpartition(".")
    parent = model
    for part in parent_path.split("."):
        parent = getattr(parent, part)
    full = getattr(parent, attribute)
    plain = [layer.layer if isinstance(layer, BottleneckLayer) else layer for layer in full[: last + 1]]
    setattr(parent, attribute, nn.ModuleList(plain))
    try:
        yield parent
    finally:
        setattr(parent, attribute, full)


def cache_states(
    bmodel: BottleneckedModel, chunks: torch.Tensor, args, bf16: bool, device
) -> list[tuple[int, torch.Tensor]]:
    """States entering each bottleneck's quantizer, one entry per (batch, layer), from a statistics-style pass."""
    cached: list[tuple[int, torch.Tensor]] = []
    with torch.no_grad(), autocast(device, bf16):
        for start in range(0, len(chunks), args.batch_size):
            batch = chunks[start : start + args.batch_size].to(device)
            bmodel.run_to_deepest(batch, lambda layer, states, result: cached.append((layer, states.detach().clone())))
    return cached


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------- measurements
def make_measures(
    bmodel: BottleneckedModel, chunks: torch.Tensor, cached: dict, args, device
) -> dict[str, Callable[[bool, torch.Tensor], None]]:
    model = bmodel.model
    last = max(bmodel.layers)

    def each_batch(data: torch.Tensor) -> Iterator[torch.Tensor]:
        for start in range(0, len(data), args.batch_size):
            yield data[start : start + args.batch_size].to(device)

    def truncated(bf16: bool, data: torch.Tensor) -> None:
        # disabled(): downstream adapters (if the bottleneck has any) off, so this is the plain base model
        with torch.no_grad(), autocast(device, bf16), bmodel.disabled(), truncated_decoder(model, last) as body:
            for batch in each_batch(data):
                body(input_ids=batch, use_cache=False)

    def stats(bf16: bool, data: torch.Tensor) -> None:
        collect_code_statistics(bmodel, data, batch_size=args.batch_size, progress=False, bf16=bf16)

    def full(bf16: bool, data: torch.Tensor) -> None:
        with torch.no_grad(), autocast(device, bf16), bmodel.disabled():
            for batch in each_batch(data):
                model(input_ids=batch, use_cache=False)

    def lookup(bf16: bool, data: torch.Tensor) -> None:
        states = cached[bf16] if len(data) == len(chunks) else cached[bf16][: len(bmodel.layers)]  # warm-up: one batch
        with torch.no_grad(), autocast(device, bf16):
            for layer, x in states:
                bmodel.bottleneck(layer).quantize(x)

    def gemm(bf16: bool, data: torch.Tensor) -> None:
        states = cached[bf16] if len(data) == len(chunks) else cached[bf16][: len(bmodel.layers)]
        with torch.no_grad():
            for layer, x in states:
                bottleneck = bmodel.bottleneck(layer)
                flat = x.reshape(-1, x.shape[-1]).float()
                z = ((flat - bottleneck.mean) @ bottleneck.rotation).view(len(flat), config.num_heads, -1)
                points = z.transpose(0, 1)
                for stage in range(config.num_stages):  # every stage searches a residual of this shape
                    keys = bottleneck.keys(stage).float()
                    bias, keys_t = squared_norms(keys).unsqueeze(1), keys.transpose(1, 2)
                    for part in points.split(SEARCH_CHUNK, dim=1):
                        torch.baddbmm(bias, part, keys_t, alpha=-2.0)

    config = bmodel.config
    return {"truncated": truncated, "stats": stats, "full": full, "lookup": lookup, "gemm": gemm}


def run_benchmark(
    measures: dict, chunks: torch.Tensor, precisions: list[str], repeats: int, batch_size: int, device
) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {p: {m: [] for m in MEASURES} for p in precisions}
    warm = chunks[:batch_size]  # same batch shape as the timed runs
    for precision in precisions:  # first calls build kernels (oneDNN bf16 in particular): keep them out of the timings
        for name in MEASURES:
            measures[name](precision == "bf16", warm)
    bar = tqdm(total=repeats * len(precisions) * len(MEASURES), desc="timing", unit="run")
    for repeat in range(repeats):
        order = MEASURES[repeat % len(MEASURES) :] + MEASURES[: repeat % len(MEASURES)]
        for precision in precisions:
            for name in order:
                bar.set_postfix(repeat=repeat + 1, precision=precision, measure=name)
                synchronize(device)
                start = time.perf_counter()
                measures[name](precision == "bf16", chunks)
                synchronize(device)
                times[precision][name].append(time.perf_counter() - start)
                bar.update(1)
        tqdm.write(
            f"  repeat {repeat + 1}: "
            + "; ".join(f"{p} " + " ".join(f"{m} {times[p][m][-1]:.2f}s" for m in MEASURES) for p in precisions)
        )
    bar.close()
    return times


# ---------------------------------------------------------------------------------------------------- report
def table(times: dict, tokens: int, last: int) -> list[str]:
    header = [
        "precision",
        f"truncated fwd L0..{last} tok/s",
        "stats pass tok/s",
        "full fwd tok/s",
        "code lookup tok/s",
        "search GEMM tok/s",
        "limit (truncated + GEMM) tok/s",
        "t_stats / t_truncated",
        "t_stats / t_limit",
        "t_truncated / t_full",
    ]
    rows = [speed_row(precision, by_measure, tokens) for precision, by_measure in times.items()]
    return markdown_table(header, rows).split("\n")


def speed_row(precision: str, by_measure: dict, tokens: int) -> list[str]:
    """One precision's row: tokens per second of each measure (median over repeats), the limit, the ratios."""
    median = {m: statistics.median(v) for m, v in by_measure.items()}
    speed = {m: tokens / median[m] for m in MEASURES}
    limit = median["truncated"] + median["gemm"]
    speeds = [f"{speed[m]:,.0f}" for m in ("truncated", "stats", "full", "lookup", "gemm")]
    ratios = [median["stats"] / median["truncated"], median["stats"] / limit, median["truncated"] / median["full"]]
    return [precision, *speeds, f"{tokens / limit:,.0f}", *(f"{r:.2f}" for r in ratios)]


def append_results(path: Path, entry: list[str]) -> None:
    """Append `entry` under the "Statistics pass speed" heading: reuse the heading when it is the file's last
    level-2 heading, otherwise start the section again at the end of the file (the file is never rewritten)."""
    text = path.read_text() if path.is_file() else ""
    level2 = [line for line in text.splitlines() if line.startswith("## ")]
    block = [] if level2 and level2[-1].strip() == HEADING else [HEADING, ""]
    if not text:
        block = ["# Benchmark results", "", *block]
    prefix = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    with path.open("a") as handle:
        handle.write(prefix + "\n".join(block + entry) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="base model (name, directory or .gguf)")
    parser.add_argument(
        "--bottleneck", help="trained bottleneck directory; default: a fresh k-means-initialised one at --layers"
    )
    parser.add_argument("--layers", type=int, nargs="+", default=[15], help="layers of the fresh bottleneck")
    parser.add_argument("--num_heads", type=int, default=8, help="heads of the fresh bottleneck")
    parser.add_argument("--codebook_size", type=int, default=4096, help="codes per head of the fresh bottleneck")
    parser.add_argument(
        "--kmeans_tokens",
        type=int,
        default=8192,
        help="tokens in the fresh bottleneck's k-means fit (at most --tokens)",
    )
    parser.add_argument(
        "--kmeans_iters",
        type=int,
        default=2,
        help="k-means iterations of the fresh bottleneck (code quality does not change the cost)",
    )
    parser.add_argument(
        "--data_dir", help=f"shared/data folder for the text (default {common.DEFAULT_DATA_DIR}; random ids if missing)"
    )
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--results", help="markdown file to append to (default benchmarks/RESULTS.md; none with --tiny)"
    )
    parser.add_argument("--no_results", action="store_true", help="do not append to the results file")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # random tiny Llama, random ids
    args = parser.parse_args(argv)
    if args.tokens < args.seq_len or args.repeats < 1:
        parser.error("--tokens must hold at least one chunk and --repeats must be >= 1")
    if args.results is None and not args.tiny:
        args.results = str(Path(__file__).resolve().parent / "RESULTS.md")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = common.command_line()
    print(command, flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    load_before = os.getloadavg()

    if args.tiny:
        model = tiny.tiny_llama(vocab_size=512, num_layers=6, max_positions=256)
        tokenizer, model_name = None, "tiny random Llama (6 layers, d 64)"
        if args.layers == [15]:
            args.layers = [3]
        args.codebook_size = min(args.codebook_size, 64)
        args.num_heads = 4 if args.num_heads == 8 else args.num_heads
    else:
        from codeunlearn.modeling import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(args.model)
        model_name = args.model
    model.to(device)
    seconds["load model"] = time.perf_counter() - started
    chunks, text = load_chunks(args, tokenizer, model.config.vocab_size)
    tokens = chunks.numel()
    print(
        f"model {model_name} loaded in {seconds['load model']:.0f}s; {tokens} tokens ({len(chunks)} x {args.seq_len}) from {text if text.startswith('random') else TEXT}",
        flush=True,
    )

    t0 = time.perf_counter()
    if args.bottleneck:
        bmodel = attach_bottleneck(model, args.bottleneck)
        bmodel.clear_edits()
        origin = f"`{args.bottleneck}`"
    else:
        bmodel = fresh_bottleneck(model, chunks, args)
        origin = f"fresh, {args.kmeans_iters} k-means iterations on {min(args.kmeans_tokens, tokens)} tokens"
    seconds["bottleneck"] = time.perf_counter() - t0
    config = bmodel.config
    last = max(bmodel.layers)
    shape = f"layers {bmodel.layers}, {config.num_stages}x{config.num_heads}x{config.codebook_size}, site {config.site}"
    print(f"bottleneck ({origin}): {shape}; ready in {seconds['bottleneck']:.0f}s", flush=True)

    t0 = time.perf_counter()
    cached = {p == "bf16": cache_states(bmodel, chunks, args, p == "bf16", device) for p in args.precisions}
    seconds["cache states"] = time.perf_counter() - t0
    measures = make_measures(bmodel, chunks, cached, args, device)

    t0 = time.perf_counter()
    times = run_benchmark(measures, chunks, args.precisions, args.repeats, args.batch_size, device)
    seconds["timing"] = time.perf_counter() - t0
    load_after = os.getloadavg()

    info = common.machine_info()
    machine = (
        f"{info['platform']}; {info['processor']}; {info['cpu_count']} CPUs; torch {info['torch']}, "
        f"{info['torch_threads']} threads; CPU capability {info['cpu_capability']}, bf16 fast {info['bf16_is_fast']}"
        + (f"; GPU {info['cuda']}" if device.type == "cuda" else "")
    )
    date = common.now().isoformat(timespec="seconds")
    rows = table(times, tokens, last)
    entry = [
        f"### {date}: {model_name}, {tokens} tokens, {args.repeats} repeats",
        "",
        "```",
        command,
        "```",
        "",
        f"- machine: {machine}; device {device}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after",
        f"- bottleneck ({origin}): {shape}; truncated = layers 0..{last}; batches {args.batch_size} x {args.seq_len} from {text if text.startswith('random') else TEXT}",
        "- median of the repeats; t_* are wall-clock seconds for the same tokens (t_stats / t_truncated: overhead of "
        "quantizing and counting; t_truncated / t_full: share of a full forward the statistics pass needs to run)",
        "",
        *rows,
        "",
    ]
    print()
    print("\n".join(entry))
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    if args.results and not args.no_results:
        append_results(Path(args.results), entry)
        print(f"appended to {args.results}")


if __name__ == "__main__":
    main()
