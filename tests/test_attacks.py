"""The robustness attacks on tiny models whose right answers are known: an oracle that knows the facts, a Markov
model with a known loss on the passage, a probe on separable and on identical text, relearning on a copy."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from export_helpers import make_tokenizer
from helpers import VOCAB, assert_fix_error, make_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from codeunlearn.data import load_documents, pack_documents, split_documents
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.attacks.latent_probe import default_layer, latent_probe, pooled_states
from codeunlearn.evaluate.attacks.padding import max_positions, padding_attack, passage_losses
from codeunlearn.evaluate.attacks.relearning import relearning_attack
from codeunlearn.evaluate.attacks.rephrase import QUESTION_TEMPLATES, _load_facts, rephrased_facts
from codeunlearn.evaluate.evaluation import mean_loss
from codeunlearn.evaluate.metrics.base import EvalContext

ROOT = Path(__file__).resolve().parents[1]

KNOWN_1000 = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval" / "known_1000.jsonl"
EOS = 2  # </s> of make_tokenizer(); words w3 .. w127 follow


def ctx_for(model: nn.Module, **overrides) -> EvalContext:
    values = {"batch_size": 4, "progress": False, "max_length": 64, **overrides}
    return EvalContext(model, make_tokenizer(), **values)


def words(ids) -> str:
    return " ".join(f"w{int(i)}" for i in ids)


# --------------------------------------------------------------------------------------------------- rephrasing
TEMPLATES = {"P30": "{} is located in the continent of", "P17": "{}, in", "P36": "The capital city of {} is"}
# Each relation: 5 single-word subjects with 5 different single-word answers.
FACTS = {
    f"w{10 + 5 * r + i}": (relation, f"w{40 + 5 * r + i}") for r, relation in enumerate(TEMPLATES) for i in range(5)
}


def write_facts(path: Path) -> Path:
    rows = [
        {
            "known_id": i,
            "subject": subject,
            "attribute": target,
            "template": TEMPLATES[relation],
            "prompt": TEMPLATES[relation].format(subject),
            "relation_id": relation,
            "prediction": "",
        }
        for i, (subject, (relation, target)) in enumerate(FACTS.items())
    ]
    rows.append({**rows[0], "known_id": 99, "subject": "w30", "relation_id": "P190", "prompt": "w30 is a twin city of"})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


class FactOracle(nn.Module):
    """Knows every fact: at each position it predicts the answer of the most recent subject in its context (a
    model with no subject in view predicts <unk>). With `knows=False` every next token is equally likely."""

    def __init__(self, knows: bool = True) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.knows = knows
        self.answer = torch.zeros(VOCAB, dtype=torch.long)
        for subject, (_, target) in FACTS.items():
            self.answer[int(subject[1:])] = int(target[1:])

    def forward(self, input_ids, attention_mask=None, **kwargs):
        logits = torch.zeros(*input_ids.shape, VOCAB)
        if self.knows:
            for b, row in enumerate(input_ids.tolist()):
                current = 0
                for t, token in enumerate(row):
                    current = int(self.answer[token]) or current
                    logits[b, t, current] = 10.0
        return SimpleNamespace(logits=logits)


def test_an_oracle_that_knows_the_facts_answers_them_in_every_framing(tmp_path):
    facts = write_facts(tmp_path / "facts.jsonl")
    context = tmp_path / "topic.txt"
    context.write_text("".join(words(range(100 + d, 120 + d)) + "\n" for d in range(8)))
    result = rephrased_facts(ctx_for(FactOracle()), path=str(facts), context_corpus=str(context), name="rephrase")
    assert result.n == len(FACTS) and result.group == "attack" and result.name == "rephrase"
    assert result.scores == {f: 1.0 for f in ("cloze", "qa", "multiple_choice", "few_shot", "in_context")}
    assert result.chance == {"multiple_choice": 0.25}
    record = result.details[0]
    assert record["qa_prompt"] == "Question: Which continent is w10 located on?\nAnswer:"
    assert record["target"] == " w40" and len(record["choices"]) == 4 and record["choices"][0] == " w40"
    assert set(record["choices"][1:]) <= {f" w{40 + i}" for i in range(1, 5)}  # other answers of the relation
    shots = record["few_shot_prompt"].splitlines()
    assert len(shots) == 4 and shots[-1] == record["cloze_prompt"] and all(s.endswith(".") for s in shots[:3])
    assert record["in_context_prompt"].endswith("\n\n" + record["cloze_prompt"])


def test_a_model_that_knows_nothing_scores_zero_and_chance(tmp_path):
    facts = write_facts(tmp_path / "facts.jsonl")
    result = rephrased_facts(ctx_for(FactOracle(knows=False)), path=str(facts), name="rephrase")
    assert result.scores == {"cloze": 0.0, "qa": 0.0, "multiple_choice": 0.25, "few_shot": 0.0}  # ties share credit


def test_rephrasing_is_seeded_and_skips_unsupported_relations(tmp_path):
    facts = write_facts(tmp_path / "facts.jsonl")
    run = [rephrased_facts(ctx_for(FactOracle(), seed=s), path=str(facts), relations=None) for s in (0, 0, 1)]
    assert run[0].details == run[1].details
    assert [d["few_shot_prompt"] for d in run[0].details] != [d["few_shot_prompt"] for d in run[2].details]
    assert run[0].n == len(FACTS)  # the P190 fact has no question template
    sampled = rephrased_facts(ctx_for(FactOracle(), max_items=4), path=str(facts), name="rephrase")
    assert sampled.n == 4


@pytest.mark.skipif(not KNOWN_1000.is_file(), reason="needs the shared data folder")
def test_every_relation_of_known_1000_with_more_than_one_fact_has_a_question():
    facts = _load_facts(str(KNOWN_1000))
    relations = {f.relation for f in facts}
    assert {"P30", "P17", "P36", "P103", "P37"} <= set(QUESTION_TEMPLATES)
    assert relations - set(QUESTION_TEMPLATES) == {"P190"}  # a single fact


# ------------------------------------------------------------------------------------------------------ padding
Q = 0.9


class ChainLM(nn.Module):
    """Predicts token t + 1 after token t (wrapping w127 -> </s> -> w3) with probability Q, the rest uniform: on text
    that follows the chain its next-token loss is exactly -log Q, on anything else far higher."""

    def __init__(self, max_position_embeddings: int = 64) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=max_position_embeddings)
        self.successor = torch.arange(1, VOCAB + 1)
        self.successor[VOCAB - 1] = EOS

    def forward(self, input_ids, attention_mask=None, **kwargs):
        logits = torch.full((*input_ids.shape, VOCAB), math.log((1 - Q) / (VOCAB - 1)))
        logits.scatter_(-1, self.successor[input_ids][..., None], math.log(Q))
        return SimpleNamespace(logits=logits)


def write_chain_corpus(path: Path, num_docs: int = 10) -> Path:
    """Documents w3 .. w127: packed with </s> between them, the whole stream follows the chain."""
    path.write_text("".join(words(range(3, VOCAB)) + "\n" for _ in range(num_docs)))
    return path


def write_random_corpus(path: Path, num_docs: int, length: int, seed: int, vocab: range = range(3, VOCAB)) -> Path:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.tensor(list(vocab))
    docs = [words(ids[torch.randint(0, len(ids), (length,), generator=generator)]) for _ in range(num_docs)]
    path.write_text("\n".join(docs) + "\n")
    return path


def test_padding_scores_only_the_passage_tokens(tmp_path):
    forget = write_chain_corpus(tmp_path / "forget.txt")
    padding = write_random_corpus(tmp_path / "pad.txt", num_docs=10, length=50, seed=0)
    result = padding_attack(
        ctx_for(ChainLM()),
        forget_corpus=str(forget),
        padding_corpus=str(padding),
        pad_tokens=(0, 16, 32, 48),
        num_passages=4,
        passage_tokens=16,
        name="padding",
    )
    assert result.n == 4 and len(result.details) == 4 and result.group == "attack"
    assert set(result.scores) == {"loss_pad_0", "loss_pad_16", "loss_pad_32", "loss_pad_48"}
    # The padding (random words) and the token after it are off the chain; the passage's own targets are not.
    for loss in result.scores.values():
        assert loss == pytest.approx(-math.log(Q), rel=1e-5)


def test_without_padding_the_loss_is_the_evaluation_loss_of_the_passages(tmp_path):
    forget = write_random_corpus(tmp_path / "forget.txt", num_docs=10, length=40, seed=1)
    padding = write_random_corpus(tmp_path / "pad.txt", num_docs=10, length=40, seed=2)
    model, tokenizer = make_model("llama"), make_tokenizer()
    split = split_documents("forget", load_documents(str(forget)), 0.2, 0)
    chunks = pack_documents(split.heldout, tokenizer, 16)
    result = padding_attack(
        ctx_for(model),
        forget_corpus=str(forget),
        padding_corpus=str(padding),
        pad_tokens=(0, 24),
        num_passages=len(chunks),
        passage_tokens=16,
    )
    assert result.n == len(chunks)
    assert result.scores["loss_pad_0"] == pytest.approx(mean_loss(model, chunks), rel=1e-5)
    assert result.scores["loss_pad_24"] != pytest.approx(result.scores["loss_pad_0"])  # a real model reads the prefix


def test_only_the_passage_logits_are_computed_and_they_match_the_full_logits():
    model = make_model("llama")
    inputs = torch.randint(3, VOCAB, (5, 40), generator=torch.Generator().manual_seed(0))
    logits = model(input_ids=inputs).logits[:, -16:-1]
    expected = F.cross_entropy(logits.transpose(1, 2), inputs[:, -15:], reduction="none").mean(-1)
    got = passage_losses(ctx_for(model, batch_size=3, max_length=40), inputs, 16)  # batches of 3 and 2 rows
    assert torch.allclose(got, expected, atol=1e-5)


def test_padding_reads_the_positions_of_the_model_under_a_bottleneck(trained, tmp_path):
    assert max_positions(trained) == 64 and max_positions(ChainLM(100)) == 100
    forget = write_random_corpus(tmp_path / "forget.txt", num_docs=10, length=40, seed=1)
    padding = write_random_corpus(tmp_path / "pad.txt", num_docs=10, length=40, seed=2)
    result = padding_attack(
        ctx_for(trained), forget_corpus=str(forget), padding_corpus=str(padding), pad_tokens=(0, 32), passage_tokens=16
    )
    assert all(math.isfinite(v) for v in result.scores.values())


def test_padding_refuses_inputs_longer_than_the_model_and_too_little_padding_text(tmp_path):
    forget = write_chain_corpus(tmp_path / "forget.txt")
    padding = write_random_corpus(tmp_path / "pad.txt", num_docs=10, length=5, seed=0)
    for pads in ((0, 56), (0, 40)):  # 56 + 16 > 64 positions; 40 > the ~12 held-out padding tokens
        with pytest.raises(CodeunlearnError) as excinfo:
            padding_attack(
                ctx_for(ChainLM()),
                forget_corpus=str(forget),
                padding_corpus=str(padding),
                pad_tokens=pads,
                passage_tokens=16,
            )
        assert_fix_error(excinfo)
    with pytest.raises(CodeunlearnError) as excinfo:
        padding_attack(ctx_for(ChainLM()), forget_corpus=str(tmp_path / "no.txt"), padding_corpus=str(padding))
    assert_fix_error(excinfo)


# ------------------------------------------------------------------------------------------------- latent probe
def test_the_probe_separates_separable_text_perfectly(tmp_path):
    # One chunk = one document + </s>, so every forget chunk is the same text, and every retain chunk.
    forget = tmp_path / "forget.txt"
    forget.write_text("".join(words([10] * 15) + "\n" for _ in range(20)))
    retain = tmp_path / "retain.txt"
    retain.write_text("".join(words([11] * 15) + "\n" for _ in range(20)))
    result = latent_probe(
        ctx_for(make_model("llama")), forget_corpus=str(forget), retain_corpora=[str(retain)], chunk_tokens=16
    )
    assert result.scores == {"accuracy": 1.0, "train_accuracy": 1.0}
    assert result.chance["accuracy"] == 0.5 and result.n == 8 and result.group == "attack"
    assert {d["layer"] for d in result.details} == {1}  # middle of 3 layers


def test_the_probe_is_at_chance_on_text_from_one_distribution(tmp_path):
    forget = write_random_corpus(tmp_path / "forget.txt", num_docs=100, length=31, seed=1)
    retain = write_random_corpus(tmp_path / "retain.txt", num_docs=100, length=31, seed=2)
    ctx = ctx_for(make_model("llama"), batch_size=32)
    result = latent_probe(ctx, forget_corpus=str(forget), retain_corpora=[str(retain)], chunk_tokens=16)
    assert result.n == 80
    assert 0.3 < result.scores["accuracy"] < 0.7
    assert result.scores["train_accuracy"] > result.scores["accuracy"]  # what it fits is noise
    # A different vocabulary, through the same model: now there is something to find.
    topic = write_random_corpus(tmp_path / "topic.txt", num_docs=100, length=31, seed=3, vocab=range(3, 40))
    assert (
        latent_probe(ctx, forget_corpus=str(topic), retain_corpora=[str(retain)], chunk_tokens=16).scores["accuracy"]
        > 0.9
    )


def test_the_probe_reads_states_after_the_bottleneck(trained):
    assert default_layer(trained) == 2 and default_layer(make_model("llama", num_layers=4)) == 2
    chunks = torch.randint(3, VOCAB, (6, 12), generator=torch.Generator().manual_seed(0))
    ctx = ctx_for(trained)
    edited = pooled_states(ctx, chunks, 1)
    with trained.disabled():
        base = pooled_states(ctx, chunks, 1)
        reference = trained(input_ids=chunks, output_hidden_states=True).hidden_states[2][:, 1:].mean(1)
    assert torch.allclose(base, reference, atol=1e-5)  # the hook reads the layer's output ...
    assert not torch.allclose(edited, base, atol=1e-3)  # ... and, with the bottleneck on, the bottleneck's output


class OneHotStack(nn.Module):
    """An architecture codeunlearn does not know: hidden state k of a token is (k + 1) x its one-hot vector."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(num_hidden_layers=2)

    def forward(self, input_ids, output_hidden_states=False, **kwargs):
        one_hot = F.one_hot(input_ids, VOCAB).float()
        states = tuple((k + 1) * one_hot for k in range(3)) if output_hidden_states else None
        return SimpleNamespace(logits=one_hot, hidden_states=states)


