"""Training throughput of a codebook bottleneck against the base model's own forward+backward, measured in one run
on the same batches, with peak device memory.

Three measurements, each per token:

  (a) base step: the base model's forward with its next-token loss and a backward that computes the gradient of
      every base weight: what one fine-tuning step of the base model costs (without the optimizer);
  (b) value step: one codebook value step as `codeunlearn train` runs it (the base model's logits for the KL target,
      the bottlenecked forward, the backward to the values): the marginal cost per step of two `train_bottleneck`
      runs from the same keys with --value_steps V and 2V, so loading, saving and checkpoints cancel out;
  (c) key fit: the recipe's whole key phase (`key_steps 1`: the states of `kmeans_init_tokens` tokens up to the
      bottleneck, then the stage-by-stage k-means) per k-means token.

Ratios (b)/(a) and (c)/(a) say what training a bottleneck costs next to a step of the model it is trained into
(issue 19's goal: the bottleneck adds <= 15%, i.e. (b)/(a) <= 1.15). Peak memory is the device's allocator peak
(CUDA) over each measurement; on a CPU it is not measured. Repeats alternate the measurements; medians are reported.

    python benchmarks/train_throughput.py --precision bf16                    # SmolLM2-135M on the GPU, if any
    python benchmarks/train_throughput.py --model gemma3-270m --layers 9 --precision bf16

Prints a markdown table (the machine and the command above it).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.kinds.codebook.config import CodebookConfig
from codeunlearn.runtime import autocast, progress_bars
from codeunlearn.tables import markdown_table
from codeunlearn.train import train_bottleneck
from codeunlearn.train.arguments import TrainingArguments

if __package__:
    from . import common, tiny
else:  # run as a file: Python puts the script's own folder first on sys.path
    import common
    import tiny

MEASURES = ("base step", "value steps V", "value steps 2V", "key fit")
ROWS = ("base step", "value step", "key fit")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, work: Callable[[], None]) -> tuple[float, float | None]:
    """(seconds, peak device memory in GiB or None on a CPU) of `work()`."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    work()
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return seconds, peak


