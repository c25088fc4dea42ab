#!/bin/bash
# Lane B: HP baselines at their configured budgets (configs/baselines/*.yaml), one thread.
# As run: RMU and GA finished; the script was stopped when GA ended (baselines_reduced.sh ran GradDiff and NPO instead).
set -x
cd /work/main
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
echo LANE B DONE
