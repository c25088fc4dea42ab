"""The relearning attack as an evaluation-suite row: how fast does the forget loss come back under fine-tuning?

A thin wrapper of `codeunlearn.evaluate.attacks.relearn.relearn`: a deep copy of `ctx.model` (the model in the context is
never modified; `relearn` copies unless told `in_place`) is fine-tuned, all weights (`mode="full"`) or fresh LoRA
adapters (`mode="lora"`; a bottleneck and its edit masks are never trained), on at most `train_tokens` tokens of the
forget corpus's TRAIN documents (by default exactly the text the steps consume, each chunk seen once), and the mean
next-token loss on at most `eval_tokens` tokens of its HELD-OUT documents is measured at each step count of `steps`
(0 = before any step, always measured). `relearn` refuses relearning text that shares a chunk with the evaluation
text.

Scores `forget_loss_step_{n}` for each step count, `recovery`, the forget-loss drop from step 0 to the last step
(positive: knowledge coming back), and `max_recovery`, the largest drop at any measured step (an attacker stops at
the best point; fine-tuning can overshoot). With `facts_path` (known_1000-schema facts, e.g. a fact topic's held-out
probes), the fine-tuned copy is also scored with `fact_cloze` at each step count: `facts_top1_step_{n}` and
`facts_recovery`, the top-1 accuracy gained from step 0 to the last step; a fact topic's forgetting is read there,
not in a loss over whole sentences. An edit that truly removed the topic should recover no faster than the base
model's loss is reached by fine-tuning a model that never knew it; read the row against the base model's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from codeunlearn.data import load_documents, pack_documents, split_documents
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.attacks.relearn import RelearnConfig, relearn
from codeunlearn.evaluate.metrics.base import EvalContext, MetricResult
from codeunlearn.evaluate.metrics.cloze import fact_cloze


def relearning_attack(
    ctx: EvalContext,
    *,
    forget_corpus: str,
    steps: Sequence[int] = (0, 10, 25, 50),
    mode: Literal["full", "lora"] = "lora",
    learning_rate: float | None = None,
    batch_size: int = 4,
    train_tokens: int | None = None,
    eval_tokens: int = 8192,
    seq_len: int = 256,
    heldout_fraction: float = 0.2,
    split_seed: int = 0,
    text_field: str = "text",
    facts_path: str | None = None,
    fact_relations: Sequence[str] | None = None,
    name: str = "relearning",
    group: str = "attack",
) -> MetricResult:
    """Held-out forget loss of a copy of `ctx.model` after each step count of `steps` of fine-tuning on forget train
    text. `learning_rate` None takes `RelearnConfig`'s default for the mode (7e-5 full, 7e-4 LoRA); `train_tokens`
    None takes the last step count x `batch_size` x `seq_len`, one pass with no chunk repeated. Scores
    `forget_loss_step_{n}`, `recovery` and `max_recovery`; with `facts_path` (filtered to `fact_relations`), also
    `facts_top1_step_{n}` and `facts_recovery`."""
    counts = sorted(set(steps) | {0})
    if counts[0] < 0 or counts[-1] < 1:
        raise CodeunlearnError(f"{name}: steps={list(steps)}", "pass non-negative step counts, at least one above 0")
    if train_tokens is None:
        # A slice smaller than the steps consume is cycled, and fine-tuning that memorises it raises the held-out
        # loss again (50 LoRA steps cycling 8k tokens overshot even on the base model): fresh text at every step.
        train_tokens = counts[-1] * batch_size * seq_len
    if train_tokens < seq_len or eval_tokens < seq_len:
        raise CodeunlearnError(
            f"{name}: train_tokens={train_tokens} / eval_tokens={eval_tokens} below one chunk of seq_len={seq_len}",
            "raise train_tokens and eval_tokens, or lower seq_len",
        )
    split = split_documents(
        Path(forget_corpus).stem, load_documents(forget_corpus, text_field=text_field), heldout_fraction, split_seed
    )
    if not split.heldout:
        raise CodeunlearnError(f"corpus {forget_corpus} has no held-out documents", "use a heldout_fraction above 0")
    relearn_chunks = pack_documents(split.train, ctx.tokenizer, seq_len, max_tokens=train_tokens)
    eval_chunks = pack_documents(split.heldout, ctx.tokenizer, seq_len, max_tokens=eval_tokens)
    rates = {} if learning_rate is None else {"learning_rate": learning_rate, "lora_learning_rate": learning_rate}
    config = RelearnConfig(
        steps=counts[-1],
        eval_steps=counts,
        mode=mode,
        batch_size=batch_size,
        seed=ctx.seed,
        bf16=ctx.bf16,
        eval_batch_size=ctx.batch_size,
        progress=ctx.progress,
        **rates,
    )
    probe = None
    if facts_path is not None:

        def probe(model) -> dict[str, float]:
            quiet = dataclasses.replace(ctx, model=model, progress=False)
            return {"top1": fact_cloze(quiet, path=facts_path, relations=fact_relations).scores["top1"]}

    curve = relearn(ctx.model, relearn_chunks, eval_chunks, config, in_place=False, probe=probe)
    scores = {f"forget_loss_step_{step}": loss for step, loss in zip(curve.steps, curve.forget_loss, strict=True)}
    scores["recovery"] = curve.recovery[-1]
    # Fine-tuning can overshoot and raise the loss again by the last step; the best point is what an attacker keeps.
    scores["max_recovery"] = max(curve.recovery)
    if curve.probe_scores is not None:
        top1 = [probed["top1"] for probed in curve.probe_scores]
        scores.update({f"facts_top1_step_{step}": acc for step, acc in zip(curve.steps, top1, strict=True)})
        scores["facts_recovery"] = top1[-1] - top1[0]
    return MetricResult(name=name, scores=scores, n=len(eval_chunks), details=[curve.to_dict()], group=group)
