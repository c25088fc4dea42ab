#!/usr/bin/env bash
# RMU at its configured budget (configs/baselines/rmu.yaml) on the cyber topic, then the same `--fast` suite as the
# faithful bottleneck's cyber rows (fp32), against that run's base report. Run from the repository root after
# `PRECISION=--no_bf16 bash benchmarks/results/faithful/suite_topic.sh cyber`.
set -euo pipefail
export OMP_NUM_THREADS=2
PATH="$PWD/.venv/bin:$PATH"
HERE=benchmarks/results/faithful/suite_cyber
OUT=outputs/faithful/suite_cyber_fp32
start=$(date +%s)
codeunlearn baseline --config configs/baselines/rmu.yaml \
  --forget_corpora ../shared/data/topics/cyber/corpus_owasp_wstg.jsonl --eval_max_tokens 4096 \
  --output_dir outputs/faithful/cyber_rmu --overwrite --no_progress | tee $HERE/rmu_baseline.log
echo "seconds rmu baseline command: $(( $(date +%s) - start ))" | tee -a $HERE/rmu_baseline.log
codeunlearn eval --suite cyber --model outputs/faithful/cyber_rmu/model --data_dir ../shared/data --fast --attacks \
  --baseline_report $OUT/codebook_removal/base/report.json --output_dir $OUT/rmu --no_progress --no_bf16
cp $OUT/rmu/report.md $HERE/report_rmu_fp32.md
