"""Corpora: read as documents, split into held-out documents, tokenized and packed.

A corpus is a list of documents, read by `codeunlearn.corpus_sources` from a local file, a folder, a `save_to_disk`
folder or a Hub dataset. Held-out splits are by document (never by chunk), so statistics and metrics never see the
same text. Local `.txt` files hold one document per line, except that lines matching `doc_start_regex` (by default
WikiText article headings ` = Title = `) start a new multi-line document; other forms hold one document per row.

`DataArguments` says which corpora a run reads and how they are split and cut; `read_corpora` loads and splits them
(before any model loads, so a bad path fails fast) and `Corpora.pack` cuts one split into chunks.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from codeunlearn.corpus_sources import corpus_name, read_source
from codeunlearn.errors import CodeunlearnError, check_range

WIKITEXT_ARTICLE_START = r"^ = [^=].* = $"

Split = Literal["train", "heldout", "all"]


@dataclass
class DocumentSplit:
    """Documents of one corpus, split into the part statistics/training may see and the held-out part."""

    name: str
    train: list[str]
    heldout: list[str]


def load_documents(
    source: str, text_field: str = "text", doc_start_regex: str | None = WIKITEXT_ARTICLE_START, split: str = "train"
) -> list[str]:
    """Load a corpus as documents from any form `codeunlearn.corpus_sources` reads: a local `.txt` / `.json(l)` /
    `.parquet` file, a folder of them, a `save_to_disk` folder or a Hub dataset `NAME[:CONFIG[:SPLIT]]`. `split` is
    the split of a DatasetDict folder or Hub dataset whose source names none."""
    docs = read_source(source, text_field, doc_start_regex, split)
    if not docs:
        raise CodeunlearnError(f"corpus {source} is empty", "pass a corpus with at least one non-empty document")
    return docs


def split_documents(name: str, docs: list[str], heldout_fraction: float, seed: int) -> DocumentSplit:
    """Seeded split by document; at least one document on each side when there are two or more."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise CodeunlearnError(f"heldout_fraction={heldout_fraction}", "use a value in [0, 1)")
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_heldout = round(heldout_fraction * len(docs))
    if len(docs) == 1 and n_heldout:
        raise CodeunlearnError(
            f"corpus {name!r} is a single document, so it cannot be split into train and held-out parts",
            "put one document per line (or JSONL row), or set heldout_fraction 0",
        )
    if heldout_fraction > 0 and len(docs) >= 2:
        n_heldout = min(max(n_heldout, 1), len(docs) - 1)
    held = set(order[:n_heldout])
    return DocumentSplit(
        name=name,
        train=[d for i, d in enumerate(docs) if i not in held],
        heldout=[d for i, d in enumerate(docs) if i in held],
    )


def pack_documents(docs: list[str], tokenizer, seq_len: int, max_tokens: int | None = None) -> Tensor:
    """Tokenize documents, join them with EOS and cut into (num_chunks, seq_len) token ids."""
    if seq_len < 2:
        raise CodeunlearnError(f"seq_len={seq_len}", "use a sequence length of at least 2")
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    budget = None if max_tokens is None else max(max_tokens, seq_len)
    for start in range(0, len(docs), 64):
        for row in tokenizer(docs[start : start + 64], add_special_tokens=False)["input_ids"]:
            ids.extend(row)
            if eos is not None:
                ids.append(eos)
        if budget is not None and len(ids) >= budget:
            ids = ids[:budget]
            break
    n_chunks = len(ids) // seq_len
    if n_chunks == 0:
        raise CodeunlearnError(
            f"corpus has {len(ids)} tokens, fewer than one chunk of seq_len={seq_len}",
            "use more text or a smaller --seq_len",
        )
    return torch.tensor(ids[: n_chunks * seq_len], dtype=torch.long).view(n_chunks, seq_len)


def load_split(
    source: str,
    tokenizer,
    seq_len: int,
    heldout_fraction: float,
    seed: int,
    text_field: str = "text",
    max_tokens: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Load one corpus and return packed (train_chunks, heldout_chunks)."""
    docs = load_documents(source, text_field=text_field)
    split = split_documents(corpus_name(source), docs, heldout_fraction, seed)
    train = pack_documents(split.train, tokenizer, seq_len, max_tokens)
    heldout = pack_documents(split.heldout, tokenizer, seq_len, max_tokens) if split.heldout else train[:0]
    return train, heldout


def shuffled_chunks(chunks: list[Tensor], seed: int) -> Tensor:
    """Concatenate packed corpora and shuffle chunk order deterministically."""
    joined = torch.cat(chunks)
    generator = torch.Generator().manual_seed(seed)
    return joined[torch.randperm(len(joined), generator=generator)]


@dataclass
class DataArguments:
    """Corpora and how they are cut into chunks.

    Every corpus is split by document into a train part and a held-out part with `split_seed`; statistics and
    training only ever see the train part, metrics only the held-out part, so no command scores text it learned from.
    """

    corpora: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Corpora (train and stats read these), each one of: a .txt/.json/.jsonl/.parquet file; a folder "
            "of such files (read in name order as one corpus); a save_to_disk folder (a DatasetDict gives its train "
            "split, or FOLDER:SPLIT); a Hub dataset NAME[:CONFIG[:SPLIT]], e.g. wikitext:wikitext-103-raw-v1:train."
        },
    )
    forget_corpora: list[str] = field(
        default_factory=list,
        metadata={"help": "Text of the topic to forget (eval; train/stats read them too), in any --corpora form."},
    )
    retain_corpora: list[str] = field(
        default_factory=list,
        metadata={"help": "Text to keep (eval; train/stats read them too), in any --corpora form."},
    )
    text_field: str = field(
        default="text",
        metadata={"help": "Column holding the text in .json/.jsonl/.parquet files, save_to_disk folders and Hub data."},
    )
    seq_len: int = field(default=256, metadata={"help": "Tokens per packed chunk."})
    heldout_fraction: float = field(
        default=0.2, metadata={"help": "Fraction of each corpus's documents held out for metrics."}
    )
    split_seed: int = field(
        default=0, metadata={"help": "Seed of the train/held-out document split; use the same one in every command."}
    )
    max_tokens: int | None = field(default=None, metadata={"help": "Cap on tokens taken from each corpus (per split)."})

    def __post_init__(self) -> None:
        # Checked here, before any corpus is read: 0 or a negative cap used to read as "no cap"/one chunk silently,
        # a 1-token chunk has no next token to predict, and a held-out fraction of 1 leaves nothing to train on.
        check_range("seq_len", self.seq_len, self.seq_len >= 2, ">= 2 (tokens per chunk)")
        check_range("heldout_fraction", self.heldout_fraction, 0 <= self.heldout_fraction < 1, "in [0, 1) (e.g. 0.2)")
        if self.max_tokens is not None:
            check_range("max_tokens", self.max_tokens, self.max_tokens >= 1, ">= 1, or leave it out for no cap")

    def all_corpora(self) -> list[str]:
        """Every corpus given, in order, without repeats."""
        return list(dict.fromkeys([*self.corpora, *self.forget_corpora, *self.retain_corpora]))


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
            corpus_name(source),
            load_documents(source, text_field=data.text_field),
            data.heldout_fraction,
            data.split_seed,
        )
        for source in sources
    ]
    return Corpora(list(sources), splits, data)


def corpus_fingerprint(chunks: Tensor) -> str:
    """16 hex digits identifying packed token ids (num_chunks, seq_len)."""
    digest = hashlib.sha256(str(tuple(chunks.shape)).encode())
    digest.update(chunks.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
