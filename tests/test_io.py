"""Tensor-file integrity (checksum in the safetensors metadata) and the leftovers of interrupted saves."""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import assert_fix_error, data_offset, make_model, tiny_config
from safetensors import safe_open
from safetensors.torch import save_file

from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.io import (
    CHECKSUM_KEY,
    atomic_directory,
    atomic_save_tensors,
    atomic_write_text,
    load_tensors,
    remove_leftovers,
)


def tensors() -> dict[str, torch.Tensor]:
    return {
        "b.weight": torch.randn(16, 8),
        "a.half": torch.randn(5, dtype=torch.bfloat16),
        "flag": torch.tensor(True),
        "index": torch.arange(7),
    }


def test_saved_file_carries_a_checksum_and_loads(tmp_path):
    path = tmp_path / "w.safetensors"
    saved = tensors()
    atomic_save_tensors(saved, path, {"codeunlearn": "x"})
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["codeunlearn"] == "x" and len(metadata[CHECKSUM_KEY]) == 64
    loaded = load_tensors(path)
    assert set(loaded) == set(saved) and all(torch.equal(loaded[k], saved[k]) for k in saved)


@pytest.mark.parametrize("where", [0, -1], ids=["first-byte", "last-byte"])
def test_flipped_data_bytes_are_one_clear_error(tmp_path, where):
    path = tmp_path / "w.safetensors"
    atomic_save_tensors(tensors(), path)
    data = bytearray(path.read_bytes())
    start = data_offset(path)
    position = start if where == 0 else len(data) - 1
    data[position] ^= 0xFF  # the header stays intact: safetensors alone would load this
    path.write_bytes(bytes(data))
    with pytest.raises(CodeunlearnError) as excinfo:
        load_tensors(path, "bottleneck weights")
    assert_fix_error(excinfo)
    message = str(excinfo.value)
    assert str(path) in message and "does not match its checksum" in message and "corrupted" in message
    assert "backup" in message


def test_a_file_without_checksum_still_loads(tmp_path):
    path = tmp_path / "old.safetensors"
    save_file(tensors(), str(path), metadata={"format": "pt"})  # an older codeunlearn, sae-lens, ...
    assert set(load_tensors(path)) == set(tensors())
    save_file(tensors(), str(tmp_path / "bare.safetensors"))
    assert set(load_tensors(tmp_path / "bare.safetensors")) == set(tensors())


def test_bottleneck_weights_are_checked_on_load(tmp_path):
    bmodel = BottleneckedModel.attach(make_model("llama", num_layers=4), tiny_config())
    bmodel.save_pretrained(tmp_path / "b")
    weights = next((tmp_path / "b").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[data_offset(weights) + 3] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CodeunlearnError, match="does not match its checksum"):
        BottleneckedModel.from_pretrained(make_model("llama", num_layers=4), tmp_path / "b")


# ------------------------------------------------------------------------------------------------ leftovers
def test_a_save_removes_stale_temporaries_of_its_target(tmp_path):
    target = tmp_path / "w.safetensors"
    stale_file = tmp_path / ".w.safetensors.ab3_x9qz"  # what a killed atomic_save_tensors leaves
    stale_file.write_bytes(b"half a file")
    other = tmp_path / ".w.safetensors.note"  # not a temporary name: kept
    other.write_text("keep")
    unrelated = tmp_path / ".x.safetensors.ab3_x9qz"  # another target's temporary: kept
    unrelated.write_text("keep")
    atomic_save_tensors(tensors(), target)
    assert not stale_file.exists() and other.exists() and unrelated.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, other.name, unrelated.name])

    stale_text = tmp_path / ".edit.json.k2mmq0_a"
    stale_text.write_text("{")
    atomic_write_text(tmp_path / "edit.json", json.dumps({}))
    assert not stale_text.exists()


def test_a_directory_save_removes_stale_temporary_directories(tmp_path):
    for prefix in ("tmp", "old"):
        stale = tmp_path / f".out.{prefix}.q1w2e3r4"
        (stale / "dir").mkdir(parents=True)
        (stale / "dir" / "weights.safetensors").write_bytes(b"x" * 10)
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "a.txt").read_text() == "a"


def test_bottleneck_save_pretrained_removes_stale_temporaries(tmp_path):
    stale = tmp_path / ".bottleneck.tmp.zz99yy88"
    stale.mkdir()
    (stale / "weights.safetensors").write_bytes(b"partial")
    bmodel = BottleneckedModel.attach(make_model("llama", num_layers=4), tiny_config())
    bmodel.save_pretrained(tmp_path / "bottleneck")
    assert [p.name for p in tmp_path.iterdir()] == ["bottleneck"]


def test_remove_leftovers_without_a_parent_is_harmless(tmp_path):
    assert remove_leftovers(tmp_path / "missing" / "w.safetensors") == []


def test_tensor_saves_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_mode), real(fd))[1])
    atomic_save_tensors(tensors(), tmp_path / "w.safetensors")
    kinds = {"dir" if (mode & 0o170000) == 0o040000 else "file" for mode in synced}
    assert kinds == {"file", "dir"}


def test_model_directories_written_by_transformers_are_stamped_and_checked(tmp_path):
    """A `save_pretrained` directory gets our checksum afterwards (other metadata kept); the package's model loader
    checks it, so one flipped byte of the weights is a one-line error, not a quietly different model."""
    from helpers import flip_tensor_byte

    from codeunlearn.io import stamp_checksums, verify_checksums
    from codeunlearn.modeling import load_model

    model = make_model("llama")
    plain, stamped = tmp_path / "plain", tmp_path / "stamped"
    model.save_pretrained(plain)
    model.save_pretrained(stamped)
    assert stamp_checksums(stamped) == [stamped / "model.safetensors"]
    assert stamp_checksums(stamped) == []  # already stamped: not rewritten
    with safe_open(str(stamped / "model.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "pt" and CHECKSUM_KEY in metadata
    loaded = load_model(str(stamped))
    reference = model.state_dict()
    assert all(torch.equal(t, reference[name]) for name, t in loaded.state_dict().items())
    flip_tensor_byte(stamped / "model.safetensors")
    flip_tensor_byte(plain / "model.safetensors")
    with pytest.raises(CodeunlearnError) as excinfo:
        load_model(str(stamped))
    assert_fix_error(excinfo)
    assert "does not match its checksum" in str(excinfo.value)
    verify_checksums(plain)  # no checksum recorded: nothing to check, as for any other writer's files
    load_model(str(plain))


def test_exports_carry_the_checksum_in_every_weight_file(tmp_path):
    from export_helpers import make_tokenizer, trained_bmodel

    from codeunlearn.export.save import save_pretrained

    bmodel = trained_bmodel("llama", tmp_path / "run")
    save_pretrained(bmodel, tmp_path / "export", make_tokenizer())
    for path in sorted((tmp_path / "export").rglob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            assert CHECKSUM_KEY in handle.metadata(), path
