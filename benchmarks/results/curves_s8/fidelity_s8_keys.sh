#!/bin/bash
# Trains the 8-stage keys-only bottleneck (l15_8x4096_s8_kmeans) and measures its fidelity and its training time
# alone on the machine: the first command of fidelity_s8.sh by itself. forget_curves_s8.sh and the micro_98k*
# scripts edit this bottleneck.
# Run from the repository root: bash benchmarks/results/curves_s8/fidelity_s8_keys.sh
# As recorded: "seconds fidelity_s8_keys: 3269"; results.jsonl row: fvu_ordinary 0.1345, delta_ce history 0.15,
# wiki 0.1414, micro 0.148, train_seconds 2972.7 (the same row as fidelity_s8.sh's first command).
set -x
export OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE
S0=$(date +%s)
.venv/bin/python benchmarks/fidelity_sweep.py --data_dir ../shared/data --train_tokens_per_corpus 100000 --eval_tokens 8192 \
  --output_dir outputs/sweep2 --results outputs/sweep2/results.jsonl \
  --variants '[{"name":"l15_8x4096_s8_kmeans","layers":[15],"num_stages":8,"key_steps":100,"value_steps":0,"progress":false}]'
echo "seconds fidelity_s8_keys: $(( $(date +%s) - S0 ))"
