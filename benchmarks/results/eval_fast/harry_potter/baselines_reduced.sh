#!/bin/bash
# Lane B's GradDiff and NPO swapped for the reduced budget of the microbiology table (10 steps x 4 chunks): at one
# thread a 8-chunk GA step takes ~40 s here, so the configured 60 x 8 GradDiff/NPO (~80-100 min each) do not fit the
# session. Waits for lane B's GA, stops lane B, trains both, marks each done for lane A.
set -x
cd /work/main
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
D=../shared/data; H=outputs/hp; CU=.venv/bin/codeunlearn
F=$D/topics/harry_potter/corpus_wikipedia_plot_summaries.txt; R="$D/retain/openstax_us_history.jsonl $D/retain/wikitext2_raw_test.txt"
while ! grep -q "^seconds baseline_ga" outputs/queue25b.log; do sleep 3; done
P=$(pgrep -f queue25b.sh); kill -STOP $P; pkill -P $P; kill -9 $P
sleep 2; pkill -f "baseline --config configs/baselines/grad_diff.yaml"; [ -e $H/baselines/ga/model ] && touch $H/baselines/ga.done
for m in grad_diff npo; do
  rm -rf $H/baselines/$m
  S0=$(date +%s)
  $CU baseline --config configs/baselines/$m.yaml --max_steps 10 --batch_size 4 --forget_corpora $F --retain_corpora $R --output_dir $H/baselines/$m --no_progress
  echo "seconds baseline_$m: $(( $(date +%s) - S0 ))"
  touch $H/baselines/$m.done
done
echo LANE D DONE
