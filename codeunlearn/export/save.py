"""Export an edited `BottleneckedModel` as a transformers model directory that loads without codeunlearn.

The directory holds `config.json` (model_type `codeunlearn`, the base config nested whole, the bottleneck shape and
the edit list, for an SAE each layer's sae-lens architecture, `auto_map` pointing at the copied
`modeling_codeunlearn.py`), `model.safetensors` (the base weights under their stock names, the bottleneck tensors
-- codebooks with the edit masks, or SAE weights, whose edits the modeling file reads from the config's edit list --
and the LoRA adapters if any), the generation config, the tokenizer, a model card, and `codeunlearn_bottleneck/`
(the bottleneck and its edits in codeunlearn's own format, so the edit can still be undone or extended with
`BottleneckedModel.from_pretrained`; for an SAE one sae-lens directory per layer, which sae-lens itself loads).

SAE bottlenecks export for the sae-lens architectures the modeling file computes (`standard`, `topk`, `jumprelu`)
and inputs read raw (`normalize_activations` "none"); others are refused with a one-line error.

Before the directory is renamed into place it is loaded back and its logits are compared with the in-memory edited
model's (`verify=True`): an export that is not exactly the edited model is never written.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from codeunlearn import __version__
from codeunlearn.bottleneck.architectures import (
    DECODER_LAYER_PATHS,
    REMOTE_MODULE,
    decoder_layers,
    model_type_of,
    ships_this_code,
)
from codeunlearn.bottleneck.model import BottleneckedModel, BottleneckLayer
from codeunlearn.errors import CodeunlearnError
from codeunlearn.export.card import EVAL_REPORT_NAME, read_eval_report, write_model_card
from codeunlearn.export.remote_code import modeling_codeunlearn as remote_module
from codeunlearn.export.remote_code.modeling_codeunlearn import CodeunlearnConfig, CodeunlearnForCausalLM
from codeunlearn.io import atomic_directory, stamp_checksums
from codeunlearn.kinds.sae.bottleneck import LAYER_DIR, SAEBottleneck

BOTTLENECK_SUBDIR = "codeunlearn_bottleneck"
VERIFY_TOLERANCE = 1e-4  # relative to the largest logit; fp32 reloads agree to ~1e-6


@dataclass
class VerifyResult:
    """How closely the reloaded export reproduces the in-memory edited model on probe tokens."""

    max_abs_difference: float
    max_abs_logit: float
    tokens: int

    @property
    def relative_difference(self) -> float:
        return self.max_abs_difference / max(self.max_abs_logit, 1.0)


# ------------------------------------------------------------------------------------------------ building


def _unwrap(module: nn.Module) -> nn.Module:
    """The stock module behind codeunlearn's bottleneck wrapper or a peft LoRA layer."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(module, BottleneckLayer):
        module = module.layer
    if isinstance(module, BaseTunerLayer):
        module = module.get_base_layer()
    return module


def _source_tensor(root: nn.Module, dotted: str) -> Tensor:
    """The tensor at stock name `dotted` (e.g. `model.layers.2.mlp.down_proj.weight`) of a bottlenecked model."""
    *path, leaf = dotted.split(".")
    module = root
    for part in path:
        module = _unwrap(module)
        module = module[int(part)] if isinstance(module, (nn.ModuleList, nn.Sequential)) else getattr(module, part)
    return getattr(_unwrap(module), leaf)


