#!/usr/bin/env bash
# The faithful recipe measured end to end (issue 17). Run from the repository root, with ../shared/data beside it
# and the package installed (`make install`); writes outputs/faithful*/ and this folder's result files.
set -euo pipefail
export OMP_NUM_THREADS=2
PATH="$PWD/.venv/bin:$PATH"
DATA=../shared/data
MICRO=$DATA/topics/biology/corpus_openstax_microbiology.jsonl
CYBER=$DATA/topics/cyber/corpus_owasp_wstg.jsonl
HP=$DATA/demo/forget_harry_potter.txt
RETAIN="$DATA/retain/openstax_us_history.jsonl $DATA/retain/wikitext2_raw_test.txt"
HERE=benchmarks/results/faithful
rm -rf outputs/faithful outputs/faithful_forget

# 1. Train the default recipe as a user would, sampled by py-spy (10 samples/s, raw stacks summarised in RESULTS).
start=$(date +%s)
py-spy record --rate 10 --format raw --output $HERE/train_profile.txt -- \
  codeunlearn train --config configs/faithful_smollm2.yaml --output_dir outputs/faithful --no_progress | tee $HERE/train.log
test -f outputs/faithful/bottleneck/bottleneck_config.json  # py-spy exits 0 whatever its child did
echo "seconds train command: $(( $(date +%s) - start ))" | tee -a $HERE/train.log

# 2. Fidelity on every shipped corpus: held-out text of the general corpora it trained on, and of three topics it
#    never saw (8,192 held-out tokens each; the Harry Potter summaries hold out fewer).
python benchmarks/fidelity_sweep.py --data_dir $DATA --train_tokens_per_corpus 65536 --eval_tokens 8192 \
  --output_dir outputs/faithful_fidelity --results $HERE/fidelity.jsonl \
  --variants '[{"name": "faithful", "load": "outputs/faithful/bottleneck"}]'

# 3. Forgetting a new topic: one command each, the retain side read from the bottleneck's cache. N per topic as
#    fixed before this bottleneck existed (the earlier 8-stage bottleneck's goal-meeting points, RESULTS).
for spec in "harry_potter $HP 1024" "microbiology $MICRO 4096" "cyber $CYBER 2048"; do
  set -- $spec
  start=$(date +%s)
  codeunlearn forget --bottleneck_dir outputs/faithful/bottleneck --forget_corpora $2 --max_tokens 24576 \
    --topic $1 --num_codes $3 --output_dir outputs/faithful_forget/$1 --no_progress | tee $HERE/forget_$1.log
  echo "seconds forget command $1: $(( $(date +%s) - start ))" | tee -a $HERE/forget_$1.log
  # held-out forget and retain loss: base, bottleneck, the edit (saved in edited/), its random control
  codeunlearn eval --bottleneck_dir outputs/faithful_forget/$1/edited --forget_corpora $2 --retain_corpora $RETAIN \
    --max_tokens 4096 --edits outputs/faithful_forget/$1/random_control.json \
    --output_dir outputs/faithful_forget/$1/eval --no_progress > /dev/null
  cp outputs/faithful_forget/$1/eval/report.md $HERE/eval_$1.md
done

# 4. The statistics pass against its limit (truncated forward + exhaustive search GEMM), and the edited model in use.
python benchmarks/stats_speed.py --bottleneck outputs/faithful/bottleneck --tokens 8192 --repeats 3 \
  --precisions fp32 --no_results | tee $HERE/stats_speed.log
python benchmarks/inference_speed.py --bottleneck outputs/faithful/bottleneck \
  --edit outputs/faithful_forget/microbiology/edit.json --repeats 3 --output $HERE/inference_speed.json \
  | tee $HERE/inference_speed.log
