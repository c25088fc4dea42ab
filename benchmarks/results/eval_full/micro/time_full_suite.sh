#!/bin/bash
# the full-size microbiology suite with attacks on the codebook-edited model: its wall time (the <= 30 min claim)
set -x
cd /work/main
export OMP_WAIT_POLICY=PASSIVE
S=$(date +%s)
.venv/bin/codeunlearn eval --suite microbiology --model outputs/micro_lora16/edited --data_dir ../shared/data --attacks --output_dir outputs/eval_full/micro/edited --no_progress
echo "suite full edited seconds: $(( $(date +%s) - S ))"
echo QUEUE18 DONE
