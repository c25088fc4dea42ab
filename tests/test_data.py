"""Corpora: loading local files as documents, seeded document splits, and packing into token chunks."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_fix_error
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from codeunlearn.data import load_documents, load_split, pack_documents, shuffled_chunks, split_documents
from codeunlearn.errors import CodeunlearnError

WORDS = ["a", "b", "c", "d", "e", "f", "g", "h"]


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level: <eos>=0, <unk>=1, a=2 ... h=9."""
    vocab = {"<eos>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>")


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer()


# ------------------------------------------------------------------------------------------------ loading
def test_txt_one_document_per_line(tmp_path):
    path = tmp_path / "plain.txt"
    path.write_text("first line\n\nsecond line\n   \nthird = line =\n")
    assert load_documents(str(path)) == ["first line", "second line", "third = line ="]


def test_txt_wikitext_articles_group_lines(tmp_path):
    path = tmp_path / "wiki.txt"
    path.write_text(
        " preamble before any heading \n\n"
        " = Alpha = \n\n alpha text one \n\n = = Section = = \n\n more alpha \n\n"
        " = Beta = \n\n beta text \n"
    )
    docs = load_documents(str(path))
    assert docs == [
        " preamble before any heading ",
        " = Alpha = \n alpha text one \n = = Section = = \n more alpha ",  # sub-headings stay inside the article
        " = Beta = \n beta text ",
    ]
    assert load_documents(str(path), doc_start_regex=None)[1:3] == [" = Alpha = ", " alpha text one "]


def test_jsonl_text_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    rows = [{"text": "one doc", "body": "x"}, {"text": "", "body": "y"}, {"text": "two\nlines", "body": "z"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert load_documents(str(path)) == ["one doc", "two\nlines"]  # empty documents are dropped
    assert load_documents(str(path), text_field="body") == ["x", "y", "z"]
    with pytest.raises(CodeunlearnError) as excinfo:
        load_documents(str(path), text_field="content")
    assert_fix_error(excinfo)
    assert "content" in str(excinfo.value) and "--text_field" in str(excinfo.value)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("missing.txt", None),
        ("missing.jsonl", None),
        ("blank.txt", "\n  \n\n"),
        ("empty.txt", ""),
        ("empty.jsonl", '{"text": ""}\n'),
    ],
)
def test_empty_or_missing_corpus(tmp_path, name, content):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(CodeunlearnError) as excinfo:
        load_documents(str(path))
    assert_fix_error(excinfo)


# ------------------------------------------------------------------------------------------------ splitting
def test_split_is_seeded_disjoint_and_complete():
    docs = [f"doc {i}" for i in range(20)]
    split = split_documents("corpus", docs, heldout_fraction=0.25, seed=3)
    assert split.name == "corpus"
    assert len(split.heldout) == 5 and len(split.train) == 15
    assert set(split.train).isdisjoint(split.heldout)
    assert sorted(split.train + split.heldout) == sorted(docs)
    assert split.train == [d for d in docs if d in set(split.train)]  # original order is kept
    again = split_documents("corpus", docs, 0.25, seed=3)
    assert (again.train, again.heldout) == (split.train, split.heldout)
    others = {tuple(split_documents("corpus", docs, 0.25, seed=s).heldout) for s in range(5)}
    assert len(others) > 1


@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.99])
def test_split_keeps_a_document_on_each_side(fraction):
    split = split_documents("c", ["x", "y"], fraction, seed=0)
    assert len(split.train) == 1 and len(split.heldout) == 1
    split = split_documents("c", [f"d{i}" for i in range(7)], fraction, seed=1)
    assert split.train and split.heldout


def test_split_without_heldout_and_bad_fraction():
    split = split_documents("c", ["x", "y", "z"], 0.0, seed=0)
    assert (split.train, split.heldout) == (["x", "y", "z"], [])
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(CodeunlearnError) as excinfo:
            split_documents("c", ["x", "y"], bad, seed=0)
        assert_fix_error(excinfo)


# ------------------------------------------------------------------------------------------------ packing
def test_pack_joins_documents_with_eos(tokenizer):
    chunks = pack_documents(["a b", "c", "d e f"], tokenizer, seq_len=3)
    # a b <eos> c <eos> d e f <eos>  ->  three chunks of 3
    assert chunks.dtype == torch.long
    assert chunks.tolist() == [[2, 3, 0], [4, 0, 5], [6, 7, 0]]
    assert pack_documents(["a b", "c", "d e f"], tokenizer, seq_len=4).tolist() == [[2, 3, 0, 4], [0, 5, 6, 7]]


def test_pack_respects_max_tokens(tokenizer):
    docs = ["a b c d"] * 10  # 50 tokens with EOS
    assert pack_documents(docs, tokenizer, seq_len=5).shape == (10, 5)
    assert pack_documents(docs, tokenizer, seq_len=5, max_tokens=12).shape == (2, 5)
    assert pack_documents(docs, tokenizer, seq_len=5, max_tokens=3).shape == (1, 5)  # at least one chunk


def test_pack_refusals(tokenizer):
    with pytest.raises(CodeunlearnError) as excinfo:
        pack_documents(["a b"], tokenizer, seq_len=4)  # 3 tokens < one chunk
    assert_fix_error(excinfo)
    with pytest.raises(CodeunlearnError) as excinfo:
        pack_documents(["a b c d e"], tokenizer, seq_len=1)
    assert_fix_error(excinfo)


def test_load_split_packs_both_sides(tmp_path, tokenizer):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(" ".join(WORDS[i % 8] for i in range(k, k + 7)) for k in range(10)) + "\n")
    train, heldout = load_split(str(path), tokenizer, seq_len=4, heldout_fraction=0.2, seed=0)
    assert train.shape == (16, 4) and heldout.shape == (4, 4)  # 8 docs x 8 tokens, 2 docs x 8 tokens
    again = load_split(str(path), tokenizer, seq_len=4, heldout_fraction=0.2, seed=0)
    assert torch.equal(again[0], train) and torch.equal(again[1], heldout)
    _, none = load_split(str(path), tokenizer, seq_len=4, heldout_fraction=0.0, seed=0)
    assert none.shape == (0, 4)


def test_shuffled_chunks_is_a_seeded_permutation():
    a, b = torch.arange(6).view(3, 2), torch.arange(6, 10).view(2, 2)
    mixed = shuffled_chunks([a, b], seed=1)
    assert sorted(mixed[:, 0].tolist()) == [0, 2, 4, 6, 8]
    assert torch.equal(mixed, shuffled_chunks([a, b], seed=1))


def test_single_document_cannot_be_held_out():
    with pytest.raises(CodeunlearnError, match="single document"):
        split_documents("one", ["only document"], heldout_fraction=0.9, seed=0)
    kept = split_documents("one", ["only document"], heldout_fraction=0.2, seed=0)
    assert kept.train == ["only document"] and kept.heldout == []