def _adapter_targets(bmodel: BottleneckedModel) -> list[tuple[str, Tensor, Tensor, float]]:
    """(module path in the base model, lora_A, lora_B, scaling) of every LoRA adapter, in layer order."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    path = DECODER_LAYER_PATHS[model_type_of(bmodel.model)]
    targets = []
    for index, layer in enumerate(decoder_layers(bmodel.model)):
        inner = layer.layer if isinstance(layer, BottleneckLayer) else layer
        for name, module in inner.named_modules():
            if not isinstance(module, BaseTunerLayer):
                continue
            (adapter,) = module.active_adapters  # codeunlearn injects exactly one adapter ("default")
            targets.append(
                (
                    f"{path}.{index}.{name}",
                    module.lora_A[adapter].weight.detach(),
                    module.lora_B[adapter].weight.detach(),
                    float(module.scaling[adapter]),
                )
            )
    return targets


def sae_spec(bottleneck: SAEBottleneck) -> dict[str, Any]:
    """What the modeling file needs to know of one layer's SAE (stored, readable, in config.json `saes`); a one-line
    error for an SAE it cannot compute."""
    cfg = bottleneck.inference_sae().cfg
    architecture = cfg.architecture()
    if architecture not in remote_module.SAE_ARCHITECTURES:
        raise CodeunlearnError(
            f"exporting a {architecture!r} SAE (layer {bottleneck.layer}) is not supported",
            f"export an SAE of architecture {', '.join(remote_module.SAE_ARCHITECTURES)}, or evaluate this one in "
            "codeunlearn",
        )
    if cfg.normalize_activations != "none":
        raise CodeunlearnError(
            f"exporting an SAE that normalises its inputs at run time ({cfg.normalize_activations}) is not supported",
            "export an SAE that reads raw residual states (normalize_activations none)",
        )
    spec: dict[str, Any] = {
        "architecture": architecture,
        "d_in": int(cfg.d_in),
        "d_sae": int(cfg.d_sae),
        "apply_b_dec_to_input": bool(cfg.apply_b_dec_to_input),
        "hook_name": bottleneck.hook_name,
        "sae_lens_dir": f"{BOTTLENECK_SUBDIR}/{LAYER_DIR.format(layer=bottleneck.layer)}",
    }
    if architecture == "topk":
        spec["k"] = int(cfg.k)
        spec["rescale_acts_by_decoder_norm"] = bool(getattr(cfg, "rescale_acts_by_decoder_norm", False))
    return spec


def export_config(bmodel: BottleneckedModel) -> CodeunlearnConfig:
    """The `CodeunlearnConfig` describing `bmodel`: base config, bottleneck shape, active edits, adapters, SAEs."""
    untrained = [layer for layer in bmodel.layers if not bool(bmodel.bottleneck(layer).initialized)]
    if untrained:
        raise CodeunlearnError(
            f"the bottleneck at layers {untrained} is untrained", "train it (codeunlearn train) or load a trained one"
        )
    base_config = copy.deepcopy(bmodel.model.config)
    targets = _adapter_targets(bmodel)
    adapters = {}
    if targets:
        scalings = {scaling for *_, scaling in targets}
        if len(scalings) != 1:
            raise CodeunlearnError("the adapters have different LoRA scalings", "re-train them with codeunlearn")
        adapters = {
            "targets": [target for target, *_ in targets],
            "rank": int(targets[0][1].shape[0]),
            "scaling": scalings.pop(),
        }
    config = CodeunlearnConfig(
        base_config=base_config,
        bottleneck=bmodel.config.to_dict(),
        edits=[edit.to_dict() for edit in bmodel.edits],
        adapters=adapters,
        saes={str(layer): sae_spec(bmodel.bottleneck(layer)) for layer in bmodel.layers}
        if bmodel.config.has_activations
        else None,
        decoder_layers_path=DECODER_LAYER_PATHS[model_type_of(bmodel.model)],
        codeunlearn_version=__version__,
    )
    config.dtype = next(bmodel.model.parameters()).dtype
    return config


def as_transformers_model(bmodel: BottleneckedModel) -> CodeunlearnForCausalLM:
    """The edited model as a `CodeunlearnForCausalLM` (the class of the exported files), built in memory.

    It shares the base weights with `bmodel` (nothing is copied: changing one changes the other) and holds copies
    of the bottleneck tensors with the current edits (codebook masks; SAE edits read from its config); later edits
    of `bmodel` do not reach it.
    """
    config = export_config(bmodel)
    with torch.device("meta"):  # no memory and no random init for weights that are replaced right away
        model = CodeunlearnForCausalLM(config)
    for names in (model.causal_lm.named_parameters(remove_duplicate=False), model.causal_lm.named_buffers()):
        for name, _ in list(names):
            module_name, _, leaf = name.rpartition(".")
            target = model.causal_lm.get_submodule(module_name)
            source = _source_tensor(bmodel.model, name)
            if leaf in target._parameters:
                target._parameters[leaf] = source  # the same Parameter object, so tied weights stay tied
            else:
                target._buffers[leaf] = source
    for layer in bmodel.layers:
        model.bottlenecks[str(layer)]._buffers.update(bmodel.bottleneck(layer).inference_tensors())
    for adapter, (_, lora_a, lora_b, _) in zip(model.adapters, _adapter_targets(bmodel), strict=True):
        adapter.lora_A = nn.Parameter(lora_a.clone(), requires_grad=False)
        adapter.lora_B = nn.Parameter(lora_b.clone(), requires_grad=False)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left:  # a name the walk above missed would be saved as garbage: refuse instead
        raise RuntimeError(f"export left tensors unset: {left[:5]}")
    model.generation_config = copy.deepcopy(bmodel.model.generation_config)
    model.eval()
    return model


# ------------------------------------------------------------------------------------------------ verifying


def probe_tokens(vocab_size: int, seed: int = 0, batch: int = 2, length: int = 16) -> Tensor:
    """Seeded random token ids: position > 0 tokens exercise the quantizer, any ids do."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=generator)


