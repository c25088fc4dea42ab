#!/usr/bin/env bash
# The faithful recipe's k-means settings against the nearest alternatives, and a clean profile of `train` (issue 17).
# Run from the repository root after run.sh (it reuses nothing from it); writes this folder's result files.
set -euo pipefail
export OMP_NUM_THREADS=2
PATH="$PWD/.venv/bin:$PATH"
DATA=../shared/data
HERE=benchmarks/results/faithful
rm -rf outputs/faithful_profiled outputs/faithful_choice

# 1. `train` with the default recipe on an otherwise idle machine, sampled by py-spy (10 samples/s).
start=$(date +%s)
py-spy record --rate 10 --format raw --output $HERE/train_profile.txt -- \
  codeunlearn train --config configs/faithful_smollm2.yaml --output_dir outputs/faithful_profiled --no_progress \
  | tee $HERE/train.log
test -f outputs/faithful_profiled/bottleneck/bottleneck_config.json  # py-spy exits 0 whatever its child did
echo "seconds train command: $(( $(date +%s) - start ))" | tee -a $HERE/train.log
python benchmarks/profile_summary.py $HERE/train_profile.txt --rule "load model=load_base" \
  --rule "retain statistics pass=collect_code_statistics" \
  --rule "k-means: nearest-key GEMM and argmin=nearest (codeunlearn/kinds/codebook/kmeans.py" \
  --rule "k-means: centroid update=_scatter_means" --rule "k-means: the rest=fit_residual_codebooks" \
  --rule "states at layer 15 (truncated forward)=states_at" --rule "read and tokenize corpora=read_corpora" \
  --rule "read and tokenize corpora=pack" --rule "save=save_pretrained" | tee $HERE/train_profile.md

# 2. Twice the Lloyd iterations, and twice the tokens per code, trained and measured like the recipe itself.
python benchmarks/fidelity_sweep.py --data_dir $DATA --train_tokens_per_corpus 65536 --eval_tokens 8192 \
  --output_dir outputs/faithful_choice --results $HERE/fidelity.jsonl \
  --variants '[{"name": "kmeans_iters_4", "layers": [15], "kmeans_iters": 4, "progress": false},
               {"name": "kmeans_tokens_131072", "layers": [15], "kmeans_init_tokens": 131072, "progress": false}]'
