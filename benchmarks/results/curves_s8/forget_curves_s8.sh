#!/bin/bash
# Forgetting curves on the 8-stage keys-only bottleneck (l15_8x4096_s8_kmeans, from fidelity_s8_keys.sh; +4.9%
# held-out loss on history): topic codes substituted against random codes, statistics on 24,576 tokens per corpus.
# One run per argument "TOPIC EVAL_TOKENS N...", into outputs/curves_s8/TOPIC.
# Run from the repository root (the runs recorded in micro/, hp/ and cyber/):
#   bash benchmarks/results/curves_s8/forget_curves_s8.sh "micro 8192 1024 2048 4096 8192"
#   bash benchmarks/results/curves_s8/forget_curves_s8.sh "hp 4096 512 1024 2048 4096" "cyber 4096 1024 2048 4096"
set -x
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
