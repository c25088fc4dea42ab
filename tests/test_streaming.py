"""`--streaming`: corpora read through `datasets` streaming give exactly what the in-memory reader gives.

- every corpus form streams the same documents in the same order, and bad input fails with the same line;
- the document split, the packed chunks and the chunk stream are the in-memory ones, caps and several corpora included;
- `codeunlearn stats --streaming` writes the statistics (and corpus fingerprint) of the in-memory count, also when
  interrupted and resumed, and under 2 torchrun processes (slow); `train --streaming` trains the same bottleneck.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import datasets
import pytest
import torch
from helpers import assert_fix_error, make_cli_workspace, run_error
from safetensors.torch import load_file
from test_corpus_sources import CAUSE_CASES, bad_inputs, cause_files
from test_data import WORDS, word_tokenizer
from test_distributed import TORCHRUN, launch
from transformers import PreTrainedTokenizerFast

from codeunlearn.cli import main
from codeunlearn.corpus_sources import stream_source
from codeunlearn.data import (
    WIKITEXT_ARTICLE_START,
    DataArguments,
    iter_packed,
    load_documents,
    pack_documents,
    read_corpora,
)
from codeunlearn.errors import CodeunlearnError
from codeunlearn.unlearn.statistics import StatisticsCheckpoint, partial_statistics_path

WIKI = " preface \n\n = Alpha = \n\n alpha one \n\n = = Sub = = \n alpha two \n\n = Beta = \n beta \n"


@pytest.fixture(autouse=True)
def quiet_datasets() -> None:
    datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer()


def rows(n: int, seed: int) -> list[str]:
    """`n` documents of 0-12 words (some blank, so the readers must drop them alike)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 12))) for _ in range(n)]


def every_form(root: Path) -> dict[str, str]:
    """name -> corpus source, one of each form `corpus_sources` reads."""
    (root / "wiki.txt").write_text(WIKI)
    (root / "plain.txt").write_text("\n".join(rows(40, 1)) + "\n")
    (root / "crlf.txt").write_bytes(b"one\r\n\r\ntwo\x0cthree\r\n")  # datasets' line splitting, not ours
    table = datasets.Dataset.from_dict({"text": rows(30, 2), "n": list(range(30))})
    table.to_json(str(root / "rows.jsonl"))
    (root / "array.json").write_text(json.dumps([{"text": t} for t in rows(9, 3)]))
    table.to_parquet(str(root / "rows.parquet"))
    table.save_to_disk(str(root / "saved"))
    datasets.DatasetDict({"train": table, "test": datasets.Dataset.from_dict({"text": rows(7, 4)})}).save_to_disk(
        str(root / "dict")
    )
    folder = root / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text(WIKI)
    (folder / "b.txt").write_text("  \n")  # blank: skipped
    table.to_parquet(str(folder / "c.parquet"))
    (folder / "d.jsonl").write_text('{"text": "last"}\n')
    return {
        "wikitext .txt": str(root / "wiki.txt"),
        "plain .txt": str(root / "plain.txt"),
        "CRLF .txt": str(root / "crlf.txt"),
        ".jsonl": str(root / "rows.jsonl"),
        ".json array": str(root / "array.json"),
        ".parquet": str(root / "rows.parquet"),
        "save_to_disk": str(root / "saved"),
        "DatasetDict:test": f"{root / 'dict'}:test",
        "folder": str(folder),
    }


FORMS = [
    "wikitext .txt",
    "plain .txt",
    "CRLF .txt",
    ".jsonl",
    ".json array",
    ".parquet",
    "save_to_disk",
    "DatasetDict:test",
    "folder",
]


@pytest.fixture(scope="module")
def forms(tmp_path_factory) -> dict[str, str]:
    return every_form(tmp_path_factory.mktemp("forms"))


@pytest.mark.parametrize("form", FORMS)
def test_every_form_streams_the_in_memory_documents(forms, form):
    expected = load_documents(forms[form])
    stream = stream_source(forms[form], "text", WIKITEXT_ARTICLE_START)
    assert list(stream) == expected
    assert list(stream) == expected  # every pass reads the corpus again
    assert len(expected) >= 2


