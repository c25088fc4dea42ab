#!/usr/bin/env bash
# The open-weight study (issue 20) for one topic: the faithful bottleneck's zero-shot edit exported (remote code, a
# switch), the same edit baked into the stock weights by distillation (and, with UNDO_ALPHA=A, baked again from
# weights perturbed as UNDO does), and the comparison models of train_comparisons.sh (RMU, NPO at their configured
# budgets; an SAE guardrail when one was made), each through the study suite (suite_TOPIC.yaml: held-out losses,
# general probes, bypass, quantization, 50-step relearning) in fp32, then one combined table, what each method
# keeps under each attack (benchmarks/open_weights_table.py) and the model cards the two exports would be pushed
# with. Run from the repository root after benchmarks/results/faithful/run.sh (the bottleneck and its edits) and
# train_comparisons.sh:
#   bash benchmarks/results/open_weights/run.sh harry_potter      # or microbiology
#   UNDO_ALPHA=0.05 bash benchmarks/results/open_weights/run.sh harry_potter
# Each step is skipped when its output exists, and a row whose report is kept beside this script
# (report_TOPIC_ROW.json) is not measured again: a clean clone measures only the rows it lacks (delete a kept report
# to measure that row again). Logs, tables and cards beside this script.
set -euo pipefail
export OMP_NUM_THREADS=2
PATH="$PWD/.venv/bin:$PATH"
TOPIC=$1
HERE=benchmarks/results/open_weights
OUT=outputs/open_weights
D=../shared/data
BOTTLENECK=outputs/faithful/bottleneck
case $TOPIC in
  harry_potter) EDIT=outputs/faithful/forget_hp/edit.json; FORGET=$D/demo/forget_harry_potter.txt ;;
  microbiology) EDIT=outputs/faithful/forget_microbiology/edit.json
    FORGET=$D/topics/biology/corpus_openstax_microbiology.jsonl ;;
  *) echo "error: unknown topic $TOPIC -- fix: harry_potter or microbiology" >&2; exit 2 ;;
esac
RETAIN="$D/retain/openstax_us_history.jsonl $D/retain/wikitext2_raw_test.txt"
SUITE=$HERE/suite_$TOPIC.yaml
EVAL=$OUT/eval_$TOPIC
mkdir -p $OUT
kept() {  # ROW: true when ROW's report is measured, put in place from the copy kept beside this script if need be
  local row=$1 copy=$HERE/report_${TOPIC}_$1
  [ -f $EVAL/$row/report.json ] && return 0
  [ -f $copy.json ] || return 1
  mkdir -p $EVAL/$row
  cp $copy.json $EVAL/$row/report.json
  cp $copy.md $EVAL/$row/report.md
}
export_edit() {
  [ -d $OUT/export_$TOPIC ] && return 0
  codeunlearn export --model smollm2-135m --bottleneck $BOTTLENECK --edit $EDIT --out $OUT/export_$TOPIC --no_progress
}
bake() {  # NAME [EXTRA ARGS]: the edit baked with the default distillation settings (bf16), timed
  local name=$1; shift
  [ -d $OUT/$name ] && return 0
  local start=$(date +%s)
  # shellcheck disable=SC2086  # RETAIN is a list
  codeunlearn export --mode bake --model smollm2-135m --bottleneck $BOTTLENECK --edit $EDIT --forget_corpora $FORGET \
    --retain_corpora $RETAIN --max_tokens 65536 --eval_max_tokens 4096 --bf16 --out $OUT/$name --no_progress "$@" \
    2>&1 | grep -v "de-quantizing GGUF\|Loading weights\|Writing model shards" | tee $HERE/$name.log
  echo "seconds bake command: $(( $(date +%s) - start ))" | tee -a $HERE/$name.log
}
evaluate() {  # NAME MODEL: the study suite with attacks, fp32, against the base model's report
  local name=$1 model=$2
  [ -f $EVAL/$name/report.json ] && return 0
  local against=()
  [ $name != base ] && against=(--baseline_report $EVAL/base/report.json)
  codeunlearn eval --suite $SUITE --model $model --data_dir $D --attacks --no_bf16 "${against[@]}" \
    --output_dir $EVAL/$name --no_progress
}
kept base || evaluate base smollm2-135m
kept codebook_export || { export_edit; evaluate codebook_export $OUT/export_$TOPIC; }
kept codebook_baked || { bake bake_$TOPIC; evaluate codebook_baked $OUT/bake_$TOPIC; }
rows="base=$EVAL/base codebook_export=$EVAL/codebook_export codebook_baked=$EVAL/codebook_baked"
if kept codebook_baked_undo || [ -n "${UNDO_ALPHA:-}" ]; then
  kept codebook_baked_undo || { bake bake_undo_$TOPIC --perturb_alpha "$UNDO_ALPHA"
    evaluate codebook_baked_undo $OUT/bake_undo_$TOPIC; }
  rows="$rows codebook_baked_undo=$EVAL/codebook_baked_undo"
fi
# The comparison models of train_comparisons.sh, where they were made.
for row in rmu:rmu_$TOPIC/model npo:npo_$TOPIC/model sae_guardrail:sae_guardrail_$TOPIC/bottleneck; do
  name=${row%%:*} model=$OUT/${row#*:}
  if kept $name || [ -d $model ]; then
    kept $name || evaluate $name $model
    rows="$rows $name=$EVAL/$name"
  fi
done
columns="--columns $(sed -n 's/^  - {name: \([a-z0-9_]*\),.*/\1/p' $SUITE | tr '\n' ' ')"
columns="$columns bypass:forget_recovery quantization:forget_recovery_8bit quantization:forget_recovery_4bit"
columns="$columns relearning:max_recovery"
# shellcheck disable=SC2086  # the row and column lists are meant to split
codeunlearn eval --combine $rows $columns --output_dir $EVAL/table --overwrite --no_progress
cp $EVAL/table/table.md $HERE/table_$TOPIC.md
cp $EVAL/table/table.json $HERE/table_$TOPIC.json
reports=""
for name in $EVAL/*/report.json; do
  row=$(basename "$(dirname "$name")")
  cp "$name" "$HERE/report_${TOPIC}_$row.json"
  cp "${name%.json}.md" "$HERE/report_${TOPIC}_$row.md"
  reports="$reports $row=$HERE/report_${TOPIC}_$row.json"
done
baked="--baked codebook_baked"; [ -d $EVAL/codebook_baked_undo ] && baked="$baked --baked codebook_baked_undo"
# shellcheck disable=SC2086  # the lists are meant to split
python benchmarks/open_weights_table.py $baked $reports | tee $HERE/kept_$TOPIC.md
# The cards `codeunlearn push --eval_report` would publish, with the measured attack rows.
for pair in export_$TOPIC:codebook_export bake_$TOPIC:codebook_baked; do
  [ -d $OUT/${pair%%:*} ] || continue  # a row kept from an earlier run: its card is kept too
  python -c "import sys; from codeunlearn.export.card import model_card
model_card(sys.argv[1], repo_id=sys.argv[2], eval_report=sys.argv[3]).save(sys.argv[4])" \
    $OUT/${pair%%:*} you/smollm2-135m-${pair%%_*}-$TOPIC $EVAL/${pair#*:}/report.json $HERE/card_${pair%%:*}.md
done
