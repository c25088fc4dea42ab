"""`codeunlearn inspect` on a tiny Llama whose residual stream after layer 0 is the token embedding, so every answer
is known in advance: a codebook whose code 0 has one token's exact state as its key (closeness ranks that token
first), and a hand-built SAE whose feature 0 fires on the token `<script>` only (the page must escape it).

Checked: top contexts highlight the planted token, frequencies equal `codeunlearn stats`' for the same text, the logit
lens equals final norm + LM head of the unit's vector computed by hand, the activation histogram holds every firing,
a unit that never fires is stated, the HTML loads nothing and escapes tokens, and bad inputs are one-line errors
(exit 2) that write nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import FORGET_WORDS, RETAIN_WORDS, run_error, run_ok, save_tiny_llama, write_corpus

from codeunlearn.bottleneck.edit import Edit, LayerCodes
from codeunlearn.bottleneck.loading import attach_bottleneck
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.data import DataArguments, read_corpora
from codeunlearn.inspection.contexts import TopFirings, token_texts
from codeunlearn.inspection.histogram import ActivationHistograms, aligned
from codeunlearn.inspection.logit_lens import final_norm, lm_head
from codeunlearn.inspection.page import plain_token, token_html
from codeunlearn.kinds.codebook.bottleneck import flat_code_ids
from codeunlearn.kinds.codebook.config import CodebookConfig
from codeunlearn.kinds.sae import attach_sae
from codeunlearn.unlearn.statistics import CodeStatistics

PLANTED_VQ = "wizard"  # codebook code 0's key is this token's exact state
PLANTED_SAE = "<script>"  # SAE feature 0 fires on this forget token only
RETAIN_SAE = "river"  # SAE feature 1 fires on this retain token only
SAE_ACT = 0.25  # the activation of features 0 and 1 where they fire
NEVER_VQ = 15  # head 1, entry 7: its key is moved far from every state
NEVER_SAE = 2  # its bias keeps it off everywhere
DATA_FLAGS = ["--seq_len", "16", "--heldout_fraction", "0.3", "--split_seed", "0", "--no_bf16", "--no_progress"]


# ------------------------------------------------------------------------------------------------------- fixtures
def build_workspace(root: Path) -> dict[str, Path]:
    """A word-level tokenizer (whitespace-split, so `<script>` and `&amp;` are single tokens), forget and retain
    corpora, and a tiny Llama whose layer 0 writes nothing (its attention and MLP outputs are zero)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    forget = write_corpus(root / "forget.txt", [*FORGET_WORDS, PLANTED_SAE, "&amp;"], docs=10, seed=1)
    retain = write_corpus(root / "retain.txt", RETAIN_WORDS, docs=10, seed=2)
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.train_from_iterator(
        [*forget.read_text().splitlines(), *retain.read_text().splitlines()],
        trainers.WordLevelTrainer(special_tokens=["<unk>", "</s>"]),
    )
    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="</s>")
    model_dir = save_tiny_llama(root / "model", hf_tokenizer)
    model = LlamaForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
    model.save_pretrained(model_dir)
    return {"root": root, "model": model_dir, "forget": forget, "retain": retain}


def load_model(ws: dict[str, Path]):
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(ws["model"]).eval()
    model.requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(ws["model"])


def train_chunks(ws: dict[str, Path], tokenizer, *names: str) -> torch.Tensor:
    """The packed train split, as the CLI packs it with DATA_FLAGS."""
    data = DataArguments(seq_len=16, heldout_fraction=0.3, split_seed=0)
    return read_corpora([str(ws[name]) for name in names], data).pack(tokenizer, "train")


def corpus_flags(ws: dict[str, Path]) -> list[str]:
    return ["--model_name_or_path", str(ws["model"]), "--forget_corpora", str(ws["forget"]),
            "--retain_corpora", str(ws["retain"]), *DATA_FLAGS]  # fmt: skip


def stats_of(ws: dict[str, Path], bottleneck: Path, name: str, capsys) -> CodeStatistics:
    """`codeunlearn stats` of one corpus (train split, fp32)."""
    output = bottleneck.parent / "stats" / f"{name}.safetensors"
    if not output.exists():
        run_ok(["stats", "--model_name_or_path", str(ws["model"]), "--corpora", str(ws[name]), "--bottleneck_dir",
                str(bottleneck), "--output_file", str(output), *DATA_FLAGS], capsys)  # fmt: skip
    return CodeStatistics.load(output)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    return build_workspace(tmp_path_factory.mktemp("inspect"))


