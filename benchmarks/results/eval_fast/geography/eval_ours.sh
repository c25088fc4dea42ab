#!/bin/bash
# geography evals, lane B: our rows (runs beside queue14's baseline training; one thread each)
set -x
cd /work/main
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
echo QUEUE15 DONE
