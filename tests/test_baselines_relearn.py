"""The relearning attack: recovery after gradient ascent, and a bottleneck that stays as edited while attacked."""

from __future__ import annotations

import pytest
import torch
from helpers import VOCAB, assert_fix_error, make_model, make_tokens, tiny_args, tiny_config
from peft.tuners.tuners_utils import BaseTunerLayer

from codeunlearn.baselines import BaselineTrainingArguments, RelearnConfig, make_method, relearn, train_baseline
from codeunlearn.bottleneck.edit import Edit, LayerCodes
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.evaluation import mean_loss
from codeunlearn.train import train_bottleneck


def markov_text(num_chunks: int, seq_len: int, seed: int) -> torch.Tensor:
    """A 'topic' language: each token is followed by one fixed successor 90% of the time (same rule for every
    seed, so relearning on some documents helps on held-out ones)."""
    successor = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(123))
    generator = torch.Generator().manual_seed(seed)
    rows = torch.empty(num_chunks, seq_len, dtype=torch.long)
    rows[:, 0] = torch.randint(0, VOCAB, (num_chunks,), generator=generator)
    for t in range(1, seq_len):
        noise = torch.randint(0, VOCAB, (num_chunks,), generator=generator)
        keep = torch.rand(num_chunks, generator=generator) < 0.9
        rows[:, t] = torch.where(keep, successor[rows[:, t - 1]], noise)
    return rows


FORGET_TRAIN = markov_text(24, 16, seed=1)
FORGET_HELDOUT = markov_text(8, 16, seed=2)
RETAIN = make_tokens(8, 16, seed=3)


def params(module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def test_relearning_recovers_what_gradient_ascent_removed(tmp_path):
    model = make_model("llama")
    method = make_method("ga", max_steps=6, batch_size=8, learning_rate=3e-3, warmup_ratio=0.0)
    args = BaselineTrainingArguments(str(tmp_path / "ga"), progress=False, save_model=False)
    start = mean_loss(model, FORGET_HELDOUT)
    train_baseline(model, method, FORGET_TRAIN, None, args)
    unlearned = mean_loss(model, FORGET_HELDOUT)
    assert unlearned > start + 0.1
    before = params(model)
    config = RelearnConfig(steps=10, eval_steps=[0, 5, 10], learning_rate=3e-3, batch_size=4, progress=False)
    curve = relearn(model, FORGET_TRAIN, FORGET_HELDOUT, config, retain_chunks=RETAIN)
    assert curve.steps == [0, 5, 10]
    assert curve.forget_loss[0] == pytest.approx(unlearned, rel=1e-6)  # step 0 is the unlearned model itself
    assert curve.forget_loss[-1] < unlearned - 0.1
    assert curve.recovery[-1] > 0.1 and len(curve.retain_loss) == 3
    assert curve.trainable_parameters == sum(p.numel() for p in model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # attacked a copy


def test_relearning_text_must_not_overlap_the_evaluation_text():
    config = RelearnConfig(steps=1, eval_steps=[0], progress=False)
    with pytest.raises(CodeunlearnError) as excinfo:
        relearn(make_model("llama"), FORGET_TRAIN, torch.cat([FORGET_HELDOUT, FORGET_TRAIN[:1]]), config)
    assert_fix_error(excinfo)
    with pytest.raises(CodeunlearnError) as excinfo:
        RelearnConfig(steps=5, eval_steps=[0, 6])
    assert_fix_error(excinfo)


@pytest.fixture(scope="module")
def edited_dir(tmp_path_factory):
    """A bottleneck with downstream LoRA adapters (peft's `default` adapter), trained a few steps, saved with an
    edit removing some codes."""
    root = tmp_path_factory.mktemp("relearn")
    bmodel = BottleneckedModel.attach(make_model("llama"), tiny_config(layers=[1], adapter_rank=2))
    train_bottleneck(
        bmodel, make_tokens(32, 12, seed=4), tiny_args(root / "run", value_steps=2, adapter_learning_rate=0.05)
    )
    bmodel.apply_edit(Edit("topic", {1: LayerCodes([0, 1, 2, 3])}, bottleneck_fingerprint=bmodel.fingerprint()))
    bmodel.save_pretrained(root / "edited")
    return root / "edited"


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_relearning_a_bottlenecked_model_leaves_the_bottleneck_as_edited(edited_dir, mode):
    bmodel = BottleneckedModel.from_pretrained(make_model("llama"), edited_dir)
    assert bmodel.edits and bmodel.adapter_parameters()
    bottleneck = {k: v.clone() for k, v in bmodel.bottleneck_state().items()}
    base = {
        n: p.detach().clone() for n, p in bmodel.model.named_parameters() if "lora_" not in n and "bottleneck" not in n
    }
    start = mean_loss(bmodel, FORGET_HELDOUT)
    config = RelearnConfig(steps=4, eval_steps=[0, 4], mode=mode, batch_size=4, progress=False)
    curve = relearn(bmodel, FORGET_TRAIN, FORGET_HELDOUT, config, in_place=True)
    # Step 0 equals the edited model (new LoRA adapters start at zero; the bottleneck's own adapters stay on).
    assert curve.forget_loss[0] == pytest.approx(start, rel=1e-6)
    assert curve.forget_loss[1] != curve.forget_loss[0]
    after = bmodel.bottleneck_state()
    assert all(torch.equal(after[k], v) for k, v in bottleneck.items())  # codebook, masks and adapters unchanged
    assert [e.topic for e in bmodel.edits] == ["topic"]
    moved = {n for n, p in bmodel.model.named_parameters() if n in base and not torch.equal(p, base[n])}
    if mode == "lora":
        assert moved == set()
        shared = [m for m in bmodel.model.modules() if isinstance(m, BaseTunerLayer) and "default" in m.lora_A]
        assert shared and all(m.active_adapters == ["default", "relearn"] for m in shared)
        assert set(after) - set(bottleneck) and all(".relearn." in k for k in set(after) - set(bottleneck))
    else:
        assert moved and set(after) == set(bottleneck)


def test_relearning_attacks_a_copy_unless_in_place(edited_dir):
    bmodel = BottleneckedModel.from_pretrained(make_model("llama"), edited_dir)
    state = {k: v.clone() for k, v in bmodel.state_dict().items()}
    config = RelearnConfig(steps=2, eval_steps=[2], mode="lora", batch_size=4, progress=False)
    curve = relearn(bmodel, FORGET_TRAIN, FORGET_HELDOUT, config)
    assert curve.steps == [2] and curve.trainable_parameters > 0
    after = bmodel.state_dict()
    assert set(after) == set(state) and all(torch.equal(after[k], v) for k, v in state.items())