def test_wikitext_grouping_and_a_folder_in_name_order(forms):
    assert list(stream_source(forms["wikitext .txt"], "text", WIKITEXT_ARTICLE_START)) == [
        " preface ",
        " = Alpha = \n alpha one \n = = Sub = = \n alpha two ",
        " = Beta = \n beta ",
    ]
    assert list(stream_source(forms["wikitext .txt"], "text", None))[1:3] == [" = Alpha = ", " alpha one "]
    folder = list(stream_source(forms["folder"], "text", WIKITEXT_ARTICLE_START))
    assert folder[:3] == [" preface ", " = Alpha = \n alpha one \n = = Sub = = \n alpha two ", " = Beta = \n beta "]
    assert folder[-1] == "last"


def every_bad_input(root: Path) -> dict[str, tuple[str, dict]]:
    """name -> (source, read keywords) of every bad corpus `test_corpus_sources` names a line for."""
    (root / "files").mkdir()
    (root / "inputs").mkdir()
    cases = {name: (str(root / "files" / s), kw) for name, (s, kw, _) in cause_files(root / "files").items()}
    for name, (source, keywords, _) in bad_inputs(root / "inputs").items():
        cases[f"input: {name}"] = (source, keywords)
    return cases


BAD = [
    *CAUSE_CASES,
    *[
        f"input: {name}"
        for name in (
            "missing file",
            "empty folder",
            "unsupported suffix",
            "missing text field (save_to_disk)",
            "missing text field (parquet)",
            "field that is not text",
            "unreadable parquet",
            "too many colons",
            "URL",
        )
    ],
]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_the_in_memory_line(tmp_path, case):
    source, keywords = every_bad_input(tmp_path)[case]
    data = DataArguments(text_field=keywords.get("text_field", "text"), heldout_fraction=0)
    errors = []
    for streaming in (False, True):
        data.streaming = streaming
        with pytest.raises(CodeunlearnError) as excinfo:
            read_corpora([source], data)
        assert_fix_error(excinfo)
        errors.append(str(excinfo.value))
    assert errors[1] == errors[0]


# ------------------------------------------------------------------------------------------------ split and pack
def test_iter_packed_known_chunks(tokenizer):
    docs = ["a b", "c", "d e f", "g"]  # ids a=2 ..., joined by <eos>=0: 2 3 0 4 0 5 6 7 0 8 0
    expected = torch.tensor([[2, 3, 0], [4, 0, 5], [6, 7, 0]])
    for group in (1, 2, 64):  # a chunk spans tokenizer groups; the tail of 2 tokens is no chunk
        assert torch.equal(torch.cat(list(iter_packed(docs, tokenizer, 3, group=group))), expected)
    assert torch.equal(torch.cat(list(iter_packed(docs, tokenizer, 3, max_tokens=7, group=1))), expected[:2])
    assert torch.equal(torch.cat(list(iter_packed(docs, tokenizer, 3, max_tokens=1))), expected[:1])  # >= a chunk
    with pytest.raises(CodeunlearnError, match="corpus has 2 tokens, fewer than one chunk of seq_len=3"):
        list(iter_packed(["a"], tokenizer, 3))


@pytest.mark.parametrize("seq_len,max_tokens", [(2, None), (5, None), (7, 60), (4, 1)])
def test_iter_packed_equals_pack_documents(tokenizer, seq_len, max_tokens):
    docs = [d for d in rows(300, 5) if d.strip()]
    packed = pack_documents(docs, tokenizer, seq_len, max_tokens)
    pieces = list(iter_packed(iter(docs), tokenizer, seq_len, max_tokens))
    assert len(pieces) > 1 or max_tokens is not None
    assert torch.equal(torch.cat(pieces), packed)


