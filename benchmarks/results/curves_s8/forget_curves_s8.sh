#!/bin/bash
# Issue 2 (session 9): forgetting on the 8-stage keys-only bottleneck (l15_8x4096_s8_kmeans, fidelity +4.9% on history).
# Usage: queue33.sh TOPIC "N ..." EVAL_TOKENS
set -x
cd /work/main
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
B=outputs/sweep2/l15_8x4096_s8_kmeans/bottleneck
for spec in "$@"; do
  set -- $spec
  topic=$1; tokens=$2; shift 2
  S0=$(date +%s)
  .venv/bin/python benchmarks/forget_curves.py --data_dir ../shared/data --bottleneck $B --topic $topic --methods substitute random \
    --num_codes "$@" --stats_tokens 24576 --eval_tokens $tokens --out outputs/curves_s8/$topic
  echo "seconds curves_s8_$topic: $(( $(date +%s) - S0 ))"
done
echo LANE 33 DONE
# As run: forget_curves_s8.sh "micro 8192 1024 2048 4096 8192"; forget_curves_s8.sh "hp 4096 512 1024 2048 4096" "cyber 4096 1024 2048 4096"
