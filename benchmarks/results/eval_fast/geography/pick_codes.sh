#!/bin/bash
# How many codebook codes to remove for the geography topic: the unedited bottleneck and the edits of 1,024, 4,096 and
# 16,384 codes on probe_suite.yaml (held-out geography facts, other facts, history loss; copied to
# outputs/geography/ with its fact paths pointing at your outputs/geography/topic); pick_n.txt (a Python script) picks
# N into outputs/geography/codebook_n.txt for pipeline.sh. Waits for stats.sh's retain statistics.
# Run from the repository root: bash benchmarks/results/eval_fast/geography/pick_codes.sh
set -x
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
.venv/bin/python benchmarks/results/eval_fast/geography/pick_n.txt  # the recorded copy of outputs/geography/pick_n.py
