#!/bin/bash
# Session 10: the outputs/ of earlier sessions are gone with their checkout, so the 8-stage keys-only bottleneck is
# trained again with the recorded command (benchmarks/results/curves_s8/fidelity_s8.sh, first command).
set -x
cd /work/main
export OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE
S0=$(date +%s)
.venv/bin/python benchmarks/fidelity_sweep.py --data_dir ../shared/data --train_tokens_per_corpus 100000 --eval_tokens 8192 \
  --output_dir outputs/sweep2 --results outputs/sweep2/results.jsonl \
  --variants '[{"name":"l15_8x4096_s8_kmeans","layers":[15],"num_stages":8,"key_steps":100,"value_steps":0,"progress":false}]'
echo "seconds fidelity_s8_keys: $(( $(date +%s) - S0 ))"
echo LANE DONE
# As run after lane_s8_keys.sh (outputs/lane_s8_keys.log): "seconds fidelity_s8_keys: 3269"; results.jsonl row: fvu_ordinary 0.1345, delta_ce history 0.15, wiki 0.1414, micro 0.148, train_seconds 2972.7
