#!/usr/bin/env bash
# The demo (train on general text, forget Harry Potter zero-shot with N by the rule of configs/demo.yaml, evaluate
# with the random-codes control) on each codebook shape, then the speed of each edited model in use against its base
# model (benchmarks/inference_speed.py: 8 x 256-token prefill and 31 cached greedy steps, medians of 3 interleaved
# repeats). RESULTS, "Codebook shapes". Run from the repository root with ../shared/data beside it;
# SHAPES="STAGES CODES,..." runs a subset.
set -euo pipefail
HERE=benchmarks/results/shapes
IFS=, read -ra shapes <<< "${SHAPES:-8 4096,16 256,12 512,10 1024}"
for shape in "${shapes[@]}"; do
  set -- $shape
  out=outputs/shapes/demo_s$1_c$2
  rm -rf $out
  python -m codeunlearn demo --num_stages $1 --codebook_size $2 --data_dir ${DATA:-../shared/data} --output_dir $out \
    --no_progress
  cp $out/report.md $HERE/demo_s$1_c$2_report.md
done
for shape in "${shapes[@]}"; do
  set -- $shape
  out=outputs/shapes/demo_s$1_c$2
  python benchmarks/inference_speed.py --bottleneck $out/bottleneck --edit $out/edit.json --repeats 3 \
    --output $HERE/inference_speed_s$1_c$2.json
done
# Where the default shape's edit found its topic codes: removed codes per stage.
if [ -d outputs/shapes/demo_s8_c4096 ]; then
  python benchmarks/shape_table.py --edit_stages outputs/shapes/demo_s8_c4096 > $HERE/edit_stages_s8_c4096.txt
fi
