"""Property tests (hypothesis): what must hold for *every* input, not only the hand-picked ones.

- Parsing: a bottleneck config, an edit file, the edits saved beside a bottleneck and a command-line config file
  either load, into something that writes back the same JSON, or fail with one `CodeunlearnError` line; never
  another exception (a traceback is a bug), and a refused load leaves the model as it was.
- Statistics: every quantized token contributes exactly one code per (stage, head) slot, the counted tokens are the
  positions that are not passed through, and counting is additive and independent of the batch size.
- Selection: loosening a threshold never drops a code unless a higher-scoring one took its place, and the top N
  codes are the first N of the top N + 1.
- Edits: composing is order independent for a codebook, undoing restores exactly what the remaining edits give,
  and undoing everything restores the original bottleneck and logits bit for bit.

Every test is derandomized with no example database, so CI runs the same examples every time.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import VOCAB, assert_fix_error, make_model, make_tokens, tiny_config
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from codeunlearn.bottleneck.architectures import decoder_layers
from codeunlearn.bottleneck.config import CONFIG_NAME, BottleneckConfig
from codeunlearn.bottleneck.edit import Edit, LayerCodes
from codeunlearn.bottleneck.model import EDITS_NAME, BottleneckedModel, BottleneckLayer
from codeunlearn.errors import CodeunlearnError
from codeunlearn.unlearn.selection import SelectionRule, feature_scores, select_codes
from codeunlearn.unlearn.statistics import CodeStatistics, collect_code_statistics

# Reproducible in CI: the same examples on every run, nothing carried over from earlier runs.
PROFILE = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def profile(max_examples: int) -> settings:
    """The reproducible profile with a test's own number of examples (sized to keep the file under a minute)."""
    return settings(PROFILE, max_examples=max_examples)


def is_one_line_error(err: CodeunlearnError) -> bool:
    message = str(err)
    return "\n" not in message and " -- fix: " in message


# ------------------------------------------------------------------------------------------------ JSON values
# Odd values a hand-edited or truncated file holds: every JSON type, NaN/Infinity (Python's json reads them),
# integers past float range, and values next to the valid ones (0, -1, strings of numbers, bools for numbers).
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=6)
    | st.sampled_from([0, -1, 1, 2, 8, 10**400, -(10**400), 0.5, -0.5, 1e308, math.inf, -math.inf, math.nan])
    | st.sampled_from(["8", "", "vq", "sae", "1", "12", "zero", "clamp"])
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any], values: st.SearchStrategy = JSON) -> dict[str, Any]:
    """`base` with a few keys dropped, a few values replaced by odd ones and maybe an unknown key added."""
    data = copy.deepcopy(base)
    keys = sorted(data)
    for key in draw(st.lists(st.sampled_from(keys), unique=True, max_size=2)):
        del data[key]
    for key in draw(st.lists(st.sampled_from(keys), unique=True, max_size=3)):
        data[key] = draw(values)
    data.update(draw(st.dictionaries(st.text(max_size=6), JSON, max_size=1)))
    return data


def dumps(data: Any) -> str:
    """JSON text as Python writes it (NaN and Infinity included: `json.loads` reads them back)."""
    return json.dumps(data)


# ------------------------------------------------------------------------------------------------ configs
VALID_CONFIGS = [
    tiny_config().to_dict(),
    tiny_config(kind="sae", sae_architecture="relu", sae_width=48, sae_k=4).to_dict(),
]


def check_config_loads_or_refuses(load: Any, data: Any) -> None:
    """`load()` refuses with one `CodeunlearnError` line, or gives a config that holds exactly the values it was
    given (nothing silently converted) and writes JSON that loads back into the same config."""
    try:
        config = load()
    except CodeunlearnError as err:
        assert is_one_line_error(err), str(err)
        return
    flat = config.to_dict()
    assert all(dumps(flat[key]) == dumps(value) for key, value in data.items()), (flat, data)
    text = config.to_json_string()
    again = BottleneckConfig.from_dict(json.loads(text))
    assert type(again) is type(config) and again.to_json_string() == text


