#!/bin/bash
# The geography suite (fast form, with attacks) on the four baselines pipeline.sh trained, against the base report
# of eval_ours.sh, then the combined table of every row (table.md, table.json).
# Run from the repository root after pipeline.sh's baseline training, beside or after eval_ours.sh (it waits for
# eval_ours.sh's base report, and for its last row before combining):
#   bash benchmarks/results/eval_fast/geography/eval_baselines.sh
# As recorded the evaluations ran at one thread while eval_ours.sh ran beside them, at two after it finished.
set -x
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=${THREADS:-1}
D=../shared/data; G=outputs/geography; T=$G/topic; SUITE=$T/suite.yaml; CU=.venv/bin/codeunlearn
BASE=$G/eval/codebook_removal/base/report.json
while [ ! -f $BASE ]; do sleep 10; done
t() { echo "seconds $1: $(( $(date +%s) - $2 ))"; }
for m in ga grad_diff npo rmu; do
  S0=$(date +%s)
  $CU eval --suite $SUITE --model $G/baselines/$m/model --data_dir $D --fast --attacks --baseline_report $BASE --output_dir $G/eval/$m --no_progress
  t eval_$m $S0
done
while [ ! -f $G/eval/bottleneck/report.json ]; do sleep 10; done
$CU eval --combine base=$G/eval/codebook_removal/base bottleneck=$G/eval/bottleneck codebook_removal=$G/eval/codebook_removal random_codes=$G/eval/random_codes sae_zero=$G/eval/sae_zero sae_clamp=$G/eval/sae_clamp sae_guardrail=$G/eval/sae_guardrail ga=$G/eval/ga grad_diff=$G/eval/grad_diff npo=$G/eval/npo rmu=$G/eval/rmu --output_dir $G/eval/table
