#!/usr/bin/env bash
# Statistics of the bottleneck run.sh trained in one process, counted on 16,384 tokens of cyber text by 1 process
# (2 threads) and by 2 processes (1 thread each, accelerate launch): the counts must be equal, every one.
# Run from the repository root after run.sh; writes stats.log.
set -euo pipefail
PATH="$PWD/.venv/bin:$PATH"
OUT=outputs/data_parallel
LOG=benchmarks/results/data_parallel/stats.log
ARGS="--bottleneck_dir $OUT/one/bottleneck --corpora ../shared/data/topics/cyber/corpus_owasp_wstg.jsonl
  --max_tokens 16384 --no_bf16 --no_progress --overwrite"
start=$(date +%s)
# shellcheck disable=SC2086
OMP_NUM_THREADS=2 codeunlearn stats $ARGS --output_file $OUT/stats_one.safetensors > /dev/null
echo "seconds, 1 process x 2 threads: $(( $(date +%s) - start ))" | tee $LOG
start=$(date +%s)
# shellcheck disable=SC2086
OMP_NUM_THREADS=1 accelerate launch --config_file configs/accelerate/cpu.yaml "$(command -v codeunlearn)" stats $ARGS \
  --output_file $OUT/stats_two.safetensors > /dev/null
echo "seconds, 2 processes x 1 thread: $(( $(date +%s) - start ))" | tee -a $LOG
python - $OUT/stats_one.safetensors $OUT/stats_two.safetensors <<'PY' | tee -a $LOG
import sys
from codeunlearn.unlearn.statistics import CodeStatistics
one, two = (CodeStatistics.load(path) for path in sys.argv[1:])
for layer in one.counts:
    differ = int((one.counts[layer] != two.counts[layer]).sum())
    print(f"layer {layer}: {one.tokens[layer]:,} / {two.tokens[layer]:,} tokens counted, "
          f"{int(one.counts[layer].sum()):,} firings, {differ} of {one.counts[layer].numel():,} counts differ")
PY
