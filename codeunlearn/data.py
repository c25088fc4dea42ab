"""Corpora: read as documents, split into held-out documents, tokenized and packed.

A corpus is a list of documents, read by `codeunlearn.corpus_sources` from a local file, a folder, a `save_to_disk`
folder or a Hub dataset. Held-out splits are by document (never by chunk), so statistics and metrics never see the
same text. Local `.txt` files hold one document per line, except that lines matching `doc_start_regex` (by default
WikiText article headings ` = Title = `) start a new multi-line document; other forms hold one document per row.

`DataArguments` says which corpora a run reads and how they are split and cut; `read_corpora` loads and splits them
(before any model loads, so a bad path fails fast) and `Corpora.pack` cuts one split into chunks.

With `--streaming` no corpus is held whole: `read_corpora` counts each corpus's documents in one streamed pass and
keeps only which of them are held out (one byte per document, the in-memory split exactly); `Corpora.pack` then packs
the chosen side batch by batch (`iter_packed`, the ids `pack_documents` gives) and holds only the packed ids, and
`Corpora.chunk_stream` gives the chunks as a `StreamedChunks` that `codeunlearn stats` counts without ever holding them.
"""

from __future__ import annotations

import array
import hashlib
import itertools
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from codeunlearn.corpus_sources import DocumentStream, corpus_name, read_source, stream_source
from codeunlearn.errors import CodeunlearnError, check_range

WIKITEXT_ARTICLE_START = r"^ = [^=].* = $"

Split = Literal["train", "heldout", "all"]


@dataclass
class DocumentSplit:
    """Documents of one corpus, split into the part statistics/training may see and the held-out part."""

    name: str
    train: list[str]
    heldout: list[str]

    @property
    def num_documents(self) -> int:
        return len(self.train) + len(self.heldout)

    def count(self, split: Split) -> int:
        return len(self.side(split))

    def side(self, split: Split) -> list[str]:
        """The documents of one split."""
        return {"train": self.train, "heldout": self.heldout, "all": self.train + self.heldout}[split]


@dataclass
class StreamedSplit:
    """One corpus read as a stream, split by document: the stream, and which documents (by position) are held out."""

    name: str
    stream: DocumentStream
    heldout: bytearray  # 1 at the position of every held-out document (`heldout_mask`)

    @property
    def num_documents(self) -> int:
        return len(self.heldout)

    def count(self, split: Split) -> int:
        held = sum(self.heldout)
        return {"train": len(self.heldout) - held, "heldout": held, "all": len(self.heldout)}[split]

    def side(self, split: Split) -> Iterator[str]:
        """The documents of one split, streamed in corpus order (`all`: the train documents, then the held-out
        ones, as in memory)."""
        if split == "all":
            yield from itertools.chain(self.side("train"), self.side("heldout"))
            return
        for index, doc in enumerate(self.stream):
            if self.heldout[index] == (split == "heldout"):
                yield doc


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
    held = heldout_mask(name, len(docs), heldout_fraction, seed)
    return DocumentSplit(
        name=name,
        train=[d for d, h in zip(docs, held, strict=True) if not h],
        heldout=[d for d, h in zip(docs, held, strict=True) if h],
    )


