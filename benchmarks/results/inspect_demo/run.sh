#!/usr/bin/env bash
# What the demo's Harry Potter edit removed (issue 21): the demo itself (its bottleneck and edit; skipped when
# outputs/demo/edit.json exists), `codeunlearn inspect` of the edit and its random control on the demo's corpora (the
# retain side capped at the 32,768 train tokens per corpus the demo's retain statistics counted), the count of
# benchmarks/inspect_topic_words.py (do the top contexts fire on Harry Potter's names and places?) and a screenshot
# of the page. Run from the repository root:
#   bash benchmarks/results/inspect_demo/run.sh
set -euo pipefail
export OMP_NUM_THREADS=2
PATH="$PWD/.venv/bin:$PATH"
HERE=benchmarks/results/inspect_demo
D=../shared/data
DEMO=outputs/demo
OUT=outputs/inspect_demo
if [ ! -f $DEMO/edit.json ]; then
  start=$(date +%s)
  codeunlearn demo --data_dir $D --output_dir $DEMO --no_progress 2>&1 \
    | grep -v "de-quantizing GGUF\|Loading weights\|Writing model shards" | tee $HERE/demo.log
  echo "seconds demo: $(( $(date +%s) - start ))" | tee -a $HERE/demo.log
fi
start=$(date +%s)
codeunlearn inspect --bottleneck_dir $DEMO/bottleneck --edit $DEMO/edit.json \
  --forget_corpora $D/demo/forget_harry_potter.txt \
  --retain_corpora $D/retain/openstax_us_history.jsonl $D/retain/wikitext2_raw_test.txt \
  --max_tokens 32768 --top 20 --output_dir $OUT --overwrite --no_progress 2>&1 \
  | grep -v "de-quantizing GGUF\|Loading weights" | tee $HERE/inspect.log
echo "seconds inspect: $(( $(date +%s) - start ))" | tee -a $HERE/inspect.log
python benchmarks/inspect_topic_words.py $OUT/inspect.json --top 20 | tee $HERE/topic_words.md
python benchmarks/inspect_screenshot.py --page $OUT/inspect.html --output docs/images/inspect_page.png
