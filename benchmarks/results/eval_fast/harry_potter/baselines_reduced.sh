#!/bin/bash
# GradDiff and NPO on Harry Potter at the reduced budget of the microbiology table (10 steps x 4 chunks): at one
# thread an 8-chunk GA step takes ~40 s here, so the configured 60 x 8 GradDiff and NPO take ~80-100 min each
# (baselines_configured_grad_diff.sh and baselines_configured_npo.sh run them). Each marks
# outputs/hp/baselines/METHOD.done for pipeline.sh, which evaluates it.
# Run from the repository root once baselines_configured.sh has trained RMU and GA (it replaced the rest of that
# script): bash benchmarks/results/eval_fast/harry_potter/baselines_reduced.sh
set -x
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
D=../shared/data; H=outputs/hp; CU=.venv/bin/codeunlearn
F=$D/topics/harry_potter/corpus_wikipedia_plot_summaries.txt; R="$D/retain/openstax_us_history.jsonl $D/retain/wikitext2_raw_test.txt"
for m in grad_diff npo; do
  rm -rf $H/baselines/$m
  S0=$(date +%s)
  $CU baseline --config configs/baselines/$m.yaml --max_steps 10 --batch_size 4 --forget_corpora $F --retain_corpora $R --output_dir $H/baselines/$m --no_progress
  echo "seconds baseline_$m: $(( $(date +%s) - S0 ))"
  touch $H/baselines/$m.done
done
