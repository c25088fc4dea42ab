#!/bin/bash
# The geography suite (fast form, with attacks) on our rows: codebook removal with the base model, then the SAE
# guardrail / clamp / zero, the random-codes control and the unedited bottleneck; one thread each.
# Run from the repository root once pipeline.sh has applied the edits (as recorded, beside its baselines' training):
#   bash benchmarks/results/eval_fast/geography/eval_ours.sh
set -x
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1
D=../shared/data; G=outputs/geography; T=$G/topic; SUITE=$T/suite.yaml; CU=.venv/bin/codeunlearn
B=outputs/sweep2/l15_8x4096_s4_kl160_lora16/bottleneck
t() { echo "seconds $1: $(( $(date +%s) - $2 ))"; }
S0=$(date +%s)
$CU eval --suite $SUITE --model $G/codebook/edited --data_dir $D --fast --attacks --with_base --output_dir $G/eval/codebook_removal --no_progress
t eval_codebook_with_base $S0
BASE=$G/eval/codebook_removal/base/report.json
for pair in "sae_guardrail $G/sae/guardrail" "sae_clamp $G/sae/clamp" "sae_zero $G/sae/zero" "random_codes $G/codebook/random" "bottleneck $B"; do
  set -- $pair
  S0=$(date +%s)
  $CU eval --suite $SUITE --model $2 --data_dir $D --fast --attacks --baseline_report $BASE --output_dir $G/eval/$1 --no_progress
  t eval_$1 $S0
done
