"""Peak memory of `codeunlearn stats` on a large corpus, read whole and with `--streaming`.

Writes a synthetic one-document-per-line text corpus of about --tokens tokens (words of a word-level tokenizer, one
token each), a tiny random Llama with that tokenizer and a tiny codebook bottleneck trained on a few lines, then runs
`codeunlearn stats` on the corpus once per variant, each in its own process, and reports the process's peak resident
memory (`ru_maxrss`) and wall time. The tiny model makes the forward passes cheap, so what the table shows is what
reading, splitting and packing the corpus costs. Both variants must write the same statistics (the table gives
their corpus fingerprint).

    python benchmarks/streaming_memory.py                      # 20M tokens in a temporary folder
    python benchmarks/streaming_memory.py --tokens 5000000 --workdir outputs/streaming_memory

Prints a Markdown table (`codeunlearn.tables.markdown_table`).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from codeunlearn.tables import markdown_table

if __package__:
    from . import tiny
else:  # run as a file: Python puts the script's own folder first on sys.path
    import tiny

VOCAB = [f"w{i}" for i in range(1000)]
WORDS_PER_LINE = 99  # + the EOS between documents: 100 tokens a document
VARIANTS = {"in memory": [], "streaming": ["--streaming"]}


def write_corpus(path: Path, tokens: int, seed: int = 0) -> int:
    """About `tokens` tokens of random words, one document per line; returns the number of tokens (EOS included)."""
    rng = random.Random(seed)
    lines = max(tokens // (WORDS_PER_LINE + 1), 1)
    with path.open("w") as file:
        for start in range(0, lines, 10_000):
            block = (" ".join(rng.choices(VOCAB, k=WORDS_PER_LINE)) for _ in range(min(10_000, lines - start)))
            file.write("\n".join(block) + "\n")
    return lines * (WORDS_PER_LINE + 1)


def build_model(directory: Path) -> Path:
    """A tiny random Llama saved with a word-level tokenizer over `VOCAB`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<eos>", *VOCAB]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    model = tiny.tiny_llama(len(words), 2, 512, eos_token_id=1, bos_token_id=1)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def train_bottleneck(model_dir: Path, workdir: Path) -> Path:
    """A one-layer codebook trained for two steps on 200 lines (`codeunlearn train`)."""
    from codeunlearn.cli import main

    small = workdir / "train.txt"
    write_corpus(small, 20_000, seed=1)
    shape = ["--layers", "1", "--num_heads", "2", "--codebook_size", "64", "--num_stages", "1"]
    steps = ["--key_steps", "1", "--value_steps", "1", "--batch_size", "4", "--kmeans_init_tokens", "1024"]
    argv = ["train", "--model_name_or_path", str(model_dir), "--corpora", str(small), "--seq_len", "128"]
    argv += [*shape, *steps, "--retain_statistics_tokens", "0", "--no_progress"]
    output = workdir / "run"
    if main([*argv, "--output_dir", str(output), "--overwrite"]) != 0:
        raise SystemExit("training the tiny bottleneck failed")
    return output / "bottleneck"


def child(argv: list[str]) -> None:
    """Run `codeunlearn` with `argv` in this process and print its peak RSS and wall time as one JSON line."""
    from codeunlearn.cli import main

    start = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"code": code, "seconds": seconds, "peak_rss_mib": peak}))


def measure(argv: list[str]) -> dict:
    """`child(argv)` in a fresh interpreter (so each variant's peak is its own)."""
    script = Path(__file__).resolve()
    done = subprocess.run(
        [sys.executable, str(script), "--child", *argv], capture_output=True, text=True, cwd=script.parents[1]
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines or json.loads(lines[-1])["code"] != 0:
        raise SystemExit(f"{' '.join(argv[:1])} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=20_000_000, help="Size of the synthetic corpus in tokens.")
    parser.add_argument("--workdir", help="Folder for the corpus, model and outputs (default: a temporary one).")
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--heldout_fraction", type=float, default=0.2)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(args.workdir or scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        corpus = workdir / "corpus.txt"
        tokens = write_corpus(corpus, args.tokens)
        print(f"corpus: {tokens:,} tokens, {corpus.stat().st_size / 2**20:,.0f} MiB ({corpus})", flush=True)
        model_dir = build_model(workdir / "model")
        bottleneck = train_bottleneck(model_dir, workdir)
        rows = []
        for name in args.variants:
            output = workdir / f"stats_{name.replace(' ', '_')}.safetensors"
            argv = ["stats", "--model_name_or_path", str(model_dir), "--bottleneck_dir", str(bottleneck)]
            argv += ["--corpora", str(corpus), "--seq_len", str(args.seq_len), "--batch_size", str(args.batch_size)]
            argv += ["--heldout_fraction", str(args.heldout_fraction), "--bf16", "false", "--no_progress"]
            argv += ["--output_file", str(output), "--overwrite", *VARIANTS[name]]
            result = measure(argv)
            summary = json.loads(output.with_suffix(".json").read_text())
            counted = sum(summary["tokens"].values())
            print(f"{name}: {result['peak_rss_mib']:,.0f} MiB, {result['seconds']:,.1f} s", flush=True)
            rows.append(
                [
                    name,
                    f"{tokens:,}",
                    f"{counted:,}",
                    f"{result['peak_rss_mib']:,.0f}",
                    f"{result['seconds']:,.1f}",
                    summary["corpus_fingerprint"],
                ]
            )
    header = ["variant", "corpus tokens", "tokens counted", "peak RSS (MiB)", "seconds", "corpus fingerprint"]
    print(markdown_table(header, rows, "lrrrrl"))


if __name__ == "__main__":
    main()
