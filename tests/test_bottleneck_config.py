"""The bottleneck configs: one class per kind behind the registry, reading and writing the flat
`bottleneck_config.json` layout that earlier versions wrote (every kind's fields in every file)."""

from __future__ import annotations

import hashlib
import json

import pytest
from helpers import make_model, tiny_config
from test_sae import sae_config

from codeunlearn.bottleneck import KINDS
from codeunlearn.bottleneck.config import CONFIG_NAME, BottleneckConfig, CodebookConfig, SAEConfig
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.bottleneck.registry import get_kind
from codeunlearn.errors import CodeunlearnError

# bottleneck_config.json as the flat BottleneckConfig of codeunlearn 0.1.0 (before the per-kind classes) wrote it,
# key order included.
FLAT_VQ = {
    "layers": [15], "kind": "vq", "site": "residual", "num_heads": 8, "codebook_size": 4096, "num_stages": 8,
    "passthrough_first_position": True, "massive_norm_factor": 20.0, "ema_decay": 0.99, "kmeans_iters": 2,
    "dead_code_threshold": 0.02, "adapter_rank": 0, "seed": 0, "sae_architecture": "topk", "sae_width": 0,
    "sae_expansion_factor": 8, "sae_k": 32, "sae_l1_coefficient": 5.0, "sae_error_term": True, "hidden_size": 576,
    "num_hidden_layers": 30, "model_type": "llama", "base_model": "smollm2-135m", "extra": {},
}  # fmt: skip
FLAT_SAE = {
    "layers": [1], "kind": "sae", "site": "residual", "num_heads": 8, "codebook_size": 4096, "num_stages": 8,
    "passthrough_first_position": True, "massive_norm_factor": 20.0, "ema_decay": 0.99, "kmeans_iters": 2,
    "dead_code_threshold": 0.02, "adapter_rank": 0, "seed": 0, "sae_architecture": "topk", "sae_width": 48,
    "sae_expansion_factor": 8, "sae_k": 4, "sae_l1_coefficient": 5.0, "sae_error_term": True, "hidden_size": 32,
    "num_hidden_layers": 3, "model_type": "llama", "base_model": "", "extra": {},
}  # fmt: skip


@pytest.mark.parametrize(("flat", "cls"), [(FLAT_VQ, CodebookConfig), (FLAT_SAE, SAEConfig)], ids=["vq", "sae"])
def test_flat_files_of_earlier_versions_load_and_write_back_unchanged(tmp_path, flat, cls):
    (tmp_path / CONFIG_NAME).write_text(json.dumps(flat, indent=2, sort_keys=True) + "\n")
    config = BottleneckConfig.from_json_file(tmp_path / CONFIG_NAME)
    assert type(config) is cls and config.kind == flat["kind"] and config.layers == flat["layers"]
    assert list(config.to_dict().items()) == list(flat.items())  # the same keys, values and order
    assert config.to_json_string() == (tmp_path / CONFIG_NAME).read_text()


def test_a_file_without_kind_is_a_codebook_and_the_other_kinds_fields_are_kept():
    flat = {**FLAT_VQ, "sae_k": 64}  # e.g. `train --kind vq --sae_k 64`: meaningless, but part of the file
    del flat["kind"]
    config = BottleneckConfig.from_dict(flat)
    assert isinstance(config, CodebookConfig) and not hasattr(config, "sae_k")
    assert config.to_dict() == {**flat, "kind": "vq"}
    assert SAEConfig(layers=[1]).to_dict()["num_heads"] == CodebookConfig(layers=[1]).num_heads


def test_from_dict_picks_the_kind_and_refuses_a_mismatch():
    assert [get_kind(kind)[1].kind for kind in KINDS] == list(KINDS) == ["vq", "sae"]
    assert isinstance(SAEConfig.from_dict(FLAT_SAE), SAEConfig)
    with pytest.raises(CodeunlearnError, match="of kind 'sae'"):
        CodebookConfig.from_dict(FLAT_SAE)
    with pytest.raises(CodeunlearnError, match="unknown bottleneck kind"):
        BottleneckConfig.from_dict({**FLAT_VQ, "kind": "transcoder"})


def test_fingerprints_hash_what_they_always_hashed():
    """An edit names its bottleneck by fingerprint: the definition may not drift (saved edits would stop loading)."""
    vq = BottleneckedModel.attach(make_model("llama"), tiny_config())
    digest = hashlib.sha256(vq.config.to_json_string().encode())
    for layer in vq.layers:
        for stage in range(vq.config.num_stages):
            digest.update(vq.bottleneck(layer).keys(stage).detach().cpu().float().numpy().tobytes())
    assert vq.fingerprint() == digest.hexdigest()[:16]

    sae = BottleneckedModel.attach(make_model("llama"), sae_config())
    digest = hashlib.sha256(repr(sae.layers).encode())
    for layer in sae.layers:
        digest.update(sae.bottleneck(layer).sae.W_enc.detach().cpu().float().numpy().tobytes())
    assert sae.fingerprint() == digest.hexdigest()[:16]
