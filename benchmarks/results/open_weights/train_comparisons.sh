#!/usr/bin/env bash
# The comparison models of the open-weight study, trained once: RMU and NPO at their configured budgets
# (configs/baselines/{rmu,npo}.yaml) on Harry Potter and microbiology, the TopK SAE (the recorded SAE recipe of
# benchmarks/RESULTS.md) and its guardrail edit per topic: the recorded setting of the four-topic tables, fixed before
# this study (clamp of the 1,024 features by mean activation difference, gated where a 32-token window's mean count
# passes the threshold that opens on 2% of U.S.-history train windows). Run from the repository root, with the
# targets to make (default: all, in this order):
#   bash benchmarks/results/open_weights/train_comparisons.sh [rmu_harry_potter rmu_microbiology npo_harry_potter
#     npo_microbiology sae_train sae_guardrail_harry_potter sae_guardrail_microbiology]
# A target whose output exists is skipped, so an interrupted run resumes. Logs (with wall times) beside this script.
set -euo pipefail
export OMP_NUM_THREADS=2
PATH="$PWD/.venv/bin:$PATH"
HERE=benchmarks/results/open_weights
OUT=outputs/open_weights
D=../shared/data
R="$D/retain/openstax_us_history.jsonl $D/retain/wikitext2_raw_test.txt"
declare -A FORGET=([harry_potter]=$D/demo/forget_harry_potter.txt [microbiology]=$D/topics/biology/corpus_openstax_microbiology.jsonl)
mkdir -p $OUT
timed() {  # NAME COMMAND...: run once, log, and record the wall time
  local name=$1; shift
  [ -f $OUT/$name.done ] && return 0
  local start=$(date +%s)
  "$@" 2>&1 | grep -v "de-quantizing GGUF\|Loading weights\|Writing model shards" | tee $HERE/$name.log
  echo "seconds $name: $(( $(date +%s) - start ))" | tee -a $HERE/$name.log
  touch $OUT/$name.done
}
build() {
  case $1 in
    rmu_*|npo_*) local method=${1%%_*} topic=${1#*_}
      timed $1 codeunlearn baseline --config configs/baselines/$method.yaml --forget_corpora ${FORGET[$topic]} \
        --eval_max_tokens 4096 --output_dir $OUT/$1 --overwrite --no_progress ;;
    sae_train)
      timed sae_train codeunlearn train --bottleneck sae --layers 15 --sae_architecture topk --sae_expansion_factor 8 \
        --sae_k 32 --corpora $D/topics/biology/corpus_openstax_microbiology.jsonl $D/retain/openstax_us_history.jsonl \
        $D/retain/wikitext2_raw_test.txt $D/topics/cyber/corpus_owasp_wstg.jsonl $D/demo/forget_harry_potter.txt \
        --max_tokens 100000 --sae_steps 400 --sae_updates_per_batch 4 --batch_size 8 --output_dir $OUT/sae_l15 \
        --no_progress ;;
    sae_guardrail_*) local topic=${1#sae_guardrail_} dir=$OUT/$1
      # shellcheck disable=SC2086  # R is a list
      timed $1 bash -c "set -euo pipefail
        codeunlearn forget --bottleneck_dir $OUT/sae_l15/bottleneck --forget_corpora ${FORGET[$topic]} \
          --retain_corpora $R --max_tokens 32768 --topic $topic --score mean_activation_difference \
          --intervention clamp --num_codes 1024 --output_dir $dir/clamp --overwrite --no_progress
        codeunlearn calibrate --bottleneck_dir $OUT/sae_l15/bottleneck --edit $dir/clamp/edit.json \
          --retain_corpora $D/retain/openstax_us_history.jsonl --max_tokens 65536 --window 32 --target_fpr 0.02 \
          --output_file $dir/guardrail.json --overwrite --no_progress
        codeunlearn apply --bottleneck_dir $OUT/sae_l15/bottleneck --edits $dir/guardrail.json \
          --output_dir $dir/bottleneck --overwrite" ;;
    *) echo "error: unknown target $1 -- fix: rmu_TOPIC, npo_TOPIC, sae_guardrail_TOPIC (harry_potter, microbiology) or sae_train" >&2
      exit 2 ;;
  esac
}
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(rmu_harry_potter rmu_microbiology npo_harry_potter npo_microbiology sae_train \
  sae_guardrail_harry_potter sae_guardrail_microbiology)
for target in "${targets[@]}"; do build $target; done