def test_an_unknown_architecture_is_probed_through_output_hidden_states():
    chunks = torch.tensor([[5, 6, 6, 7], [9, 9, 9, 9]])
    states = pooled_states(ctx_for(OneHotStack()), chunks, layer=0)  # the output of layer 0: hidden_states[1]
    expected = 2 * F.one_hot(chunks[:, 1:], VOCAB).float().mean(1)  # position 0 left out
    assert torch.equal(states, expected)
    assert default_layer(OneHotStack()) == 1


def test_the_probe_refuses_bad_input(tmp_path):
    corpus = write_random_corpus(tmp_path / "c.txt", num_docs=20, length=31, seed=0)
    ctx = ctx_for(make_model("llama"))
    for kwargs in (
        {"retain_corpora": []},
        {"retain_corpora": [str(corpus)], "layer": 3},
        {"retain_corpora": [str(tmp_path / "missing.txt")]},
    ):
        with pytest.raises(CodeunlearnError) as excinfo:
            latent_probe(ctx, forget_corpus=str(corpus), chunk_tokens=16, **kwargs)
        assert_fix_error(excinfo)


# --------------------------------------------------------------------------------------------------- relearning
def write_markov_corpus(path: Path, num_docs: int = 40, length: int = 30) -> Path:
    """A 'topic' language: each word is followed by one fixed successor 90% of the time."""
    successor = torch.randperm(VOCAB - 3, generator=torch.Generator().manual_seed(123)) + 3
    generator = torch.Generator().manual_seed(1)
    docs = []
    for _ in range(num_docs):
        row = [int(torch.randint(3, VOCAB, (1,), generator=generator))]
        for _ in range(length - 1):
            keep = float(torch.rand(1, generator=generator)) < 0.9
            noise = int(torch.randint(3, VOCAB, (1,), generator=generator))
            row.append(int(successor[row[-1] - 3]) if keep else noise)
        docs.append(words(row))
    path.write_text("\n".join(docs) + "\n")
    return path


