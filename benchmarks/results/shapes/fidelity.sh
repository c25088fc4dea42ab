#!/usr/bin/env bash
# Codebook shapes: what each costs in fidelity and training time, side by side in one run (RESULTS, "Codebook
# shapes"). The default (8 stages x 4,096 codes) is retrained here so every training time comes from the same run.
# Every variant uses the faithful recipe's other settings (configs/faithful_smollm2.yaml: layer 15, 8 heads, k-means
# on 65,536 cached states, 2 Lloyd iterations per stage), trained on the general text only.
# Run from the repository root with ../shared/data beside it.
set -euo pipefail
HERE=benchmarks/results/shapes
DATA=${DATA:-../shared/data}
python benchmarks/fidelity_sweep.py --data_dir $DATA --train_tokens_per_corpus 65536 --eval_tokens 8192 \
  --output_dir outputs/shapes --results $HERE/fidelity.jsonl \
  --variants '[{"name": "s8_c4096", "layers": [15], "num_stages": 8, "codebook_size": 4096, "progress": false},
               {"name": "s10_c1024", "layers": [15], "num_stages": 10, "codebook_size": 1024, "progress": false},
               {"name": "s12_c512", "layers": [15], "num_stages": 12, "codebook_size": 512, "progress": false},
               {"name": "s16_c256", "layers": [15], "num_stages": 16, "codebook_size": 256, "progress": false},
               {"name": "s12_c256", "layers": [15], "num_stages": 12, "codebook_size": 256, "progress": false}]'
