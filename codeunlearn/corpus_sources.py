"""Where a corpus's documents come from: the forms a corpus argument may take, read into a list of documents.

A corpus argument (`--corpora`, `--forget_corpora`, `--retain_corpora`) is one of:

- a local file: `.txt` (one document per line; lines matching `doc_start_regex` start a multi-line document),
  `.json` / `.jsonl` or `.parquet` (one document per row, in the column `text_field`);
- a local folder of such files (top level only, read in name order as one corpus; a document never spans files);
- a local folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk` (a `DatasetDict` gives its
  `train` split, or the split named after a colon: `FOLDER:validation`);
- a Hugging Face Hub dataset `NAME[:CONFIG[:SPLIT]]`, e.g. `wikitext:wikitext-103-raw-v1:train`, read with
  `datasets.load_dataset(NAME, CONFIG, split=SPLIT)` (from the local cache when offline).

An existing local path always wins over a Hub name, as in `datasets.load_dataset`. Every failure is one
`CodeunlearnError` line that names the real cause and says what to change: an empty file, the offset and line of
the first byte that is not UTF-8, an unsupported suffix, the first malformed JSON line, a missing text field, or a
Hub dataset that is not cached while offline or while the Hub does not answer (at once, not after retries). `codeunlearn.data` splits and packs what is read here.

`stream_source` reads the same forms as a `DocumentStream`: the documents `read_source` gives, in the same order, read
through `datasets` streaming (`load_dataset(..., streaming=True)`, `Dataset.to_iterable_dataset()`) one batch of rows
at a time on every pass, so a corpus larger than memory is never held whole. What can be checked without reading the
rows (a missing file, a suffix, a split, a column) fails at once; what needs the rows (bytes that are not UTF-8, a
malformed JSON line, an empty corpus) fails, with the same line, during the first pass.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from codeunlearn.errors import CodeunlearnError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import datasets

FILE_SUFFIXES = (".txt", ".json", ".jsonl", ".parquet")
# `save_to_disk` marks a Dataset folder with state.json (next to dataset_info.json and the arrow files) and a
# DatasetDict folder with dataset_dict.json (next to one Dataset folder per split). dataset_info.json alone is no
# mark: folders of Hub parquet files may carry one.
SAVED_DATASET_FILE = "state.json"
SAVED_DICT_FILE = "dataset_dict.json"
DEFAULT_SPLIT = "train"

_TRUE = {"1", "ON", "YES", "TRUE"}
_FORMS = "a .txt/.json/.jsonl/.parquet file, a folder of them, a save_to_disk folder or a Hub NAME[:CONFIG[:SPLIT]]"


@dataclass(frozen=True)
class HubDataset:
    """A Hub dataset named `NAME[:CONFIG[:SPLIT]]`: `load_dataset(name, config, split=split)`."""

    name: str
    config: str | None
    split: str

    @classmethod
    def parse(cls, source: str, default_split: str = DEFAULT_SPLIT) -> HubDataset:
        """Split `source` at its colons; an empty or missing config is None, an empty or missing split the default."""
        if "://" in source:
            raise CodeunlearnError(f"corpus {source!r} is a URL", f"download it and pass the local file ({_FORMS})")
        parts = source.split(":")
        if len(parts) > 3 or not parts[0]:
            raise CodeunlearnError(
                f"corpus {source!r} is not a local file or folder, nor a Hub dataset name NAME[:CONFIG[:SPLIT]]",
                f"check the path, or name a Hub dataset like wikitext:wikitext-103-raw-v1:train ({_FORMS})",
            )
        config = parts[1] if len(parts) > 1 and parts[1] else None
        split = parts[2] if len(parts) > 2 and parts[2] else default_split
        return cls(parts[0], config, split)

    def __str__(self) -> str:
        return f"{self.name}:{self.config or ''}:{self.split}"


def corpus_name(source: str) -> str:
    """A short name of the corpus for reports: the file's stem, the folder's name (with `:SPLIT` when one is named),
    or the Hub name without its owner (with config and split as given)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path.stem
    if path.is_dir():
        return path.resolve().name
    return source.rstrip("/").rsplit("/", 1)[-1] or source


