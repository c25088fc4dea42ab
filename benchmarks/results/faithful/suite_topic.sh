#!/usr/bin/env bash
# The evaluation suite (`--fast`, with attacks) on the faithful bottleneck's zero-shot edit of one topic (N by the
# validation rule of configs/forget_TOPIC.json), its random-codes control and the unedited bottleneck, then one
# combined table with the recorded baseline rows (benchmarks/results/eval_fast/TOPIC_DIR/table.json) where there are
# any. Run from the repository root after run.sh:
#   PRECISION=--no_bf16 bash benchmarks/results/faithful/suite_topic.sh microbiology
# TOPIC: harry_potter, microbiology, cyber or geography (the fact topic: `codeunlearn fact-topic` writes its split and
# suite first). PRECISION=--no_bf16 runs the model in fp32, as the recorded baseline rows were (bf16 autocast is the
# suite's default where it is fast); files written here end in _bf16 or _fp32 accordingly.
set -euo pipefail
export OMP_NUM_THREADS=2
PATH="$PWD/.venv/bin:$PATH"
TOPIC=$1
PRECISION=${PRECISION:-}
TAG=$([ "$PRECISION" = --no_bf16 ] && echo fp32 || echo bf16)
CONFIG=configs/forget_$TOPIC.json
FORGET=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['output_dir'])" $CONFIG)
HERE=benchmarks/results/faithful/suite_$TOPIC
OUT=outputs/faithful/suite_${TOPIC}_$TAG
SUITE=$TOPIC
mkdir -p $HERE
if [ "$TOPIC" = geography ]; then
  codeunlearn fact-topic --known_facts ../shared/data/eval/known_1000.jsonl --output_dir outputs/faithful/geography_topic \
    --overwrite
  SUITE=outputs/faithful/geography_topic/suite.yaml
fi
if [ ! -f $FORGET/edit.json ]; then
  start=$(date +%s)
  codeunlearn forget $CONFIG --no_progress | tee $HERE/forget.log
  echo "seconds forget command: $(( $(date +%s) - start ))" | tee -a $HERE/forget.log
fi
codeunlearn apply --bottleneck_dir outputs/faithful/bottleneck --edits $FORGET/random_control.json \
  --output_dir $FORGET/random --overwrite
codeunlearn eval --suite $SUITE --model $FORGET/edited --data_dir ../shared/data --fast --attacks --with_base \
  --output_dir $OUT/codebook_removal --no_progress $PRECISION
cp $OUT/codebook_removal/report.md $HERE/report_codebook_removal_$TAG.md
cp $OUT/codebook_removal/base/report.md $HERE/report_base_$TAG.md
for name in random_codes bottleneck; do
  model=$FORGET/random; [ $name = bottleneck ] && model=outputs/faithful/bottleneck
  codeunlearn eval --suite $SUITE --model $model --data_dir ../shared/data --fast --attacks \
    --baseline_report $OUT/codebook_removal/base/report.json --output_dir $OUT/$name --no_progress $PRECISION
  cp $OUT/$name/report.md $HERE/report_${name}_$TAG.md
done
echo "suite $TOPIC done"
