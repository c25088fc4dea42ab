#!/bin/bash
# 5,120 microbiology codes on twice the held-out text (16,384 tokens per corpus): the 6,656 point there gave forget
# +1.73, retain +0.055, so a smaller edit may keep retain under +0.05. Same bottleneck and cached statistics as
# ../micro_98k/forget_curves_micro_98k.sh (run that first).
# Run from the repository root:
#   bash benchmarks/results/curves_s8/micro_98k_eval16k_5120/forget_curves_micro_98k_eval16k_5120.sh
set -x
export OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE
B=outputs/sweep2/l15_8x4096_s8_kmeans/bottleneck
S0=$(date +%s)
.venv/bin/python benchmarks/forget_curves.py --data_dir ../shared/data --bottleneck $B --topic micro --methods substitute random \
  --num_codes 5120 --stats_tokens 98304 --validation_tokens 24576 --eval_tokens 16384 \
  --statistics_cache outputs/stats_s8 --out outputs/curves_s8/micro_98k_eval16k_5120 --no-selection_report --no-heldout_coverage
echo "seconds curves_s8_micro_98k_eval16k_5120: $(( $(date +%s) - S0 ))"
