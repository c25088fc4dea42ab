"""The hidden `--tiny` mode of the benchmark scripts: a random tiny Llama, a word-level tokenizer and synthetic
corpora laid out like shared/data, plus tiny bottlenecks trained on them, so that `tests/test_benchmarks.py` runs
every script end to end in seconds.

Each synthetic corpus draws 30% of its words from a vocabulary of its own, so a topic is separable from the retain
text and a selection has something to find.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.kinds.codebook.config import CodebookConfig
from codeunlearn.kinds.sae.config import SAEConfig


def tiny_llama(vocab_size: int, num_layers: int, max_positions: int, **token_ids: int):
    """A random (seed 0) frozen Llama with hidden size 64."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        **token_ids,
    )
    model = LlamaForCausalLM(config).eval()
    model.requires_grad_(False)
    return model


def build_tiny(workdir: Path, seq_len: int, topics: dict[str, str], retain: dict[str, str]):
    """A 4-layer tiny Llama and its tokenizer; writes the synthetic corpora under `workdir` at the data folder's
    paths (`topics`: micro, cyber, hp; `retain`: history, wiki; `common.TOPICS` and `common.RETAIN`). Returns (model,
    tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    common = [f"the{i}" for i in range(40)]
    vocab_by_corpus = {name: [f"{name}{i}" for i in range(30)] for name in ("micro", "hp", "cyber", "history", "wiki")}
    words = ["<unk>", "<eos>", "=", *common, *(w for ws in vocab_by_corpus.values() for w in ws)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")

    def doc(name: str, length: int) -> str:
        return " ".join(
            rng.choice(vocab_by_corpus[name]) if rng.random() < 0.3 else rng.choice(common) for _ in range(length)
        )

    def write_jsonl(rel: str, name: str, docs: int) -> None:
        path = workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "".join(json.dumps({"id": i, "text": doc(name, rng.randint(200, 600))}) + "\n" for i in range(docs))
        )

    write_jsonl(topics["micro"], "micro", 40)
    write_jsonl(topics["cyber"], "cyber", 40)
    write_jsonl(retain["history"], "history", 40)
    (workdir / topics["hp"]).parent.mkdir(parents=True, exist_ok=True)
    (workdir / topics["hp"]).write_text("".join(doc("hp", rng.randint(300, 700)) + "\n" for _ in range(7)))
    wiki_lines = []
    for article in range(30):
        wiki_lines.append(f" = wiki{article % 30} = ")
        wiki_lines.extend(doc("wiki", rng.randint(50, 150)) for _ in range(4))
    (workdir / retain["wiki"]).write_text("\n".join(wiki_lines) + "\n")

    model = tiny_llama(
        len(words), num_layers=4, max_positions=max(seq_len, 64), eos_token_id=1, pad_token_id=1, bos_token_id=1
    )
    return model, tokenizer


def train_tiny_bottleneck(model, chunks: torch.Tensor, directory: Path, bf16: bool) -> Path:
    """A 1-stage codebook at layers 1 and 2 (4 heads x 64 codes), a few key and value steps; saved without edits.
    Returns its directory."""
    from codeunlearn.train import TrainingArguments, train_bottleneck

    bmodel = BottleneckedModel.attach(model, CodebookConfig(layers=[1, 2], num_heads=4, codebook_size=64, num_stages=1))
    args = TrainingArguments(
        output_dir=str(directory / "train"),
        key_steps=3,
        value_steps=2,
        batch_size=4,
        kmeans_init_tokens=2048,
        checkpoint_every=1000,
        log_every=1000,
        progress=False,
        bf16=bf16,
    )
    train_bottleneck(bmodel, chunks, args)
    bmodel.save_pretrained(directory / "bottleneck", overwrite=True, with_edits=False)
    bmodel.detach()
    return directory / "bottleneck"


def train_tiny_sae(model, chunks: torch.Tensor, directory: Path, bf16: bool) -> Path:
    """A small TopK SAE (256 features, k 8) at layer 2. Returns its directory."""
    from codeunlearn.train import TrainingArguments, train_bottleneck

    bmodel = BottleneckedModel.attach(model, SAEConfig(layers=[2], sae_width=256, sae_k=8))
    args = TrainingArguments(
        output_dir=str(directory / "train"),
        sae_steps=40,
        sae_updates_per_batch=2,
        sae_learning_rate=2e-3,
        batch_size=8,
        kmeans_init_tokens=2048,
        checkpoint_every=1000,
        log_every=1000,
        progress=False,
        bf16=bf16,
    )
    train_bottleneck(bmodel, chunks, args)
    bmodel.detach()
    return directory / "train" / "bottleneck"
