"""The fluency metric on models whose generations and base-model perplexity are known exactly."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from export_helpers import make_tokenizer
from helpers import VOCAB, assert_fix_error, make_model
from torch import nn

from codeunlearn.data import load_documents, split_documents
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.metrics.base import EvalContext
from codeunlearn.evaluate.metrics.fluency import distinct_fraction, fluency, repetition_rate

FIRST_WORD = 3  # ids 0-2 are <unk>, <pad>, </s>
WORDS = torch.arange(FIRST_WORD, VOCAB)
Q = 0.9  # probability a Markov model gives its successor token


class MarkovLM(nn.Module):
    """A causal LM whose next token depends on the last token only: `successor[t]` with probability Q, every other
    token (1 - Q) / (VOCAB - 1). Greedy generation follows `successor`; its cache is ignored (nothing to remember)."""

    def __init__(self, successor: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("successor", successor)
        self.anchor = nn.Parameter(torch.zeros(1))  # model_device() reads the first parameter
        self.config = SimpleNamespace(max_position_embeddings=256)

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False, **kwargs):
        logits = torch.full((*input_ids.shape, VOCAB), math.log((1 - Q) / (VOCAB - 1)))
        logits.scatter_(-1, self.successor[input_ids][..., None], math.log(Q))
        return SimpleNamespace(logits=logits, past_key_values=() if use_cache else None)


def shifted(step: int) -> torch.Tensor:
    """Successor = the word `step` places later in the cycle of words (step 0: every word repeats itself)."""
    successor = torch.full((VOCAB,), FIRST_WORD)
    successor[WORDS] = WORDS[(torch.arange(len(WORDS)) + step) % len(WORDS)]
    return successor


def period_two() -> torch.Tensor:
    """Successor swaps the words of each pair (w3, w4), (w5, w6), ...: a loop of period 2."""
    successor = WORDS[-1].repeat(VOCAB)  # the odd one out, w127, repeats itself
    even, odd = WORDS[:-1:2], WORDS[1::2]
    successor[even], successor[odd] = odd, even
    return successor


PROMPTS = ["w10 w11 w12", "w40 w41", "w90", "w3 w7 w20 w21"]


def ctx_for(model: nn.Module, reference: nn.Module | None = None) -> EvalContext:
    return EvalContext(model, make_tokenizer(), batch_size=2, progress=False, reference_model=reference, max_length=64)


def test_ngram_statistics_have_their_textbook_values():
    assert repetition_rate([5, 6, 7, 8, 9]) == 0.0
    assert repetition_rate([5] * 10) == pytest.approx(1 - 1 / 8)
    assert repetition_rate([5, 6] * 5) == pytest.approx(1 - 2 / 8)
    assert repetition_rate([5, 6]) is None and distinct_fraction([]) is None
    assert distinct_fraction([5, 6, 5, 6]) == 0.5


def test_a_looping_model_scores_worse_than_a_fluent_one_on_every_count():
    fluent = MarkovLM(shifted(1))
    new = 20
    good = fluency(ctx_for(fluent, reference=fluent), prompts=PROMPTS, max_new_tokens=new)
    loop = fluency(ctx_for(MarkovLM(shifted(0)), reference=fluent), prompts=PROMPTS, max_new_tokens=new)
    pairs = fluency(ctx_for(MarkovLM(period_two()), reference=fluent), prompts=PROMPTS, max_new_tokens=new)
    assert good.n == loop.n == len(PROMPTS) and good.group == "fluency"
    assert good.scores["repetition"] == 0.0 and good.scores["distinct_1"] == 1.0
    assert good.scores["mean_length"] == new
    # A loop of period p over n tokens: n - 2 three-grams of which p distinct; p distinct tokens.
    assert loop.scores["repetition"] == pytest.approx(1 - 1 / (new - 2))
    assert loop.scores["distinct_1"] == pytest.approx(1 / new)
    assert pairs.scores["repetition"] == pytest.approx(1 - 2 / (new - 2))
    assert pairs.scores["distinct_1"] == pytest.approx(2 / new)
    # Under the base (the fluent chain), its own text has perplexity 1/Q, the loop's tokens are all off-chain.
    assert good.scores["ppl_under_base"] == pytest.approx(1 / Q, rel=1e-5)
    assert loop.scores["ppl_under_base"] == pytest.approx((VOCAB - 1) / (1 - Q), rel=1e-5)
    first = good.details[0]
    assert first["generation"].split() == [f"w{13 + i}" for i in range(new)]
    assert first["scored_under"] == "reference_model" and first["prompt"] == PROMPTS[0]


def test_gibberish_is_improbable_under_the_base_model_even_when_it_does_not_repeat():
    fluent = MarkovLM(shifted(1))
    gibberish = fluency(ctx_for(MarkovLM(shifted(7)), reference=fluent), prompts=PROMPTS, max_new_tokens=12)
    assert gibberish.scores["repetition"] == 0.0  # no loop to catch ...
    assert gibberish.scores["ppl_under_base"] == pytest.approx((VOCAB - 1) / (1 - Q), rel=1e-5)  # ... but this does
    # Without a reference model the text is scored by the model itself, which is sure of its own output.
    alone = fluency(ctx_for(MarkovLM(shifted(7))), prompts=PROMPTS, max_new_tokens=12)
    assert alone.scores["ppl_under_base"] == pytest.approx(1 / Q, rel=1e-5)
    assert {d["scored_under"] for d in alone.details} == {"model"}


def test_a_model_that_stops_at_once_writes_nothing():
    stops = torch.full((VOCAB,), 2)  # every token is followed by </s>
    result = fluency(ctx_for(MarkovLM(stops)), prompts=PROMPTS, max_new_tokens=8)
    assert result.scores["mean_length"] == 0.0
    assert all(math.isnan(result.scores[k]) for k in ("repetition", "distinct_1", "ppl_under_base"))


def write_corpus(path, num_docs: int, words: int) -> list[str]:
    docs = [" ".join(f"w{FIRST_WORD + (d * 7 + i) % 120}" for i in range(words)) for d in range(num_docs)]
    path.write_text("\n".join(docs) + "\n")
    return docs


def test_prompts_are_the_first_tokens_of_seeded_heldout_documents(tmp_path):
    corpus = tmp_path / "retain.txt"
    write_corpus(corpus, num_docs=20, words=30)
    split = split_documents("retain", load_documents(str(corpus)), 0.2, 0)
    heldout_starts = {" ".join(doc.split()[:8]) for doc in split.heldout}
    ctx = ctx_for(MarkovLM(shifted(1)))
    result = fluency(ctx, corpus=str(corpus), num_prompts=3, prompt_tokens=8, max_new_tokens=4)
    prompts = [d["prompt"] for d in result.details]
    assert len(prompts) == 3 and len(set(prompts)) == 3 and set(prompts) <= heldout_starts
    again = fluency(ctx, corpus=str(corpus), num_prompts=3, prompt_tokens=8, max_new_tokens=4)
    assert [d["prompt"] for d in again.details] == prompts  # seeded
    capped = fluency(
        ctx_for(MarkovLM(shifted(1))), corpus=str(corpus), num_prompts=99, prompt_tokens=8, max_new_tokens=4
    )
    assert capped.n == len(split.heldout)


def test_a_real_tiny_model_runs_under_a_reference_model():
    result = fluency(ctx_for(make_model("llama", seed=1), reference=make_model("llama")), prompts=PROMPTS)
    assert result.n == len(PROMPTS)
    assert all(math.isfinite(v) for v in result.scores.values())
    assert result.scores["ppl_under_base"] > 1.0


def test_bad_input_is_one_line_naming_the_fix(tmp_path):
    ctx = ctx_for(MarkovLM(shifted(1)))
    short = tmp_path / "short.txt"
    write_corpus(short, num_docs=10, words=4)
    for kwargs in (
        {"prompts": []},
        {"prompts": ["  "]},
        {},
        {"prompts": PROMPTS, "corpus": str(short)},
        {"corpus": str(tmp_path / "missing.txt")},
        {"corpus": str(short), "prompt_tokens": 8},
        {"prompts": PROMPTS, "max_new_tokens": 2},
    ):
        with pytest.raises(CodeunlearnError) as excinfo:
            fluency(ctx, **kwargs)
        assert_fix_error(excinfo)
