#!/bin/bash
# The Harry Potter table's rows: statistics, edits, apply and calibrate for the codebook and the SAE, their suite
# runs (fast form, with attacks; the codebook edit's with the base model), then the baselines' suite runs as
# baselines_configured.sh / baselines_reduced.sh finish them (it waits for their outputs/hp/baselines/METHOD.done).
# One thread. Run from the repository root, beside those two: bash benchmarks/results/eval_fast/harry_potter/pipeline.sh
set -x
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
D=../shared/data; H=outputs/hp; CU=.venv/bin/codeunlearn
F=$D/topics/harry_potter/corpus_wikipedia_plot_summaries.txt; R="$D/retain/openstax_us_history.jsonl $D/retain/wikitext2_raw_test.txt"
B=outputs/sweep2/l15_8x4096_s4_kl160_lora16/bottleneck; S=outputs/sae_l15/bottleneck
t() { echo "seconds $1: $(( $(date +%s) - $2 ))"; }
S0=$(date +%s)
for pair in "codebook $B" "sae $S"; do
  set -- $pair
  $CU stats --bottleneck_dir $2 --name forget --corpora $F --max_tokens 24576 --output_file $H/$1/stats/forget.safetensors --no_progress
  $CU stats --bottleneck_dir $2 --name retain --corpora $R --max_tokens 24576 --output_file $H/$1/stats/retain.safetensors --no_progress
done
t stats $S0
S0=$(date +%s)
$CU forget --forget_stats $H/codebook/stats/forget.safetensors --retain_stats $H/codebook/stats/retain.safetensors --topic harry_potter --num_codes 1024 --output_dir $H/codebook/edits
$CU apply --bottleneck_dir $B --edits $H/codebook/edits/edit.json --output_dir $H/codebook/edited
$CU apply --bottleneck_dir $B --edits $H/codebook/edits/random_control.json --output_dir $H/codebook/random
t forget_apply_codebook $S0
for mn in "clamp 16" "zero 256" "clamp 1024"; do
  set -- $mn
  $CU forget --forget_stats $H/sae/stats/forget.safetensors --retain_stats $H/sae/stats/retain.safetensors --topic harry_potter --intervention $1 --score mean_activation_difference --num_codes $2 --output_dir $H/sae/edits_$1_$2
done
S0=$(date +%s)
$CU calibrate --bottleneck_dir $S --edit $H/sae/edits_clamp_1024/edit.json --retain_corpora $D/retain/openstax_us_history.jsonl --max_tokens 65536 --window 32 --target_fpr 0.02 --output_file $H/sae/guardrail.json --no_progress
t calibrate $S0
$CU apply --bottleneck_dir $S --edits $H/sae/edits_clamp_16/edit.json --output_dir $H/sae/clamp
$CU apply --bottleneck_dir $S --edits $H/sae/edits_zero_256/edit.json --output_dir $H/sae/zero
$CU apply --bottleneck_dir $S --edits $H/sae/guardrail.json --output_dir $H/sae/guardrail
S0=$(date +%s)
$CU eval --suite harry_potter --model $H/codebook/edited --data_dir $D --fast --attacks --with_base --output_dir $H/eval/codebook_removal --no_progress
t eval_codebook_with_base $S0
BASE=$H/eval/codebook_removal/base/report.json
ev() { S0=$(date +%s); $CU eval --suite harry_potter --model $2 --data_dir $D --fast --attacks --baseline_report $BASE --output_dir $H/eval/$1 --no_progress; t eval_$1 $S0; }
ev bottleneck $B
ev random_codes $H/codebook/random
ev sae_zero $H/sae/zero
ev sae_clamp $H/sae/clamp
ev sae_guardrail $H/sae/guardrail
for m in rmu ga grad_diff npo; do
  while [ ! -e $H/baselines/$m.done ]; do sleep 30; done
  ev $m $H/baselines/$m/model
done