@pytest.fixture(scope="module")
def vq_bottleneck(workspace) -> dict[str, Path]:
    """A 1-stage codebook at layer 0 (4 heads x 8 codes) fitted by k-means, then code 0 (head 0, entry 0) given the
    planted token's exact head-0 piece as its key and code 15 (head 1, entry 7) a key no state comes near; an edit of
    codes 0 and 15, and a random control beside it (picked up by default)."""
    root = workspace["root"] / "vq"
    model, tokenizer = load_model(workspace)
    bmodel = BottleneckedModel.attach(model, CodebookConfig(layers=[0], num_heads=4, codebook_size=8, num_stages=1))
    bottleneck = bmodel.bottleneck(0)
    bottleneck.initialize(bmodel.states_at(0, train_chunks(workspace, tokenizer, "forget", "retain")))
    planted = tokenizer.convert_tokens_to_ids(PLANTED_VQ)
    with torch.no_grad():
        state = bottleneck._to_code_space(model.model.embed_tokens.weight[planted].float()).view(4, -1)
        bottleneck.keys(0)[0, 0] = state[0]
        bottleneck.keys(0)[1, 7] = 1e3
    bmodel.save_pretrained(root / "bottleneck")
    fingerprint = bmodel.fingerprint()
    Edit("wizards", {0: LayerCodes([0, NEVER_VQ], [2.5, 1.5])}, bottleneck_fingerprint=fingerprint).save(
        root / "edits" / "edit.json"
    )
    control = Edit("wizards/random-control", {0: LayerCodes([9, 20])}, rule={"name": "random-control"},
                   bottleneck_fingerprint=fingerprint)  # fmt: skip
    control.save(root / "edits" / "random_control.json")
    return {**workspace, "run": root, "bottleneck": root / "bottleneck", "edit": root / "edits" / "edit.json"}


@pytest.fixture(scope="module")
def vq_run(vq_bottleneck) -> dict:
    """`codeunlearn inspect` of the codebook edit (the control found beside it), its outputs and printed table."""
    from codeunlearn.cli import main

    ws = vq_bottleneck
    output = ws["run"] / "inspect"
    printed = _run_printing(main, ["inspect", *corpus_flags(ws), "--bottleneck_dir", str(ws["bottleneck"]), "--edit",
                                   str(ws["edit"]), "--output_dir", str(output)])  # fmt: skip
    return {**ws, "output": output, "printed": printed, "report": json.loads((output / "inspect.json").read_text())}


def planted_sae(model, tokenizer):
    """A sae-lens StandardSAE at layer 0: feature 0 fires on PLANTED_SAE only and feature 1 on RETAIN_SAE only, both
    with activation SAE_ACT; features 2 and 3 never fire; random decoder rows."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    emb = model.model.embed_tokens.weight.detach()
    cfg = StandardSAEConfig(d_in=emb.shape[1], d_sae=4, apply_b_dec_to_input=False,
                            metadata=SAEMetadata(hook_name="blocks.0.hook_resid_post", model_name="tiny-llama"))  # fmt: skip
    sae = StandardSAE(cfg)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.fill_(-1e6)
        sae.b_dec.zero_()
        for feature, word in ((0, PLANTED_SAE), (1, RETAIN_SAE)):
            token = tokenizer.convert_tokens_to_ids(word)
            sae.W_enc[:, feature] = emb[token] / emb[token].norm() ** 2
            sae.b_enc[feature] = SAE_ACT - 1.0
            assert ((emb @ sae.W_enc[:, feature] + sae.b_enc[feature]) > 0).nonzero().flatten().tolist() == [token]
        sae.W_dec.copy_(torch.randn(4, emb.shape[1], generator=generator))
    return sae


@pytest.fixture(scope="module")
def sae_bottleneck(workspace) -> dict[str, Path]:
    """The planted SAE saved as a bottleneck directory; a zero edit of features 0 and 2, and a control (feature 1)
    kept away from the edit, so it is found only through --control."""
    root = workspace["root"] / "sae"
    model, tokenizer = load_model(workspace)
    bmodel = attach_sae(model, {0: planted_sae(model, tokenizer)})
    bmodel.save_pretrained(root / "bottleneck")
    fingerprint = bmodel.fingerprint()
    Edit("scripts", {0: LayerCodes([0, NEVER_SAE], [3.0, 1.0])}, intervention="zero", kind="sae",
         bottleneck_fingerprint=fingerprint).save(root / "edits" / "edit.json")  # fmt: skip
    Edit("scripts/random-control", {0: LayerCodes([1])}, intervention="zero", kind="sae",
         bottleneck_fingerprint=fingerprint).save(root / "controls" / "control.json")  # fmt: skip
    return {**workspace, "run": root, "bottleneck": root / "bottleneck", "edit": root / "edits" / "edit.json",
            "control": root / "controls" / "control.json"}  # fmt: skip


@pytest.fixture(scope="module")
def sae_run(sae_bottleneck) -> dict:
    from codeunlearn.cli import main

    ws = sae_bottleneck
    output = ws["run"] / "inspect"
    printed = _run_printing(main, ["inspect", *corpus_flags(ws), "--bottleneck_dir", str(ws["bottleneck"]), "--edit",
                                   str(ws["edit"]), "--control", str(ws["control"]), "--output_dir", str(output)])  # fmt: skip
    return {**ws, "output": output, "printed": printed, "report": json.loads((output / "inspect.json").read_text())}


def _run_printing(main, argv: list[str]) -> str:
    """Run the CLI in-process (module-scoped fixtures have no capsys), return what it printed."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    assert code == 0, err.getvalue()
    return out.getvalue()


