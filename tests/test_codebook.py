"""`CodebookBottleneck` with hand-set keys and values: nearest-code search, removal masks, passthrough tokens."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_fix_error
from torch import nn

from codeunlearn.errors import CodeunlearnError
from codeunlearn.kinds.codebook.bottleneck import CodebookBottleneck, random_rotation
from codeunlearn.kinds.codebook.config import CodebookConfig
from codeunlearn.kinds.codebook.kmeans import SEARCH_CHUNK

# Two heads of dimension 2, three codes each. Head 0 keys sit on the +axes, head 1 keys on the -axes.
KEYS = torch.tensor(
    [
        [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]],
        [[0.0, 0.0], [-10.0, 0.0], [0.0, -10.0]],
    ]
)
# Values differ from keys, so the output shows which value was looked up.
VALUES = torch.tensor(
    [
        [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
        [[-1.0, -2.0], [-3.0, -4.0], [-5.0, -6.0]],
    ]
)


def hand_set(num_stages: int = 1, **overrides) -> CodebookBottleneck:
    """A bottleneck in identity geometry (mean 0, rotation I) with the keys/values above at every stage."""
    config = CodebookConfig(layers=[0], hidden_size=4, num_heads=2, codebook_size=3, num_stages=num_stages, **overrides)
    bottleneck = CodebookBottleneck(config)
    with torch.no_grad():
        bottleneck.mean.zero_()
        bottleneck.rotation.copy_(torch.eye(4))
        bottleneck.typical_norm.fill_(10.0)
        bottleneck.initialized.fill_(True)
        for stage in range(num_stages):
            bottleneck.quantizers[stage]._codebook.embed.copy_(KEYS / (10**stage))
            bottleneck.quantizers[stage]._codebook.initted.fill_(True)
            bottleneck.values[stage].copy_(VALUES / (10**stage))
    return bottleneck


def states(*pieces: tuple[float, float, float, float]) -> torch.Tensor:
    """One sequence (1, T, 4); position 0 is a dummy attention-sink token."""
    return torch.tensor([[[0.5, 0.5, 0.5, 0.5], *pieces]])


def test_no_input_projection_and_codebook_dim_is_head_dim():
    config = CodebookConfig(layers=[0], hidden_size=32, num_heads=4, codebook_size=16, num_stages=2)
    bottleneck = CodebookBottleneck(config)
    assert len(bottleneck.quantizers) == 2
    for stage, quantizer in enumerate(bottleneck.quantizers):
        assert isinstance(quantizer.project_in, nn.Identity)
        assert isinstance(quantizer.project_out, nn.Identity)
        assert sum(p.numel() for p in quantizer.parameters()) == 0  # nothing trainable hides in the quantizer
        assert tuple(bottleneck.keys(stage).shape) == (4, 16, 8)
        assert tuple(bottleneck.values[stage].shape) == (4, 16, 8)
    trainable = {name for name, p in bottleneck.named_parameters()}
    assert trainable == {"values.0", "values.1"}


def test_nearest_code_is_picked_and_its_value_returned():
    bottleneck = hand_set()
    x = states((9.0, 1.0, 1.0, -8.0), (1.0, 1.0, -7.0, 2.0), (2.0, 9.0, 0.0, 0.0))
    result = bottleneck.quantize(x)
    assert result.codes.shape == (1, 4, 1, 2)
    assert result.codes[0, 1:, 0].tolist() == [[1, 2], [0, 1], [2, 0]]
    expected = torch.tensor([[3.0, 4.0, -5.0, -6.0], [1.0, 2.0, -3.0, -4.0], [5.0, 6.0, -1.0, -2.0]])
    assert torch.equal(result.output[0, 1:], expected)
    assert result.passthrough.tolist() == [[True, False, False, False]]


def test_exclude_picks_next_nearest_code():
    bottleneck = hand_set()
    x = states((9.0, 1.0, 1.0, -8.0))
    excluded = torch.zeros(1, 2, 3, dtype=torch.bool)
    excluded[0, 0, 1] = True  # head 0, code 1: (9, 1) is next nearest to code 0 (distance^2 82 vs 162)
    bottleneck.set_removed(excluded, torch.zeros_like(excluded))
    result = bottleneck.quantize(x)
    assert result.codes[0, 1, 0].tolist() == [0, 2]
    assert torch.equal(result.output[0, 1], torch.tensor([1.0, 2.0, -5.0, -6.0]))
    bottleneck.set_removed(torch.zeros_like(excluded), torch.zeros_like(excluded))
    assert bottleneck.quantize(x).codes[0, 1, 0].tolist() == [1, 2]


def test_substitute_replaces_only_that_heads_piece():
    bottleneck = hand_set()
    with torch.no_grad():
        bottleneck.substitute[0, 0] = torch.tensor([7.0, -7.0])
    x = states((9.0, 1.0, 1.0, -8.0), (1.0, 9.0, 1.0, -8.0))
    substituted = torch.zeros(1, 2, 3, dtype=torch.bool)
    substituted[0, 0, 1] = True
    bottleneck.set_removed(torch.zeros_like(substituted), substituted)
    result = bottleneck.quantize(x)
    assert result.codes[0, 1:, 0].tolist() == [[1, 2], [2, 2]]  # the search itself is unchanged
    assert torch.equal(result.output[0, 1], torch.tensor([7.0, -7.0, -5.0, -6.0]))
    assert torch.equal(result.output[0, 2], torch.tensor([5.0, 6.0, -5.0, -6.0]))  # code 2 is not removed


def test_substitute_at_first_stage_drops_later_stages_of_that_head():
    bottleneck = hand_set(num_stages=2)
    x = states((9.0, 1.0, 1.0, -8.0))
    # Stage 0 picks (1, 2); residuals (-1, 1) and (1, 2) pick stage-1 codes 2 (0, 1) and 0 (0, 0).
    plain = bottleneck.quantize(x)
    assert plain.codes[0, 1].tolist() == [[1, 2], [2, 0]]
    assert torch.allclose(plain.output[0, 1], torch.tensor([3.5, 4.6, -5.1, -6.2]))

    substituted = torch.zeros(2, 2, 3, dtype=torch.bool)
    substituted[0, 0, 1] = True
    bottleneck.set_removed(torch.zeros_like(substituted), substituted)
    removed = bottleneck.quantize(x)
    assert removed.codes[0, 1].tolist() == [[1, 2], [2, 0]]
    # Head 0: substitute (zero) and nothing from stage 1; head 1 keeps both stages.
    assert torch.allclose(removed.output[0, 1], torch.tensor([0.0, 0.0, -5.1, -6.2]))

    excluded = torch.zeros(2, 2, 3, dtype=torch.bool)
    excluded[1, 0, 2] = True  # stage 1, head 0, code 2: residual (-1, 1) goes to code 0 (0, 0) instead
    bottleneck.set_removed(excluded, torch.zeros_like(excluded))
    result = bottleneck.quantize(x)
    assert result.codes[0, 1].tolist() == [[1, 2], [0, 0]]
    assert torch.allclose(result.output[0, 1], torch.tensor([3.1, 4.2, -5.1, -6.2]))


def test_first_position_and_massive_tokens_pass_through():
    bottleneck = hand_set()
    massive = (300.0, 0.0, 0.0, 0.0)  # norm 300 > massive_norm_factor (20) x typical norm (10)
    x = states((9.0, 1.0, 1.0, -8.0), massive, (1.0, 1.0, 1.0, 1.0))
    result = bottleneck.quantize(x)
    assert result.passthrough.tolist() == [[True, False, True, False]]
    assert (result.codes[0, 0] == -1).all() and (result.codes[0, 2] == -1).all()
    assert (result.codes[0, 1] >= 0).all() and (result.codes[0, 3] >= 0).all()
    assert torch.equal(result.output[0, 0], x[0, 0])
    assert torch.equal(result.output[0, 2], x[0, 2])

    # With explicit positions (incremental decoding), only position 0 is a sink, wherever it sits.
    result = bottleneck.quantize(x, positions=torch.tensor([[5, 0, 7, 8]]))
    assert result.passthrough.tolist() == [[False, True, True, False]]
    assert torch.equal(result.output[0, 1], x[0, 1])

    lenient = hand_set(massive_norm_factor=0.0, passthrough_first_position=False)
    assert not lenient.quantize(x).passthrough.any()


def test_search_matches_brute_force_across_chunks():
    config = CodebookConfig(layers=[0], hidden_size=16, num_heads=4, codebook_size=8, seed=3)
    bottleneck = CodebookBottleneck(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        bottleneck.mean.copy_(torch.randn(16, generator=generator))
        bottleneck.quantizers[0]._codebook.embed.copy_(torch.randn(4, 8, 4, generator=generator))
        bottleneck.initialized.fill_(True)
        bottleneck.typical_norm.fill_(1e6)  # nothing is massive
    x = torch.randn(SEARCH_CHUNK + 300, 16, generator=generator)
    codes = bottleneck.quantize(x, positions=torch.arange(1, len(x) + 1)).codes[:, 0]
    z = ((x - bottleneck.mean) @ bottleneck.rotation).view(-1, 4, 4)
    keys = bottleneck.keys(0)
    brute = torch.stack([torch.cdist(z[:, h], keys[h]).argmin(-1) for h in range(4)], dim=-1)
    assert torch.equal(codes, brute)


def test_bf16_input_keeps_dtype_and_codes():
    bottleneck = hand_set()
    x = states((9.0, 1.0, 1.0, -8.0))
    result = bottleneck.quantize(x.bfloat16())
    assert result.output.dtype == torch.bfloat16
    assert result.codes[0, 1, 0].tolist() == [1, 2]


def test_random_rotation_is_orthogonal_and_seeded():
    r = random_rotation(16, seed=5)
    assert torch.allclose(r @ r.T, torch.eye(16), atol=1e-5)
    assert torch.equal(r, random_rotation(16, seed=5))
    assert not torch.allclose(r, random_rotation(16, seed=6))


def test_fit_keys_initialises_statistics_and_copies_values():
    config = CodebookConfig(layers=[0], hidden_size=8, num_heads=2, codebook_size=4, kmeans_iters=5)
    bottleneck = CodebookBottleneck(config)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 10, 8, generator=generator) + 3.0
    x[:, 0] *= 50.0  # attention-sink-like first position: excluded from norm and mean
    bottleneck.fit_keys(x)
    assert bool(bottleneck.initialized)
    assert torch.allclose(bottleneck.typical_norm, x[:, 1:].norm(dim=-1).median())
    assert torch.allclose(bottleneck.mean, x[:, 1:].reshape(-1, 8).mean(0), atol=1e-5)
    assert torch.equal(bottleneck.values[0].data, bottleneck.keys(0))
    assert not torch.equal(bottleneck.keys(0), torch.zeros_like(bottleneck.keys(0)))
    result = bottleneck.quantize(x)
    assert (result.codes[:, 1:] >= 0).all() and (result.codes[:, 1:] < 4).all()


def test_untrained_and_bad_masks_are_refused():
    config = CodebookConfig(layers=[0], hidden_size=4, num_heads=2, codebook_size=3)
    with pytest.raises(CodeunlearnError) as excinfo:
        CodebookBottleneck(config).quantize(torch.zeros(1, 2, 4))
    assert_fix_error(excinfo)

    bottleneck = hand_set()
    everything = torch.zeros(1, 2, 3, dtype=torch.bool)
    everything[0, 1] = True
    with pytest.raises(CodeunlearnError) as excinfo:
        bottleneck.set_removed(everything, torch.zeros_like(everything))
    assert_fix_error(excinfo)
    with pytest.raises(CodeunlearnError) as excinfo:
        bottleneck.set_removed(torch.zeros(2, 2, 3, dtype=torch.bool), torch.zeros(2, 2, 3, dtype=torch.bool))
    assert_fix_error(excinfo)

    with pytest.raises(CodeunlearnError) as excinfo:
        CodebookBottleneck(CodebookConfig(layers=[0], num_heads=2, codebook_size=3))  # no hidden_size
    assert_fix_error(excinfo)
