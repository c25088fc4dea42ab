#!/usr/bin/env bash
# How much forget text the one-command forget pass needs: RMU's configured training on cyber, then, in the same run,
# the fixed-N forget pass with bf16 autocast on the first T train-split tokens of cyber and microbiology
# (T = 2,048 ... 24,576; fp32 beside it at 4,096), each edit scored on the same held-out text with its random control,
# and the share of the 24,576-token selection each smaller sample also selects (selections only, no held-out text).
# N is the one the validation rule picked for each topic in the suite (configs/forget_TOPIC.json, suite_TOPIC/).
# Run from the repository root after run.sh.
set -euo pipefail
export OMP_NUM_THREADS=2
PATH="$PWD/.venv/bin:$PATH"
DATA=../shared/data
RETAIN="$DATA/retain/openstax_us_history.jsonl $DATA/retain/wikitext2_raw_test.txt"
HERE=benchmarks/results/faithful
OUT=outputs/faithful_forget_tokens
LOG=$HERE/forget_tokens.log
: > $LOG
mkdir -p $OUT
codeunlearn baseline --config configs/baselines/rmu.yaml \
  --forget_corpora $DATA/topics/cyber/corpus_owasp_wstg.jsonl --eval_max_tokens 4096 \
  --output_dir $OUT/cyber_rmu --overwrite --no_progress > $OUT/cyber_rmu.log
echo "cyber rmu: $(grep '^trained' $OUT/cyber_rmu.log)" | tee -a $LOG
for spec in "cyber $DATA/topics/cyber/corpus_owasp_wstg.jsonl 6144" \
            "microbiology $DATA/topics/biology/corpus_openstax_microbiology.jsonl 6144"; do
  set -- $spec
  for run in "2048 bf16" "4096 bf16" "8192 bf16" "24576 bf16" "4096 fp32"; do
    read -r tokens precision <<< "$run"
    flag=$([ $precision = bf16 ] && echo --bf16 || true)
    out=$OUT/${1}_${tokens}_$precision
    rm -rf $out
    codeunlearn forget --bottleneck_dir outputs/faithful/bottleneck --forget_corpora $2 --max_tokens $tokens \
      --retain_stats outputs/faithful/bottleneck/statistics/retain-33e0c5da2eb4935b.safetensors \
      --topic $1 --num_codes $3 --output_dir $out --no_progress $flag > $out.log
    echo "$1 $tokens $precision: $(grep 'forgetting took' $out.log)" | tee -a $LOG
    codeunlearn eval --bottleneck_dir $out/edited --forget_corpora $2 --retain_corpora $RETAIN --max_tokens 4096 \
      --edits $out/random_control.json --output_dir $out/eval --no_progress > /dev/null
    grep -E "^\| (base|bottleneck|$1/random)" $out/eval/report.md | sed "s/^/$1 $tokens $precision: /" | tee -a $LOG
  done
  python benchmarks/edit_overlap.py --reference $OUT/${1}_24576_bf16/edit.json $OUT/${1}_*/edit.json | tee -a $LOG
done
