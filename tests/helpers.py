"""Shared helpers: tiny randomly initialised causal LMs, token chunks and training arguments.

Everything here is deliberately tiny (hidden 32, 3-4 layers, vocab 128, codebook 16) so the whole fast suite runs
in a few minutes on two CPU cores. Models are rebuilt from a seed instead of shared, so a test can mutate its model
(attach, edit, detach) without affecting another test.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
from pathlib import Path

import torch

from codeunlearn.bottleneck.config import BottleneckConfig
from codeunlearn.train import TrainingArguments

# Tiny matrices: one thread is far faster than two fighting over a shared, loaded CPU.
torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VOCAB = 128
HIDDEN = 32
ARCHITECTURES = ("llama", "gemma2", "gemma3_text", "qwen2", "mistral", "gpt2")


def make_model(arch: str = "llama", seed: int = 0, num_layers: int = 3, hidden: int = HIDDEN) -> torch.nn.Module:
    """A tiny randomly initialised *ForCausalLM of architecture `arch`, in eval mode (same seed -> same weights)."""
    import transformers as tf

    common = {
        "vocab_size": VOCAB,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
    }
    alternating = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)]
    if arch == "llama":
        config, cls = tf.LlamaConfig(**common), tf.LlamaForCausalLM
    elif arch == "gemma2":
        config = tf.Gemma2Config(**common, head_dim=hidden // 4, sliding_window=4, layer_types=alternating)
        cls = tf.Gemma2ForCausalLM
    elif arch == "gemma3_text":
        config = tf.Gemma3TextConfig(**common, head_dim=hidden // 4, sliding_window=4, layer_types=alternating)
        cls = tf.Gemma3ForCausalLM
    elif arch == "qwen2":
        config, cls = tf.Qwen2Config(**common), tf.Qwen2ForCausalLM
    elif arch == "mistral":
        config, cls = tf.MistralConfig(**common, head_dim=hidden // 4), tf.MistralForCausalLM
    elif arch == "gpt2":
        config = tf.GPT2Config(vocab_size=VOCAB, n_embd=hidden, n_layer=num_layers, n_head=4, n_positions=64)
        cls = tf.GPT2LMHeadModel
    elif arch == "bloom":
        config = tf.BloomConfig(vocab_size=VOCAB, hidden_size=hidden, n_layer=num_layers, n_head=4)
        cls = tf.BloomForCausalLM
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = cls(config).eval()
    model.requires_grad_(False)
    return model


def make_tokens(num_chunks: int = 32, seq_len: int = 12, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (num_chunks, seq_len), generator=generator)


def tiny_args(output_dir: str | Path, **overrides) -> TrainingArguments:
    """Training arguments for a run of a few steps on tiny chunks (fp32: faster than bf16 autocast on CPU)."""
    values = {
        "output_dir": str(output_dir),
        "key_steps": 3,
        "value_steps": 3,
        "batch_size": 4,
        "kmeans_init_tokens": 96,
        "learning_rate": 1e-3,
        "warmup_steps": 1,
        "checkpoint_every": 1000,
        "log_every": 1,
        "progress": False,
        "bf16": False,
    }
    values.update(overrides)
    return TrainingArguments(**values)


def tiny_config(**overrides) -> BottleneckConfig:
    values = {"layers": [1, 2], "num_heads": 4, "codebook_size": 16, "num_stages": 1}
    values.update(overrides)
    return BottleneckConfig.from_dict(values)


def assert_fix_error(excinfo) -> None:
    """A CodeunlearnError is one line that names a fix."""
    message = str(excinfo.value)
    assert "fix:" in message, message
    assert "\n" not in message, message


def run_ok(argv: list[str], capsys) -> str:
    """Run the `codeunlearn` CLI in-process, assert exit code 0 and return stdout."""
    from codeunlearn.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    return out


def run_error(argv: list[str], capsys) -> str:
    """Run the CLI in-process; assert exit code 2 and a last stderr line `error: ... -- fix: ...` (the only one,
    no traceback); return it."""
    from codeunlearn.cli import main

    code = main(argv)
    _, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "-- fix:" in errors[0], err
    assert err.rstrip().splitlines()[-1] == errors[0]
    return errors[0]


def save_tiny_llama(directory: Path, tokenizer, seed: int = 0) -> Path:
    """Save a random 3-layer Llama sized to `tokenizer` (a PreTrainedTokenizerFast with an eos token) and the tokenizer
    to `directory`, as a model directory the CLI loads with --model_name_or_path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def parse_commit_body(body: bytes) -> tuple[str, dict[str, bytes]]:
    """A Hub commit request's NDJSON body (what `create_commit` sends a fake Hub): its summary and its files."""
    import base64
    import json

    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    header = next(line["value"] for line in lines if line["key"] == "header")
    files = {
        line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in lines if line["key"] == "file"
    }
    return header["summary"], files


FORGET_WORDS = ["wizard", "wand", "spell", "castle", "owl", "potion", "broom", "dragon", "goblin", "cloak"]
RETAIN_WORDS = ["river", "mountain", "city", "train", "market", "harbor", "bridge", "farmer", "valley", "road"]
COMMON_WORDS = ["the", "a", "of", "and", "to", "in", "is", "was", "it", "on"]


def write_corpus(path: Path, topic_words: list[str], docs: int, seed: int) -> Path:
    """One document per line, mixing topic words with common words (so topic codes exist to be found)."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(topic_words + COMMON_WORDS) for _ in range(120)) for _ in range(docs)]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_cli_workspace(root: Path) -> dict[str, Path]:
    """A tiny Llama with a word-level tokenizer saved with save_pretrained under `root`, and forget/retain corpora
    (10 documents each): what the command-line tests run on."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    forget = write_corpus(root / "forget.txt", FORGET_WORDS, docs=10, seed=1)
    retain = write_corpus(root / "retain.txt", RETAIN_WORDS, docs=10, seed=2)
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        [*forget.read_text().splitlines(), *retain.read_text().splitlines()],
        trainers.WordLevelTrainer(special_tokens=["<unk>", "</s>"]),
    )
    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="</s>")
    model_dir = save_tiny_llama(root / "model", hf_tokenizer)
    return {"root": root, "model": model_dir, "forget": forget, "retain": retain}


def hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory`, by relative path (a refused command must leave these unchanged)."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def data_offset(path: Path) -> int:
    """Where a safetensors file's tensor data starts: after the 8-byte header length and the JSON header."""
    (header_len,) = struct.unpack("<Q", path.read_bytes()[:8])
    return 8 + header_len


def flip_tensor_byte(path: Path, position: int = 3) -> None:
    """Corrupt one byte of a safetensors file's tensor data, header intact (safetensors alone would load it)."""
    data = bytearray(path.read_bytes())
    data[data_offset(path) + position] ^= 0xFF
    path.write_bytes(bytes(data))


def with_remote_code(model_dir: Path, target: Path, code: str) -> Path:
    """A copy of a saved model directory whose config maps AutoModelForCausalLM to `RemoteLlama` in its own
    `modeling_remote.py` (`code`): a directory that ships Python code and is not a codeunlearn export."""
    shutil.copytree(model_dir, target)
    config = json.loads((target / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_remote.RemoteLlama"}
    (target / "config.json").write_text(json.dumps(config))
    (target / "modeling_remote.py").write_text(code)
    return target