@profile(300)
@given(data=JSON | st.sampled_from(VALID_CONFIGS).flatmap(mutated))
def test_bottleneck_config_from_dict_loads_or_refuses(data: Any) -> None:
    check_config_loads_or_refuses(lambda: BottleneckConfig.from_dict(data), data)


@profile(150)
@given(data=JSON | st.sampled_from(VALID_CONFIGS).flatmap(mutated), raw=st.none() | st.binary(max_size=40))
def test_bottleneck_config_file_loads_or_refuses(data: Any, raw: bytes | None) -> None:
    """The file `bottleneck_config.json` as users have it: valid JSON of any shape, or any bytes at all."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CONFIG_NAME
        if raw is None:
            path.write_text(dumps(data))
        else:
            path.write_bytes(raw)
        check_config_loads_or_refuses(lambda: BottleneckConfig.from_json_file(path), data)


# Loading a whole bottleneck directory whose config was edited: the weights on disk no longer match the shape it
# names, and that must be one line too (not a shape error from deep inside torch).
NUMBERS = st.sampled_from([0, 1, 2, 3, 4, 5, 8, 16, 32, 64, -1, 0.5, True, None, "4", 10**400, "block_output", "sae"])
LAYER_LISTS = st.sampled_from([[], [1], [2, 1], [1, 1, 2], [1, 2, 3], [1, 9], [-1, 2]])


@pytest.fixture(scope="module")
def spare_model() -> torch.nn.Module:
    """A 4-layer Llama that tests attach bottlenecks to and detach them from (a refused load must leave it bare)."""
    return make_model("llama", num_layers=4)


def is_bare(model: torch.nn.Module) -> bool:
    return not any(isinstance(layer, BottleneckLayer) for layer in decoder_layers(model))


@contextmanager
def load_with_file(
    trained_dir: Path, model: torch.nn.Module, name: str, content: Any
) -> Iterator[BottleneckedModel | None]:
    """A copy of the trained bottleneck directory with its file `name` replaced by `content` (as JSON), loaded onto
    `model`; None when the load is refused, which must be one line and leave `model` without a bottleneck."""
    with tempfile.TemporaryDirectory() as tmp:
        copy_dir = Path(tmp) / "bottleneck"
        shutil.copytree(trained_dir, copy_dir)
        (copy_dir / name).write_text(dumps(content))
        try:
            bmodel = BottleneckedModel.from_pretrained(model, copy_dir)
        except CodeunlearnError as err:
            assert is_one_line_error(err), str(err)
            assert is_bare(model)
            bmodel = None
        yield bmodel


@profile(60)
@given(data=st.data())
def test_edited_config_in_a_bottleneck_directory_loads_or_refuses(trained_dir, spare_model, data) -> None:
    base = json.loads((trained_dir / CONFIG_NAME).read_text())
    config = data.draw(mutated(base, values=NUMBERS | JSON))
    if data.draw(st.booleans()):  # the field an edit of the file most likely touches
        config["layers"] = data.draw(LAYER_LISTS)
    with load_with_file(trained_dir, spare_model, CONFIG_NAME, config) as bmodel:
        if bmodel is None:
            return
        try:  # what loads is a working bottleneck at every layer its config names
            assert bmodel.layers and len(set(bmodel.layers)) == len(bmodel.layers)
            assert all(isinstance(decoder_layers(spare_model)[layer], BottleneckLayer) for layer in bmodel.layers)
            with torch.no_grad():
                bmodel(input_ids=PROBE, use_cache=False)
        finally:
            bmodel.detach()
        assert is_bare(spare_model)


# ------------------------------------------------------------------------------------------------ edits
VQ_EDIT = Edit("wizards", {1: LayerCodes([3, 5], [1.5, 0.5]), 2: LayerCodes([7])}).to_dict()
SAE_CLAMP = Edit(
    "wizards", {0: LayerCodes([1, 4], [0.9, 0.1], [0.5, 2.0])}, "clamp", kind="sae", multiplier=-10.0
).to_dict()
SAE_GUARDRAIL = {
    **SAE_CLAMP,
    "intervention": "guardrail",
    "guardrail": {"window": 4, "action": "zero", "target_fpr": 0.02, "thresholds": {"0": 0.5}, "calibration": {}},
}
VALID_EDITS = [VQ_EDIT, SAE_CLAMP, SAE_GUARDRAIL]
# A layer's entry with odd lists: what a hand edit of the codes, scores or scales leaves.
ODD_LISTS = st.lists(SCALARS, max_size=3) | SCALARS


@st.composite
def edit_data(draw: st.DrawFn) -> Any:
    """Anything JSON (rarely: it is refused at once), or a valid edit with mutations at its top level, in one
    layer's entry (its key or its lists) or in its guardrail."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    data = copy.deepcopy(draw(st.sampled_from(VALID_EDITS)))
    where = draw(st.sampled_from(["top", "layer", "layer", "guardrail"]))
    if where == "top":
        return draw(mutated(data))
    if where == "guardrail" and "guardrail" in data:
        data["guardrail"] = draw(mutated(data["guardrail"]))
        thresholds = data["guardrail"].get("thresholds")
        if isinstance(thresholds, dict) and draw(st.booleans()):
            data["guardrail"]["thresholds"] = draw(st.dictionaries(st.sampled_from(["0", "1", "x", "-1"]), SCALARS))
        return data
    layers = data["layers"]
    layer = draw(st.sampled_from(sorted(layers)))
    entry = layers.pop(layer)
    layers[draw(st.sampled_from([layer, "3", "-1", "x", "1.5", " 2"]))] = draw(mutated(entry, values=ODD_LISTS))
    return data


