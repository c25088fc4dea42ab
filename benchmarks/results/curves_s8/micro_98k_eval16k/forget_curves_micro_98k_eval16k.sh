#!/bin/bash
# The 6,656-code microbiology point (the smallest measured N with forget >= +1.0) on twice the held-out text (16,384
# tokens per corpus), same bottleneck and cached statistics as ../micro_98k/forget_curves_micro_98k.sh (run that
# first), to see how far the retain margin holds.
# Run from the repository root: bash benchmarks/results/curves_s8/micro_98k_eval16k/forget_curves_micro_98k_eval16k.sh
set -x
export OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE
B=outputs/sweep2/l15_8x4096_s8_kmeans/bottleneck
S0=$(date +%s)
.venv/bin/python benchmarks/forget_curves.py --data_dir ../shared/data --bottleneck $B --topic micro --methods substitute random \
  --num_codes 6656 --stats_tokens 98304 --validation_tokens 24576 --eval_tokens 16384 \
  --statistics_cache outputs/stats_s8 --out outputs/curves_s8/micro_98k_eval16k --no-selection_report --no-heldout_coverage
echo "seconds curves_s8_micro_98k_eval16k: $(( $(date +%s) - S0 ))"