def unit(report: dict, group: str, number: int) -> dict:
    (found,) = [u for u in report["units"] if u["group"] == group and u["unit"] == number]
    return found


# ------------------------------------------------------------------------------------------------------- codebook
def test_codebook_top_contexts_are_the_planted_token_highlighted(vq_run):
    code = unit(vq_run["report"], "edit", 0)
    contexts = code["forget"]["contexts"]
    assert len(contexts) == 5  # --contexts default; the planted token is in the forget text far more often
    assert all(c["tokens"][c["firing"]].strip() == PLANTED_VQ for c in contexts)
    assert all(c["strength"] == pytest.approx(0.0, abs=1e-4) for c in contexts)  # an exact match to the key
    assert all(c["firing"] <= 8 and len(c["tokens"]) - c["firing"] - 1 <= 4 for c in contexts)  # 8 left / 4 right
    page = (vq_run["output"] / "inspect.html").read_text()
    assert '<mark class="fire"' in page and f"> {PLANTED_VQ}</mark>" in page
    assert f"[[ {PLANTED_VQ}]]" in vq_run["printed"]  # the terminal table's top forget context
    assert "ranked by closeness of the state to the code" in page  # the page says what ranks the contexts
    assert vq_run["report"]["ranking"].startswith("closeness of the state to the code's search key")


def test_codebook_firing_far_from_the_key_ranks_lower(vq_run):
    # In the retain text (no planted token) code 0 fires on other tokens, further from its key: ranked by closeness.
    retain = unit(vq_run["report"], "edit", 0)["retain"]["contexts"]
    strengths = [c["strength"] for c in retain]
    assert len(strengths) == 5 and strengths == sorted(strengths, reverse=True)
    assert all(s < -1e-3 for s in strengths)


@pytest.mark.parametrize("run", ["vq_run", "sae_run"])
def test_frequencies_equal_those_of_stats(run, request, capsys):
    result = request.getfixturevalue(run)
    for side in ("forget", "retain"):
        stats = stats_of(result, result["bottleneck"], side, capsys)
        for entry in result["report"]["units"]:
            assert entry[side]["tokens"] == stats.tokens[0]
            assert entry[side]["count"] == int(stats.counts[0][entry["unit"]])
            assert entry[side]["frequency"] == pytest.approx(float(stats.frequency(0)[entry["unit"]]), rel=1e-12)


def test_a_code_that_never_fires_is_stated(vq_run):
    never = unit(vq_run["report"], "edit", NEVER_VQ)
    assert never["forget"]["count"] == 0 and never["forget"]["contexts"] == []
    tokens = never["forget"]["tokens"]
    assert f"no firing in {tokens:,} tokens" in (vq_run["output"] / "inspect.html").read_text()
    assert f"no firing in {tokens:,} tokens" in (vq_run["output"] / "inspect.md").read_text()


