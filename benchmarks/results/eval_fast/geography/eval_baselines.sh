#!/bin/bash
# geography evals, lane A: the baselines' rows, once queue14 has trained RMU (queue14 is stopped there)
set -x
cd /work/main
export OMP_WAIT_POLICY=PASSIVE
while ! grep -q "seconds baseline_rmu" outputs/queue14.log; do sleep 5; done
Q14=$(pgrep -f "outputs/queue14.sh"); kill -STOP $Q14; pkill -P $Q14; kill -9 $Q14
D=../shared/data; G=outputs/geography; T=$G/topic; SUITE=$T/suite.yaml; CU=.venv/bin/codeunlearn
BASE=$G/eval/codebook_removal/base/report.json
while [ ! -f $BASE ]; do sleep 10; done
t() { echo "seconds $1: $(( $(date +%s) - $2 ))"; }
for m in ga grad_diff npo rmu; do
  S0=$(date +%s)
  if grep -q "QUEUE15 DONE" outputs/queue15.log; then export OMP_NUM_THREADS=2; else export OMP_NUM_THREADS=1; fi
  $CU eval --suite $SUITE --model $G/baselines/$m/model --data_dir $D --fast --attacks --baseline_report $BASE --output_dir $G/eval/$m --no_progress
  t eval_$m $S0
done
while ! grep -q "QUEUE15 DONE" outputs/queue15.log; do sleep 10; done
$CU eval --combine base=$G/eval/codebook_removal/base bottleneck=$G/eval/bottleneck codebook_removal=$G/eval/codebook_removal random_codes=$G/eval/random_codes sae_zero=$G/eval/sae_zero sae_clamp=$G/eval/sae_clamp sae_guardrail=$G/eval/sae_guardrail ga=$G/eval/ga grad_diff=$G/eval/grad_diff npo=$G/eval/npo rmu=$G/eval/rmu --output_dir $G/eval/table
echo QUEUE16 DONE
