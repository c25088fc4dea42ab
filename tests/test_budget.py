"""The N rule (`codeunlearn.unlearn.budget`): the largest grid N whose edit stays within a retain-loss budget."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_fix_error, make_model, make_tokens, tiny_config

from codeunlearn.bottleneck.edit import Edit, LayerCodes
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.unlearn.budget import choose_num_codes, describe_walk, walk


def test_walk_stops_after_the_first_n_over_budget():
    measured: list[int] = []

    def cost(n: int) -> float:
        measured.append(n)
        return {4: 0.01, 8: 0.02, 16: 0.06, 32: 0.03}[n]  # not monotone: 32 is never reached

    steps = walk([4, 8, 16, 32], cost, 0.05)
    assert measured == [4, 8, 16]
    assert [(s.num_codes, s.retain_cost) for s in steps] == [(4, 0.01), (8, 0.02), (16, 0.06)]
    assert describe_walk(steps, 0.05).endswith("4: +0.0100, 8*: +0.0200, 16: +0.0600")
    assert [s.num_codes for s in walk([4, 8, 16, 32], lambda n: n / 1000, 1.0)] == [4, 8, 16, 32]  # all within


def test_walk_refuses_a_budget_the_smallest_edit_exceeds():
    with pytest.raises(CodeunlearnError) as excinfo:
        walk([4, 8], lambda n: 0.2, 0.05)
    assert_fix_error(excinfo)
    with pytest.raises(CodeunlearnError):
        walk([4, 8], lambda n: 0.0, 0.0)


def test_choose_num_codes_returns_the_ranked_prefix_and_leaves_no_edit():
    bmodel = BottleneckedModel.attach(make_model("llama"), tiny_config(layers=[1]))
    train = make_tokens(24, 12, seed=1)
    bmodel.bottleneck(1).initialize(torch.cat([bmodel.states_at(1, train[i : i + 6]) for i in range(0, 24, 6)]))
    codes = torch.randperm(bmodel.config.codes_per_layer, generator=torch.Generator().manual_seed(0))[:40].tolist()
    edit = Edit(topic="t", layers={1: LayerCodes(codes, [float(40 - i) for i in range(40)])}, intervention="substitute")
    chosen, steps = choose_num_codes(bmodel, edit, make_tokens(4, 12, seed=2), float("inf"), grid=(8, 16, 32))
    assert [s.num_codes for s in steps] == [8, 16, 32, 40]  # the grid, cut at the edit's own size
    assert chosen.layers[1].codes == codes  # nothing over an infinite budget: the whole ranked edit
    assert bmodel.edits == []