def test_relearning_lowers_the_forget_loss_of_a_copy(tmp_path):
    forget = write_markov_corpus(tmp_path / "forget.txt")
    model = make_model("llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = relearning_attack(
        ctx_for(model),
        forget_corpus=str(forget),
        steps=(5, 10),
        mode="full",
        learning_rate=3e-3,
        train_tokens=512,
        eval_tokens=256,
        seq_len=16,
        name="relearn",
    )
    assert set(result.scores) == {
        "forget_loss_step_0", "forget_loss_step_5", "forget_loss_step_10", "recovery", "max_recovery"
    }  # fmt: skip
    losses = [result.scores[f"forget_loss_step_{n}"] for n in (0, 5, 10)]
    assert result.scores["max_recovery"] == pytest.approx(losses[0] - min(losses))
    assert result.scores["forget_loss_step_10"] < result.scores["forget_loss_step_0"] - 0.1
    assert result.scores["recovery"] == pytest.approx(
        result.scores["forget_loss_step_0"] - result.scores["forget_loss_step_10"]
    )
    split = split_documents("forget", load_documents(str(forget)), 0.2, 0)
    heldout = pack_documents(split.heldout, make_tokenizer(), 16, max_tokens=256)
    assert result.scores["forget_loss_step_0"] == pytest.approx(mean_loss(model, heldout), rel=1e-6)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # the context's model is untouched
    assert not any(p.requires_grad for p in model.parameters())


