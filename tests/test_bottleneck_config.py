"""The bottleneck configs: one class per kind behind the registry, reading and writing the flat
`bottleneck_config.json` layout that earlier versions wrote (every kind's fields in every file)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
from helpers import make_model, tiny_config
from test_sae import sae_config

from codeunlearn.bottleneck import registry
from codeunlearn.bottleneck.base import Bottleneck
from codeunlearn.bottleneck.config import CONFIG_NAME, BottleneckConfig
from codeunlearn.bottleneck.edit import Edit
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.bottleneck.registry import get_kind, register_kind, trainer_for
from codeunlearn.errors import CodeunlearnError
from codeunlearn.kinds import KINDS
from codeunlearn.kinds.codebook.config import CodebookConfig
from codeunlearn.kinds.sae.config import SAEConfig
from codeunlearn.train.base import Trainer

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


def test_one_registry_holds_each_kinds_module_config_and_trainer():
    for kind in KINDS:
        entry = get_kind(kind)
        assert entry.config_class.kind == kind and issubclass(entry.module_class, Bottleneck)
        assert isinstance(entry.trainer, Trainer) and trainer_for(kind) is entry.trainer


def test_a_kind_added_later_is_one_register_kind_line_and_leaves_the_flat_files_alone(monkeypatch):
    """A third kind (a transcoder, say) is found by its string everywhere; its fields stay out of the other kinds'
    files (a codebook's fingerprint hashes its file), and a kind without a trainer is refused by name."""

    @dataclass
    class TranscoderConfig(BottleneckConfig):
        kind: ClassVar[str] = "transcoder"
        unit_name: ClassVar[str] = "latents"
        interventions: ClassVar[tuple[str, ...]] = ("zero",)
        default_intervention: ClassVar[str] = "zero"

        transcoder_width: int = 16

    monkeypatch.setattr(registry, "BOTTLENECK_REGISTRY", dict(registry.BOTTLENECK_REGISTRY))
    register_kind(Bottleneck, TranscoderConfig)
    config = BottleneckConfig.from_dict({"layers": [1], "kind": "transcoder", "transcoder_width": 8})
    assert type(config) is TranscoderConfig and config.transcoder_width == 8
    assert config.to_dict()["num_heads"] == 8 and config.to_dict()["sae_k"] == 32  # the flat layout's fields
    assert BottleneckConfig.from_dict(FLAT_VQ).to_dict() == FLAT_VQ  # no `transcoder_width` in a codebook's file
    assert Edit(topic="t", layers={}, kind="transcoder", intervention="zero").kind == "transcoder"
    with pytest.raises(CodeunlearnError, match="no trainer for bottleneck kind 'transcoder'"):
        trainer_for("transcoder")


def test_splice_modes_are_asked_of_the_kind():
    vq = BottleneckedModel.attach(make_model("llama"), tiny_config())
    with pytest.raises(CodeunlearnError, match="splice modes are not for 'vq' bottlenecks"), vq.splice("zero_ablation"):
        pass