def read_source(source: str, text_field: str, doc_start_regex: str | None, split: str = DEFAULT_SPLIT) -> list[str]:
    """The non-empty documents of corpus `source` in any of the forms this module names (may be empty: the caller
    decides whether an empty corpus is an error). `split` is the split taken from a DatasetDict folder or a Hub
    dataset when `source` names none."""
    import datasets

    datasets.disable_progress_bars()
    path = Path(source).expanduser()
    if path.is_file():
        return _read_file(path, text_field, doc_start_regex, source)
    if path.is_dir():
        return _read_folder(path, text_field, doc_start_regex, split, source)
    folder, _, named_split = source.rpartition(":")
    if folder and named_split and (Path(folder).expanduser() / SAVED_DICT_FILE).is_file():
        return _read_saved(Path(folder).expanduser(), text_field, named_split, source)
    if folder and named_split and (Path(folder).expanduser() / SAVED_DATASET_FILE).is_file():
        raise CodeunlearnError(
            f"{folder} is a save_to_disk Dataset (a single split), so it has no split {named_split!r}",
            f"pass the folder alone: {folder}",
        )
    if _looks_local(source):
        raise CodeunlearnError(f"corpus file not found: {source}", f"check the path ({_FORMS})")
    return _read_hub(HubDataset.parse(source, split), text_field, source)


def _looks_local(source: str) -> bool:
    """A path, not a Hub name: a corpus file suffix, a leading `.`, `/` or `~`, a trailing `/`, or more than one `/`
    in the name (Hub names are NAME or OWNER/NAME)."""
    name = source.split(":", 1)[0]
    return (
        Path(source).suffix in FILE_SUFFIXES
        or source.startswith((".", "/", "~"))
        or source.endswith(("/", os.sep))
        or name.count("/") > 1
    )


def _group_lines(lines: list[str], doc_start_regex: str | None) -> list[str]:
    """Non-blank lines as documents, or, when some line matches `doc_start_regex`, runs of lines that each start at
    a match (lines before the first match are one document)."""
    lines = [line for line in lines if line.strip()]
    pattern = re.compile(doc_start_regex) if doc_start_regex else None
    if pattern is None or not any(pattern.match(line) for line in lines):
        return lines
    docs: list[list[str]] = []
    for line in lines:
        if pattern.match(line) or not docs:
            docs.append([])
        docs[-1].append(line)
    return ["\n".join(doc) for doc in docs]


def _check_text_field(features: datasets.Features, text_field: str, source: str) -> None:
    """Refuse a missing or non-text column."""
    columns = list(features)
    if text_field not in columns:
        raise CodeunlearnError(f"{source} has no field {text_field!r} (fields: {columns})", "pass --text_field NAME")
    dtype = getattr(features[text_field], "dtype", None)
    if dtype not in ("string", "large_string"):
        raise CodeunlearnError(
            f"field {text_field!r} of {source} holds {dtype or type(features[text_field]).__name__}, not text",
            f"pass --text_field NAME of a text column (fields: {columns})",
        )


def _texts(table: datasets.Dataset, text_field: str, source: str) -> list[str]:
    """The non-empty values of the text column, refusing a missing or non-text column."""
    _check_text_field(table.features, text_field, source)
    return [d for d in table[text_field] if d and d.strip()]


def _read_file(
    path: Path, text_field: str, doc_start_regex: str | None, source: str, skip_empty: bool = False
) -> list[str]:
    """The documents of one corpus file. An empty (or all-blank) file is an error naming it, unless `skip_empty`
    (a file in a folder: the folder as a whole is checked by the caller)."""
    import datasets

    if path.suffix not in FILE_SUFFIXES:
        kind = f"file type {path.suffix!r}" if path.suffix else "file type (no suffix)"
        raise CodeunlearnError(
            f"corpus file {source}: unsupported {kind}",
            f"use a file ending in one of {', '.join(FILE_SUFFIXES)} (rename it if it holds text in one of these "
            "forms), or a folder of them",
        )
    if path.stat().st_size == 0:  # datasets fails on an empty file with a bare DatasetGenerationError/StopIteration
        if skip_empty:
            return []
        raise _empty_error(path, source)
    verbosity = datasets.logging.get_verbosity()
    # datasets logs its own ERROR line for a malformed JSON file before raising; the CodeunlearnError line below
    # names the cause, so that log line would only be a second, less exact, message.
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        if path.suffix == ".txt":
            lines = datasets.load_dataset("text", data_files=str(path), split="train")["text"]
            docs = _group_lines(lines, doc_start_regex)
        else:
            builder = "parquet" if path.suffix == ".parquet" else "json"
            table = datasets.load_dataset(builder, data_files=str(path), split="train")
            docs = _texts(table, text_field, source)
    except CodeunlearnError:
        raise
    except Exception as err:  # datasets and pyarrow raise many types; the user needs the one line
        _raise_file_error(path, source, text_field, skip_empty, err)
        return []
    finally:
        datasets.logging.set_verbosity(verbosity)
    if not docs and not skip_empty:
        raise _empty_error(path, source, text_field if path.suffix != ".txt" else None)
    return docs


