#!/bin/bash
# Wall time of the full-size microbiology suite with attacks on the codebook-edited model, alone on the machine (the
# <= 30 min claim). Report: report_codebook_removal.md here; report_codebook_removal_first_form.md (37.7 min) is the
# same command before commit a12906d changed the relearning attack.
# Run from the repository root: bash benchmarks/results/eval_full/micro/time_full_suite.sh
set -x
export OMP_WAIT_POLICY=PASSIVE
S=$(date +%s)
.venv/bin/codeunlearn eval --suite microbiology --model outputs/micro_lora16/edited --data_dir ../shared/data --attacks --output_dir outputs/eval_full/micro/edited30 --no_progress
echo "suite full edited seconds: $(( $(date +%s) - S ))"
