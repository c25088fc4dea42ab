#!/bin/bash
# the full-size microbiology suite with attacks on the codebook-edited model, alone on the machine: its wall time
# (the <= 30 min claim). Run as outputs/queue21.sh (the first form, 37.7 min, was the same command before a12906d).
set -x
cd /work/main
export OMP_WAIT_POLICY=PASSIVE
S=$(date +%s)
.venv/bin/codeunlearn eval --suite microbiology --model outputs/micro_lora16/edited --data_dir ../shared/data --attacks --output_dir outputs/eval_full/micro/edited30 --no_progress
echo "suite full edited seconds: $(( $(date +%s) - S ))"
