#!/usr/bin/env bash
# The evaluation suite (`--fast`, with attacks) on the faithful bottleneck's Harry Potter edit (N by the validation
# rule: configs/forget_harry_potter.json), its random-codes control and the unedited bottleneck. Run from the
# repository root after run.sh and `codeunlearn forget configs/forget_harry_potter.json`.
set -euo pipefail
export OMP_NUM_THREADS=2
PATH="$PWD/.venv/bin:$PATH"
HERE=benchmarks/results/faithful/suite_harry_potter
OUT=outputs/faithful/suite_hp
mkdir -p $HERE
codeunlearn apply --bottleneck_dir outputs/faithful/bottleneck --edits outputs/faithful/forget_hp/random_control.json \
  --output_dir outputs/faithful/forget_hp/random --overwrite
codeunlearn eval --suite harry_potter --model outputs/faithful/forget_hp/edited --data_dir ../shared/data --fast \
  --attacks --with_base --output_dir $OUT/edited --no_progress
cp $OUT/edited/report.md $HERE/report_codebook_removal.md; cp $OUT/edited/base/report.md $HERE/report_base.md
for name in random bottleneck; do
  model=outputs/faithful/forget_hp/random; [ $name = bottleneck ] && model=outputs/faithful/bottleneck
  codeunlearn eval --suite harry_potter --model $model --data_dir ../shared/data --fast --attacks \
    --baseline_report $OUT/edited/base/report.json --output_dir $OUT/$name --no_progress
  cp $OUT/$name/report.md $HERE/report_$name.md
done
