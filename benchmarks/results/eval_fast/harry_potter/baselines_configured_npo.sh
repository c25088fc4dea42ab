#!/bin/bash
# NPO at its configured budget (configs/baselines/npo.yaml, 60 steps x 8 chunks) on Harry Potter with its suite row
# (fast form, with attacks): npo_configured in table.md. Then the configured microbiology GradDiff that
# baselines_configured_grad_diff.sh trains (it waits for its .done file): its microbiology fast row and its 50-step
# relearning attack (outputs/relearn50b/suite.yaml, as in benchmarks/RESULTS.md).
# Run from the repository root after pipeline.sh (its base report), one thread, beside baselines_configured_grad_diff.sh:
#   bash benchmarks/results/eval_fast/harry_potter/baselines_configured_npo.sh
set -x
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
D=../shared/data; H=outputs/hp; CU=.venv/bin/codeunlearn
F=$D/topics/harry_potter/corpus_wikipedia_plot_summaries.txt; R="$D/retain/openstax_us_history.jsonl $D/retain/wikitext2_raw_test.txt"
t() { echo "seconds $1: $(( $(date +%s) - $2 ))"; }
S0=$(date +%s)
$CU baseline --config configs/baselines/npo.yaml --forget_corpora $F --retain_corpora $R --output_dir $H/baselines/npo_configured --no_progress
t baseline_npo_hp $S0
S0=$(date +%s)
$CU eval --suite harry_potter --model $H/baselines/npo_configured/model --data_dir $D --fast --attacks --baseline_report $H/eval/codebook_removal/base/report.json --output_dir $H/eval/npo_configured --no_progress
t eval_hp_npo_configured $S0
while [ ! -e outputs/micro_baselines/grad_diff.done ]; do sleep 30; done
M=outputs/micro_baselines/grad_diff/model
S0=$(date +%s)
$CU eval --suite microbiology --model $M --data_dir $D --fast --attacks --baseline_report outputs/eval_fast/micro/edited/base/report.json --output_dir outputs/eval_fast/micro/grad_diff_configured --no_progress
t evalfast_grad_diff_configured $S0
S0=$(date +%s)
$CU eval --suite outputs/relearn50b/suite.yaml --model $M --data_dir $D --attacks --output_dir outputs/relearn50b/grad_diff_configured --no_progress
t relearn50_grad_diff_configured $S0
