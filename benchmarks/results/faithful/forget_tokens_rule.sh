#!/usr/bin/env bash
# The 4,096-token forget sample of forget_tokens.sh with N picked by the suite's validation rule instead of the
# suite's N (configs/forget_TOPIC.json: the largest N on its grid whose retain cost on validation text, train-split
# text after what the bottleneck trained on, stays <= 0.05), then the same held-out evaluation. Run from the
# repository root after forget_tokens.sh; appends to forget_tokens.log.
set -euo pipefail
export OMP_NUM_THREADS=2
PATH="$PWD/.venv/bin:$PATH"
DATA=../shared/data
RETAIN="$DATA/retain/openstax_us_history.jsonl $DATA/retain/wikitext2_raw_test.txt"
LOG=benchmarks/results/faithful/forget_tokens.log
OUT=outputs/faithful_forget_tokens
for spec in "cyber $DATA/topics/cyber/corpus_owasp_wstg.jsonl" \
            "microbiology $DATA/topics/biology/corpus_openstax_microbiology.jsonl"; do
  set -- $spec
  out=$OUT/${1}_4096_rule
  rm -rf $out
  codeunlearn forget --config configs/forget_$1.json --max_tokens 4096 --bf16 --no_progress --output_dir $out \
    > $out.log
  echo "$1 4096 bf16 rule: $(grep 'forgetting took' $out.log)" | tee -a $LOG
  grep "retain cost on validation" $out.log | sed "s/^/$1 4096 bf16 rule: /" | tee -a $LOG
  codeunlearn eval --bottleneck_dir $out/edited --forget_corpora $2 --retain_corpora $RETAIN --max_tokens 4096 \
    --edits $out/random_control.json --output_dir $out/eval --no_progress > /dev/null
  grep -E "^\| (bottleneck \+|$1/random)" $out/eval/report.md | sed "s/^/$1 4096 bf16 rule: /" | tee -a $LOG
done
