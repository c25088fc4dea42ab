#!/usr/bin/env bash
# The faithful recipe (configs/faithful_smollm2.yaml) on SmolLM2-135M trained by 1 process at batch 8 with 2 threads,
# then by 2 processes at batch 4 with 1 thread each (accelerate launch, configs/accelerate/cpu.yaml, gloo); the two
# bottlenecks compared tensor by tensor with the retain statistics each kept, and their held-out loss tables (fp32;
# the forget column is cyber text, which neither saw).
# Run from the repository root; writes this folder's result files.
set -euo pipefail
PATH="$PWD/.venv/bin:$PATH"
DATA=../shared/data
HERE=benchmarks/results/data_parallel
OUT=outputs/data_parallel
RETAIN="$DATA/retain/openstax_us_history.jsonl $DATA/retain/wikitext2_raw_test.txt"
rm -rf $OUT
mkdir -p $OUT
: > $HERE/eval.log
start=$(date +%s)
OMP_NUM_THREADS=2 codeunlearn train --config configs/faithful_smollm2.yaml --output_dir $OUT/one --no_progress \
  | tee $HERE/train_one_process.log
echo "seconds, 1 process x 2 threads: $(( $(date +%s) - start ))" | tee -a $HERE/train_one_process.log
start=$(date +%s)
OMP_NUM_THREADS=1 accelerate launch --config_file configs/accelerate/cpu.yaml "$(command -v codeunlearn)" train \
  --config configs/faithful_smollm2.yaml --batch_size 4 --output_dir $OUT/two --no_progress \
  | tee $HERE/train_two_processes.log
echo "seconds, 2 processes x 1 thread: $(( $(date +%s) - start ))" | tee -a $HERE/train_two_processes.log
python benchmarks/compare_bottlenecks.py $OUT/one/bottleneck $OUT/two/bottleneck | tee $HERE/compare.md
for run in one two; do
  OMP_NUM_THREADS=2 codeunlearn eval --bottleneck_dir $OUT/$run/bottleneck --retain_corpora $RETAIN --max_tokens 8192 \
    --forget_corpora $DATA/topics/cyber/corpus_owasp_wstg.jsonl \
    --output_dir $OUT/eval_$run --no_bf16 --no_progress > /dev/null
  grep -E "^\| (base|bottleneck) " $OUT/eval_$run/report.md | sed "s/^/$run: /" | tee -a $HERE/eval.log
done
