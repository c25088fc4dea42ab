#!/bin/bash
# Finer points of the microbiology curve between 6,144 and 8,192 codes: same bottleneck and cached statistics as
# ../micro_98k/forget_curves_micro_98k.sh (run that first), so the selection is the same ranking.
# Run from the repository root: bash benchmarks/results/curves_s8/micro_98k_fine/forget_curves_micro_98k_fine.sh
set -x
export OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE
B=outputs/sweep2/l15_8x4096_s8_kmeans/bottleneck
S0=$(date +%s)
.venv/bin/python benchmarks/forget_curves.py --data_dir ../shared/data --bottleneck $B --topic micro --methods substitute random \
  --num_codes 6656 7168 --stats_tokens 98304 --validation_tokens 24576 --eval_tokens 8192 \
  --statistics_cache outputs/stats_s8 --out outputs/curves_s8/micro_98k_fine --no-selection_report
echo "seconds curves_s8_micro_98k_fine: $(( $(date +%s) - S0 ))"