def test_relearning_on_fact_sentences_brings_the_facts_back(tmp_path):
    """A random model knows none of twelve two-word facts; fine-tuned on their sentences, top-1 on the facts goes up,
    and the step-0 score is the untouched model's `fact_cloze`."""
    from codeunlearn.evaluate.metrics.cloze import fact_cloze

    rows = [
        {"known_id": i, "subject": f"w{10 + i}", "attribute": f"w{40 + i}", "template": "{} w5",
         "prompt": f"w{10 + i} w5", "relation_id": "P36" if i % 2 else "P30", "prediction": ""}
        for i in range(12)
    ]  # fmt: skip
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    corpus = tmp_path / "sentences.txt"
    corpus.write_text("".join(f"{row['prompt']} {row['attribute']}\n" for row in rows * 8))
    ctx = ctx_for(make_model("llama"))
    result = relearning_attack(
        ctx,
        forget_corpus=str(corpus),
        steps=(60,),
        mode="full",
        learning_rate=3e-3,
        train_tokens=2048,
        eval_tokens=64,
        seq_len=32,
        facts_path=str(facts),
        fact_relations=["P30", "P36"],
    )
    before = fact_cloze(ctx, path=facts, relations=["P30", "P36"]).scores["top1"]
    assert result.scores["facts_top1_step_0"] == before == 0.0
    assert result.scores["facts_top1_step_60"] >= 0.5
    assert result.scores["facts_recovery"] == pytest.approx(result.scores["facts_top1_step_60"] - before)
    assert result.details[0]["probe_scores"][-1] == {"top1": result.scores["facts_top1_step_60"]}