def test_codebook_logit_lens_is_final_norm_and_head_of_the_code_value(vq_run):
    model, _ = load_model(vq_run)
    bmodel = attach_bottleneck(model, vq_run["bottleneck"])
    bottleneck = bmodel.bottleneck(0)
    piece = torch.zeros(4, 8)  # code 0 = stage 0, head 0, entry 0: its value sits in head 0 of the code space
    piece[0] = bottleneck.values[0][0, 0].detach()
    vector = piece.reshape(-1) @ bottleneck.rotation.T
    with torch.no_grad():
        logits = model.lm_head(model.model.norm(vector))
    lens = unit(vq_run["report"], "edit", 0)["logit_lens"]
    assert [t["token_id"] for t in lens["promoted"]] == logits.topk(10).indices.tolist()
    assert [t["logit"] for t in lens["promoted"]] == pytest.approx(logits.topk(10).values.tolist(), rel=1e-5)
    assert [t["token_id"] for t in lens["suppressed"]] == logits.topk(10, largest=False).indices.tolist()
    assert "logit lens (direct path only, ignores later layers)" in (vq_run["output"] / "inspect.html").read_text()


def test_the_control_beside_the_edit_is_inspected(vq_run):
    report = vq_run["report"]
    assert report["control"]["path"].endswith("random_control.json")
    control = [u for u in report["units"] if u["group"] == "control"]
    assert [u["unit"] for u in control] == [9, 20] and all(u["score"] is None for u in control)
    assert [u["score"] for u in report["units"] if u["group"] == "edit"] == [2.5, 1.5]
    assert "top 2 of 2 codes of 'wizards'" in vq_run["printed"]


def test_output_vectors_rebuild_the_quantized_state(trained):
    """A quantized state is the centring mean plus the output vectors of its codes (every stage, every head)."""
    bottleneck = trained.bottleneck(1)
    states = trained.states_at(1, torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(5)))
    result = bottleneck.quantize(states)
    config = bottleneck.config
    ids = flat_code_ids(result.codes, config.num_heads, config.codebook_size).reshape(
        -1, config.num_stages * config.num_heads
    )
    keep = ~result.passthrough.reshape(-1)
    rebuilt = torch.stack([bottleneck.output_vectors(row).sum(0) for row in ids[keep]]) + bottleneck.mean
    assert torch.allclose(rebuilt, result.output.reshape(-1, states.shape[-1])[keep], atol=1e-5)


def test_firing_strength_fires_exactly_where_tally_counts(trained):
    bottleneck = trained.bottleneck(2)
    units = torch.arange(bottleneck.num_features)
    seen: dict[str, torch.Tensor] = {}

    def observe(layer, states, result):
        if layer == 2:
            seen["strength"] = bottleneck.firing_strength(states, result, units)
            seen["counts"] = bottleneck.tally(result).counts

    trained.run_to_deepest(torch.randint(0, 128, (3, 12), generator=torch.Generator().manual_seed(6)), observe)
    fired = torch.isfinite(seen["strength"]).reshape(-1, len(units)).sum(0)
    assert torch.equal(fired, seen["counts"])
    assert bool((seen["strength"][torch.isfinite(seen["strength"])] <= 0).all())  # minus a distance


# ------------------------------------------------------------------------------------------------------- SAE
def test_sae_top_contexts_are_the_planted_token_escaped(sae_run):
    feature = unit(sae_run["report"], "edit", 0)
    contexts = feature["forget"]["contexts"]
    assert len(contexts) == 5
    assert all(c["tokens"][c["firing"]].strip() == PLANTED_SAE for c in contexts)
    assert all(c["strength"] == pytest.approx(SAE_ACT, abs=1e-4) for c in contexts)  # ranked by activation
    page = (sae_run["output"] / "inspect.html").read_text()
    assert "> &lt;script&gt;</mark>" in page
    assert page.count("<script>") == 1  # the page's own inline script, never a token
    assert "&amp;amp;" in page  # the token `&amp;` is shown as written
    markdown = (sae_run["output"] / "inspect.md").read_text()
    assert "<script>" not in markdown and "&lt;script&gt;" in markdown


