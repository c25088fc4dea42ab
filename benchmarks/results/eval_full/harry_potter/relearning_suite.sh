#!/bin/bash
# The 50-step relearning attack on Harry Potter (relearning_suite.yaml: LoRA rank 8, 7e-4, 50 steps) on each
# "NAME MODEL" pair given, in order: the held-out summary's loss at steps 0/10/25/50 into outputs/hp_relearn50/NAME
# (rows with a report already are skipped, so a stopped run resumes). One thread.
# Run from the repository root: bash benchmarks/results/eval_full/harry_potter/relearning_suite.sh "NAME MODEL" ...
set -x
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
D=../shared/data; H=outputs/hp; CU=.venv/bin/codeunlearn; SUITE=benchmarks/results/eval_full/harry_potter/relearning_suite.yaml
B=outputs/sweep2/l15_8x4096_s4_kl160_lora16/bottleneck
for pair in "$@"; do
  set -- $pair
  [ -e outputs/hp_relearn50/$1/report.json ] && continue
  S0=$(date +%s)
  $CU eval --suite $SUITE --model $2 --data_dir $D --attacks --output_dir outputs/hp_relearn50/$1 --no_progress
  echo "seconds hp_relearn50_$1: $(( $(date +%s) - S0 ))"
done
# As recorded, two at a time (H=outputs/hp, B as above):
#   relearning_suite.sh "base smollm2-135m" "rmu $H/baselines/rmu/model" "sae_guardrail $H/sae/guardrail" "npo $H/baselines/npo/model" \
#     "sae_zero $H/sae/zero" "ga $H/baselines/ga/model" "npo_configured $H/baselines/npo_configured/model"
#   relearning_suite.sh "codebook_removal $H/codebook/edited" "bottleneck $B" "random_codes $H/codebook/random" \
#     "grad_diff $H/baselines/grad_diff/model" "sae_clamp $H/sae/clamp" "grad_diff_configured $H/baselines/grad_diff_configured/model"
# Both stopped before their last five rows, which these finished (two at a time, finished rows skipped):
#   relearning_suite.sh "sae_zero $H/sae/zero" "ga $H/baselines/ga/model" "grad_diff_configured $H/baselines/grad_diff_configured/model"
#   relearning_suite.sh "sae_clamp $H/sae/clamp" "npo_configured $H/baselines/npo_configured/model"