def _raise_file_error(path: Path, source: str, text_field: str, skip_empty: bool, err: Exception) -> None:
    """Raise the one line naming why `datasets` failed on a corpus file; returns only for an all-blank file in a
    folder (no documents, no error)."""
    # datasets' messages hide the cause ("An error occurred while generating the dataset"), so the file is read
    # again to name it; this costs nothing for files that load.
    cause = _diagnose_text_file(path, source, text_field, skip_empty)
    if cause is _SKIP:
        return
    if cause is not None:
        raise cause from None
    raise CodeunlearnError(
        f"cannot read corpus file {source} ({_one_line(err)})", f"check that it is a valid {path.suffix} file"
    ) from None


# Returned by `_diagnose_text_file` for an all-blank file in a folder: no error, no documents.
_SKIP = CodeunlearnError("", "")
_CHUNK = 1 << 20


def _empty_error(path: Path, source: str, text_field: str | None = None) -> CodeunlearnError:
    """`corpus X is empty`: no bytes, only whitespace, or (for a table) no non-blank value in the text field."""
    if path.stat().st_size == 0:
        what = "0 bytes"
    elif text_field is None:
        what = "only blank lines"
    else:
        what = f"no non-blank {text_field!r} value"
    form = (
        "one document per line"
        if path.suffix == ".txt"
        else f"one row per document with a {text_field or 'text'!r} field"
    )
    return CodeunlearnError(
        f"corpus {source} is empty ({what})", f"put at least one document in it ({form}), or pass another corpus"
    )


def _diagnose_text_file(path: Path, source: str, text_field: str, skip_empty: bool) -> CodeunlearnError | None:
    """The real cause of a .txt/.json/.jsonl file that `datasets` failed to read: bytes that are not UTF-8 (with
    their offset and line), no text at all, or (JSON) the first line that does not parse. None when none is found."""
    if path.suffix not in (".txt", ".json", ".jsonl"):
        return None
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = newlines = 0
    blank = True
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as err:
                return _not_utf8_error(path, source, chunk, offset, newlines, err)
            blank = blank and not text.strip()
            offset += len(chunk)
            newlines += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as err:  # the file ends inside a multi-byte character
            return _not_utf8_error(path, source, b"", offset, newlines, err)
    if blank:
        return _SKIP if skip_empty else _empty_error(path, source, None if path.suffix == ".txt" else text_field)
    return _json_error(path, source) if path.suffix != ".txt" else None


def _not_utf8_error(
    path: Path, source: str, chunk: bytes, offset: int, newlines: int, err: UnicodeDecodeError
) -> CodeunlearnError:
    """Name the first byte that is not UTF-8 by file offset and line, and how to re-encode the file. `chunk` is the
    block being decoded, read at `offset` after `newlines` line breaks."""
    # The decoder's error object is its pending bytes (an unfinished character from the previous block, which holds
    # no line break) followed by `chunk`, so err.start counts from `offset - pending`.
    pending = len(err.object) - len(chunk)
    position = offset - pending + err.start
    line = newlines + err.object[: err.start].count(b"\n") + 1
    bad = err.object[err.start : err.start + 1].hex()
    kind = "looks like a binary file" if b"\0" in err.object else "is not UTF-8 text"
    target = f"{path.with_suffix('')}.utf8{path.suffix}"
    return CodeunlearnError(
        f"corpus file {source} {kind}: byte 0x{bad} at offset {position} (line {line}) is not valid UTF-8",
        f"pass a UTF-8 text file; to re-encode a Latin-1 file run `iconv -f latin1 -t utf-8 {path} > {target}` "
        f"(or in Python: open(OUT, 'w', encoding='utf-8').write(open(IN, encoding='latin-1').read())) "
        f"and pass {target}",
    )


