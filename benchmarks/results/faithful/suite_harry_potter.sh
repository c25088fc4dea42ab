#!/usr/bin/env bash
# The evaluation suite (`--fast`, with attacks) on the faithful bottleneck's Harry Potter edit (N by the validation
# rule: configs/forget_harry_potter.json), its random-codes control and the unedited bottleneck. Run from the
# repository root after run.sh and `codeunlearn forget configs/forget_harry_potter.json`. PRECISION=--no_bf16 runs
# the model in fp32, as the recorded baseline rows were (bf16 autocast is the suite's default where it is fast).
# The files written here end in _bf16 or _fp32 accordingly.
set -euo pipefail
export OMP_NUM_THREADS=2
PATH="$PWD/.venv/bin:$PATH"
PRECISION=${PRECISION:-}
TAG=$([ "$PRECISION" = --no_bf16 ] && echo fp32 || echo bf16)
HERE=benchmarks/results/faithful/suite_harry_potter
OUT=outputs/faithful/suite_hp_$TAG
mkdir -p $HERE
codeunlearn apply --bottleneck_dir outputs/faithful/bottleneck --edits outputs/faithful/forget_hp/random_control.json \
  --output_dir outputs/faithful/forget_hp/random --overwrite
codeunlearn eval --suite harry_potter --model outputs/faithful/forget_hp/edited --data_dir ../shared/data --fast \
  --attacks --with_base --output_dir $OUT/edited --no_progress $PRECISION
cp $OUT/edited/report.md $HERE/report_codebook_removal_$TAG.md; cp $OUT/edited/base/report.md $HERE/report_base_$TAG.md
for name in random bottleneck; do
  model=outputs/faithful/forget_hp/random; [ $name = bottleneck ] && model=outputs/faithful/bottleneck
  codeunlearn eval --suite harry_potter --model $model --data_dir ../shared/data --fast --attacks \
    --baseline_report $OUT/edited/base/report.json --output_dir $OUT/$name --no_progress $PRECISION
  cp $OUT/$name/report.md $HERE/report_${name}_$TAG.md
done
codeunlearn eval --combine base=$OUT/edited/base bottleneck=$OUT/bottleneck codebook_removal=$OUT/edited \
  random_codes=$OUT/random --output_dir $OUT/table --no_progress
cp $OUT/table/table.md $HERE/table_$TAG.md; cp $OUT/table/tradeoff.png $HERE/tradeoff_$TAG.png
