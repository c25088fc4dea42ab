"""`CodeStatistics`: how often each code (VQ) or feature (SAE) fires at each bottleneck layer on a corpus.

Computed with forward passes that stop right after the deepest bottleneck layer (no later layer, no LM head).
Tokens left unquantized (position 0, massive activations) are not counted. For an SAE, a feature fires on a token
when its activation is positive; the summed and the largest activation of every feature are kept as well (for
the mean-activation-difference score and the clamp scales).

Resumable: given a `StatisticsCheckpoint`, the pass saves its running sums every `every` batches (atomically, one
file per data-parallel process in `OUTPUT.partial/`, see `partial_statistics_path`) and, with `resume=True`,
continues from them. The resumed pass repeats the same additions in the same order, so its result equals an
uninterrupted pass bit for bit (float64 activation sums included). A resume onto another bottleneck, other chunks,
another batch size, precision or number of processes is refused: the saved sums would describe another count.

The chunks may be a `StreamedChunks` (`--streaming`) instead of a tensor: one tokenizing pass first counts them (so the
shares, the batches and the partial states are those of the same chunks in memory), then the counting pass packs
them again batch by batch, hashing every chunk on the way, so the counts and the recorded `corpus_fingerprint` equal
the in-memory pass's while only one batch of chunks is held.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor
from tqdm.auto import tqdm

from codeunlearn import distributed
from codeunlearn.bottleneck import sharding
from codeunlearn.bottleneck.config import DEFAULT_KIND
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.data import StreamedChunks, corpus_fingerprint, fingerprint_hasher
from codeunlearn.errors import CodeunlearnError, check_range
from codeunlearn.io import atomic_save_tensors, atomic_write_text, load_tensors, remove_leftovers
from codeunlearn.runtime import autocast, bars_enabled, batches, model_device

SUM_SUFFIX = ".activation_sum"
MAX_SUFFIX = ".activation_max"
TOKENS_SUFFIX = ".tokens"  # partial state only: a layer's counted tokens, as a one-element int64 tensor
PARTIAL_SUFFIX = ".partial"
PARTIAL_STATE_KEY = "codeunlearn_partial_statistics"  # safetensors metadata: the JSON `PartialState`
PARTIAL_FORMAT = 1
DEFAULT_CHECKPOINT_EVERY = 50


@dataclass
class CodeStatistics:
    """Per layer: firing count of every code id (or SAE feature) and the number of counted tokens; for an SAE also
    every feature's summed and largest activation."""

    counts: dict[int, Tensor]
    tokens: dict[int, int]
    corpus: str = ""
    bottleneck_fingerprint: str = ""
    activation_sums: dict[int, Tensor] = field(default_factory=dict)  # float64, SAE only
    activation_max: dict[int, Tensor] = field(default_factory=dict)  # float32, SAE only
    kind: str = DEFAULT_KIND
    corpus_fingerprint: str = ""  # hash of the packed token ids counted (`codeunlearn.data.corpus_fingerprint`)

    def frequency(self, layer: int) -> Tensor:
        """Fraction of quantized tokens on which each code fires (a code owns one stage/head slot)."""
        return self.counts[layer].double() / max(self.tokens[layer], 1)

    def mean_activation(self, layer: int) -> Tensor:
        """SAE: every feature's activation averaged over all counted tokens (0 where it does not fire)."""
        return self._sums(layer) / max(self.tokens[layer], 1)

    def mean_firing_activation(self, layer: int) -> Tensor:
        """SAE: every feature's mean activation on the tokens where it fires (0 if it never fires)."""
        return self._sums(layer) / self.counts[layer].clamp_min(1).double()

    def _sums(self, layer: int) -> Tensor:
        if layer not in self.activation_sums:
            raise CodeunlearnError(
                f"statistics of {self.corpus!r} hold no activations (codebook statistics)",
                "compute them with an SAE bottleneck (codeunlearn stats)",
            )
        return self.activation_sums[layer]

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tensors = {str(layer): c for layer, c in self.counts.items()}
        tensors.update({f"{layer}{SUM_SUFFIX}": t for layer, t in self.activation_sums.items()})
        tensors.update({f"{layer}{MAX_SUFFIX}": t for layer, t in self.activation_max.items()})
        atomic_save_tensors(tensors, path)
        summary = {
            "corpus": self.corpus,
            "bottleneck_fingerprint": self.bottleneck_fingerprint,
            "kind": self.kind,
            "corpus_fingerprint": self.corpus_fingerprint,
            "tokens": {str(k): v for k, v in self.tokens.items()},
            "codes_seen": {str(k): int((c > 0).sum()) for k, c in self.counts.items()},
        }
        atomic_write_text(path.with_suffix(".json"), json.dumps(summary, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CodeStatistics:
        path = Path(path)
        tensors = load_tensors(path, "code statistics")
        meta_path = path.with_suffix(".json")
        if not meta_path.is_file():
            raise CodeunlearnError(f"statistics summary {meta_path} is missing", "re-run codeunlearn stats")
        meta = json.loads(meta_path.read_text())

        def by_layer(suffix: str) -> dict[int, Tensor]:
            return {int(k[: -len(suffix)]): v for k, v in tensors.items() if k.endswith(suffix)}

        return cls(
            counts={int(k): v for k, v in tensors.items() if "." not in k},
            tokens={int(k): int(v) for k, v in meta["tokens"].items()},
            corpus=meta.get("corpus", ""),
            bottleneck_fingerprint=meta.get("bottleneck_fingerprint", ""),
            activation_sums=by_layer(SUM_SUFFIX),
            activation_max=by_layer(MAX_SUFFIX),
            kind=meta.get("kind", DEFAULT_KIND),
            corpus_fingerprint=meta.get("corpus_fingerprint", ""),
        )


def partial_statistics_path(output: str | Path) -> Path:
    """The folder where a statistics pass writing `output` keeps its partial state (`forget.safetensors` ->
    `forget.partial/`)."""
    return Path(output).with_suffix(PARTIAL_SUFFIX)


@dataclass
class _Tallies:
    """The running sums of one process: what a finished pass reduces over processes, and what a partial state
    holds."""

    counts: dict[int, Tensor]
    tokens: dict[int, int]
    sums: dict[int, Tensor]  # float64, SAE only
    maxima: dict[int, Tensor]  # float32, SAE only

    @classmethod
    def zeros(cls, bmodel: BottleneckedModel) -> _Tallies:
        layers = bmodel.layers
        counts = {layer: torch.zeros(bmodel.num_features(layer), dtype=torch.long) for layer in layers}
        sums: dict[int, Tensor] = {}
        maxima: dict[int, Tensor] = {}
        if bmodel.config.has_activations:
            sums = {layer: torch.zeros(bmodel.num_features(layer), dtype=torch.float64) for layer in layers}
            maxima = {layer: torch.zeros(bmodel.num_features(layer)) for layer in layers}
        return cls(counts, dict.fromkeys(layers, 0), sums, maxima)

    def add(self, layer: int, tally: Any) -> None:
        """Add one batch's `Tally` of `layer`."""
        self.counts[layer] += tally.counts
        self.tokens[layer] += tally.tokens
        if tally.activation_sum is not None:
            self.sums[layer] += tally.activation_sum
        if tally.activation_max is not None:
            self.maxima[layer] = torch.maximum(self.maxima[layer], tally.activation_max)

    def to_tensors(self) -> dict[str, Tensor]:
        tensors = {str(layer): c for layer, c in self.counts.items()}
        tensors.update(
            {f"{layer}{TOKENS_SUFFIX}": torch.tensor([n], dtype=torch.long) for layer, n in self.tokens.items()}
        )
        tensors.update({f"{layer}{SUM_SUFFIX}": t for layer, t in self.sums.items()})
        tensors.update({f"{layer}{MAX_SUFFIX}": t for layer, t in self.maxima.items()})
        return tensors

    def load(self, tensors: dict[str, Tensor], source: Path) -> None:
        """Replace the sums by those of a partial state (same layers and sizes, else refused)."""
        expected = self.to_tensors()
        if expected.keys() != tensors.keys() or any(
            expected[k].shape != tensors[k].shape or expected[k].dtype != tensors[k].dtype for k in expected
        ):
            raise CodeunlearnError(
                f"partial statistics {source} do not fit this bottleneck's layers and sizes",
                "resume with the bottleneck the interrupted count used, or pass --overwrite to start over",
            )
        for layer in self.counts:
            self.counts[layer] = tensors[str(layer)].clone()
            self.tokens[layer] = int(tensors[f"{layer}{TOKENS_SUFFIX}"][0])
            if self.sums:
                self.sums[layer] = tensors[f"{layer}{SUM_SUFFIX}"].clone()
                self.maxima[layer] = tensors[f"{layer}{MAX_SUFFIX}"].clone()

    def reduce(self) -> None:
        """Data-parallel: every process ends with the sums of all of them (integer counts: exact)."""
        for layer in self.counts:
            distributed.all_sum_(self.counts[layer])
            self.tokens[layer] = distributed.all_sum(self.tokens[layer])
            if self.sums:
                distributed.all_sum_(self.sums[layer])
                distributed.all_max_(self.maxima[layer])


# What must match for saved partial sums to be continued, and how to make it match (the saved value filled in).
# A streamed count records a digest of its chunks' ids, not their fingerprint, so it checks `streaming` first.
_MUST_MATCH = {
    "streaming": "pass --streaming {}, as the interrupted count did",
    "world_size": "launch {} process(es), as the interrupted count did",
    "batch_size": "pass --batch_size {}, as the interrupted count did",
    "bf16": "pass --bf16 {}, as the interrupted count did",
    "bottleneck_fingerprint": "pass the --bottleneck_dir the interrupted count used",
    "corpus_fingerprint": "pass the corpora, --split, --seq_len, --max_tokens and --split_seed the interrupted count used",
}


@dataclass
class StatisticsCheckpoint:
    """Where and how often `collect_code_statistics` saves its partial state, and whether it continues one.

    Attributes:
        directory: folder of the partial state (`partial_statistics_path(output)`), one file per process.
        every: save every this many batches (of this process).
        resume: continue from the partial state in `directory` (refused if there is none); without it an existing
            partial state is refused rather than silently replaced.
    """

    directory: Path
    every: int = DEFAULT_CHECKPOINT_EVERY
    resume: bool = False

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        check_range("checkpoint_every", self.every, self.every >= 1, ">= 1 (batches between partial saves)")

    def file(self, rank: int) -> Path:
        """The partial state of process `rank`."""
        return self.directory / f"rank-{rank}.safetensors"

    def files(self) -> list[Path]:
        """Every process's partial state file present, in rank order."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if re.fullmatch(r"rank-\d+\.safetensors", p.name)]
        return sorted(found, key=lambda p: int(p.stem.split("-")[1]))

    def exists(self) -> bool:
        return bool(self.files())

    def progress(self) -> str:
        """`N of M batches` per saved process, for messages."""
        states = [read_partial_state(path) for path in self.files()]
        return ", ".join(f"{s['batches_done']} of {s['num_batches']} batches" for s in states)

    def discard(self) -> None:
        """Remove the partial state (and the temporaries of a save killed midway)."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def save(self, tallies: _Tallies, state: dict) -> None:
        atomic_save_tensors(
            tallies.to_tensors(), self.file(state["rank"]), {PARTIAL_STATE_KEY: json.dumps(state, sort_keys=True)}
        )

    def start(self, tallies: _Tallies, state: dict) -> int:
        """The number of batches already counted by this process (0 for a new pass), its saved sums loaded into
        `tallies`; refuses a partial state that another pass left, or a resume with nothing to resume. Once the pass
        may go on, the temporary of a save killed midway is removed (a refused pass changes nothing)."""
        mine = self.file(state["rank"])
        done = self._resumed_batches(tallies, state, mine) if self.resume else 0
        # This process's own file only: another process of this pass may already have saved its first state.
        if not self.resume and mine.is_file():
            raise CodeunlearnError(
                f"{self.directory} holds the partial state of an interrupted count ({self.progress()})",
                "pass --resume to continue it, or --overwrite to start over",
            )
        remove_leftovers(mine)
        return done

    def _resumed_batches(self, tallies: _Tallies, state: dict, mine: Path) -> int:
        if not self.exists():
            raise CodeunlearnError(
                f"--resume given but there is no partial statistics state in {self.directory}",
                "pass the --output_file of the interrupted count (its partial state sits beside it, in "
                f"NAME{PARTIAL_SUFFIX}/)",
            )
        if not mine.is_file():
            # Another process saved and this one did not get to its first save: its share starts at batch 0, once
            # the saved state is known to come from the same number of processes.
            self._check(read_partial_state(self.files()[0]), state, self.files()[0])
            return 0
        saved = read_partial_state(mine)
        self._check(saved, state, mine)
        tallies.load(load_tensors(mine, "partial statistics"), mine)
        return int(saved["batches_done"])

    @staticmethod
    def _check(saved: dict, state: dict, path: Path) -> None:
        if saved.get("format") != PARTIAL_FORMAT:
            raise CodeunlearnError(
                f"partial statistics {path} were written by another version of codeunlearn",
                "pass --overwrite to start the count over",
            )
        for key, fix in _MUST_MATCH.items():
            if saved.get(key, False if key == "streaming" else None) != state[key]:  # older states never stream
                raise CodeunlearnError(
                    f"partial statistics {path} were counted with {key} {saved.get(key)}, this run has {state[key]}",
                    f"{fix.format(saved.get(key))} (or pass --overwrite to start over)",
                )
        if not 0 <= int(saved["batches_done"]) <= state["num_batches"]:
            raise CodeunlearnError(
                f"partial statistics {path} claim {saved['batches_done']} of {state['num_batches']} batches",
                "pass --overwrite to start the count over",
            )


def read_partial_state(path: str | Path) -> dict:
    """The JSON state a partial statistics file carries (`batches_done`, `num_batches` and what must match to
    resume it), without loading its tensors."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            text = (handle.metadata() or {}).get(PARTIAL_STATE_KEY)
    except (SafetensorError, OSError, ValueError) as err:
        raise CodeunlearnError(
            f"partial statistics {path} are corrupt ({err})", "pass --overwrite to start the count over"
        ) from None
    if text is None:
        raise CodeunlearnError(f"{path} is no partial statistics file", "pass --overwrite to start the count over")
    return json.loads(text)


@torch.no_grad()
def collect_code_statistics(
    bmodel: BottleneckedModel,
    chunks: Tensor | StreamedChunks,
    batch_size: int = 8,
    corpus: str = "",
    progress: bool = True,
    bf16: bool = False,
    checkpoint: StatisticsCheckpoint | None = None,
) -> CodeStatistics:
    """Count code firings (SAE: feature firings and activation sums) of `chunks` (num_chunks, seq_len), a tensor or
    a `StreamedChunks`, at every bottleneck layer; what a batch adds is each bottleneck's `tally` of its output.
    Data-parallel, each process counts its contiguous share of the chunks and every process returns the sums over
    all of them (integer counts: exactly what one process counts). The result records the hash of the chunks
    (`corpus_fingerprint`), which names the counts in a bottleneck's statistics cache.

    With `checkpoint`, the partial sums are saved every `checkpoint.every` batches and, with `checkpoint.resume`,
    continued from; the caller removes them (`checkpoint.discard()`) once the result is saved."""
    check_range("batch_size", batch_size, batch_size >= 1, ">= 1")
    streamed = isinstance(chunks, StreamedChunks)
    # A stream's fingerprint needs the number of chunks before their ids: a first pass counts them, and its digest
    # stands for the chunks in the checks below until the counting pass has hashed them all.
    num_chunks, identity = chunks.measure() if streamed else (len(chunks), "")
    if num_chunks == 0:
        raise CodeunlearnError(f"corpus {corpus!r} gave no chunks", "use more text or a smaller --seq_len")
    identity = identity or corpus_fingerprint(chunks)
    fingerprint = ""
    if distributed.world_size() > 1 or checkpoint is not None:  # hashing the bottleneck costs a read of every key
        fingerprint = bmodel.fingerprint()
    if distributed.world_size() > 1:
        distributed.check_same_everywhere(
            "the bottleneck or the chunks to count",
            fingerprint + identity,
            "launch every process with the same command line and the same corpus files",
        )
    tallies = _Tallies.zeros(bmodel)
    mine = distributed.share(torch.arange(num_chunks))  # this process's chunk positions, contiguous
    first, count = (int(mine[0]) if len(mine) else num_chunks), len(mine)
    num_batches = math.ceil(count / batch_size)
    state: dict = {}
    done = 0
    if checkpoint is not None:
        state = {
            "format": PARTIAL_FORMAT,
            "corpus": corpus,
            "kind": bmodel.config.kind,
            "streaming": streamed,
            "world_size": distributed.world_size(),
            "rank": distributed.rank(),
            "batch_size": batch_size,
            "bf16": bf16,
            "bottleneck_fingerprint": fingerprint,
            "corpus_fingerprint": identity,
            "num_batches": num_batches,
        }
        done = checkpoint.start(tallies, state)

    def observe(layer: int, states: Tensor, result: Any) -> None:
        tallies.add(layer, bmodel.bottleneck(layer).tally(result))

    device = model_device(bmodel)
    desc = f"stats {corpus}"
    if streamed:
        hashes = [fingerprint_hasher((num_chunks, chunks.seq_len)), hashlib.sha256()]
        window = _window(chunks, first + done * batch_size, first + count, batch_size, hashes)
        remaining = tqdm(
            window, desc, num_batches - done, leave=False, unit="batch", disable=not bars_enabled(progress)
        )
        seq_len = chunks.seq_len
    else:
        remaining = batches(chunks[first : first + count][done * batch_size :], batch_size, desc, progress)
        seq_len = chunks.shape[1]
    steps = sharding.lockstep(bmodel, remaining, num_batches - done, seq_len)
    with autocast(device, bf16):
        for index, (batch, real) in enumerate(steps, start=done + 1):
            if not real:  # a sharded base model: a forward the other processes need, counted by none
                bmodel.run_to_deepest(batch.to(device), lambda *_: None)
                continue
            bmodel.run_to_deepest(batch.to(device), observe)
            # The last batch is never saved: the finished result is, by the caller.
            if checkpoint is not None and index % checkpoint.every == 0 and index < num_batches:
                checkpoint.save(tallies, {**state, "batches_done": index})
    if streamed:
        if hashes[1].hexdigest()[:16] != identity:
            raise CodeunlearnError(
                f"corpus {corpus!r} changed while it was counted (its chunks differ between two passes)",
                "leave the corpus files unchanged until the count ends, and run it again",
            )
        identity = hashes[0].hexdigest()[:16]
    tallies.reduce()
    return CodeStatistics(
        tallies.counts,
        tallies.tokens,
        corpus,
        fingerprint or bmodel.fingerprint(),
        tallies.sums,
        tallies.maxima,
        kind=bmodel.config.kind,
        corpus_fingerprint=identity,
    )


def _window(stream: StreamedChunks, start: int, stop: int, batch_size: int, hashes: list) -> Iterator[Tensor]:
    """Batches of `batch_size` chunks at positions [start, stop) of `stream`, while every chunk of the whole pass
    (also those outside the window) goes through each of `hashes` in order."""
    position = 0
    pending: list[Tensor] = []
    held = 0
    for piece in stream:
        data = piece.numpy().tobytes()
        for digest in hashes:
            digest.update(data)
        low, high = max(start - position, 0), min(stop - position, len(piece))
        position += len(piece)
        if low >= high:
            continue
        pending.append(piece[low:high])
        held += high - low
        while held >= batch_size:
            joined = torch.cat(pending)
            yield joined[:batch_size]
            pending, held = [joined[batch_size:]], held - batch_size
    if held:
        yield torch.cat(pending)