@pytest.mark.parametrize("fraction,seed", [(0.0, 0), (0.2, 0), (0.2, 7), (0.5, 3), (0.9, 1)])
def test_split_and_chunks_equal_in_memory(forms, tokenizer, fraction, seed):
    sources = [forms["plain .txt"], forms[".jsonl"], forms["DatasetDict:test"]]
    memory = read_corpora(sources, DataArguments(seq_len=4, heldout_fraction=fraction, split_seed=seed))
    streamed = read_corpora(
        sources, DataArguments(seq_len=4, heldout_fraction=fraction, split_seed=seed, streaming=True)
    )
    for source in sources:
        for side in ("train", "heldout", "all"):
            assert list(streamed.documents(source, side)) == memory.documents(source, side), (source, side)
    assert bool(memory.documents(sources[0], "heldout")) == bool(fraction)
    for side in ("train", "heldout") if fraction else ("train",):
        for cap in (None, 9):
            expected = memory.pack(tokenizer, side, cap)
            assert torch.equal(streamed.pack(tokenizer, side, cap), expected)
            stream = streamed.chunk_stream(tokenizer, side, cap)
            assert torch.equal(torch.cat(list(stream)), expected)
            assert stream.measure()[0] == len(expected)
    if 0 < fraction <= 0.5:  # validation text after the first chunks (at 0.9 a corpus has no train text left)
        assert torch.equal(
            streamed.pack(tokenizer, "train", 8, skip_tokens=8), memory.pack(tokenizer, "train", 8, skip_tokens=8)
        )


# ------------------------------------------------------------------------------------------------ commands
@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    return make_cli_workspace(tmp_path_factory.mktemp("streaming"))


def flags(ws: dict[str, Path]) -> list[str]:
    return ["--model_name_or_path", str(ws["model"]), "--seq_len", "16", "--heldout_fraction", "0.3", "--no_progress"]


def train_argv(ws: dict[str, Path], output_dir: Path) -> list[str]:
    shape = ["--layers", "1", "--num_heads", "2", "--codebook_size", "16", "--num_stages", "1"]
    steps = ["--key_steps", "2", "--value_steps", "2", "--batch_size", "4", "--kmeans_init_tokens", "64"]
    return ["train", *flags(ws), "--corpora", str(ws["retain"]), *shape, *steps, "--output_dir", str(output_dir)]


@pytest.fixture(scope="module")
def trained(workspace) -> dict[str, Path]:
    """The same training run read in memory and streamed."""
    runs = {}
    for name, extra in (("memory", []), ("streamed", ["--streaming"])):
        runs[name] = workspace["root"] / name
        assert main([*train_argv(workspace, runs[name]), *extra]) == 0
    return runs


def test_train_streaming_trains_the_in_memory_bottleneck(trained):
    memory, streamed = (load_file(trained[n] / "bottleneck" / "bottleneck.safetensors") for n in trained)
    assert memory.keys() == streamed.keys() and all(torch.equal(memory[k], streamed[k]) for k in memory)
    caches = [sorted((trained[n] / "bottleneck" / "statistics").glob("*.safetensors")) for n in trained]
    assert [p.name for p in caches[0]] == [p.name for p in caches[1]] and len(caches[0]) == 1  # same fingerprint
    assert json.loads((trained["streamed"] / "run_args.json").read_text())["streaming"] is True


def stats_argv(ws: dict[str, Path], bottleneck: Path, output: Path, *extra: str) -> list[str]:
    corpora = ["--corpora", str(ws["forget"]), str(ws["retain"])]
    return ["stats", *flags(ws), *corpora, "--bottleneck_dir", str(bottleneck), "--output_file", str(output), *extra]


def same_statistics(a: Path, b: Path) -> None:
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert int(first["1"].sum()) > 0
    assert a.with_suffix(".json").read_text() == b.with_suffix(".json").read_text()  # corpus fingerprint included


@pytest.mark.parametrize("extra", [[], ["--split", "heldout", "--max_tokens", "100", "--batch_size", "3"]])
def test_stats_streaming_counts_what_the_in_memory_count_counts(workspace, trained, tmp_path, extra):
    bottleneck = trained["memory"] / "bottleneck"
    assert main(stats_argv(workspace, bottleneck, tmp_path / "memory.safetensors", *extra)) == 0
    assert main(stats_argv(workspace, bottleneck, tmp_path / "streamed.safetensors", *extra, "--streaming")) == 0
    same_statistics(tmp_path / "memory.safetensors", tmp_path / "streamed.safetensors")


