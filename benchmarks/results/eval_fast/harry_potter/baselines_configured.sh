#!/bin/bash
# The gradient baselines on Harry Potter at their configured budgets (configs/baselines/*.yaml), one thread; each
# marks outputs/hp/baselines/METHOD.done for pipeline.sh, which evaluates it.
# Run from the repository root: bash benchmarks/results/eval_fast/harry_potter/baselines_configured.sh
# As recorded RMU and GA finished; it was stopped when GA ended, and baselines_reduced.sh trained GradDiff and NPO.
set -x
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
D=../shared/data; H=outputs/hp; CU=.venv/bin/codeunlearn
F=$D/topics/harry_potter/corpus_wikipedia_plot_summaries.txt; R="$D/retain/openstax_us_history.jsonl $D/retain/wikitext2_raw_test.txt"
mkdir -p $H/baselines
for m in rmu ga grad_diff npo; do
  S0=$(date +%s)
  $CU baseline --config configs/baselines/$m.yaml --forget_corpora $F --retain_corpora $R --output_dir $H/baselines/$m --no_progress
  echo "seconds baseline_$m: $(( $(date +%s) - S0 ))"
  touch $H/baselines/$m.done
done
