#!/bin/bash
# Fidelity of an 8-stage residual codebook at layer 15 (8 heads x 4096 codes per stage, 768 bits/token): keys only
# (the 4-stage keys row's schedule: k-means, 100 EMA steps), measured; then KL-trained values and rank-16 downstream
# adapters from those keys, measured. One row per variant in outputs/sweep2/results.jsonl.
# Run from the repository root: bash benchmarks/results/curves_s8/fidelity_s8.sh
# As recorded only the first command finished: the second (values + adapters) was stopped for time, never measured.
set -x
export OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE
S0=$(date +%s)
.venv/bin/python benchmarks/fidelity_sweep.py --data_dir ../shared/data --train_tokens_per_corpus 100000 --eval_tokens 8192 \
  --output_dir outputs/sweep2 --results outputs/sweep2/results.jsonl \
  --variants '[{"name":"l15_8x4096_s8_kmeans","layers":[15],"num_stages":8,"key_steps":100,"value_steps":0,"progress":false}]'
echo "seconds fidelity_s8_keys: $(( $(date +%s) - S0 ))"
S0=$(date +%s)
.venv/bin/python benchmarks/fidelity_sweep.py --data_dir ../shared/data --train_tokens_per_corpus 100000 --eval_tokens 8192 \
  --output_dir outputs/sweep2 --results outputs/sweep2/results.jsonl \
  --variants '[{"name":"l15_8x4096_s8_kl200_lora16","init_from":"outputs/sweep2/l15_8x4096_s8_kmeans/bottleneck","layers":[15],"num_stages":8,"adapter_rank":16,"key_steps":100,"value_steps":200,"batch_size":4,"objective":"kl","learning_rate":0.01,"adapter_learning_rate":0.001,"checkpoint_every":25,"progress":false}]'
echo "seconds fidelity_s8_kl200_lora16: $(( $(date +%s) - S0 ))"
