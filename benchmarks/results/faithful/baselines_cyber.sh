#!/usr/bin/env bash
# GA, NPO and GradDiff at their configured budgets (configs/baselines/*.yaml) on the cyber topic, each then through
# the same `--fast` suite as the faithful bottleneck's cyber rows (fp32), against that run's base report; as
# rmu_cyber.sh does for RMU. Run from the repository root after
# `PRECISION=--no_bf16 bash benchmarks/results/faithful/suite_topic.sh cyber`. METHODS picks some of them, e.g.
# METHODS="npo grad_diff" when GA's row is already recorded.
set -euo pipefail
export OMP_NUM_THREADS=2
PATH="$PWD/.venv/bin:$PATH"
HERE=benchmarks/results/faithful/suite_cyber
OUT=outputs/faithful/suite_cyber_fp32
for method in ${METHODS:-ga npo grad_diff}; do
  start=$(date +%s)
  codeunlearn baseline --config configs/baselines/$method.yaml \
    --forget_corpora ../shared/data/topics/cyber/corpus_owasp_wstg.jsonl --eval_max_tokens 4096 \
    --output_dir outputs/faithful/cyber_$method --overwrite --no_progress | tee $HERE/${method}_baseline.log
  echo "seconds $method baseline command: $(( $(date +%s) - start ))" | tee -a $HERE/${method}_baseline.log
  codeunlearn eval --suite cyber --model outputs/faithful/cyber_$method/model --data_dir ../shared/data --fast \
    --attacks --baseline_report $OUT/codebook_removal/base/report.json --output_dir $OUT/$method --no_progress \
    --no_bf16
  cp $OUT/$method/report.md $HERE/report_${method}_fp32.md
done
