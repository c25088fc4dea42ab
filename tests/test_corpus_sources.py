"""Corpus forms beyond single .txt/.jsonl files: save_to_disk folders (Dataset and DatasetDict), .parquet files,
folders of corpus files and Hub names `NAME[:CONFIG[:SPLIT]]`, each built in tmp_path with the `datasets` library.

Every bad input is one `CodeunlearnError` line naming a fix, in the library and through the CLI (exit 2). The Hub
form is checked offline only: parsing, and that an uncached dataset is the one clear line (no network request).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import datasets
import pytest
from helpers import assert_fix_error, make_cli_workspace, run_error

from codeunlearn.corpus_sources import HubDataset, corpus_name
from codeunlearn.data import DataArguments, load_documents, read_corpora
from codeunlearn.errors import CodeunlearnError

WIKI_TXT = " = Alpha = \n\n alpha text \n\n = = Sub = = \n\n more alpha \n\n = Beta = \n beta text \n"
WIKI_DOCS = [" = Alpha = \n alpha text \n = = Sub = = \n more alpha ", " = Beta = \n beta text "]


def table(texts: list[str], **columns: list) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"text": texts, **columns})


@pytest.fixture(autouse=True)
def quiet_datasets() -> None:
    datasets.disable_progress_bars()


# ------------------------------------------------------------------------------------------------ save_to_disk
def test_save_to_disk_dataset_folder(tmp_path, monkeypatch):
    table(["first doc", "", "  ", "second\ndoc"], label=[0, 1, 2, 3]).save_to_disk(tmp_path / "saved")
    assert load_documents(str(tmp_path / "saved")) == ["first doc", "second\ndoc"]  # blank rows are dropped
    monkeypatch.chdir(tmp_path)  # a relative folder is the same corpus, not a Hub name
    for source in ("saved", "./saved", "saved/"):
        assert load_documents(source) == ["first doc", "second\ndoc"]
        assert corpus_name(source) == "saved"
    with pytest.raises(CodeunlearnError, match="a single split") as excinfo:
        load_documents("saved:train")  # only a DatasetDict has splits to name
    assert_fix_error(excinfo)


def test_save_to_disk_dataset_dict_takes_train_or_the_named_split(tmp_path):
    folder = tmp_path / "dd"
    datasets.DatasetDict(
        {"train": table(["t one", "t two"]), "validation": table(["v one", "", "v two", "v three"])}
    ).save_to_disk(folder)
    assert load_documents(str(folder)) == ["t one", "t two"]
    assert load_documents(f"{folder}:validation") == ["v one", "v two", "v three"]
    assert load_documents(str(folder), split="validation") == ["v one", "v two", "v three"]
    assert load_documents(str(folder / "validation")) == ["v one", "v two", "v three"]  # one split's own folder
    assert corpus_name(str(folder)) == "dd" and corpus_name(f"{folder}:validation") == "dd:validation"


def test_save_to_disk_dataset_dict_unknown_split(tmp_path):
    folder = tmp_path / "dd"
    datasets.DatasetDict({"validation": table(["v"]), "test": table(["t"])}).save_to_disk(folder)
    for source in (str(folder), f"{folder}:dev"):  # no train split to default to; a split that is not there
        with pytest.raises(CodeunlearnError) as excinfo:
            load_documents(source)
        assert_fix_error(excinfo)
        assert "['validation', 'test']" in str(excinfo.value) and f"{folder}:validation" in str(excinfo.value)


# ------------------------------------------------------------------------------------------------ parquet
def test_parquet_file(tmp_path):
    path = tmp_path / "docs.parquet"
    table(["one", "", "two\nlines"], body=["x", "y", "z"]).to_parquet(str(path))
    assert load_documents(str(path)) == ["one", "two\nlines"]
    assert load_documents(str(path), text_field="body") == ["x", "y", "z"]
    assert corpus_name(str(path)) == "docs"


# ------------------------------------------------------------------------------------------------ folders
def test_folder_of_files_is_one_corpus_in_name_order(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "b_wiki.txt").write_text(WIKI_TXT)
    (folder / "c_plain.txt").write_text("plain one\n\nplain two\n")  # no heading: one document per line
    table(["json one", "json two"]).to_json(str(folder / "a.jsonl"))
    table(["parquet one"]).to_parquet(str(folder / "d.parquet"))
    (folder / "e.json").write_text(json.dumps([{"text": "array json"}]))
    (folder / "notes.md").write_text("not a corpus file\n")
    (folder / ".hidden.txt").write_text("hidden\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "deeper.txt").write_text("only the top level is read\n")
    expected = ["json one", "json two", *WIKI_DOCS, "plain one", "plain two", "parquet one", "array json"]
    assert load_documents(str(folder)) == expected
    # the .txt rules are those of a single file, and a WikiText article never runs on into the next file
    assert load_documents(str(folder / "b_wiki.txt")) == WIKI_DOCS
    assert corpus_name(str(folder)) == "mixed"


def test_folder_text_field_applies_to_every_table_file(tmp_path):
    folder = tmp_path / "tables"
    folder.mkdir()
    datasets.Dataset.from_dict({"body": ["a"]}).to_json(str(folder / "1.jsonl"))
    datasets.Dataset.from_dict({"body": ["b"]}).to_parquet(str(folder / "2.parquet"))
    assert load_documents(str(folder), text_field="body") == ["a", "b"]
    with pytest.raises(CodeunlearnError, match=r"1\.jsonl has no field 'text'") as excinfo:
        load_documents(str(folder))
    assert_fix_error(excinfo)


# ------------------------------------------------------------------------------------------------ names in reports
def test_read_corpora_names_each_form(tmp_path):
    table([f"saved {i}" for i in range(4)]).save_to_disk(tmp_path / "saved")
    datasets.DatasetDict({"train": table(["x"]), "test": table([f"test {i}" for i in range(3)])}).save_to_disk(
        tmp_path / "dd"
    )
    table([f"pq {i}" for i in range(5)]).to_parquet(str(tmp_path / "pq.parquet"))
    sources = [str(tmp_path / "saved"), f"{tmp_path / 'dd'}:test", str(tmp_path / "pq.parquet")]
    corpora = read_corpora(sources, DataArguments(heldout_fraction=0.0))
    assert corpora.name == "saved+dd:test+pq"
    assert corpora.documents(sources[1], "all") == ["test 0", "test 1", "test 2"]
    assert corpora.documents(sources[2], "train") == [f"pq {i}" for i in range(5)]


# ------------------------------------------------------------------------------------------------ Hub names
@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("wikitext:wikitext-103-raw-v1:train", ("wikitext", "wikitext-103-raw-v1", "train")),
        ("wikitext:wikitext-2-raw-v1", ("wikitext", "wikitext-2-raw-v1", "train")),
        (
            "Salesforce/wikitext:wikitext-2-raw-v1:validation",
            ("Salesforce/wikitext", "wikitext-2-raw-v1", "validation"),
        ),
        ("owner/name", ("owner/name", None, "train")),
        ("owner/name::test", ("owner/name", None, "test")),
        ("owner/name:cfg:", ("owner/name", "cfg", "train")),
    ],
)
def test_hub_name_parsing(source, expected):
    hub = HubDataset.parse(source)
    assert (hub.name, hub.config, hub.split) == expected


def test_hub_default_split_and_str():
    assert HubDataset.parse("wikitext:wikitext-2-raw-v1", default_split="test").split == "test"
    assert HubDataset.parse("wikitext:wikitext-2-raw-v1:validation", default_split="test").split == "validation"
    assert str(HubDataset.parse("owner/name")) == "owner/name::train"


def test_hub_corpus_names_drop_the_owner():
    assert corpus_name("wikitext:wikitext-103-raw-v1:train") == "wikitext:wikitext-103-raw-v1:train"
    assert corpus_name("Salesforce/wikitext:wikitext-2-raw-v1") == "wikitext:wikitext-2-raw-v1"


@pytest.mark.parametrize("source", ["wikitext:wikitext-103-raw-v1:train", "someone/no-such-corpus"])
def test_uncached_hub_dataset_offline_is_one_clear_line(offline_empty_cache, source):
    with pytest.raises(CodeunlearnError) as excinfo:
        load_documents(source)
    assert_fix_error(excinfo)
    message = str(excinfo.value)
    assert message.count("-- fix:") == 1
    assert "not a local file or folder" in message and "not in the local cache" in message
    assert str(offline_empty_cache) in message and "offline mode is set" in message
    assert "load it once with network access" in excinfo.value.fix


# ------------------------------------------------------------------------------------------------ bad input
def bad_inputs(root: Path) -> dict[str, tuple[str, dict, str]]:
    """name -> (source, load_documents keywords, a phrase of the expected message), built under `root`."""
    (root / "empty_folder").mkdir()
    (root / "other_files").mkdir()
    (root / "other_files" / "notes.md").write_text("text\n")
    (root / "table.csv").write_text("text\nrow\n")
    table(["a"], n=[1]).save_to_disk(root / "saved")
    table(["a"]).to_parquet(str(root / "p.parquet"))
    (root / "broken.parquet").write_text("not parquet")
    return {
        "missing file": (str(root / "missing.parquet"), {}, "corpus file not found"),
        "missing folder": (str(root / "missing_folder"), {}, "corpus file not found"),
        "missing relative folder": ("data/missing_folder/", {}, "corpus file not found"),
        "empty folder": (str(root / "empty_folder"), {}, "holds no .txt/.json/.jsonl/.parquet files"),
        "folder of other files": (str(root / "other_files"), {}, "holds no .txt/.json/.jsonl/.parquet files"),
        "unsupported suffix": (str(root / "table.csv"), {}, "unsupported file type '.csv'"),
        "missing text field (save_to_disk)": (str(root / "saved"), {"text_field": "body"}, "has no field 'body'"),
        "missing text field (parquet)": (str(root / "p.parquet"), {"text_field": "body"}, "has no field 'body'"),
        "field that is not text": (str(root / "saved"), {"text_field": "n"}, "holds int64, not text"),
        "unreadable parquet": (str(root / "broken.parquet"), {}, "cannot read corpus file"),
        "too many colons": ("a:b:c:d", {}, "NAME[:CONFIG[:SPLIT]]"),
        "URL": ("https://example.org/corpus", {}, "is a URL"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "missing folder",
        "missing relative folder",
        "empty folder",
        "folder of other files",
        "unsupported suffix",
        "missing text field (save_to_disk)",
        "missing text field (parquet)",
        "field that is not text",
        "unreadable parquet",
        "too many colons",
        "URL",
    ],
)
def test_bad_corpus_is_one_line_error(tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    source, keywords, phrase = bad_inputs(tmp_path)[case]
    with pytest.raises(CodeunlearnError) as excinfo:
        load_documents(source, **keywords)
    assert_fix_error(excinfo)
    assert phrase in str(excinfo.value)


# ------------------------------------------------------------------------------------------------ CLI
def stats_argv(tmp_path: Path, *corpora: str) -> list[str]:
    """`codeunlearn stats` reads its corpora before it loads a model, so a bad corpus fails with no model at all."""
    return [
        "stats",
        "--corpora",
        *corpora,
        "--bottleneck_dir",
        str(tmp_path / "no_bottleneck"),
        "--output_file",
        str(tmp_path / "stats.safetensors"),
    ]


def test_cli_bad_corpora_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    datasets.DatasetDict({"train": table(["a"])}).save_to_disk(tmp_path / "dd")
    assert "holds no .txt/.json/.jsonl/.parquet files" in run_error(
        stats_argv(tmp_path, str(tmp_path / "empty")), capsys
    )
    assert "has no split 'test'" in run_error(stats_argv(tmp_path, f"{tmp_path / 'dd'}:test"), capsys)
    assert "corpus file not found" in run_error(stats_argv(tmp_path, str(tmp_path / "nope")), capsys)


def test_cli_uncached_hub_dataset_offline_exits_2(offline_empty_cache, tmp_path, capsys):
    line = run_error(stats_argv(tmp_path, "wikitext:wikitext-103-raw-v1:train"), capsys)
    assert line.startswith("error: corpus 'wikitext:wikitext-103-raw-v1:train' is not a local file or folder")
    assert "not in the local cache" in line and "offline mode is set" in line


# ------------------------------------------------------------------------------------------------ real causes
# Issue 22: an empty file, bytes that are not UTF-8, an unsupported suffix, a malformed JSON line or a missing text
# field are each named, instead of datasets' "An error occurred while generating the dataset".
LATIN1_TXT = "first line\nsecond caf\u00e9 line\n".encode("latin-1")  # 0xe9 at offset 21, on line 2


# The files `cause_files` writes, each failing for its own cause.
CAUSE_CASES = [
    "empty txt",
    "blank txt",
    "empty jsonl",
    "blank jsonl",
    "blank values",
    "latin-1 txt",
    "latin-1 jsonl",
    "binary",
    "unsupported suffix",
    "no suffix",
    "malformed jsonl line",
    "jsonl line not an object",
    "malformed json array",
    "missing text field",
    "folder of blank files",
]


def cause_files(root: Path) -> dict[str, tuple[str, dict, list[str]]]:
    """name -> (source, load_documents keywords, phrases the message must hold), built under `root`."""
    (root / "empty.txt").write_bytes(b"")
    (root / "blank.txt").write_text("  \n\n\t\n")
    (root / "empty.jsonl").write_bytes(b"")
    (root / "blank.jsonl").write_text("\n  \n")
    (root / "blank_values.jsonl").write_text('{"text": " "}\n{"text": ""}\n')
    (root / "latin1.txt").write_bytes(LATIN1_TXT)
    (root / "latin1.jsonl").write_bytes('{"text": "ok"}\n{"text": "na\u00efve"}\n'.encode("latin-1"))
    (root / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (root / "data.bin").write_bytes(b"\x00\x01")
    (root / "README").write_text("text\n")
    (root / "bad_line.jsonl").write_text('{"text": "a"}\n\n{"text": "b"}\n{"text": b}\n{"text": "c"}\n')
    (root / "list_line.jsonl").write_text('{"text": "a"}\n["b"]\n')
    (root / "bad_array.json").write_text('[{"text": "a"},\n {"text": }]\n')
    (root / "other_keys.jsonl").write_text('{"body": "a", "title": "t"}\n')
    (root / "blank_folder").mkdir()
    (root / "blank_folder" / "a.txt").write_bytes(b"")
    (root / "blank_folder" / "b.jsonl").write_text("\n")
    return {
        "empty txt": ("empty.txt", {}, ["corpus empty.txt is empty (0 bytes)", "put at least one document"]),
        "blank txt": ("blank.txt", {}, ["corpus blank.txt is empty (only blank lines)"]),
        "empty jsonl": ("empty.jsonl", {}, ["corpus empty.jsonl is empty (0 bytes)", "'text' field"]),
        "blank jsonl": ("blank.jsonl", {"text_field": "body"}, ["corpus blank.jsonl is empty", "'body' field"]),
        "blank values": ("blank_values.jsonl", {}, ["corpus blank_values.jsonl is empty (no non-blank 'text'"]),
        "latin-1 txt": (
            "latin1.txt",
            {},
            ["latin1.txt is not UTF-8 text: byte 0xe9 at offset 21 (line 2)", "iconv -f latin1 -t utf-8 latin1.txt"],
        ),
        "latin-1 jsonl": ("latin1.jsonl", {}, ["byte 0xef at offset 27 (line 2)", "> latin1.utf8.jsonl"]),
        "binary": ("binary.txt", {}, ["binary.txt looks like a binary file: byte 0x89 at offset 0 (line 1)"]),
        "unsupported suffix": ("data.bin", {}, ["data.bin: unsupported file type '.bin'", ".txt, .json, .jsonl"]),
        "no suffix": ("README", {}, ["README: unsupported file type (no suffix)"]),
        "malformed jsonl line": ("bad_line.jsonl", {}, ["bad_line.jsonl: line 4 is not valid JSON", '{"text": b']),
        "jsonl line not an object": ("list_line.jsonl", {}, ["list_line.jsonl: line 2 is a JSON list"]),
        "malformed json array": ("bad_array.json", {}, ["bad_array.json is not valid JSON", "line 2, column"]),
        "missing text field": ("other_keys.jsonl", {}, ["has no field 'text'", "['body', 'title']"]),
        "folder of blank files": ("blank_folder", {}, ["corpus folder blank_folder is empty"]),
    }


@pytest.mark.parametrize("case", CAUSE_CASES)
def test_bad_file_names_the_cause(tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    source, keywords, phrases = cause_files(tmp_path)[case]
    with pytest.raises(CodeunlearnError) as excinfo:
        load_documents(source, **keywords)
    assert_fix_error(excinfo)
    message = str(excinfo.value)
    assert "DatasetGenerationError" not in message and "An error occurred" not in message
    for phrase in phrases:
        assert phrase in message, message


def test_not_utf8_offset_across_read_blocks(tmp_path, monkeypatch):
    """The offset and line count across blocks, also when a valid multi-byte character spans two blocks."""
    import codeunlearn.corpus_sources as sources

    monkeypatch.setattr(sources, "_CHUNK", 4)
    text = "ab\n\u00e9\u20ac\nxyz\n".encode() + b"q\xffz\n"  # bytes 0-13 valid (é and € cross block edges)
    (tmp_path / "late.txt").write_bytes(text)
    with pytest.raises(CodeunlearnError, match=r"byte 0xff at offset 14 \(line 4\)"):
        load_documents(str(tmp_path / "late.txt"))
    (tmp_path / "cut.txt").write_bytes(b"abc\n\xe2\x82")  # ends inside a character
    with pytest.raises(CodeunlearnError, match=r"byte 0xe2 at offset 4 \(line 2\)"):
        load_documents(str(tmp_path / "cut.txt"))


def test_blank_file_in_a_folder_is_skipped(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"")
    (folder / "b.jsonl").write_text("\n")
    (folder / "c.txt").write_text("one\ntwo\n")
    assert load_documents(str(folder)) == ["one", "two"]


def test_malformed_json_logs_nothing_else(tmp_path, capsys):
    """datasets logs its own ERROR line for a malformed JSON file; the one CodeunlearnError line replaces it."""
    (tmp_path / "bad.jsonl").write_text('{"text": b}\n')
    with pytest.raises(CodeunlearnError, match="line 1 is not valid JSON"):
        load_documents(str(tmp_path / "bad.jsonl"))
    assert capsys.readouterr().err == ""


def test_uncached_hub_dataset_offline_fails_at_once(offline_empty_cache):
    start = time.monotonic()
    with pytest.raises(CodeunlearnError) as excinfo:
        load_documents("someone/no-such-corpus:cfg:test")
    elapsed = time.monotonic() - start
    assert elapsed < 5, f"{elapsed:.1f} s: datasets retried"
    assert_fix_error(excinfo)
    assert "not in the local cache" in excinfo.value.problem
    assert "datasets.load_dataset('someone/no-such-corpus', 'cfg', split='test').save_to_disk(DIR)" in str(
        excinfo.value.fix
    )
    assert "HF_HOME" in excinfo.value.fix


def test_unreachable_hub_fails_at_once_without_retries(offline_empty_cache, monkeypatch):
    """Not offline, but the Hub does not answer: offline mode is forced for the load (no five retries), then restored."""
    from huggingface_hub import constants

    import codeunlearn.corpus_sources as sources

    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused
    assert sources._hub_unreachable().startswith("no answer from http://127.0.0.1:9")
    start = time.monotonic()
    with pytest.raises(CodeunlearnError) as excinfo:
        load_documents("someone/no-such-corpus")
    assert time.monotonic() - start < 5
    assert_fix_error(excinfo)
    assert "the Hub cannot be reached: no answer from http://127.0.0.1:9" in str(excinfo.value)
    assert constants.HF_HUB_OFFLINE is False and datasets.config.HF_HUB_OFFLINE is False


def test_cli_bad_files_exit_2_and_write_nothing(tmp_path, capsys):
    files = cause_files(tmp_path)
    for case, phrase in [
        ("empty txt", "is empty (0 bytes)"),
        ("latin-1 txt", "byte 0xe9 at offset 21 (line 2)"),
        ("unsupported suffix", "unsupported file type '.bin'"),
        ("malformed jsonl line", "line 4 is not valid JSON"),
        ("missing text field", "has no field 'text'"),
    ]:
        before = sorted(p.name for p in tmp_path.iterdir())
        line = run_error(stats_argv(tmp_path, str(tmp_path / files[case][0])), capsys)
        assert phrase in line, line
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # no stats file, no bottleneck folder


def test_cli_uncached_hub_dataset_offline_is_fast(offline_empty_cache, tmp_path, capsys):
    start = time.monotonic()
    line = run_error(stats_argv(tmp_path, "someone/no-such-corpus"), capsys)
    assert time.monotonic() - start < 5
    assert "not in the local cache" in line and "save_to_disk(DIR)" in line


def test_cli_train_bad_corpus_exit_2_and_writes_nothing(tmp_path, capsys):
    """`train` on a tiny model: a corpus that is not UTF-8, or a malformed JSONL line, stops it before any output."""
    (tmp_path / "ws").mkdir()
    ws = make_cli_workspace(tmp_path / "ws")
    files = cause_files(tmp_path)
    for case, phrase in [("latin-1 txt", "is not UTF-8 text"), ("malformed jsonl line", "line 4 is not valid JSON")]:
        output = tmp_path / f"run_{case.replace(' ', '_')}"
        argv = ["train", "--model_name_or_path", str(ws["model"]), "--seq_len", "16", "--layers", "1"]
        argv += ["--retain_corpora", str(tmp_path / files[case][0]), "--output_dir", str(output)]
        assert phrase in run_error(argv, capsys)
        assert not output.exists()
