#!/bin/bash
# Session 10: microbiology on the 8-stage keys-only bottleneck with 4x the statistics text (98,304 tokens per corpus
# instead of 24,576), plus 24,576 validation tokens per corpus cached for selection_coverage.py.
# Usage: lane_micro.sh OUT_NAME [extra forget_curves flags...]
set -x
cd /work/main
until grep -q "LANE DONE" outputs/lane_s8_keys.log; do sleep 20; done
export OMP_NUM_THREADS=${THREADS:-2} OMP_WAIT_POLICY=PASSIVE
B=outputs/sweep2/l15_8x4096_s8_kmeans/bottleneck
name=$1; shift
S0=$(date +%s)
.venv/bin/python benchmarks/forget_curves.py --data_dir ../shared/data --bottleneck $B --topic micro --methods substitute random \
  --num_codes 2048 4096 6144 8192 --stats_tokens 98304 --validation_tokens 24576 --eval_tokens 8192 \
  --statistics_cache outputs/stats_s8 --out outputs/curves_s8/$name "$@"
echo "seconds curves_s8_$name: $(( $(date +%s) - S0 ))"
echo LANE DONE
# As run: lane_micro.sh micro_98k