def test_sae_feature_without_retain_firing_is_stated(sae_run):
    feature = unit(sae_run["report"], "edit", 0)
    assert feature["retain"]["count"] == 0 and feature["forget_retain_ratio"] == "inf"
    page = (sae_run["output"] / "inspect.html").read_text()
    assert f"no firing in {feature['retain']['tokens']:,} tokens" in page
    never = unit(sae_run["report"], "edit", NEVER_SAE)
    assert never["forget"]["count"] == never["retain"]["count"] == 0 and never["forget"]["histogram"] is None


def test_sae_activation_histogram_holds_every_firing(sae_run):
    forget = unit(sae_run["report"], "edit", 0)["forget"]
    histogram = forget["histogram"]
    assert sum(histogram["counts"]) == forget["count"] > 0
    (filled,) = [i for i, count in enumerate(histogram["counts"]) if count]
    assert histogram["edges"][filled] <= SAE_ACT < histogram["edges"][filled + 1]  # every firing is SAE_ACT
    page = (sae_run["output"] / "inspect.html").read_text()
    assert '<svg class="hist"' in page and "activation histogram" in page


def test_sae_logit_lens_is_final_norm_and_head_of_the_decoder_row(sae_run):
    model, _ = load_model(sae_run)
    bmodel = attach_bottleneck(model, sae_run["bottleneck"])
    row = bmodel.bottleneck(0).sae.W_dec[0].detach()
    with torch.no_grad():
        logits = model.lm_head(model.model.norm(row))
    lens = unit(sae_run["report"], "edit", 0)["logit_lens"]
    assert [t["token_id"] for t in lens["promoted"]] == logits.topk(10).indices.tolist()
    assert [t["token_id"] for t in lens["suppressed"]] == logits.topk(10, largest=False).indices.tolist()
    assert [t["logit"] for t in lens["suppressed"]] == pytest.approx(
        logits.topk(10, largest=False).values.tolist(), rel=1e-5
    )


def test_sae_explicit_control_is_inspected(sae_run):
    report = sae_run["report"]
    assert report["control"]["path"] == str(sae_run["control"])
    control = unit(report, "control", 1)
    assert control["retain"]["count"] > 0 and control["forget"]["count"] == 0
    assert all(c["tokens"][c["firing"]].strip() == RETAIN_SAE for c in control["retain"]["contexts"])


def test_html_is_self_contained(sae_run, vq_run):
    for run in (sae_run, vq_run):
        page = (run["output"] / "inspect.html").read_text()
        assert "http://" not in page and "https://" not in page
        assert "<link" not in page and " src=" not in page and "@import" not in page
        assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")


# ------------------------------------------------------------------------------------------------------- bad input
def inspect_argv(ws: dict, output: Path, *extra: str) -> list[str]:
    return ["inspect", *corpus_flags(ws), "--bottleneck_dir", str(ws["bottleneck"]), "--output_dir", str(output),
            *extra]  # fmt: skip


def test_an_edit_for_another_bottleneck_is_refused(vq_bottleneck, tmp_path, capsys):
    edit = Edit.load(vq_bottleneck["edit"])
    edit.bottleneck_fingerprint = "0123456789abcdef"
    edit.save(tmp_path / "other.json")
    output = tmp_path / "out"
    line = run_error(inspect_argv(vq_bottleneck, output, "--edit", str(tmp_path / "other.json")), capsys)
    assert "another bottleneck" in line and "other.json" in line
    assert not output.exists()


def test_an_edit_of_another_kind_is_refused(vq_bottleneck, sae_bottleneck, tmp_path, capsys):
    output = tmp_path / "out"
    line = run_error(inspect_argv(vq_bottleneck, output, "--edit", str(sae_bottleneck["edit"])), capsys)
    assert "'sae' bottleneck" in line
    assert not output.exists()


def test_a_control_for_another_bottleneck_is_refused(vq_bottleneck, tmp_path, capsys):
    control = Edit.load(vq_bottleneck["run"] / "edits" / "random_control.json")
    control.bottleneck_fingerprint = "0123456789abcdef"
    control.save(tmp_path / "control.json")
    output = tmp_path / "out"
    argv = inspect_argv(vq_bottleneck, output, "--edit", str(vq_bottleneck["edit"]), "--control",
                        str(tmp_path / "control.json"))  # fmt: skip
    line = run_error(argv, capsys)
    assert "control edit" in line and "another bottleneck" in line
    assert not output.exists()


