#!/usr/bin/env bash
# The comparison models of the open-weight study, trained once: RMU and NPO at their configured budgets
# (configs/baselines/{rmu,npo}.yaml) on Harry Potter and microbiology, and the TopK SAE the guardrail rows edit (the
# recorded SAE recipe of benchmarks/RESULTS.md). Run from the repository root; each step is skipped when its output
# exists, so an interrupted run resumes. Logs beside this script.
set -euo pipefail
export OMP_NUM_THREADS=2
PATH="$PWD/.venv/bin:$PATH"
HERE=benchmarks/results/open_weights
OUT=outputs/open_weights
D=../shared/data
declare -A FORGET=([harry_potter]=$D/demo/forget_harry_potter.txt [microbiology]=$D/topics/biology/corpus_openstax_microbiology.jsonl)
mkdir -p $OUT
timed() {  # NAME COMMAND...: run once, log, and record the wall time
  local name=$1; shift
  [ -f $OUT/$name.done ] && return 0
  local start=$(date +%s)
  "$@" 2>&1 | tee $HERE/$name.log
  echo "seconds $name: $(( $(date +%s) - start ))" | tee -a $HERE/$name.log
  touch $OUT/$name.done
}
for method in rmu npo; do
  for topic in harry_potter microbiology; do
    timed ${method}_$topic codeunlearn baseline --config configs/baselines/$method.yaml --forget_corpora ${FORGET[$topic]} \
      --eval_max_tokens 4096 --output_dir $OUT/${method}_$topic --overwrite --no_progress
  done
  if [ $method = rmu ]; then
    timed sae_train codeunlearn train --bottleneck sae --layers 15 --sae_architecture topk --sae_expansion_factor 8 \
      --sae_k 32 --corpora $D/topics/biology/corpus_openstax_microbiology.jsonl $D/retain/openstax_us_history.jsonl \
      $D/retain/wikitext2_raw_test.txt $D/topics/cyber/corpus_owasp_wstg.jsonl $D/demo/forget_harry_potter.txt \
      --max_tokens 100000 --sae_steps 400 --sae_updates_per_batch 4 --batch_size 8 --output_dir $OUT/sae_l15 \
      --no_progress
  fi
done
