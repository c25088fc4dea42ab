#!/bin/bash
# The geography fact topic, every row of its suite table (fast form, with attacks): codebook removal and its
# random-codes control, SAE clamp / zero / guardrail, the gradient baselines at their configured budgets
# (configs/baselines/*.yaml) on the topic's sentences, then the suite on each model and the combined table.
# Run from the repository root after stats.sh and pick_codes.sh (their statistics, outputs/geography/codebook_n.txt):
#   bash benchmarks/results/eval_fast/geography/pipeline.sh
# As recorded it ran up to the baselines' training; its evaluations ran as eval_ours.sh (beside the baselines'
# training) and eval_baselines.sh (after it) instead.
set -x
export OMP_WAIT_POLICY=PASSIVE
D=../shared/data; G=outputs/geography; T=$G/topic; SUITE=$T/suite.yaml; CU=.venv/bin/codeunlearn
B=outputs/sweep2/l15_8x4096_s4_kl160_lora16/bottleneck; S=outputs/sae_l15/bottleneck
N=$(cat $G/codebook_n.txt)
t() { echo "seconds $1: $(( $(date +%s) - $2 ))"; }
# ---- ours: codebook removal and its random-codes control (statistics: stats.sh)
S0=$(date +%s)
$CU forget --forget_stats $G/codebook/stats/forget.safetensors --retain_stats $G/codebook/stats/retain.safetensors --topic geography --num_codes $N --output_dir $G/codebook/edits
$CU apply --bottleneck_dir $B --edits $G/codebook/edits/edit.json --output_dir $G/codebook/edited
t codebook_forget_apply $S0
$CU apply --bottleneck_dir $B --edits $G/codebook/edits/random_control.json --output_dir $G/codebook/random
# ---- SAE: clamp 16, zero 256, guardrail (clamp 1024 behind the calibrated window gate), the Ns picked on microbiology
for mn in "clamp 16" "zero 256" "clamp 1024"; do
  set -- $mn
  $CU forget --forget_stats $G/sae/stats/forget.safetensors --retain_stats $G/sae/stats/retain.safetensors --topic geography --intervention $1 --score mean_activation_difference --num_codes $2 --output_dir $G/sae/edits_$1_$2
done
$CU calibrate --bottleneck_dir $S --edit $G/sae/edits_clamp_1024/edit.json --retain_corpora $D/retain/openstax_us_history.jsonl --max_tokens 65536 --window 32 --target_fpr 0.02 --output_file $G/sae/guardrail.json --no_progress
$CU apply --bottleneck_dir $S --edits $G/sae/edits_clamp_16/edit.json --output_dir $G/sae/clamp
$CU apply --bottleneck_dir $S --edits $G/sae/edits_zero_256/edit.json --output_dir $G/sae/zero
$CU apply --bottleneck_dir $S --edits $G/sae/guardrail.json --output_dir $G/sae/guardrail
# ---- gradient baselines at their configured budgets (configs/baselines/*.yaml), on the topic's sentences
for m in ga grad_diff npo rmu; do
  S0=$(date +%s)
  $CU baseline --config configs/baselines/$m.yaml --forget_corpora $T/forget_train.jsonl --retain_corpora $T/retain_train.jsonl $D/retain/openstax_us_history.jsonl $D/retain/wikitext2_raw_test.txt --seq_len 64 --eval_max_tokens 2048 --output_dir $G/baselines/$m --no_progress
  t baseline_$m $S0
done
# ---- the suite, fast form with attacks
S0=$(date +%s)
$CU eval --suite $SUITE --model $G/codebook/edited --data_dir $D --fast --attacks --with_base --output_dir $G/eval/codebook_removal --no_progress
t eval_codebook_with_base $S0
BASE=$G/eval/codebook_removal/base/report.json
for pair in "bottleneck $B" "random_codes $G/codebook/random" "sae_zero $G/sae/zero" "sae_clamp $G/sae/clamp" "sae_guardrail $G/sae/guardrail" "ga $G/baselines/ga/model" "grad_diff $G/baselines/grad_diff/model" "npo $G/baselines/npo/model" "rmu $G/baselines/rmu/model"; do
  set -- $pair
  S0=$(date +%s)
  $CU eval --suite $SUITE --model $2 --data_dir $D --fast --attacks --baseline_report $BASE --output_dir $G/eval/$1 --no_progress
  t eval_$1 $S0
done
$CU eval --combine base=$G/eval/codebook_removal/base bottleneck=$G/eval/bottleneck codebook_removal=$G/eval/codebook_removal random_codes=$G/eval/random_codes sae_zero=$G/eval/sae_zero sae_clamp=$G/eval/sae_clamp sae_guardrail=$G/eval/sae_guardrail ga=$G/eval/ga grad_diff=$G/eval/grad_diff npo=$G/eval/npo rmu=$G/eval/rmu --output_dir $G/eval/table