def check_edit_keeps_the_file(edit: Edit, data: dict[str, Any]) -> None:
    """A loaded edit holds exactly what its JSON says (nothing converted: `"12"` is not codes [1, 2]) and writes
    the JSON that loads back into the same edit."""
    written = edit.to_dict()

    def as_float(value: Any) -> Any:  # an integer where a float belongs is read as that float
        return float(value) if isinstance(value, int) else value

    for name in ("topic", "kind", "intervention", "bottleneck_fingerprint", "rule"):
        if name in data:
            assert dumps(written[name]) == dumps(data[name]), name
    if data.get("multiplier") is not None:
        assert dumps(written["multiplier"]) == dumps(as_float(data["multiplier"]))
    for layer, entry in data["layers"].items():
        codes = edit.layers[int(layer)]
        assert dumps(codes.codes) == dumps(entry["codes"]), layer
        for name in ("scores", "scales"):
            assert dumps(getattr(codes, name)) == dumps([as_float(v) for v in entry.get(name, [])]), (layer, name)
    text = dumps(written)
    assert dumps(Edit.from_dict(json.loads(text)).to_dict()) == text


@profile(400)
@given(data=edit_data())
@example(  # found by this test: " 2" and "2" both read as layer 2, one replacing the other
    data={
        "topic": "t",
        "kind": "vq",
        "intervention": "substitute",
        "layers": {"2": {"codes": [7]}, " 2": {"codes": [3]}},
    }
)
def test_edit_from_dict_loads_or_refuses(data: Any) -> None:
    try:
        edit = Edit.from_dict(data)
    except CodeunlearnError as err:
        assert is_one_line_error(err), str(err)
        return
    check_edit_keeps_the_file(edit, data)


