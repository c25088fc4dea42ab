#!/usr/bin/env bash
# One combined table per topic: the faithful bottleneck's rows (suite_topic.sh) beside the baseline rows recorded in
# the earlier `--fast` tables (benchmarks/results/eval_fast/TOPIC/table.json: the SAE guardrail and GA, GradDiff, NPO
# and RMU at their configured budgets), which `--combine` accepts only if that table's base row has this run's losses.
# Cyber has no recorded rows: RMU is run for it by rmu_cyber.sh, GA/NPO/GradDiff by baselines_cyber.sh. Run from the
# repository root after those:
#   bash benchmarks/results/faithful/combine_topic.sh microbiology [fp32|bf16]
set -euo pipefail
PATH="$PWD/.venv/bin:$PATH"
TOPIC=$1
TAG=${2:-fp32}
OUT=outputs/faithful/suite_${TOPIC}_$TAG
HERE=benchmarks/results/faithful/suite_$TOPIC
ours="base=$OUT/codebook_removal/base bottleneck=$OUT/bottleneck codebook_removal=$OUT/codebook_removal"
ours="$ours random_codes=$OUT/random_codes"
case $TOPIC in
  harry_potter) T=benchmarks/results/eval_fast/harry_potter/table.json
    recorded="sae_guardrail=$T#sae_guardrail ga=$T#ga grad_diff=$T#grad_diff_configured npo=$T#npo_configured rmu=$T#rmu" ;;
  microbiology) T=benchmarks/results/eval_fast/micro/table.json
    recorded="sae_guardrail=$T#sae_guardrail ga=$T#ga_configured grad_diff=$T#grad_diff_configured"
    recorded="$recorded npo=$T#npo_configured rmu=$T#rmu_configured"
    # the recorded table shows the relearning attack's `recovery` (the headline then), not `max_recovery`
    columns="--columns microbiology_loss wmdp_bio history_loss wikitext_loss sport_general mmlu arc_easy known_1000"
    columns="$columns sports_athlete fluency fluency_topic padding latent_probe relearning:recovery" ;;
  geography) T=benchmarks/results/eval_fast/geography/table.json
    recorded="sae_guardrail=$T#sae_guardrail ga=$T#ga grad_diff=$T#grad_diff npo=$T#npo rmu=$T#rmu"
    # the recorded table's columns, chosen for a fact topic (the rephrased-facts headline is at chance for the base)
    columns="--columns geo_facts:top1 other_facts:top1 history_loss wikitext_loss sport_general mmlu arc_easy"
    columns="$columns sports_athlete fluency rephrased_facts:multiple_choice rephrased_facts:few_shot"
    columns="$columns rephrased_facts:cloze relearning:facts_recovery" ;;
  cyber) # RMU and the gradient baselines this machine ran (rmu_cyber.sh, baselines_cyber.sh); a method not run here
    # comes from the committed table of an earlier run (checked against this run's base row like any recorded row)
    T=$HERE/table_${TAG}_recorded.json
    recorded=""
    for method in rmu ga npo grad_diff; do
      if [ -f $OUT/$method/report.json ]; then recorded="$recorded $method=$OUT/$method"
      elif [ -f $T ] && grep -q "\"$method\"" $T; then recorded="$recorded $method=$T#$method"; fi
    done ;;
  *) echo "error: unknown topic $TOPIC -- fix: harry_potter, microbiology, geography or cyber" >&2; exit 2 ;;
esac
# shellcheck disable=SC2086  # the row lists are meant to split
codeunlearn eval --combine $ours $recorded ${columns:-} --output_dir $OUT/table --overwrite --no_progress
cp $OUT/table/table.md $HERE/table_$TAG.md
cp $OUT/table/table.json $HERE/table_$TAG.json
cp $OUT/table/tradeoff.png $HERE/tradeoff_$TAG.png
