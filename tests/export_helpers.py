"""Shared pieces of the export tests: a real word-level tokenizer for the tiny models, trained bottlenecks with edits
that change the probe's logits, and a subprocess runner that hides codeunlearn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from helpers import VOCAB, make_model, make_tokens, tiny_args, tiny_config

from codeunlearn.bottleneck.edit import Edit, LayerCodes
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.kinds.codebook.bottleneck import flat_code_ids
from codeunlearn.train import train_bottleneck

PROBE = make_tokens(2, 10, seed=7)
SPECIAL = ["<unk>", "<pad>", "</s>"]


def make_tokenizer():
    """A real fast tokenizer whose vocabulary is exactly the tiny models' (words w3 .. w127)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL)}
    vocab.update({f"w{i}": i for i in range(len(SPECIAL), VOCAB)})
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


def text_of(ids: torch.Tensor) -> str:
    return " ".join(f"w{int(i)}" for i in ids)


def used_codes(bmodel: BottleneckedModel, tokens: torch.Tensor) -> dict[int, list[int]]:
    """Flat code ids each bottleneck layer uses on `tokens`, most frequent first."""
    seen: dict[int, list[torch.Tensor]] = {layer: [] for layer in bmodel.layers}

    def observe(layer, states, result):
        ids = flat_code_ids(result.codes, bmodel.config.num_heads, bmodel.config.codebook_size)
        seen[layer].append(ids[~result.passthrough].flatten())

    with torch.no_grad(), bmodel.observing(observe):
        bmodel(input_ids=tokens, use_cache=False)
    out = {}
    for layer, chunks in seen.items():
        values, counts = torch.cat(chunks).unique(return_counts=True)
        out[layer] = values[counts.argsort(descending=True)].tolist()
    return out


def trained_bmodel(arch: str, out_dir: Path, seed: int = 0, **config) -> BottleneckedModel:
    """A 3-layer model of `arch` with bottlenecks at layers 0 and 2 trained a few steps (saved under out_dir)."""
    values = {"layers": [0, 2], **config}
    bmodel = BottleneckedModel.attach(make_model(arch, seed=seed), tiny_config(**values))
    train_bottleneck(bmodel, make_tokens(24, 10, seed=1), tiny_args(out_dir, key_steps=2, value_steps=2))
    return bmodel


def topic_edits(bmodel: BottleneckedModel) -> list[Edit]:
    """Two edits that hit codes the probe uses: substitute 3 codes at layer 0, exclude 2 at the last layer."""
    codes = used_codes(bmodel, PROBE)
    first, last = bmodel.layers[0], bmodel.layers[-1]
    fingerprint = bmodel.fingerprint()
    return [
        Edit("wizards", {first: LayerCodes(codes[first][:3], [3.0, 2.0, 1.0])}, "substitute", {}, fingerprint),
        Edit("dragons", {last: LayerCodes(codes[last][:2])}, "exclude", {}, fingerprint),
    ]


HIDE_CODEUNLEARN = textwrap.dedent(
    """
    import sys

    class HideCodeunlearn:
        # A meta-path finder that refuses codeunlearn, as on a machine where it is not installed.
        def find_spec(self, name, path=None, target=None):
            if name == "codeunlearn" or name.startswith("codeunlearn."):
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
            return None

    sys.meta_path.insert(0, HideCodeunlearn())
    sys.path = [p for p in sys.path if p not in ("", ".")]
    """
)


def run_without_codeunlearn(script: str, cwd: Path, timeout: int = 600) -> dict:
    """Run `script` in a fresh interpreter that cannot import codeunlearn; it must print one JSON line last (after a
    newline: `AutoTokenizer` may have printed transformers' trust-remote-code question without one)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)
    code = HIDE_CODEUNLEARN + textwrap.dedent(script)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,  # not a terminal: transformers' trust-remote-code prompt must not wait
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
