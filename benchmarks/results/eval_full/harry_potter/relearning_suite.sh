#!/bin/bash
# HP 50-step relearning, lane A (session 8): rows in order; each writes outputs/hp_relearn50/NAME.
set -x
cd /work/main
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
echo LANE DONE
# As run (two lanes, H=outputs/hp, B as above):
#   lanes_session8.sh "base smollm2-135m" "rmu $H/baselines/rmu/model" "sae_guardrail $H/sae/guardrail" "npo $H/baselines/npo/model" \
#     "sae_zero $H/sae/zero" "ga $H/baselines/ga/model" "npo_configured $H/baselines/npo_configured/model"
#   lanes_session8.sh "codebook_removal $H/codebook/edited" "bottleneck $B" "random_codes $H/codebook/random" \
#     "grad_diff $H/baselines/grad_diff/model" "sae_clamp $H/sae/clamp" "grad_diff_configured $H/baselines/grad_diff_configured/model"
# Session 9 (the session-8 lanes ended before the last five rows; the same script, two lanes, skipping finished rows):
#   lanes_session8.sh "sae_zero $H/sae/zero" "ga $H/baselines/ga/model" "grad_diff_configured $H/baselines/grad_diff_configured/model"
#   lanes_session8.sh "sae_clamp $H/sae/clamp" "npo_configured $H/baselines/npo_configured/model"