class Killed(Exception):
    """Stands for the process dying right after a partial save."""


def test_interrupted_streamed_count_resumes_exactly(workspace, trained, tmp_path, monkeypatch, capsys):
    """Stopped right after its second partial save (batch 6 of 8), resumed: the uninterrupted in-memory statistics.
    A resume without --streaming is refused in one line and changes nothing."""
    bottleneck = trained["memory"] / "bottleneck"
    assert main(stats_argv(workspace, bottleneck, tmp_path / "memory.safetensors", "--batch_size", "2")) == 0
    output = tmp_path / "streamed.safetensors"
    argv = stats_argv(workspace, bottleneck, output, "--batch_size", "2", "--checkpoint_every", "3", "--streaming")
    save = StatisticsCheckpoint.save

    def save_then_die(self, tallies, state):
        save(self, tallies, state)
        if state["batches_done"] == 6:
            raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(StatisticsCheckpoint, "save", save_then_die)
        with pytest.raises(Killed):
            main(argv)
    assert not output.exists() and partial_statistics_path(output).is_dir()
    saved = (partial_statistics_path(output) / "rank-0.safetensors").read_bytes()
    in_memory = stats_argv(workspace, bottleneck, output, "--batch_size", "2", "--checkpoint_every", "3", "--resume")
    line = run_error(in_memory, capsys)
    assert "counted with streaming True, this run has False" in line and "pass --streaming True" in line
    assert (partial_statistics_path(output) / "rank-0.safetensors").read_bytes() == saved
    assert main([*argv, "--resume"]) == 0
    assert not partial_statistics_path(output).exists()
    same_statistics(tmp_path / "memory.safetensors", output)


def test_streaming_an_uncached_hub_dataset_offline_is_one_line(offline_empty_cache, tmp_path, capsys):
    """A streamed Hub dataset is read from the Hub, not from the datasets cache: offline it cannot stream."""
    argv = ["stats", "--corpora", "wikitext:wikitext-103-raw-v1:train", "--streaming"]
    argv += ["--bottleneck_dir", str(tmp_path / "none"), "--output_file", str(tmp_path / "stats.safetensors")]
    line = run_error(argv, capsys)
    assert "not in the local cache" in line and "leave out --streaming to read a copy cached" in line


def test_streamed_statistics_of_two_torchrun_processes_equal_one_process(workspace, trained, tmp_path):
    bottleneck = trained["memory"] / "bottleneck"
    assert main(stats_argv(workspace, bottleneck, tmp_path / "one.safetensors", "--batch_size", "3")) == 0
    argv = stats_argv(workspace, bottleneck, tmp_path / "two.safetensors", "--batch_size", "3", "--streaming")
    two = launch(TORCHRUN, argv)
    assert two.returncode == 0, two.stderr[-3000:]
    same_statistics(tmp_path / "one.safetensors", tmp_path / "two.safetensors")


def test_forget_streaming_selects_the_in_memory_codes(workspace, trained, tmp_path):
    """`forget --bottleneck_dir` packs its topic and retain text through `Corpora.pack`: streamed, the same edit."""
    edits = []
    for name, extra in (("memory", []), ("streamed", ["--streaming"])):
        argv = ["forget", *flags(workspace), "--bottleneck_dir", str(trained["memory"] / "bottleneck")]
        argv += ["--forget_corpora", str(workspace["forget"]), "--retain_corpora", str(workspace["retain"])]
        argv += ["--topic", "wizards", "--num_codes", "3", "--min_forget_count", "1"]
        assert main([*argv, "--output_dir", str(tmp_path / name), *extra]) == 0
        edits.append(sorted(p.read_text() for p in (tmp_path / name).glob("*.json") if "edit" in p.name))
    assert edits[0] and edits[1] == edits[0]
    same_statistics(
        tmp_path / "memory" / "forget_statistics.safetensors", tmp_path / "streamed" / "forget_statistics.safetensors"
    )
