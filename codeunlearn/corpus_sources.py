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
`CodeunlearnError` line that says what to change. `codeunlearn.data` splits and packs what is read here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from codeunlearn.errors import CodeunlearnError

if TYPE_CHECKING:
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


def _texts(table: datasets.Dataset, text_field: str, source: str) -> list[str]:
    """The non-empty values of the text column, refusing a missing or non-text column."""
    if text_field not in table.column_names:
        raise CodeunlearnError(
            f"{source} has no field {text_field!r} (fields: {table.column_names})", "pass --text_field NAME"
        )
    dtype = getattr(table.features[text_field], "dtype", None)
    if dtype not in ("string", "large_string"):
        raise CodeunlearnError(
            f"field {text_field!r} of {source} holds {dtype or type(table.features[text_field]).__name__}, not text",
            f"pass --text_field NAME of a text column (fields: {table.column_names})",
        )
    return [d for d in table[text_field] if d and d.strip()]


def _read_file(path: Path, text_field: str, doc_start_regex: str | None, source: str) -> list[str]:
    import datasets

    if path.suffix not in FILE_SUFFIXES:
        raise CodeunlearnError(
            f"corpus file {source} has an unsupported suffix {path.suffix!r}",
            f"use one of {', '.join(FILE_SUFFIXES)} (or a folder of them)",
        )
    try:
        if path.suffix == ".txt":
            lines = datasets.load_dataset("text", data_files=str(path), split="train")["text"]
            return _group_lines(lines, doc_start_regex)
        builder = "parquet" if path.suffix == ".parquet" else "json"
        return _texts(datasets.load_dataset(builder, data_files=str(path), split="train"), text_field, source)
    except CodeunlearnError:
        raise
    except Exception as err:  # datasets and pyarrow raise many types; the user needs the one line
        raise CodeunlearnError(
            f"cannot read corpus file {source} ({_one_line(err)})", f"check that it is a valid {path.suffix} file"
        ) from None


def _read_folder(path: Path, text_field: str, doc_start_regex: str | None, split: str, source: str) -> list[str]:
    if (path / SAVED_DICT_FILE).is_file() or (path / SAVED_DATASET_FILE).is_file():
        return _read_saved(path, text_field, split, source)
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in FILE_SUFFIXES and p.name[0] != ".")
    if not files:
        raise CodeunlearnError(
            f"corpus folder {source} holds no {'/'.join(FILE_SUFFIXES)} files and is not a save_to_disk dataset",
            "put the corpus files at its top level, or pass a file",
        )
    return [doc for file in files for doc in _read_file(file, text_field, doc_start_regex, str(file))]


def _read_saved(path: Path, text_field: str, split: str, source: str) -> list[str]:
    """A `save_to_disk` folder: a Dataset, or a DatasetDict's `split`."""
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
    return _texts(loaded, text_field, source)


def _offline() -> bool:
    """Offline mode as set now (datasets and huggingface_hub read it once, at import)."""
    import datasets

    values = (os.environ.get(name, "") for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))
    return bool(datasets.config.HF_HUB_OFFLINE) or any(v.upper() in _TRUE for v in values)


def _read_hub(hub: HubDataset, text_field: str, source: str) -> list[str]:
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    subject = f"corpus {source!r} is not a local file or folder, and the Hub dataset {hub.name!r}"
    local_fix = "or pass a local file or folder (e.g. one written by save_to_disk)"
    try:
        table = datasets.load_dataset(hub.name, hub.config, split=hub.split)
    except ConnectionError as err:  # datasets' own ConnectionError when offline or the Hub is unreachable
        reason = "offline mode is set (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)" if _offline() else _one_line(err)
        raise CodeunlearnError(
            f"{subject} is not in the local cache ({datasets.config.HF_DATASETS_CACHE}) and the Hub cannot be "
            f"reached: {reason}",
            f"load it once with network access (unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), {local_fix}",
        ) from None
    except DatasetNotFoundError as err:
        raise CodeunlearnError(
            f"{subject} was not found ({_one_line(err)})",
            f"check the path or the Hub name NAME[:CONFIG[:SPLIT]], {local_fix}",
        ) from None
    except Exception as err:  # unknown config or split, and whatever else datasets raises
        raise CodeunlearnError(
            f"{subject} (config {hub.config!r}, split {hub.split!r}) cannot be loaded ({_one_line(err)})",
            f"check NAME[:CONFIG[:SPLIT]] against the dataset's configs and splits, {local_fix}",
        ) from None
    if isinstance(table, datasets.DatasetDict):  # not expected with a split given; kept as one clear line
        raise CodeunlearnError(f"{subject} gave several splits {list(table)}", "name one as NAME:CONFIG:SPLIT")
    return _texts(table, text_field, source)


def _one_line(err: BaseException, limit: int = 300) -> str:
    """`Type: message` on one line, cut to `limit` characters (datasets' messages span lines and list files)."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
