#!/bin/bash
# The same 50-step relearning attack on Harry Potter at the gentler LoRA rate 2e-4 (relearning_suite_lr2e-4.yaml):
# at 7e-4 the cycled attack over-fits the base model after step 25 and makes every codebook row climb after step 10.
# Codebook edit, base model, unedited bottleneck and configured RMU, into outputs/hp_relearn50_lr2e-4/NAME (rows with
# a report already are skipped). One thread.
# Run from the repository root: bash benchmarks/results/eval_full/harry_potter/relearning_suite_lr2e-4.sh
set -x
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
D=../shared/data; H=outputs/hp; CU=.venv/bin/codeunlearn; SUITE=benchmarks/results/eval_full/harry_potter/relearning_suite_lr2e-4.yaml
B=outputs/sweep2/l15_8x4096_s4_kl160_lora16/bottleneck
for pair in "codebook_removal $H/codebook/edited" "base smollm2-135m" "bottleneck $B" "rmu $H/baselines/rmu/model"; do
  set -- $pair
  [ -e outputs/hp_relearn50_lr2e-4/$1/report.json ] && continue
  S0=$(date +%s)
  $CU eval --suite $SUITE --model $2 --data_dir $D --attacks --output_dir outputs/hp_relearn50_lr2e-4/$1 --no_progress
  echo "seconds hp_relearn50_lr2e-4_$1: $(( $(date +%s) - S0 ))"
done
# As recorded; the random-codes control ran the same way beside it:
#   codeunlearn eval --suite $SUITE --model $H/codebook/random ... --output_dir outputs/hp_relearn50_lr2e-4/random_codes
