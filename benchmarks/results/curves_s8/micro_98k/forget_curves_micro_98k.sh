#!/bin/bash
# Microbiology forgetting curve on the 8-stage keys-only bottleneck (fidelity_s8_keys.sh) with 4x the statistics
# text of forget_curves_s8.sh (98,304 tokens per corpus instead of 24,576), plus 24,576 validation tokens per corpus
# cached in outputs/stats_s8 for selection_coverage.py (selection_coverage.md here).
# Run from the repository root: bash benchmarks/results/curves_s8/micro_98k/forget_curves_micro_98k.sh OUT_NAME [forget_curves flags...]
# As recorded: forget_curves_micro_98k.sh micro_98k
set -x
export OMP_NUM_THREADS=${THREADS:-2} OMP_WAIT_POLICY=PASSIVE
B=outputs/sweep2/l15_8x4096_s8_kmeans/bottleneck
name=$1; shift
S0=$(date +%s)
.venv/bin/python benchmarks/forget_curves.py --data_dir ../shared/data --bottleneck $B --topic micro --methods substitute random \
  --num_codes 2048 4096 6144 8192 --stats_tokens 98304 --validation_tokens 24576 --eval_tokens 8192 \
  --statistics_cache outputs/stats_s8 --out outputs/curves_s8/$name "$@"
echo "seconds curves_s8_$name: $(( $(date +%s) - S0 ))"
