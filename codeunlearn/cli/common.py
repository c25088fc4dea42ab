"""Helpers the subcommands share: corpora by split, loading a base model with its bottleneck (from a directory or a
Hub repo id), stage timing."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from codeunlearn.bottleneck.config import CONFIG_NAME
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.cli.arguments import DataArguments, ModelArguments
from codeunlearn.data import DocumentSplit, load_documents, pack_documents, split_documents
from codeunlearn.errors import CodeunlearnError
from codeunlearn.hub import resolve_bottleneck_source

Split = Literal["train", "heldout", "all"]


@dataclass
class Corpora:
    """Several corpora, each split by document (with the same seed in every command)."""

    sources: list[str]
    splits: list[DocumentSplit]
    data: DataArguments

    @property
    def name(self) -> str:
        return "+".join(split.name for split in self.splits)

    def documents(self, source: str, split: Split) -> list[str]:
        """Documents of one corpus in one split."""
        part = self.splits[self.sources.index(source)]
        return {"train": part.train, "heldout": part.heldout, "all": part.train + part.heldout}[split]

    def pack(self, tokenizer, split: Split, max_tokens: int | None = None, skip_tokens: int = 0) -> Tensor:
        """Packed (num_chunks, seq_len) token ids of `split`, every corpus capped on its own at `max_tokens`
        (default: the data arguments' `max_tokens`) after skipping its first `skip_tokens` (whole chunks), e.g.
        validation text that follows the part a bottleneck was trained on."""
        cap = self.data.max_tokens if max_tokens is None else max_tokens
        skip = skip_tokens // self.data.seq_len
        if skip and cap is None:
            raise ValueError("skip_tokens needs a token cap")
        chunks = []
        for source, part in zip(self.sources, self.splits, strict=True):
            docs = self.documents(source, split)
            if not docs:
                raise CodeunlearnError(
                    f"corpus {source} has no {split} documents ({len(part.train) + len(part.heldout)} documents, "
                    f"heldout_fraction={self.data.heldout_fraction})",
                    "use a corpus with more documents or change --heldout_fraction",
                )
            try:
                packed = pack_documents(docs, tokenizer, self.data.seq_len, None if cap is None else cap + skip_tokens)
                if skip and len(packed) <= skip:
                    raise CodeunlearnError(
                        f"{len(packed) * self.data.seq_len:,} tokens, none after the first {skip_tokens:,}",
                        "use a corpus with more text, or lower --max_tokens",
                    )
                chunks.append(packed[skip:])
            except CodeunlearnError as err:
                raise CodeunlearnError(f"corpus {source} ({split} split): {err.problem}", err.fix) from None
        return torch.cat(chunks)


def read_corpora(sources: list[str], data: DataArguments, what: str = "corpora") -> Corpora:
    """Load and split documents (no tokenizer needed, so a bad path fails before the model loads)."""
    if not sources:
        raise CodeunlearnError(f"no {what} given", f"pass --{what} FILE [FILE ...]")
    splits = [
        split_documents(
            Path(source).stem,
            load_documents(source, text_field=data.text_field),
            data.heldout_fraction,
            data.split_seed,
        )
        for source in sources
    ]
    return Corpora(list(sources), splits, data)


def resolve_bottleneck_dir(path: str | Path) -> Path:
    """Accept a bottleneck directory, or the output directory of `codeunlearn train` that holds `bottleneck/`, or a
    sae-lens SAE directory (or a folder of them, e.g. a downloaded release), attached by its hook names. A name that
    is not a local path but reads as a Hub repo id (`OWNER/NAME[/sub/folder][@revision]`) is downloaded into the
    Hugging Face cache first (`codeunlearn.hub`), and the same rules apply to what it holds."""
    local = resolve_bottleneck_source(path)
    found = _bottleneck_in(local)
    if found is not None:
        return found
    if not Path(path).exists() and local != Path(path):  # downloaded, but not a bottleneck
        raise CodeunlearnError(
            f"Hub repo {path} holds no bottleneck (no {CONFIG_NAME}, no bottleneck/, no sae-lens SAE)",
            "name the repo (or its subfolder) that `codeunlearn push --bottleneck_dir` uploaded",
        )
    raise CodeunlearnError(
        f"no bottleneck at {path} (no {CONFIG_NAME})",
        "pass the bottleneck directory written by `codeunlearn train`, a sae-lens SAE directory, or a Hub repo id "
        "OWNER/NAME[/subfolder][@revision]",
    )


def _bottleneck_in(path: Path) -> Path | None:
    """The bottleneck directory `path` is or holds (a codeunlearn bottleneck, a train output, sae-lens SAEs)."""
    if (path / CONFIG_NAME).is_file():
        return path
    if (path / "bottleneck" / CONFIG_NAME).is_file():
        return path / "bottleneck"
    if is_sae_source(path):
        return path
    return None


def is_sae_source(path: Path) -> bool:
    """A sae-lens (or Gemma Scope) SAE directory, or a directory whose subdirectories are."""
    from codeunlearn.bottleneck.sae import is_sae_directory

    if is_sae_directory(path):
        return True
    return path.is_dir() and any(p.is_dir() and is_sae_directory(p) for p in path.iterdir())


def load_base(model_args: ModelArguments, progress: bool = True):
    """Load the frozen base model and its tokenizer, with a ticking bar (loading a GGUF takes tens of seconds)."""
    from codeunlearn.modeling import load_model_and_tokenizer

    with ticker(f"load {model_args.model_name_or_path}", enabled=progress):
        return load_model_and_tokenizer(model_args.model_name_or_path, model_args.gguf_file, model_args.dtype)


def load_bottlenecked(
    model_args: ModelArguments, bottleneck_dir: str | Path, progress: bool = True
) -> tuple[BottleneckedModel, object]:
    """Base model + the bottleneck (and its saved edits) from `bottleneck_dir`; returns (bmodel, tokenizer). A sae-lens
    SAE directory is attached at the layer its hook name records."""
    path = resolve_bottleneck_dir(bottleneck_dir)
    model, tokenizer = load_base(model_args, progress)
    if not (path / CONFIG_NAME).is_file():
        return BottleneckedModel.attach_sae(model, path), tokenizer
    return BottleneckedModel.from_pretrained(model, path), tokenizer


@contextlib.contextmanager
def ticker(desc: str, enabled: bool = True) -> Iterator[None]:
    """A tqdm bar that shows elapsed time for a step that reports no progress of its own (e.g. loading a model)."""
    bar = tqdm(desc=desc, bar_format="{desc}: {elapsed}", disable=not enabled, leave=False)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(1.0):
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()


class Stopwatch:
    """Wall-clock seconds of named stages, printed as each one ends."""

    def __init__(self, verbose: bool = True) -> None:
        self.seconds: dict[str, float] = {}
        self.verbose = verbose

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        if self.verbose:
            print(f"[{name}] ...", flush=True)
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        if self.verbose:
            print(f"[{name}] done in {self.seconds[name]:.1f} s", flush=True)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def check_output_file(path: str | Path, overwrite: bool) -> Path:
    """Refuse to replace an existing file unless `overwrite`."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise CodeunlearnError(f"{path} already exists", "pass --overwrite or choose another output path")
    if path.exists() and path.is_dir():
        raise CodeunlearnError(f"{path} is a directory", "pass a file path")
    return path


def check_output_dir_free(path: str | Path, overwrite: bool) -> Path:
    """Fail early (before any slow step) when an output directory would be refused at save time."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CodeunlearnError(f"{path} exists and is not a directory", "choose another output path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise CodeunlearnError(f"output directory {path} is not empty", "pass --overwrite or choose a new directory")
    return path
