#!/usr/bin/env bash
# Forgetting a new topic in fp32 and with bf16 autocast of the frozen model (the search stays fp32), side by side in
# one run: the fixed-N commands of run.sh, each edit then scored on held-out text as there. The retain side is the
# statistics `train` kept, named by file because the geography edit (seq_len 64) adds a second cache entry. Run from
# the repository root after run.sh.
set -euo pipefail
export OMP_NUM_THREADS=2
PATH="$PWD/.venv/bin:$PATH"
DATA=../shared/data
RETAIN="$DATA/retain/openstax_us_history.jsonl $DATA/retain/wikitext2_raw_test.txt"
HERE=benchmarks/results/faithful
LOG=$HERE/forget_speed.log
: > $LOG
mkdir -p outputs/faithful_forget_speed
for spec in "microbiology $DATA/topics/biology/corpus_openstax_microbiology.jsonl 4096" \
            "cyber $DATA/topics/cyber/corpus_owasp_wstg.jsonl 2048"; do
  set -- $spec
  for precision in fp32 bf16; do
    flag=$([ $precision = bf16 ] && echo --bf16 || true)
    out=outputs/faithful_forget_speed/${1}_$precision
    rm -rf $out
    codeunlearn forget --bottleneck_dir outputs/faithful/bottleneck --forget_corpora $2 --max_tokens 24576 \
      --retain_stats outputs/faithful/bottleneck/statistics/retain-33e0c5da2eb4935b.safetensors \
      --topic $1 --num_codes $3 --output_dir $out --no_progress $flag > $out.log
    echo "$1 $precision: $(grep 'forgetting took' $out.log)" | tee -a $LOG
    codeunlearn eval --bottleneck_dir $out/edited --forget_corpora $2 --retain_corpora $RETAIN --max_tokens 4096 \
      --edits $out/random_control.json --output_dir $out/eval --no_progress > /dev/null
    grep -E "^\| (base|bottleneck|$1/random)" $out/eval/report.md | sed "s/^/$1 $precision: /" | tee -a $LOG
  done
done
