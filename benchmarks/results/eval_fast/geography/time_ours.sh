#!/bin/bash
# Wall time of our geography forgetting from a trained bottleneck, each command loading the model: statistics
# (forget + retain), then selection and apply; checks that the edit is the evaluated one (pipeline.sh's).
# Run from the repository root after pipeline.sh, alone on the machine:
#   bash benchmarks/results/eval_fast/geography/time_ours.sh
set -x
export OMP_WAIT_POLICY=PASSIVE
D=../shared/data; G=outputs/geography; T=$G/topic; CU=.venv/bin/codeunlearn; W=outputs/geography/timed
B=outputs/sweep2/l15_8x4096_s4_kl160_lora16/bottleneck
rm -rf $W
S0=$(date +%s.%N)
$CU stats --bottleneck_dir $B --name forget --corpora $T/forget_train.jsonl --seq_len 64 --output_file $W/stats/forget.safetensors --no_progress
$CU stats --bottleneck_dir $B --name retain --corpora $T/retain_train.jsonl $D/retain/openstax_us_history.jsonl $D/retain/wikitext2_raw_test.txt --seq_len 64 --max_tokens 16384 --output_file $W/stats/retain.safetensors --no_progress
S1=$(date +%s.%N)
$CU forget --forget_stats $W/stats/forget.safetensors --retain_stats $W/stats/retain.safetensors --topic geography --num_codes 1024 --output_dir $W/edits
$CU apply --bottleneck_dir $B --edits $W/edits/edit.json --output_dir $W/edited
S2=$(date +%s.%N)
cmp $W/edits/edit.json $G/codebook/edits/edit.json && echo "same edit as the evaluated one"
python3 -c "print(f'geography wall seconds: statistics {$S1-$S0:.1f}, forget+apply {$S2-$S1:.1f}, total {$S2-$S0:.1f} (each command loads the model)')"
