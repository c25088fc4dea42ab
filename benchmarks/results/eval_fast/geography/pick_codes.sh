#!/bin/bash
# quick sweep of the number of codebook codes removed for the geography topic (held-out facts, other facts, history)
set -x
cd /work/main
export OMP_WAIT_POLICY=PASSIVE
while [ ! -f outputs/geography/codebook/stats/retain.json ]; do sleep 10; done
D=../shared/data; G=outputs/geography; CU=.venv/bin/codeunlearn
B=outputs/sweep2/l15_8x4096_s4_kl160_lora16/bottleneck
$CU eval --suite $G/probe_suite.yaml --model $B --data_dir $D --with_base --output_dir $G/pick/bottleneck --no_progress
for n in 1024 4096 16384; do
  $CU forget --forget_stats $G/codebook/stats/forget.safetensors --retain_stats $G/codebook/stats/retain.safetensors --topic geography --num_codes $n --output_dir $G/pick/edits_$n
  $CU apply --bottleneck_dir $B --edits $G/pick/edits_$n/edit.json --output_dir $G/pick/model_$n
  $CU eval --suite $G/probe_suite.yaml --model $G/pick/model_$n --data_dir $D --output_dir $G/pick/eval_$n --no_progress
done
.venv/bin/python $G/pick_n.py
echo PICK DONE
