"""Speed of `train --compile` (the frozen decoder layers under `torch.compile`) against eager layers, in one run.

Two pieces of training work, each on the same --batch_size x --seq_len batches, eager and compiled:

  (a) key phase: the states at the bottleneck layer (`states_at`: a truncated forward, no gradient), what the
      k-means fit and the EMA steps read;
  (b) value step: the base forward (no gradient) and the bottlenecked forward with a KL loss and its backward,
      what a codebook value step does per batch (`codeunlearn.kinds.codebook.trainer`).

The first call of each is timed apart (it compiles); then --repeats timed calls, median reported as tokens per
second. The compiled outputs are compared with the eager ones (largest absolute difference). The bottleneck is a
small one-stage codebook fitted by k-means on one batch: its search is not what is compiled and stays small.

    python benchmarks/compile_speed.py --layer 15 --batch_size 4 --seq_len 256 --repeats 5
    python benchmarks/compile_speed.py --device cuda --precision bf16 --batch_size 16 --seq_len 512
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.kinds.codebook.config import CodebookConfig
from codeunlearn.runtime import mixed_precision
from codeunlearn.tables import markdown_table
from codeunlearn.train import TrainingArguments, train_bottleneck
from codeunlearn.train.compiled import compiled_layers

if __package__:
    from . import common
else:  # run as a file: Python puts the script's own folder first on sys.path
    import common


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="base model (name, directory or .gguf)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--layer", type=int, default=15, help="bottleneck layer")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data_dir = None
    return args


def fitted_bottleneck(model, chunks: torch.Tensor, args: argparse.Namespace) -> BottleneckedModel:
    """A 1-stage, 8-head, 64-code codebook at --layer, fitted by k-means on the states of `chunks`."""
    config = CodebookConfig(layers=[args.layer], num_stages=1, num_heads=8, codebook_size=64)
    bmodel = BottleneckedModel.attach(model, config)
    with tempfile.TemporaryDirectory() as out:
        train_args = TrainingArguments(
            output_dir=out, key_steps=1, kmeans_init_tokens=chunks.numel(), batch_size=args.batch_size, progress=False
        )
        train_bottleneck(bmodel, chunks, train_args)
    return bmodel


def key_states(bmodel: BottleneckedModel, batch: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    with torch.no_grad(), mixed_precision(batch.device, args.precision == "bf16", args.precision == "fp16"):
        return bmodel.states_at(args.layer, batch)


def value_step(bmodel: BottleneckedModel, batch: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    """One value micro-step's forwards and backward; returns the bottleneck values' gradient."""
    autocast = mixed_precision(batch.device, args.precision == "bf16", args.precision == "fp16")
    values = bmodel.bottleneck(args.layer).trainable_parameters()
    for value in values:
        value.grad = None
    with torch.no_grad(), bmodel.disabled(), autocast:
        base = bmodel(input_ids=batch, use_cache=False).logits.float()
    with mixed_precision(batch.device, args.precision == "bf16", args.precision == "fp16"):
        logits = bmodel(input_ids=batch, use_cache=False).logits.float()
    kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(base, -1), log_target=True, reduction="batchmean")
    kl.backward()
    return torch.cat([value.grad.flatten() for value in values])


def timed(work: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    """(seconds, output on the CPU) of one call of `work`."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = work()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out.detach().float().cpu()


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if args.tiny:
        args.seq_len = min(args.seq_len, 32)
    model, _, _ = common.load_benchmark_model(args, "compile-speed-")
    model.to(device)
    generator = torch.Generator().manual_seed(0)
    kmeans_chunks = max(args.batch_size, -(-4096 // args.seq_len))  # 64 tokens per code
    tokens = torch.randint(
        0, model.config.vocab_size, (kmeans_chunks + args.batch_size, args.seq_len), generator=generator
    )
    batch = tokens[kmeans_chunks:].to(device)
    bmodel = fitted_bottleneck(model, tokens[:kmeans_chunks], args)
    for value in bmodel.bottleneck(args.layer).trainable_parameters():
        value.requires_grad_(True)
    works = {"key states (a)": key_states, "value step (b)": value_step}
    modes = ("eager", "compiled")
    first: dict[tuple[str, str], tuple[float, torch.Tensor]] = {}
    times: dict[tuple[str, str], list[float]] = {(name, mode): [] for name in works for mode in modes}
    for repeat in range(args.repeats + 1):  # the first round compiles; later ones alternate the order
        for mode in modes if repeat % 2 else reversed(modes):
            with compiled_layers(bmodel, mode == "compiled"):
                for name, work in works.items():
                    seconds, output = timed(lambda work=work: work(bmodel, batch, args), device)
                    if repeat == 0:
                        first[(name, mode)] = (seconds, output)
                    else:
                        times[(name, mode)].append(seconds)
    rows = []
    for name in works:
        (eager_first, eager_out), (compiled_first, compiled_out) = first[(name, "eager")], first[(name, "compiled")]
        eager_speed = batch.numel() / statistics.median(times[(name, "eager")])
        compiled_speed = batch.numel() / statistics.median(times[(name, "compiled")])
        difference = float((compiled_out - eager_out).abs().max())
        scale = float(eager_out.abs().max())
        rows.append(
            [
                name,
                f"{eager_speed:,.0f}",
                f"{compiled_speed:,.0f}",
                f"{compiled_speed / eager_speed:.2f}x",
                f"{eager_first:.1f}",
                f"{compiled_first:.1f}",
                f"{difference:.1e} (of {scale:.1e})",
            ]
        )
    header = [
        "work",
        "eager tok/s",
        "compiled tok/s",
        "speed-up",
        "eager 1st s",
        "compiled 1st s (compile)",
        "max |diff|",
    ]
    print(
        f"{'a tiny random llama' if args.tiny else args.model}, layer {args.layer}, batch {args.batch_size} x {args.seq_len}, {args.precision}, {device}, "
        f"median of {args.repeats}; {common.machine_summary()}\n"
    )
    print(markdown_table(header, rows, align="lrrrrrr"))


if __name__ == "__main__":
    main()