def test_an_existing_output_directory_is_refused(vq_bottleneck, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    line = run_error(inspect_argv(vq_bottleneck, output, "--edit", str(vq_bottleneck["edit"])), capsys)
    assert "not empty" in line and "--overwrite" in line
    assert [p.name for p in output.iterdir()] == ["keep.txt"]


def test_without_a_control_the_page_says_so(sae_bottleneck, tmp_path, capsys):
    output = tmp_path / "out"
    printed = run_ok(inspect_argv(sae_bottleneck, output, "--edit", str(sae_bottleneck["edit"]), "--top", "1"), capsys)
    assert "no control was given" in (output / "inspect.html").read_text()
    assert json.loads((output / "inspect.json").read_text())["control"] is None
    assert "top 1 of 2 features" in printed and "no control was given" in printed
    assert sorted(p.name for p in output.iterdir()) == ["inspect.html", "inspect.json", "inspect.md"]


# ------------------------------------------------------------------------------------------------------- pieces
def test_top_firings_keep_the_strongest_per_unit_across_batches():
    top = TopFirings(num_units=2, k=3)
    inf = -math.inf
    top.update(torch.tensor([[1.0, inf], [5.0, inf], [2.0, 0.5]]), torch.tensor([0, 1, 2]))
    top.update(torch.tensor([[4.0, inf], [0.0, inf]]), torch.tensor([3, 4]))
    assert top.firings(0) == [(5.0, 1), (4.0, 3), (2.0, 2)]
    assert top.firings(1) == [(0.5, 2)]  # fired once: no -inf entries come back


def test_histograms_count_into_log_bins():
    histograms = ActivationHistograms(num_units=2)
    histograms.update(torch.tensor([[0.011, -math.inf], [0.012, 5.0], [1e9, 5.0]]))
    first = histograms.histogram(0)
    assert first.total == 3 and first.counts[0] == 2 and first.counts[-1] == 1 and first.edges[-1] == 1e4
    assert histograms.histogram(1).counts == [2]
    both = aligned([first, histograms.histogram(1)])  # drawn on one axis: the same bins, counts in place
    assert both[0].edges == both[1].edges and len(both[0].edges) == len(first.edges)
    assert both[0].counts == first.counts and sum(both[1].counts) == 2
    (five,) = [i for i, count in enumerate(both[1].counts) if count]
    assert both[1].edges[five] <= 5.0 < both[1].edges[five + 1]


def test_the_terminal_context_is_cut_around_the_firing_token():
    from codeunlearn.inspection.contexts import Context
    from codeunlearn.inspection.page import context_plain

    context = Context([" left"] * 8 + [" FIRE"] + [" right"] * 4, 8, 1.0, 0, 8)
    assert context_plain(context) == " left" * 8 + "[[ FIRE]]" + " right" * 4
    cut = context_plain(context, 40)
    assert len(cut) == 40 and "[[ FIRE]]" in cut and cut.startswith("…") and cut.endswith("…")


def test_tokens_show_their_whitespace_and_are_escaped():
    assert plain_token("\n") == "↵" and plain_token("  ") == "␣␣" and plain_token("\tx") == "⇥x"
    assert plain_token("\x1b[31m") == "\\x1b[31m"  # no terminal escape sequence gets through
    assert token_html("<b>") == "&lt;b&gt;" and token_html("\n") == '<span class="ws">↵</span>'


def test_token_texts_keep_the_spaces_of_the_decoded_window(vq_run):
    _, tokenizer = load_model(vq_run)
    ids = tokenizer("the wizard of", add_special_tokens=False)["input_ids"]
    assert token_texts(tokenizer, ids) == ["the", " wizard", " of"]


def test_the_final_norm_and_head_are_found_on_other_architectures():
    from helpers import make_model

    gpt2 = make_model("gpt2")
    assert final_norm(gpt2) is gpt2.transformer.ln_f and lm_head(gpt2) is gpt2.lm_head
    gemma = make_model("gemma3_text")
    assert final_norm(gemma) is gemma.model.norm


def test_a_model_without_a_final_norm_is_refused():
    from helpers import assert_fix_error

    from codeunlearn.errors import CodeunlearnError

    with pytest.raises(CodeunlearnError) as excinfo:
        final_norm(torch.nn.Linear(4, 4))
    assert_fix_error(excinfo)
