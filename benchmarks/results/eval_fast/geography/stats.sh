#!/bin/bash
# Code statistics of the geography fact topic (forget: its training fact sentences; retain: the other relations'
# sentences + U.S. history + WikiText, 16,384 tokens) on the codebook (B) and on the SAE (S), 64-token chunks.
# Needs the topic (codeunlearn fact-topic ... --output_dir outputs/geography/topic), B and S (benchmarks/RESULTS.md).
# Run from the repository root: bash benchmarks/results/eval_fast/geography/stats.sh
set -ex
export OMP_WAIT_POLICY=PASSIVE
D=../shared/data; T=outputs/geography/topic; CU=.venv/bin/codeunlearn
B=outputs/sweep2/l15_8x4096_s4_kl160_lora16/bottleneck; S=outputs/sae_l15/bottleneck
for pair in "codebook $B" "sae $S"; do
  set -- $pair
  $CU stats --bottleneck_dir $2 --name forget --corpora $T/forget_train.jsonl --seq_len 64 --output_file outputs/geography/$1/stats/forget.safetensors --no_progress
  $CU stats --bottleneck_dir $2 --name retain --corpora $T/retain_train.jsonl $D/retain/openstax_us_history.jsonl $D/retain/wikitext2_raw_test.txt --seq_len 64 --max_tokens 16384 --output_file outputs/geography/$1/stats/retain.safetensors --no_progress
done