@profile(100)
@given(data=edit_data(), raw=st.none() | st.binary(max_size=40))
def test_edit_file_loads_or_refuses(data: Any, raw: bytes | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "edit.json"
        if raw is None:
            path.write_text(dumps(data))
        else:
            path.write_bytes(raw)
        try:
            edit = Edit.load(path)
        except CodeunlearnError as err:
            assert is_one_line_error(err), str(err)
            return
        check_edit_keeps_the_file(edit, data)


@profile(80)
@given(edits=st.lists(edit_data(), min_size=1, max_size=2) | JSON)
def test_saved_edits_load_or_leave_the_model_untouched(trained_dir, spare_model, edits: Any) -> None:
    """`edits.json` beside a trained codebook: the bottleneck loads with exactly those edits, or the load is refused
    with one line and the model keeps no bottleneck."""
    with load_with_file(trained_dir, spare_model, EDITS_NAME, edits) as bmodel:
        if bmodel is None:
            return
        try:
            assert [dumps(e.to_dict()) for e in bmodel.edits] == [dumps(Edit.from_dict(e).to_dict()) for e in edits]
        finally:
            bmodel.detach()


# ------------------------------------------------------------------------------------------------ CLI config files
TRAIN_FILE = {"layers": [1], "corpora": ["c.txt"], "output_dir": "out", "num_heads": 4, "codebook_size": 16,
              "learning_rate": 1e-3, "kind": "vq", "bf16": False, "max_tokens": 1000}  # fmt: skip
TRAIN_FILE_VALUES = JSON | st.sampled_from([[1], ["x"], [1.5], "1e-3", "true", "no"])


def parse_train_config(path: Path) -> BottleneckConfig:
    """What `codeunlearn train --config FILE` does before reading any corpus: parse, then build the config."""
    from codeunlearn.cli import train
    from codeunlearn.cli.arguments import parse_arguments

    _, _, bottleneck_args, _, _ = parse_arguments(train.DATACLASSES, ["--config", str(path)], "codeunlearn train", "")
    return bottleneck_args.to_config()


@profile(150)
@given(
    data=st.sampled_from([TRAIN_FILE]).flatmap(lambda base: mutated(base, values=TRAIN_FILE_VALUES)),
    suffix=st.sampled_from([".json", ".yaml"]),
)
def test_train_config_file_parses_or_refuses(data: dict[str, Any], suffix: str) -> None:
    """A `--config` file of `codeunlearn train` (JSON or YAML, string keys, UTF-8): its arguments or one line."""
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"train{suffix}"
        path.write_text(dumps(data) if suffix == ".json" else yaml.safe_dump(data))
        try:
            parse_train_config(path)
        except CodeunlearnError as err:
            assert is_one_line_error(err), str(err)


def test_train_config_file_not_utf8_is_one_line(tmp_path) -> None:
    path = tmp_path / "train.yaml"
    path.write_bytes(b"layers: [1]\ncorpora: [\xff]\n")
    with pytest.raises(CodeunlearnError):
        parse_train_config(path)


def test_train_config_file_with_a_number_key_is_one_line(tmp_path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("1: 2\noops: 3\n")
    with pytest.raises(CodeunlearnError) as excinfo:
        parse_train_config(path)
    assert_fix_error(excinfo)


def test_train_config_file_null_corpus_is_refused(tmp_path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("layers: [1]\ncorpora: [null]\n")
    with pytest.raises(CodeunlearnError) as excinfo:
        parse_train_config(path)
    assert "corpora" in str(excinfo.value)


# ------------------------------------------------------------------------------------------------ statistics
@pytest.fixture(scope="module")
def codebook_model(trained_dir) -> BottleneckedModel:
    """The session's trained codebook (2 stages x 4 heads x 16 codes at layers 1 and 2), read only."""
    return BottleneckedModel.from_pretrained(make_model("llama", num_layers=4), trained_dir)


@pytest.fixture(scope="module")
def sae_model() -> BottleneckedModel:
    """A ReLU SAE (48 features) at layers 0 and 2, untrained but marked ready: about half its features fire."""
    config = tiny_config(kind="sae", sae_architecture="relu", sae_width=48, layers=[0, 2])
    bmodel = BottleneckedModel.attach(make_model("llama"), config)
    for layer in bmodel.layers:
        bmodel.bottleneck(layer).initialized.fill_(True)
    return bmodel


@st.composite
def token_chunks(draw: st.DrawFn, max_chunks: int = 4, max_len: int = 9) -> torch.Tensor:
    """(num_chunks, seq_len) token ids, drawn id by id so that failures shrink to small, readable chunks."""
    rows, length = draw(st.integers(1, max_chunks)), draw(st.integers(1, max_len))
    ids = draw(st.lists(st.integers(0, VOCAB - 1), min_size=rows * length, max_size=rows * length))
    return torch.tensor(ids, dtype=torch.long).view(rows, length)


def count(bmodel: BottleneckedModel, chunks: torch.Tensor, batch_size: int = 8) -> CodeStatistics:
    return collect_code_statistics(bmodel, chunks, batch_size=batch_size, progress=False)


def counted_positions(bmodel: BottleneckedModel, layer: int, chunks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The states the bottleneck at `layer` reads and the mask of those it quantizes, from the config's definition
    (statistics.py: position 0 and massive-norm tokens are not counted), not from the bottleneck's own mask."""
    states = bmodel.states_at(layer, chunks)
    config, typical = bmodel.config, float(bmodel.bottleneck(layer).typical_norm)
    counted = torch.ones(chunks.shape, dtype=torch.bool)
    if config.passthrough_first_position:
        counted[:, 0] = False
    if config.massive_norm_factor > 0 and typical > 0:
        counted &= states.float().norm(dim=-1) <= config.massive_norm_factor * typical
    return states, counted


@profile(60)
@given(chunks=token_chunks())
def test_codebook_counts_one_code_per_slot_of_every_counted_token(codebook_model, chunks) -> None:
    stats = count(codebook_model, chunks)
    config = codebook_model.config
    slots = config.num_stages * config.num_heads
    for layer in codebook_model.layers:
        _, counted = counted_positions(codebook_model, layer, chunks)
        assert stats.tokens[layer] == int(counted.sum())
        counts = stats.counts[layer]
        assert counts.dtype == torch.long and counts.shape == (config.codes_per_layer,) and bool((counts >= 0).all())
        # each (stage, head) slot picks exactly one of its codebook_size codes per token
        per_slot = counts.view(slots, config.codebook_size).sum(-1)
        assert per_slot.tolist() == [stats.tokens[layer]] * slots
        assert int(counts.sum()) == stats.tokens[layer] * slots


@profile(50)
@given(chunks=token_chunks())
def test_sae_counts_are_the_positive_activations_of_counted_tokens(sae_model, chunks) -> None:
    stats = count(sae_model, chunks)
    for layer in sae_model.layers:
        states, counted = counted_positions(sae_model, layer, chunks)
        acts = sae_model.bottleneck(layer).encode(states)[counted]
        assert stats.tokens[layer] == len(acts)
        counts = stats.counts[layer]
        assert bool((counts <= stats.tokens[layer]).all())
        assert counts.tolist() == (acts > 0).sum(0).tolist()
        torch.testing.assert_close(stats.activation_sums[layer], acts.double().sum(0), rtol=1e-5, atol=1e-5)
        largest = acts.max(0).values.clamp_min(0) if len(acts) else torch.zeros(acts.shape[1])
        assert torch.equal(stats.activation_max[layer], largest)  # a maximum does not depend on the order
        assert bool((stats.activation_sums[layer] >= 0).all())  # ReLU: a feature only adds where it fires


def assert_same_counts(a: CodeStatistics, b: CodeStatistics) -> None:
    assert a.tokens == b.tokens
    assert all(torch.equal(a.counts[layer], b.counts[layer]) for layer in a.counts)


@profile(40)
@given(first=token_chunks(max_chunks=3), second=token_chunks(max_chunks=3), batch_size=st.integers(1, 4))
def test_counting_is_additive_and_independent_of_the_batch_size(
    codebook_model, sae_model, first, second, batch_size
) -> None:
    """Counts of A and B added are the counts of A and B together, and the batch size changes no count."""
    length = min(first.shape[1], second.shape[1])
    first, second = first[:, :length], second[:, :length]
    both = torch.cat([first, second])
    for bmodel in (codebook_model, sae_model):
        a, b = count(bmodel, first, 1), count(bmodel, second, 1)
        together = count(bmodel, both, 1)
        summed = CodeStatistics(
            counts={layer: a.counts[layer] + b.counts[layer] for layer in a.counts},
            tokens={layer: a.tokens[layer] + b.tokens[layer] for layer in a.tokens},
        )
        assert_same_counts(together, summed)
        assert_same_counts(count(bmodel, both, batch_size), together)


# ------------------------------------------------------------------------------------------------ selection
@st.composite
def statistics_pair(draw: st.DrawFn) -> tuple[CodeStatistics, CodeStatistics]:
    """Forget and retain statistics of one bottleneck (1-2 layers, up to 40 units), of a codebook or an SAE; the
    counts are drawn (each at most the tokens), and an SAE's activation sums are a positive mean per firing."""
    kind = draw(st.sampled_from(["vq", "sae"]))
    layers = draw(st.lists(st.integers(0, 3), min_size=1, max_size=2, unique=True))
    units = draw(st.integers(1, 40))

    def side() -> CodeStatistics:
        tokens = {layer: draw(st.integers(1, 50)) for layer in layers}
        # counts from a small palette per layer: tied scores are common, as they are in real statistics
        palettes = {layer: st.sampled_from(draw(st.lists(st.integers(0, tokens[layer]), min_size=1, max_size=4)))
                    for layer in layers}  # fmt: skip
        counts = {
            layer: torch.tensor(draw(st.lists(palettes[layer], min_size=units, max_size=units))) for layer in layers
        }
        sums, maxima = {}, {}
        if kind == "sae":
            for layer in layers:
                mean = torch.tensor(
                    draw(st.lists(st.sampled_from([0.25, 0.5, 1.0, 3.0]), min_size=units, max_size=units))
                )
                sums[layer] = counts[layer].double() * mean.double()
                maxima[layer] = torch.where(counts[layer] > 0, mean, 0.0).float()
        return CodeStatistics(counts, tokens, "c", "fp", sums, maxima, kind=kind)

    return side(), side()


def codebook_stats(counts: list[int], tokens: int) -> CodeStatistics:
    """Codebook statistics of one layer (0), written out by hand."""
    return CodeStatistics({0: torch.tensor(counts)}, {0: tokens}, "c", "fp")


# Loosening min_forget_count 5 -> 1 with N = 1: code 1 (forget 2, retain 0) becomes eligible and outranks code 0
# (forget 10, retain 5), which the stricter rule picked: the cap makes the sets differ, the ranking explains it.
SWAP = (
    (codebook_stats([10, 2, 0], 100), codebook_stats([5, 0, 0], 100)),
    SelectionRule(num_codes=1, min_forget_count=5),
    "min_forget_count",
    1.0,
)

RULES = st.builds(
    SelectionRule,
    num_codes=st.integers(1, 4) | st.integers(1, 41),  # small N: the cap binds and codes compete
    min_forget_count=st.integers(0, 8),
    max_retain_frequency=st.sampled_from([0.0, 0.05, 0.1, 0.25, 0.5, 1.0]),
    min_score=st.sampled_from([-2.0, -0.5, 0.0, 0.1, 0.5, 1.0, 2.0]),
    score=st.sampled_from(["frequency_ratio", "mean_activation_difference"]),
)


def for_kind(rule: SelectionRule, kind: str) -> SelectionRule:
    """`rule` with a score the statistics' kind has (a codebook's carry no activations)."""
    return rule if kind == "sae" else SelectionRule(**{**vars(rule), "score": "frequency_ratio"})


def selected(forget: CodeStatistics, retain: CodeStatistics, rule: SelectionRule) -> dict[int, list[int]] | str:
    """The codes `select_codes` picks per layer (in its order), or the refusal's problem."""
    try:
        edit = select_codes(forget, retain, rule, "t")
    except CodeunlearnError as err:
        assert is_one_line_error(err), str(err)
        return err.problem
    return {layer: codes.codes for layer, codes in edit.layers.items()}


def loosened(rule: SelectionRule, which: str, amount: float) -> SelectionRule:
    """`rule` with one threshold made looser by `amount` (a non-negative step)."""
    if which == "min_forget_count":
        return SelectionRule(**{**vars(rule), which: max(0, rule.min_forget_count - int(amount * 4))})
    if which == "max_retain_frequency":
        return SelectionRule(**{**vars(rule), which: min(1.0, rule.max_retain_frequency + amount)})
    return SelectionRule(**{**vars(rule), which: rule.min_score - amount})


@profile(300)
@given(
    pair=statistics_pair(),
    rule=RULES,
    which=st.sampled_from(["min_forget_count", "max_retain_frequency", "min_score"]),
    amount=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0]),
)
@example(*SWAP)
def test_selection_is_monotone_in_its_thresholds(pair, rule, which, amount) -> None:
    """Loosening a threshold keeps every code the stricter rule picked, unless the looser rule is full (N codes)
    and every code it picks scores at least as high as the one it dropped; and a stricter rule that selects
    anything never turns into a refusal when loosened."""
    forget, retain = pair
    rule = for_kind(rule, forget.kind)
    loose = loosened(rule, which, amount)
    strict_codes, loose_codes = selected(forget, retain, rule), selected(forget, retain, loose)
    event("strict rule refused" if isinstance(strict_codes, str) else "strict rule selects")
    if isinstance(strict_codes, str):
        return
    assert not isinstance(loose_codes, str), f"the looser rule is refused: {loose_codes}"
    for layer, codes in strict_codes.items():
        scores = feature_scores(forget, retain, layer, loose)  # a code's score does not depend on the thresholds
        if set(codes) - set(loose_codes[layer]):
            event("the looser rule swaps codes for higher-scoring ones")
        for code in set(codes) - set(loose_codes[layer]):
            assert len(loose_codes[layer]) == loose.num_codes, (layer, code)
            assert all(scores[kept] >= scores[code] for kept in loose_codes[layer]), (layer, code)
        if loose.num_codes >= len(scores):  # nothing is cut by N: plain inclusion
            assert set(codes) <= set(loose_codes[layer])


@profile(300)
@given(pair=statistics_pair(), rule=RULES)
def test_top_n_codes_are_a_prefix_of_the_top_n_plus_one(pair, rule) -> None:
    """Codes come best first, and asking for one more code appends one (ties included: the choice among equal
    scores must not depend on N, or a forget-vs-retain curve over N would swap codes in and out)."""
    forget, retain = pair
    rule = for_kind(rule, forget.kind)
    smaller = selected(forget, retain, rule)
    larger = selected(forget, retain, SelectionRule(**{**vars(rule), "num_codes": rule.num_codes + 1}))
    assert isinstance(smaller, str) == isinstance(larger, str)
    event("refused" if isinstance(smaller, str) else "selects")
    if isinstance(smaller, str):
        assert smaller == larger
        return
    for layer, codes in smaller.items():
        assert larger[layer][: len(codes)] == codes
        assert len(larger[layer]) - len(codes) in (0, 1)
        scores = feature_scores(forget, retain, layer, rule)[larger[layer]]
        assert bool((scores[:-1] >= scores[1:]).all())  # best first


# ------------------------------------------------------------------------------------------------ edits compose
PROBE = make_tokens(3, 8, seed=5)


def snapshot(bmodel: BottleneckedModel) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every bottleneck tensor (edit masks included) and the logits on fixed tokens, copied."""
    with torch.no_grad():
        logits = bmodel(input_ids=PROBE, use_cache=False).logits.clone()
    return {k: v.detach().clone() for k, v in bmodel.bottleneck_state().items()}, logits


def assert_same(a: tuple[dict[str, torch.Tensor], torch.Tensor], b: tuple[dict[str, torch.Tensor], torch.Tensor]):
    assert a[0].keys() == b[0].keys()
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0]), [k for k in a[0] if not torch.equal(a[0][k], b[0][k])]
    assert torch.equal(a[1], b[1])


@st.composite
def codebook_edits(draw: st.DrawFn) -> list[Edit]:
    """1-4 edits of the trained codebook (128 code ids at layers 1 and 2), overlapping at will, with unique topics.
    Codes lean to 0..15 (stage 0, head 0) and some edits name a whole head, so that `exclude` edits sometimes take
    every code of a head (refused, changing nothing)."""
    whole_head = st.integers(0, 7).map(lambda slot: list(range(16 * slot, 16 * slot + 16)))
    codes = st.lists(st.integers(0, 15) | st.integers(0, 127), max_size=12) | whole_head
    edits = []
    for index in range(draw(st.integers(1, 4))):
        layers = draw(st.dictionaries(st.sampled_from([1, 2]), codes, min_size=1))
        intervention = draw(st.sampled_from(["substitute", "exclude"]))
        edits.append(Edit(f"t{index}", {k: LayerCodes(v) for k, v in layers.items()}, intervention))
    return edits


def apply_all(bmodel: BottleneckedModel, edits: list[Edit]) -> list[Edit]:
    """Apply edits in order, skipping those refused (one line, and nothing changed); return the applied ones."""
    applied = []
    for edit in edits:
        before = snapshot(bmodel)
        try:
            bmodel.apply_edit(edit)
        except CodeunlearnError as err:
            event("an edit was refused")
            assert is_one_line_error(err), str(err)
            assert_same(snapshot(bmodel), before)  # a refused edit changes nothing
            continue
        applied.append(edit)
    return applied


@profile(80)
@given(edits=codebook_edits(), data=st.data())
def test_codebook_edits_compose_in_any_order_and_undo_exactly(codebook_model, edits, data) -> None:
    bmodel = codebook_model
    assert not bmodel.edits
    original = snapshot(bmodel)
    try:
        applied = apply_all(bmodel, edits)
        composed = snapshot(bmodel)
        assume(applied)
        # the same edits in another order remove the same codes: masks and logits identical
        bmodel.clear_edits()
        assert_same(snapshot(bmodel), original)
        order = data.draw(st.permutations(applied))
        assert apply_all(bmodel, order) == order
        assert_same(snapshot(bmodel), composed)
        # undoing one edit leaves exactly what the others give on their own
        for edit in data.draw(st.permutations(order)):
            assert bmodel.undo_edit(edit.topic) is edit
            remaining = list(bmodel.edits)
            now = snapshot(bmodel)
            bmodel.clear_edits()
            apply_all(bmodel, remaining)
            assert_same(snapshot(bmodel), now)
        assert_same(snapshot(bmodel), original)
    finally:
        bmodel.clear_edits()


@st.composite
def sae_edits(draw: st.DrawFn) -> list[Edit]:
    """1-3 zero / clamp edits of the 48-feature SAE at layers 0 and 2, overlapping at will."""
    edits = []
    for index in range(draw(st.integers(1, 3))):
        features = st.lists(st.integers(0, 47), min_size=1, max_size=8, unique=True)
        layers = draw(st.dictionaries(st.sampled_from([0, 2]), features, min_size=1))
        intervention = draw(st.sampled_from(["zero", "clamp"]))
        scales = st.floats(0.0, 5.0, allow_nan=False)
        codes = {k: LayerCodes(v, scales=[draw(scales) for _ in v]) for k, v in layers.items()}
        multiplier = draw(st.sampled_from([-10.0, -1.0, -0.5])) if intervention == "clamp" else None
        edits.append(Edit(f"t{index}", codes, intervention, kind="sae", multiplier=multiplier))
    return edits


@profile(60)
@given(edits=sae_edits(), data=st.data())
def test_sae_edits_undo_exactly(sae_model, edits, data) -> None:
    """SAE edits compose in order (a later one wins on a shared feature), so only undoing is order free: undoing
    any edit gives what the others give applied in their order, and undoing all gives the unedited SAE back."""
    bmodel = sae_model
    original = snapshot(bmodel)
    try:
        applied = apply_all(bmodel, edits)
        assert applied == edits
        for edit in data.draw(st.permutations(applied)):
            assert bmodel.undo_edit(edit.topic) is edit
            remaining = list(bmodel.edits)
            now = snapshot(bmodel)
            bmodel.clear_edits()
            apply_all(bmodel, remaining)
            assert_same(snapshot(bmodel), now)
        assert_same(snapshot(bmodel), original)
        assert bmodel.bottleneck(0).transparent  # no edit left: the SAE is skipped again
    finally:
        bmodel.clear_edits()


def test_generated_values_include_the_troublemakers() -> None:
    """The JSON strategy reaches the values that broke parsers before (NaN, Infinity, integers past float range)."""
    seen = set()

    @profile(500)
    @given(value=SCALARS)
    def collect(value: Any) -> None:
        if isinstance(value, float) and math.isnan(value):
            seen.add("nan")
        elif isinstance(value, float) and math.isinf(value):
            seen.add("inf")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**1023:
            seen.add("huge")

    collect()
    assert seen == {"nan", "inf", "huge"}