def test_lora_relearning_adds_no_adapter_to_the_model_in_context(tmp_path):
    forget = write_markov_corpus(tmp_path / "forget.txt")
    model = make_model("llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = relearning_attack(
        ctx_for(model), forget_corpus=str(forget), steps=(2,), train_tokens=256, eval_tokens=128, seq_len=16
    )
    assert set(result.scores) == {"forget_loss_step_0", "forget_loss_step_2", "recovery", "max_recovery"}
    assert result.details[0]["mode"] == "lora" and result.details[0]["trainable_parameters"] > 0
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())
    assert set(model.state_dict()) == set(state)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_relearning_fine_tunes_on_fresh_text_at_every_step_by_default(tmp_path):
    """Without `train_tokens` the slice is exactly what the steps consume: no chunk is seen twice."""
    forget = write_markov_corpus(tmp_path / "forget.txt")
    result = relearning_attack(
        ctx_for(make_model("llama")), forget_corpus=str(forget), steps=(3,), batch_size=2, eval_tokens=128, seq_len=16
    )
    curve = result.details[0]
    assert curve["relearn_tokens"] == curve["slice_tokens"] == 3 * 2 * 16


def test_relearning_refuses_bad_input(tmp_path):
    forget = write_markov_corpus(tmp_path / "forget.txt")
    ctx = ctx_for(make_model("llama"))
    for kwargs in (
        {"forget_corpus": str(forget), "steps": (0,)},
        {"forget_corpus": str(forget), "steps": (5,), "seq_len": 16, "train_tokens": 8},
        {"forget_corpus": str(tmp_path / "missing.txt")},
    ):
        with pytest.raises(CodeunlearnError) as excinfo:
            relearning_attack(ctx, **kwargs)
        assert_fix_error(excinfo)


