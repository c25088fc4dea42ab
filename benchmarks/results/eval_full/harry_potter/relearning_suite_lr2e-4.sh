#!/bin/bash
# HP 50-step relearning at LoRA 2e-4 (session 9), after lane 28b: base, unedited bottleneck, codebook edit, configured RMU.
set -x
cd /work/main
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
while ! grep -q "LANE DONE" outputs/queue28b.log; do sleep 20; done
D=../shared/data; H=outputs/hp; CU=.venv/bin/codeunlearn; SUITE=benchmarks/results/eval_full/harry_potter/relearning_suite_lr2e-4.yaml
B=outputs/sweep2/l15_8x4096_s4_kl160_lora16/bottleneck
for pair in "codebook_removal $H/codebook/edited" "base smollm2-135m" "bottleneck $B" "rmu $H/baselines/rmu/model"; do
  set -- $pair
  [ -e outputs/hp_relearn50_lr2e-4/$1/report.json ] && continue
  S0=$(date +%s)
  $CU eval --suite $SUITE --model $2 --data_dir $D --attacks --output_dir outputs/hp_relearn50_lr2e-4/$1 --no_progress
  echo "seconds hp_relearn50_lr2e-4_$1: $(( $(date +%s) - S0 ))"
done
echo LANE 30 DONE
# As run; then, in a second lane, the random-codes control the same way:
#   codeunlearn eval --suite $SUITE --model $H/codebook/random ... --output_dir outputs/hp_relearn50_lr2e-4/random_codes