def heldout_mask(name: str, num_docs: int, heldout_fraction: float, seed: int) -> bytearray:
    """Which of `num_docs` documents are held out (1) under the seeded split, by position: the first
    `round(fraction x num_docs)` positions of a seeded shuffle, at least one document on each side when there are two
    or more. Needs only the count, so a streamed corpus is split exactly as the same corpus in memory."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise CodeunlearnError(f"heldout_fraction={heldout_fraction}", "use a value in [0, 1)")
    # An int64 array shuffles exactly as a list of ints (random.shuffle only swaps by index) at 8 bytes a document.
    order = array.array("q", range(num_docs))
    random.Random(seed).shuffle(order)
    n_heldout = round(heldout_fraction * num_docs)
    if num_docs == 1 and n_heldout:
        raise CodeunlearnError(
            f"corpus {name!r} is a single document, so it cannot be split into train and held-out parts",
            "put one document per line (or JSONL row), or set heldout_fraction 0",
        )
    if heldout_fraction > 0 and num_docs >= 2:
        n_heldout = min(max(n_heldout, 1), num_docs - 1)
    held = bytearray(num_docs)
    for index in order[:n_heldout]:
        held[index] = 1
    return held


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


def iter_packed(
    docs: Iterable[str], tokenizer, seq_len: int, max_tokens: int | None = None, group: int = 64
) -> Iterator[Tensor]:
    """`pack_documents` batch by batch: the same (num_chunks, seq_len) ids, yielded as (k, seq_len) pieces as each
    `group` of documents is tokenized, holding only the tokens that do not fill a chunk yet. The documents are read
    only up to the token cap."""
    if seq_len < 2:
        raise CodeunlearnError(f"seq_len={seq_len}", "use a sequence length of at least 2")
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    budget = None if max_tokens is None else max(max_tokens, seq_len)
    carry = torch.empty(0, dtype=torch.long)
    total = chunks = 0
    docs = iter(docs)
    while batch := list(itertools.islice(docs, group)):  # itertools.batched needs Python 3.12
        rows = tokenizer(batch, add_special_tokens=False)["input_ids"]
        ids = torch.tensor(list(itertools.chain.from_iterable(row + eos for row in rows)), dtype=torch.long)
        full = budget is not None and total + len(ids) >= budget
        if full:
            ids = ids[: budget - total]
        total += len(ids)
        carry = torch.cat([carry, ids])
        n = len(carry) // seq_len
        if n:
            chunks += n
            yield carry[: n * seq_len].view(n, seq_len)
            carry = carry[n * seq_len :].clone()  # a view would keep the whole piece alive
        if full:
            break
    if chunks == 0:
        raise CodeunlearnError(
            f"corpus has {total} tokens, fewer than one chunk of seq_len={seq_len}",
            "use more text or a smaller --seq_len",
        )


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
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read corpora through `datasets` streaming instead of whole: no corpus, document list or token "
            "list is held in memory (only the packed ids a command trains on; `stats` not even those). The same "
            "documents, split and chunks as without it; each corpus is read once more to count its documents."
        },
    )

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
    splits: list[DocumentSplit] | list[StreamedSplit]
    data: DataArguments

    @property
    def name(self) -> str:
        return "+".join(split.name for split in self.splits)

    def documents(self, source: str, split: Split) -> list[str] | Iterator[str]:
        """Documents of one corpus in one split (streamed: an iterator)."""
        return self.splits[self.sources.index(source)].side(split)

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
            docs = self._side(source, part, split)
            try:
                limit = None if cap is None else cap + skip_tokens
                if isinstance(part, StreamedSplit):
                    packed = torch.cat(list(iter_packed(docs, tokenizer, self.data.seq_len, limit)))
                else:
                    packed = pack_documents(docs, tokenizer, self.data.seq_len, limit)
                if skip and len(packed) <= skip:
                    raise CodeunlearnError(
                        f"{len(packed) * self.data.seq_len:,} tokens, none after the first {skip_tokens:,}",
                        "use a corpus with more text, or lower --max_tokens",
                    )
                chunks.append(packed[skip:])
            except CodeunlearnError as err:
                raise CodeunlearnError(f"corpus {source} ({split} split): {err.problem}", err.fix) from None
        return torch.cat(chunks)

    def chunk_stream(self, tokenizer, split: Split, max_tokens: int | None = None) -> StreamedChunks:
        """The chunks `pack(tokenizer, split, max_tokens)` gives, as a stream read anew on every pass."""
        cap = self.data.max_tokens if max_tokens is None else max_tokens
        for source, part in zip(self.sources, self.splits, strict=True):
            self._side(source, part, split)  # an empty side fails now, not during a pass
        return StreamedChunks(self, tokenizer, split, cap)

    def _side(self, source: str, part: DocumentSplit | StreamedSplit, split: Split) -> list[str] | Iterator[str]:
        if not part.count(split):
            raise CodeunlearnError(
                f"corpus {source} has no {split} documents ({part.num_documents} documents, "
                f"heldout_fraction={self.data.heldout_fraction})",
                "use a corpus with more documents or change --heldout_fraction",
            )
        return part.side(split)


@dataclass
class StreamedChunks:
    """The packed chunks of one split of several corpora (each capped on its own), tokenized anew on every pass and
    yielded as (k, seq_len) pieces in corpus order: `Corpora.pack` without the tensor of all chunks."""

    corpora: Corpora
    tokenizer: object
    split: Split
    max_tokens: int | None
    num_chunks: int | None = None  # known once `measure` has run

    @property
    def seq_len(self) -> int:
        return self.corpora.data.seq_len

    def measure(self) -> tuple[int, str]:
        """One pass: the number of chunks and 16 hex digits of their ids (not `corpus_fingerprint`, which needs the
        number first)."""
        digest = hashlib.sha256()
        count = 0
        for piece in self:
            digest.update(piece.numpy().tobytes())
            count += len(piece)
        self.num_chunks = count
        return count, digest.hexdigest()[:16]

    def __iter__(self) -> Iterator[Tensor]:
        for source, part in zip(self.corpora.sources, self.corpora.splits, strict=True):
            try:
                yield from iter_packed(part.side(self.split), self.tokenizer, self.seq_len, self.max_tokens)
            except CodeunlearnError as err:
                raise CodeunlearnError(f"corpus {source} ({self.split} split): {err.problem}", err.fix) from None


def read_corpora(sources: list[str], data: DataArguments, what: str = "corpora") -> Corpora:
    """Load and split documents (no tokenizer needed, so a bad path fails before the model loads)."""
    if not sources:
        raise CodeunlearnError(f"no {what} given", f"pass --{what} FILE [FILE ...]")
    if data.streaming:
        return Corpora(list(sources), [stream_corpus(source, data) for source in sources], data)
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


def stream_corpus(source: str, data: DataArguments) -> StreamedSplit:
    """One corpus as a stream, split by document: one pass counts its documents (and meets any bad row)."""
    stream = stream_source(source, data.text_field, WIKITEXT_ARTICLE_START)
    num_docs = sum(1 for _ in stream)
    if not num_docs:
        raise CodeunlearnError(f"corpus {source} is empty", "pass a corpus with at least one non-empty document")
    name = corpus_name(source)
    return StreamedSplit(name, stream, heldout_mask(name, num_docs, data.heldout_fraction, data.split_seed))


def corpus_fingerprint(chunks: Tensor) -> str:
    """16 hex digits identifying packed token ids (num_chunks, seq_len)."""
    digest = fingerprint_hasher(tuple(chunks.shape))
    digest.update(chunks.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def fingerprint_hasher(shape: tuple[int, int]) -> hashlib._Hash:
    """The hash `corpus_fingerprint` takes of chunks of `shape` before their bytes: fed the int64 bytes of the
    chunks in order, piece by piece, its first 16 hex digits are their fingerprint (the shape must be known first)."""
    return hashlib.sha256(str(tuple(shape)).encode())