def _json_error(path: Path, source: str) -> CodeunlearnError | None:
    """The first line of a JSON Lines file that is not a JSON object (or where a .json array fails to parse)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and not text.lstrip().startswith("{"):  # a JSON array (or a scalar): parse it whole
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            return CodeunlearnError(
                f"corpus file {source} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}",
                "fix that line (a .json file holds one array of objects, a .jsonl file one object per line)",
            )
        return None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            return CodeunlearnError(
                f"corpus file {source}: line {number} is not valid JSON ({err.msg} at column {err.colno}): "
                f"{line.strip()[:60]!r}",
                'fix or remove that line (JSON Lines: one JSON object per line, e.g. {"text": "..."})',
            )
        if not isinstance(row, dict):
            return CodeunlearnError(
                f"corpus file {source}: line {number} is a JSON {type(row).__name__}, not an object",
                'write one object per line, e.g. {"text": "..."}',
            )
    return None


def _read_folder(path: Path, text_field: str, doc_start_regex: str | None, split: str, source: str) -> list[str]:
    if (path / SAVED_DICT_FILE).is_file() or (path / SAVED_DATASET_FILE).is_file():
        return _read_saved(path, text_field, split, source)
    docs = [
        doc
        for file in _folder_files(path, source)
        for doc in _read_file(file, text_field, doc_start_regex, str(file), True)
    ]
    if not docs:
        raise _empty_folder_error(source)
    return docs


def _folder_files(path: Path, source: str) -> list[Path]:
    """The corpus files at the top level of a folder, in name order (none: an error)."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in FILE_SUFFIXES and p.name[0] != ".")
    if not files:
        raise CodeunlearnError(
            f"corpus folder {source} holds no {'/'.join(FILE_SUFFIXES)} files and is not a save_to_disk dataset",
            "put the corpus files at its top level, or pass a file",
        )
    return files


def _empty_folder_error(source: str) -> CodeunlearnError:
    return CodeunlearnError(
        f"corpus folder {source} is empty (its files hold no non-blank document)",
        "put at least one document in its files, or pass another corpus",
    )


def _read_saved(path: Path, text_field: str, split: str, source: str) -> list[str]:
    """A `save_to_disk` folder: a Dataset, or a DatasetDict's `split`."""
    return _texts(_load_saved(path, split, source), text_field, source)