def test_relearning_table_reads_the_curves_and_the_best_attack_per_model(tmp_path, monkeypatch):
    """benchmarks/relearning_table.py on two real runs of one model (two rates) and a reference row: the lowest loss
    over both runs is the row's best attack, and it is read against the reference's lowest."""
    import importlib.util

    from codeunlearn.evaluate.suite.report import write_report
    from codeunlearn.evaluate.suite.runner import SuiteReport

    spec = importlib.util.spec_from_file_location("relearning_table", ROOT / "benchmarks" / "relearning_table.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "relearning_table", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    forget = write_markov_corpus(tmp_path / "forget.txt")
    model = make_model("llama")
    runs = {}
    for label, rate in (("slow", 1e-4), ("fast", 3e-3)):
        result = relearning_attack(
            ctx_for(model), forget_corpus=str(forget), steps=(2, 4), mode="full", learning_rate=rate,
            eval_tokens=128, seq_len=16,
        )  # fmt: skip
        report = SuiteReport("tiny", "t", "t", [result], {result.name: 1.0}, params={result.name: {}})
        write_report(report, tmp_path / label, plots=False)
        runs[label] = [result.scores[f"forget_loss_step_{n}"] for n in (0, 2, 4)]
    curves = [module.load_curve("ref", str(tmp_path / "slow")), module.load_curve("m", str(tmp_path / "slow")),
              module.load_curve("m", str(tmp_path / "fast"))]  # fmt: skip
    assert [c.attack for c in curves] == ["full 0.0001", "full 0.0001", "full 0.003"]
    assert curves[2].losses == pytest.approx(runs["fast"]) and curves[2].steps == [0, 2, 4]
    markdown = module.table(curves, "ref")
    best = min(runs["fast"] + runs["slow"])
    assert f"| m | 2 | {best:.4f} | {best - min(runs['slow']):+.4f} |" in markdown
    assert runs["fast"][-1] < runs["slow"][-1]  # the faster rate relearns more: the row's best comes from its run
    with pytest.raises(SystemExit, match=r"no report\.json"):
        module.load_curve("x", str(tmp_path / "missing"))