@torch.no_grad()
def verify_export(bmodel: BottleneckedModel, path: str | Path, tokens: Tensor | None = None) -> VerifyResult:
    """Load the directory at `path` and compare its logits with the in-memory edited model's; raises
    `CodeunlearnError` when they differ beyond `VERIFY_TOLERANCE` or the directory would not load as the edited model.

    The load uses this package's copy of `modeling_codeunlearn.py`, after checking that the directory's `auto_map`
    names it and that the file copied beside the weights is byte for byte the same: what
    `AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)` runs, without registering a dynamic module
    for every temporary directory (the tests load exports through the Auto classes).
    """
    path = Path(path)
    if not ships_this_code(path):
        raise CodeunlearnError(
            f"{path} does not load as the edited model (model_type, auto_map or {REMOTE_MODULE}.py is wrong)",
            "report this as a bug; the directory was not written",
        )
    reference = bmodel.model
    if tokens is None:
        tokens = probe_tokens(reference.get_input_embeddings().weight.shape[0])
    dtype = next(reference.parameters()).dtype
    device = next(reference.parameters()).device
    loaded = CodeunlearnForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()
    tokens = tokens.to(device)
    expected = bmodel(input_ids=tokens, use_cache=False).logits.float()
    got = loaded(input_ids=tokens, use_cache=False).logits.float()
    result = VerifyResult(
        max_abs_difference=float((expected - got).abs().max()),
        max_abs_logit=float(expected.abs().max()),
        tokens=tokens.numel(),
    )
    tolerance = VERIFY_TOLERANCE if dtype == torch.float32 else 1e-2
    if not result.relative_difference <= tolerance:
        raise CodeunlearnError(
            f"the reloaded export differs from the in-memory edited model (max |logit difference| "
            f"{result.max_abs_difference:.3g})",
            "report this as a bug; the directory was not written",
        )
    return result


# ------------------------------------------------------------------------------------------------ saving


def save_pretrained(
    bmodel: BottleneckedModel,
    output_dir: str | Path,
    tokenizer: Any,
    overwrite: bool = False,
    eval_report: str | Path | None = None,
    verify: bool = True,
    license: str | None = None,
) -> VerifyResult | None:
    """Write the edited model as a transformers directory that loads without codeunlearn installed:

        AutoModelForCausalLM.from_pretrained(output_dir, trust_remote_code=True)
        AutoTokenizer.from_pretrained(output_dir)

    The directory is built in a temporary directory beside `output_dir` and renamed into place only when complete
    (and, with `verify`, when the reloaded model's logits equal the in-memory edited model's); a non-empty
    `output_dir` is refused unless `overwrite`. `eval_report` (a `codeunlearn eval` report.json) is copied in and
    shown in the model card. Returns the verification result (None without `verify`).
    """
    if tokenizer is None:
        raise CodeunlearnError(
            "no tokenizer to export", "pass the base model's tokenizer (codeunlearn export --tokenizer NAME_OR_DIR)"
        )
    if eval_report is not None:
        read_eval_report(eval_report)  # refuse a bad report before any work
    model = as_transformers_model(bmodel)
    result = None
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        # register_for_auto_class makes save_pretrained copy modeling_codeunlearn.py and write `auto_map`.
        CodeunlearnConfig.register_for_auto_class()
        CodeunlearnForCausalLM.register_for_auto_class("AutoModelForCausalLM")
        model.save_pretrained(tmp)
        stamp_checksums(tmp)  # transformers writes no checksum; our loaders check this one
        tokenizer.save_pretrained(tmp)
        bmodel.save_pretrained(tmp / BOTTLENECK_SUBDIR)
        if eval_report is not None:
            shutil.copyfile(eval_report, tmp / EVAL_REPORT_NAME)
        write_model_card(tmp, license=license)
        if verify:
            result = verify_export(bmodel, tmp)
    return result
