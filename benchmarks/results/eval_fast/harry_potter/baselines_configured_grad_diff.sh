#!/bin/bash
# GradDiff at its configured budget (configs/baselines/grad_diff.yaml, 60 steps x 8 chunks): on microbiology (the
# command's default corpora; marks outputs/micro_baselines/grad_diff.done for baselines_configured_npo.sh), then on
# Harry Potter with its suite row (fast form, with attacks): grad_diff_configured in table.md.
# Run from the repository root after pipeline.sh (its base report), one thread:
#   bash benchmarks/results/eval_fast/harry_potter/baselines_configured_grad_diff.sh
set -x
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
D=../shared/data; H=outputs/hp; CU=.venv/bin/codeunlearn
F=$D/topics/harry_potter/corpus_wikipedia_plot_summaries.txt; R="$D/retain/openstax_us_history.jsonl $D/retain/wikitext2_raw_test.txt"
t() { echo "seconds $1: $(( $(date +%s) - $2 ))"; }
S0=$(date +%s)
$CU baseline --config configs/baselines/grad_diff.yaml --output_dir outputs/micro_baselines/grad_diff --no_progress
t baseline_grad_diff_micro $S0
touch outputs/micro_baselines/grad_diff.done
S0=$(date +%s)
$CU baseline --config configs/baselines/grad_diff.yaml --forget_corpora $F --retain_corpora $R --output_dir $H/baselines/grad_diff_configured --no_progress
t baseline_grad_diff_hp $S0
S0=$(date +%s)
$CU eval --suite harry_potter --model $H/baselines/grad_diff_configured/model --data_dir $D --fast --attacks --baseline_report $H/eval/codebook_removal/base/report.json --output_dir $H/eval/grad_diff_configured --no_progress
t eval_hp_grad_diff_configured $S0