def _load_saved(path: Path, split: str, source: str) -> datasets.Dataset:
    """The memory-mapped Dataset of a `save_to_disk` folder (a DatasetDict's `split`); no row is read."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:  # a damaged folder: missing arrow files, bad JSON, ...
        raise CodeunlearnError(
            f"cannot read the save_to_disk dataset {source} ({_one_line(err)})",
            "save it again with Dataset.save_to_disk, or pass a file",
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise CodeunlearnError(
                f"the save_to_disk dataset {path} has no split {split!r} (splits: {list(loaded)})",
                f"name a split after a colon, e.g. {path}:{next(iter(loaded), DEFAULT_SPLIT)}",
            )
        loaded = loaded[split]
    return loaded


def _offline() -> bool:
    """Offline mode as set now (datasets and huggingface_hub read it once, at import)."""
    import datasets

    values = (os.environ.get(name, "") for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))
    return bool(datasets.config.HF_HUB_OFFLINE) or any(v.upper() in _TRUE for v in values)


HUB_PROBE_TIMEOUT_S = 3.0


def _hub_unreachable() -> str | None:
    """Why the Hub endpoint cannot be reached (one short request), or None when it answers at all. Without this,
    `datasets` retries an unreachable Hub five times with back-off (about 23 s) before it fails."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    try:
        request = urllib.request.Request(constants.ENDPOINT, method="HEAD")
        with urllib.request.urlopen(request, timeout=HUB_PROBE_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:  # any HTTP answer means the Hub is reachable
        return None
    except (OSError, ValueError) as err:  # URLError, timeouts, refused connections, a malformed HF_ENDPOINT
        reason = getattr(err, "reason", err)
        return f"no answer from {constants.ENDPOINT} ({reason if isinstance(reason, str) else _one_line(reason, 120)})"
    return None


@contextlib.contextmanager
def _forced_offline(active: bool) -> Iterator[None]:
    """Offline mode for `datasets` and `huggingface_hub` while the block runs, when `active`: a cached dataset
    still loads, an uncached one fails at once instead of after retries. Both libraries read the environment
    into constants at import, so the constants are what is set."""
    import datasets
    from huggingface_hub import constants

    if not active:
        yield
        return
    saved = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _read_hub(hub: HubDataset, text_field: str, source: str) -> list[str]:
    return _texts(_load_hub(hub, source), text_field, source)


def _load_hub(hub: HubDataset, source: str, streaming: bool = False) -> datasets.Dataset | datasets.IterableDataset:
    """`load_dataset(NAME, CONFIG, split=SPLIT)` (with `streaming`: an IterableDataset), every failure one line."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    subject = f"corpus {source!r} is not a local file or folder, and the Hub dataset {hub.name!r}"
    local_fix = "or pass a local file or folder (e.g. one written by save_to_disk)"
    offline = _offline()
    unreachable = None if offline else _hub_unreachable()
    try:
        with _forced_offline(offline or unreachable is not None):
            table = datasets.load_dataset(hub.name, hub.config, split=hub.split, streaming=streaming)
    except (ConnectionError, DatasetNotFoundError) as err:
        # datasets raises ConnectionError (or, offline, DatasetNotFoundError) for a dataset it has no cached copy of
        if not (offline or unreachable or isinstance(err, ConnectionError)):
            raise CodeunlearnError(
                f"{subject} was not found ({_one_line(err)})",
                f"check the path or the Hub name NAME[:CONFIG[:SPLIT]], {local_fix}",
            ) from None
        if offline:
            reason = "offline mode is set (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)"
        else:
            reason = unreachable or _one_line(err)
        config = f", {hub.config!r}" if hub.config else ""
        # A streamed Hub dataset is read from the Hub's files, never from the datasets cache of an earlier load.
        cached = ", or leave out --streaming to read a copy cached by an earlier load" if streaming else ""
        raise CodeunlearnError(
            f"{subject} is not in the local cache ({datasets.config.HF_DATASETS_CACHE}) and the "
            f"Hub cannot be reached: {reason}",
            "load it once with network access (unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), or on a connected "
            f"machine run datasets.load_dataset({hub.name!r}{config}, split={hub.split!r}).save_to_disk(DIR) and "
            f"pass DIR, or set HF_HOME to the cache that holds it{cached}",
        ) from None
    except Exception as err:  # unknown config or split, and whatever else datasets raises
        raise CodeunlearnError(
            f"{subject} (config {hub.config!r}, split {hub.split!r}) cannot be loaded ({_one_line(err)})",
            f"check NAME[:CONFIG[:SPLIT]] against the dataset's configs and splits, {local_fix}",
        ) from None
    if isinstance(table, (datasets.DatasetDict, datasets.IterableDatasetDict)):  # not expected with a split given
        raise CodeunlearnError(f"{subject} gave several splits {list(table)}", "name one as NAME:CONFIG:SPLIT")
    return table


def _one_line(err: object, limit: int = 300) -> str:
    """`Type: message` on one line, cut to `limit` characters (datasets' messages span lines and list files)."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------------ streaming
STREAM_ROWS = 1024  # rows per `datasets` batch while streaming: bounds what one read holds


class DocumentStream:
    """The documents of one corpus, read through `datasets` streaming on every pass (`iter(stream)`): exactly the
    documents `read_source` gives, in its order, holding one batch of rows at a time. Made by `stream_source`."""

    def __init__(self, source: str, parts: list[Callable[[], Iterator[str]]], empty: CodeunlearnError | None) -> None:
        self.source = source
        self._parts = parts
        self._empty = empty  # raised when a pass finds no document (None: an empty corpus is the caller's call)

    def __iter__(self) -> Iterator[str]:
        found = False
        for part in self._parts:
            for doc in part():
                found = True
                yield doc
        if not found and self._empty is not None:
            raise self._empty


def stream_source(
    source: str, text_field: str, doc_start_regex: str | None, split: str = DEFAULT_SPLIT
) -> DocumentStream:
    """Corpus `source` (any form `read_source` reads, resolved the same way) as a `DocumentStream`. Whatever can be
    checked without reading rows is checked now, with `read_source`'s error lines."""
    import datasets

    datasets.disable_progress_bars()
    path = Path(source).expanduser()
    if path.is_file():
        return DocumentStream(source, [_FileStream(path, text_field, doc_start_regex, source, False)], None)
    if path.is_dir():
        if (path / SAVED_DICT_FILE).is_file() or (path / SAVED_DATASET_FILE).is_file():
            return _saved_stream(path, text_field, split, source)
        files = _folder_files(path, source)
        parts = [_FileStream(file, text_field, doc_start_regex, str(file), True) for file in files]
        return DocumentStream(source, parts, _empty_folder_error(source))
    folder, _, named_split = source.rpartition(":")
    if folder and named_split and (Path(folder).expanduser() / SAVED_DICT_FILE).is_file():
        return _saved_stream(Path(folder).expanduser(), text_field, named_split, source)
    if folder and named_split and (Path(folder).expanduser() / SAVED_DATASET_FILE).is_file():
        read_source(source, text_field, doc_start_regex, split)  # raises the single-split error
    if _looks_local(source):
        raise CodeunlearnError(f"corpus file not found: {source}", f"check the path ({_FORMS})")
    table = _load_hub(HubDataset.parse(source, split), source, streaming=True)
    return DocumentStream(source, [lambda: _table_texts(table, text_field, source)], None)


def _saved_stream(path: Path, text_field: str, split: str, source: str) -> DocumentStream:
    """A `save_to_disk` folder: its columns checked now, its rows streamed from the memory-mapped Arrow files."""
    table = _load_saved(path, split, source)
    _check_text_field(table.features, text_field, source)
    rows = table.select_columns([text_field]).to_iterable_dataset()
    return DocumentStream(source, [lambda: _table_texts(rows, text_field, source)], None)


def _table_texts(table: datasets.IterableDataset, text_field: str, source: str) -> Iterator[str]:
    """The non-empty values of the text column, streamed; the column is checked against the features when they are
    known, else against the first batch's."""
    import datasets

    checked = table.features is not None
    if checked and not table.features:  # a file of blank lines has no column: no document, as in memory
        return
    if checked:
        _check_text_field(table.features, text_field, source)
    for batch in table.with_format("arrow").iter(batch_size=STREAM_ROWS):
        if not checked:
            _check_text_field(datasets.Features.from_arrow_schema(batch.schema), text_field, source)
            checked = True
        yield from (d for d in batch.column(text_field).to_pylist() if d and d.strip())


class _FileStream:
    """One corpus file streamed: a callable giving its documents on every call (`read_source`'s for the file)."""

    def __init__(self, path: Path, text_field: str, doc_start_regex: str | None, source: str, skip_empty: bool) -> None:
        if path.suffix not in FILE_SUFFIXES or path.stat().st_size == 0:
            _read_file(path, text_field, doc_start_regex, source, skip_empty)  # raises the suffix or empty error
        self.path, self.text_field, self.source, self.skip_empty = path, text_field, source, skip_empty
        self.pattern = re.compile(doc_start_regex) if doc_start_regex else None
        self.grouped: bool | None = None if self.pattern else False  # whether some line starts a document

    def __call__(self) -> Iterator[str]:
        import datasets

        if self.path.stat().st_size == 0:  # a skipped empty file in a folder
            return
        verbosity = datasets.logging.get_verbosity()
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # as in `_read_file`: the one line says it all
        found = False
        try:
            if self.path.suffix == ".txt":
                docs = self._grouped_lines()
            else:
                builder = "parquet" if self.path.suffix == ".parquet" else "json"
                table = datasets.load_dataset(builder, data_files=str(self.path), split="train", streaming=True)
                docs = _table_texts(table, self.text_field, self.source)
            for doc in docs:
                found = True
                yield doc
        except CodeunlearnError:
            raise
        except Exception as err:  # datasets and pyarrow raise many types; the user needs the one line
            _raise_file_error(self.path, self.source, self.text_field, self.skip_empty, err)
            return
        finally:
            datasets.logging.set_verbosity(verbosity)
        if not found and not self.skip_empty:
            raise _empty_error(self.path, self.source, self.text_field if self.path.suffix != ".txt" else None)

    def _lines(self) -> Iterator[str]:
        """The file's non-blank lines, as `datasets`' text builder splits them."""
        import datasets

        lines = datasets.load_dataset("text", data_files=str(self.path), split="train", streaming=True)
        for batch in lines.iter(batch_size=STREAM_ROWS):
            yield from (line for line in batch["text"] if line.strip())

    def _grouped_lines(self) -> Iterator[str]:
        """`_group_lines` on the stream: whether any line matches is found once (a scan that stops at the first
        match), then documents are built one at a time."""
        if self.grouped is None:
            self.grouped = any(self.pattern.match(line) for line in self._lines())
        if not self.grouped:
            yield from self._lines()
            return
        doc: list[str] = []
        for line in self._lines():
            if self.pattern.match(line) and doc:
                yield "\n".join(doc)
                doc = []
            doc.append(line)
        if doc:
            yield "\n".join(doc)
