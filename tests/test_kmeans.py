"""Chunked nearest-key search and k-means (`codeunlearn.kinds.codebook.kmeans`) against brute force and known clusters."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_fix_error, make_model, tiny_config

from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.kinds.codebook.bottleneck import CodebookBottleneck
from codeunlearn.kinds.codebook.config import CodebookConfig
from codeunlearn.kinds.codebook.kmeans import (
    SEARCH_CHUNK,
    fit_residual_codebooks,
    kmeans,
    lookup,
    nearest,
    squared_norms,
)


def test_nearest_matches_brute_force_across_chunks_and_skips_excluded():
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(3, SEARCH_CHUNK * 2 + 77, 5, generator=generator)
    keys = torch.randn(3, 40, 5, generator=generator)
    brute = torch.stack([torch.cdist(points[h], keys[h]).argmin(-1) for h in range(3)])
    assert torch.equal(nearest(points, keys), brute)

    excluded = torch.zeros(3, 40, dtype=torch.bool)
    excluded[0, brute[0, 0]] = True  # the first point's nearest key in head 0 leaves the search
    picked = nearest(points, keys, squared_norms(keys, excluded))
    assert picked[0, 0] != brute[0, 0]
    assert picked[0, 0] == torch.cdist(points[0, :1], keys[0]).squeeze(0).masked_fill(excluded[0], 1e9).argmin()
    assert torch.equal(picked[1:], brute[1:])  # the other heads are untouched


def test_kmeans_recovers_well_separated_clusters():
    """Four tight clusters per head far apart: every key lands on a cluster centre, each holding its quarter."""
    generator = torch.Generator().manual_seed(1)
    centres = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0], [0.0, -10.0]])
    labels = torch.arange(400) % 4
    points = torch.stack([centres[labels] + 0.01 * torch.randn(400, 2, generator=generator) for _ in range(2)])
    keys, counts, assign = kmeans(points, 4, iters=10, generator=torch.Generator().manual_seed(0))
    for head in range(2):
        found = sorted(tuple(round(v) for v in key.tolist()) for key in keys[head])
        assert found == sorted(tuple(round(v) for v in c.tolist()) for c in centres)
    assert counts.tolist() == [[100.0] * 4] * 2
    # points of one true cluster share one key
    assert all(len(assign[h][labels == c].unique()) == 1 for h in range(2) for c in range(4))


def test_kmeans_needs_a_point_per_code():
    with pytest.raises(ValueError, match="at least 8 points"):
        kmeans(torch.randn(1, 7, 2), 8, iters=1, generator=torch.Generator())


def test_residual_stages_shrink_the_residual_and_reconstruct_the_rest():
    points = torch.randn(2, 600, 4, generator=torch.Generator().manual_seed(3))
    keys, counts, residual = fit_residual_codebooks(points, num_stages=3, num_codes=8, iters=3, seed=0)
    assert len(keys) == 3 and all(c.sum() == 2 * 600 for c in counts)
    energies = []
    rest = points.clone()
    for stage_keys in keys:  # quantizing stage by stage with the fitted keys ends at the returned residual
        rest = rest - lookup(stage_keys, nearest(rest, stage_keys))
        energies.append(float(rest.pow(2).sum()))
    assert torch.allclose(rest, residual, atol=1e-5)
    assert energies[0] > energies[1] > energies[2]


def test_initialize_fits_keys_values_and_returns_the_training_fvu():
    config = CodebookConfig(layers=[0], hidden_size=16, num_heads=4, codebook_size=8, num_stages=2, seed=1)
    bottleneck = CodebookBottleneck(config)
    states = torch.randn(6, 50, 16, generator=torch.Generator().manual_seed(4))
    fvu = bottleneck.initialize(states)
    assert bool(bottleneck.initialized) and 0.0 < fvu < 1.0
    for stage in range(2):
        assert torch.equal(bottleneck.values[stage].data, bottleneck.keys(stage))
    # the quantized output's error on the fitted (ordinary) tokens is the returned FVU
    with torch.no_grad():
        result = bottleneck.quantize(states)
    ordinary = ~result.passthrough
    err = (states - result.output)[ordinary].pow(2).sum()
    var = (states[ordinary] - states[ordinary].mean(0)).pow(2).sum()
    assert float(err / var) == pytest.approx(fvu, rel=1e-3)


def test_initialize_refuses_fewer_tokens_than_codes():
    config = CodebookConfig(layers=[0], hidden_size=16, num_heads=4, codebook_size=64)
    with pytest.raises(CodeunlearnError) as excinfo:
        CodebookBottleneck(config).initialize(torch.randn(2, 10, 16))
    assert_fix_error(excinfo)
    assert "cannot fit 64 codes" in str(excinfo.value)


def test_states_at_runs_shallower_bottlenecks_and_stops_before_its_own():
    model = make_model("llama")
    bmodel = BottleneckedModel.attach(model, tiny_config(layers=[0, 2]))
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(5))
    with bmodel.disabled():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    assert torch.allclose(bmodel.states_at(0, ids), hidden[1], atol=1e-6)  # layer 0's output, untrained is fine
    bmodel.bottleneck(0).initialize(bmodel.states_at(0, ids))
    deeper = bmodel.states_at(2, ids)
    assert not torch.allclose(deeper, hidden[3], atol=1e-4)  # layer 0's bottleneck now shapes what layer 2 reads
    with pytest.raises(CodeunlearnError) as excinfo:
        bmodel.states_at(1, ids)
    assert_fix_error(excinfo)