def base_steps(model: torch.nn.Module, batches: list[torch.Tensor], bf16: bool, device: torch.device) -> None:
    """(a): forward, next-token loss and the gradient of every base weight, batch by batch."""
    params = [p for p in model.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    try:
        for batch in batches:
            with autocast(device, bf16):
                logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            F.cross_entropy(logits.transpose(1, 2), batch[:, 1:]).backward()
            model.zero_grad(set_to_none=True)
    finally:
        for p in params:
            p.requires_grad_(False)


def training_args(output_dir: Path, args: argparse.Namespace, **overrides) -> TrainingArguments:
    values = {
        "output_dir": str(output_dir),
        "overwrite": True,
        "progress": False,
        "bf16": args.bf16,
        "batch_size": args.batch_size,
        "kmeans_init_tokens": args.kmeans_tokens,
        "key_steps": 1,
        "value_steps": 0,
        "warmup_steps": 0,
        "log_every": 10**6,
        "checkpoint_every": 10**6,
        "keep_checkpoints": 1,
    }
    return TrainingArguments(**{**values, **overrides})


def make_measures(model, chunks: torch.Tensor, args: argparse.Namespace, work: Path) -> dict[str, Callable[[], None]]:
    device = torch.device(args.device)
    config = CodebookConfig(
        layers=args.layers, num_heads=args.num_heads, codebook_size=args.codebook_size, num_stages=args.num_stages
    )
    keys_dir = work / "keys"
    fit_chunks = chunks[: -(-args.kmeans_tokens // chunks.shape[1])]
    batches = [chunks[i * args.batch_size : (i + 1) * args.batch_size].to(device) for i in range(args.value_steps)]

    def train(output_dir: Path, data: torch.Tensor, **overrides) -> None:
        shutil.rmtree(output_dir, ignore_errors=True)  # a run refuses a folder holding another's checkpoints
        bmodel = BottleneckedModel.attach(model, config)
        try:
            train_bottleneck(bmodel, data, training_args(output_dir, args, **overrides))
        finally:
            bmodel.detach()

    def values(steps: int) -> None:
        train(work / "values", chunks, init_from=str(keys_dir / "bottleneck"), value_steps=steps)

    def fit() -> None:
        train(keys_dir, fit_chunks)

    fit()  # the keys the value steps start from, and a warm-up of every kernel
    return {
        "base step": lambda: base_steps(model, batches, args.bf16, device),
        "value steps V": lambda: values(args.value_steps),
        "value steps 2V": lambda: values(2 * args.value_steps),
        "key fit": fit,
    }


def run(args: argparse.Namespace) -> list[str]:
    common.resolve_precision(args)
    device = torch.device(args.device)
    if args.tiny:
        model = tiny.tiny_llama(vocab_size=512, num_layers=6, max_positions=256).to(device)
        args.layers = [3] if args.layers == [15] else args.layers
        args.codebook_size, args.num_heads = min(args.codebook_size, 64), 4
    else:
        from codeunlearn.modeling import load_model_and_tokenizer

        model = load_model_and_tokenizer(args.model)[0].to(device)
    generator = torch.Generator().manual_seed(0)
    needed = max(args.kmeans_tokens, 2 * args.value_steps * args.batch_size * args.seq_len)
    chunks = torch.randint(0, model.config.vocab_size, (-(-needed // args.seq_len), args.seq_len), generator=generator)
    times: dict[str, list[float]] = {m: [] for m in MEASURES}
    peaks: dict[str, float | None] = dict.fromkeys(MEASURES)
    with tempfile.TemporaryDirectory(prefix="train_throughput") as work, progress_bars(False):
        measures = make_measures(model, chunks, args, Path(work))
        measures["base step"]()  # warm-up
        for repeat in range(args.repeats):
            order = MEASURES[repeat % len(MEASURES) :] + MEASURES[: repeat % len(MEASURES)]
            for name in order:
                seconds, peak = timed(device, measures[name])
                times[name].append(seconds)
                peaks[name] = peak if peaks[name] is None or peak is None else max(peaks[name], peak)
            print(f"  repeat {repeat + 1}: " + ", ".join(f"{m} {times[m][-1]:.2f}s" for m in MEASURES), flush=True)
    step_tokens = args.value_steps * args.batch_size * args.seq_len
    median = {name: statistics.median(seconds) for name, seconds in times.items()}
    per_token = {
        "base step": median["base step"] / step_tokens,
        # V more steps: what one more step costs, without the load, save and checkpoints both runs pay
        "value step": (median["value steps 2V"] - median["value steps V"]) / step_tokens,
        "key fit": median["key fit"] / (-(-args.kmeans_tokens // args.seq_len) * args.seq_len),  # whole chunks
    }
    peaks["value step"] = peaks.pop("value steps 2V")
    return table(per_token, peaks)


def table(per_token: dict[str, float], peaks: dict[str, float | None]) -> list[str]:
    rows = []
    for name in ROWS:
        peak = "not measured (CPU)" if peaks[name] is None else f"{peaks[name]:.2f}"
        if per_token[name] <= 0:  # 2V steps ran faster than V: noise larger than V steps; raise --value_steps
            rows.append([name, "below the noise", "–", peak])
            continue
        rows.append([name, f"{1 / per_token[name]:,.0f}", f"{per_token[name] / per_token['base step']:.2f}", peak])
    return markdown_table(["measure", "tokens/s", "time per token / base step's", "peak memory GiB"], rows).split("\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_arguments(parser)
    parser.add_argument("--layers", type=int, nargs="+", default=[15], help="bottleneck layers")
    parser.add_argument("--num_heads", type=int, default=8)
    parser.add_argument("--codebook_size", type=int, default=4096)
    parser.add_argument("--num_stages", type=int, default=8)
    parser.add_argument("--kmeans_tokens", type=int, default=65536, help="tokens of the key fit (the recipe's)")
    parser.add_argument("--value_steps", type=int, default=20, help="V: the value runs take V and 2V steps")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if min(args.value_steps, args.repeats, args.kmeans_tokens, args.batch_size) < 1:
        parser.error("--value_steps, --repeats, --kmeans_tokens and --batch_size must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(common.command_line(), flush=True)
    lines = run(args)
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else common.machine_summary()
    print(f"\n{'tiny random Llama' if args.tiny else args.model}, {'bf16' if args.bf16 else 'fp32'}, {device}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
