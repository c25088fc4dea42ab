"""`SAEBottleneck`: a sae-lens sparse autoencoder at one residual position, with its error term and feature edits.

Why this shape:
- **The SAE is sae-lens's own module**, built from its architecture registry (`relu` -> sae-lens `standard`,
  `topk` -> `topk`; any registered architecture when attaching a saved SAE) and saved with its own save method:
  one directory per layer holding `cfg.json` + `sae_weights.safetensors`, which `sae_lens.SAE.load_from_disk` reads.
  The residual position is recorded as sae-lens/TransformerLens names it (`blocks.{L}.hook_resid_post`, the
  output of decoder layer L) and as the Hugging Face module path (`hf_hook_name`).
- **The error term is kept by default**: output = decode(edited features) + (h - decode(features)), so an
  unedited SAE returns h exactly (tokens no edit touches are returned as they came), and untouched behaviour is the
  base model's. `splice="reconstruction"` drops the error term (for "CE loss recovered"), `"zero_ablation"`
  replaces the state by zeros (the usual reference point of that metric).
- **Training scales inputs to an average norm of sqrt(d_in)** (sae-lens's `expected_average_only_in`), so the
  L1 coefficient and learning rate do not depend on the model's activation scale; the factor is folded into the
  weights when training ends (sae-lens's `fold_activation_norm_scaling_factor`), so a saved SAE reads raw states.
- **Position 0 and massive-norm tokens pass through** (as in the codebook): they carry huge norms and no content;
  statistics do not count them and edits never touch them.
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from codeunlearn import distributed
from codeunlearn.bottleneck.architectures import check_layer_indices, decoder_layers, hidden_size, model_type_of
from codeunlearn.bottleneck.base import Bottleneck, Tally
from codeunlearn.bottleneck.edit import Edit
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.kinds.sae.config import TRAINABLE_SAE_ARCHITECTURES, SAEConfig
from codeunlearn.kinds.sae.interventions import FeatureIntervention, apply_interventions, compile_edit

# Our architecture names -> sae-lens architecture registry keys (sae_lens.registry), in SAELens's style.
SAE_LENS_ARCHITECTURES = {"relu": "standard", "topk": "topk"}
SAE_CFG_NAME = "cfg.json"  # sae_lens.constants.SAE_CFG_FILENAME
SAE_WEIGHTS_NAME = "sae_weights.safetensors"  # sae_lens.constants.SAE_WEIGHTS_FILENAME
GEMMA_SCOPE_WEIGHTS_NAME = "params.npz"
LAYER_DIR = "layer_{layer}"
METADATA_KEY = "codeunlearn"
SPLICES = ("error_term", "reconstruction", "zero_ablation")
Splice = Literal["error_term", "reconstruction", "zero_ablation"]
SAESource = str | Path | nn.Module  # a sae-lens directory, or a sae-lens SAE module


def residual_hook_name(layer: int) -> str:
    """sae-lens / TransformerLens name of the residual stream after decoder layer `layer`."""
    return f"blocks.{layer}.hook_resid_post"


_HOOK_PATTERNS = (
    (re.compile(r"blocks\.(\d+)\.hook_resid_post"), 0),
    (re.compile(r"blocks\.(\d+)\.hook_resid_pre"), -1),  # the input of block L is the output of layer L - 1
    (re.compile(r"(?:model\.(?:language_model\.)?layers|transformer\.h|gpt_neox\.layers)\.(\d+)"), 0),
)


def hook_layer(hook_name: str) -> int:
    """Decoder-layer index whose output a residual-stream hook name refers to (sae-lens or HF module names)."""
    for pattern, shift in _HOOK_PATTERNS:
        match = pattern.fullmatch(hook_name)
        if match and int(match.group(1)) + shift >= 0:
            return int(match.group(1)) + shift
    raise CodeunlearnError(
        f"SAE hook {hook_name!r} is not the residual stream after a decoder layer",
        "use a residual-stream SAE (blocks.L.hook_resid_post / hook_resid_pre)",
    )


def is_sae_directory(path: str | Path) -> bool:
    """A sae-lens directory (cfg.json + sae_weights.safetensors) or a Gemma Scope one (params.npz)."""
    path = Path(path)
    return ((path / SAE_CFG_NAME).is_file() and (path / SAE_WEIGHTS_NAME).is_file()) or (
        path / GEMMA_SCOPE_WEIGHTS_NAME
    ).is_file()


def gemma_scope_disk_loader(
    path: str | Path, device: str = "cpu", cfg_overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A sae-lens `PretrainedSaeDiskLoader` for a downloaded Gemma Scope folder (`layer_L/width_W/average_l0_N/`
    holding `params.npz`): a JumpReLU SAE of the residual stream after layer L, converted as sae-lens's own
    Hugging Face loader for Gemma Scope does."""
    from sae_lens import __version__ as sae_lens_version

    path = Path(path)
    match = re.search(r"layer_(\d+)", str(path.resolve()))
    with np.load(path / GEMMA_SCOPE_WEIGHTS_NAME) as data:
        state = {("W_" + k[2:] if k.startswith("w_") else k): torch.tensor(data[k]).float() for k in data}
    metadata = {"sae_lens_version": sae_lens_version, "model_name": "gemma-scope", "prepend_bos": True}
    if match:
        metadata["hook_name"] = residual_hook_name(int(match.group(1)))
    cfg = {
        "architecture": "jumprelu",
        "d_in": int(state["W_enc"].shape[0]),
        "d_sae": int(state["W_enc"].shape[1]),
        "dtype": "float32",
        "device": device,
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "metadata": metadata,
    }
    cfg.update(cfg_overrides or {})
    return cfg, {k: v.to(device) for k, v in state.items()}


def read_sae_config(path: str | Path) -> dict[str, Any]:
    """The sae-lens config of an SAE directory (older formats upgraded by sae-lens), or a one-line error."""
    from sae_lens.loading.pretrained_sae_loaders import get_sae_lens_config_from_disk, handle_config_defaulting
    from sae_lens.registry import SAE_CLASS_REGISTRY

    path = Path(path)
    if not is_sae_directory(path):
        raise CodeunlearnError(
            f"no SAE at {path} (needs {SAE_CFG_NAME} + {SAE_WEIGHTS_NAME}, or {GEMMA_SCOPE_WEIGHTS_NAME})",
            "pass a directory saved by sae-lens (SAE.save_model) or by codeunlearn",
        )
    if not (path / SAE_CFG_NAME).is_file():
        return gemma_scope_disk_loader(path)[0]
    try:
        raw = get_sae_lens_config_from_disk(path)
    except ValueError as err:
        raise CodeunlearnError(f"{path / SAE_CFG_NAME} is not valid JSON ({err})", "re-save the SAE") from None
    architecture = raw.get("architecture", "standard")
    if architecture not in SAE_CLASS_REGISTRY:
        raise CodeunlearnError(
            f"unknown SAE architecture {architecture!r} in {path / SAE_CFG_NAME}",
            f"use an SAE of a sae-lens architecture ({', '.join(sorted(SAE_CLASS_REGISTRY))})",
        )
    return handle_config_defaulting(raw)


def _check_fits(cfg: dict[str, Any], path: Path, layer: int | None, hidden_size: int) -> int:
    """Check an SAE config against the model position it is attached to; return the layer."""
    if cfg.get("d_in") != hidden_size:
        raise CodeunlearnError(
            f"SAE at {path} has d_in={cfg.get('d_in')}, the model's hidden size is {hidden_size}",
            "attach an SAE trained on this model",
        )
    if cfg.get("reshape_activations", "none") != "none" or (cfg.get("metadata") or {}).get("hook_head_index"):
        raise CodeunlearnError(f"SAE at {path} reads attention heads, not the residual stream", "use a residual SAE")
    hook = (cfg.get("metadata") or {}).get("hook_name")
    if hook is None:
        if layer is None:
            raise CodeunlearnError(
                f"SAE at {path} records no hook name", "name its layer: attach_sae(model, {L: path})"
            )
        return layer
    hooked = hook_layer(hook)
    if layer is not None and hooked != layer:
        raise CodeunlearnError(
            f"SAE at {path} was trained on {hook} (output of layer {hooked}), not on layer {layer}",
            f"attach it at layer {hooked}",
        )
    return hooked


def load_sae(path: str | Path, layer: int | None, hidden_size: int) -> tuple[Any, int]:
    """Load an SAE directory with sae-lens (`SAE.load_from_disk`) after checking that it fits the model; returns
    (sae, layer). `layer=None` takes the layer from the SAE's recorded hook name."""
    from sae_lens import SAE

    path = Path(path)
    cfg = read_sae_config(path)
    layer = _check_fits(cfg, path, layer, hidden_size)
    if (path / SAE_CFG_NAME).is_file():
        sae = SAE.load_from_disk(path)
    else:
        sae = SAE.load_from_disk(path, converter=gemma_scope_disk_loader)
    _check_self_contained(sae, str(path))
    return sae.float(), layer


def _check_self_contained(sae: Any, where: str) -> None:
    """Refuse an SAE whose inputs must be pre-scaled by a factor it does not store (sae-lens's
    `expected_average_only_in` before folding): fed raw states it would silently misreconstruct."""
    if sae.cfg.normalize_activations not in ("none", "layer_norm", "constant_norm_rescale"):
        raise CodeunlearnError(
            f"SAE {where} expects inputs scaled by a factor it does not store ({sae.cfg.normalize_activations})",
            "fold the scaling factor into its weights (sae.fold_activation_norm_scaling_factor) and re-save it",
        )


def load_sae_module(source: Any, config: SAEConfig, layer: int | None) -> SAEBottleneck:
    """An `SAEBottleneck` from a saved SAE directory or from a sae-lens SAE object (checked against the model)."""
    if isinstance(source, nn.Module):
        where = f"<{type(source).__name__}>"
        layer = _check_fits(source.cfg.to_dict(), Path(where), layer, config.hidden_size)
        _check_self_contained(source, where)
        return SAEBottleneck(source.float(), config, layer)
    return SAEBottleneck.from_directory(source, config, layer)


@dataclass
class SAEOutput:
    """Result of passing a batch of states through an SAE bottleneck at one layer."""

    output: Tensor  # same shape/dtype as the input states
    acts: Tensor  # (..., d_sae) float32 feature activations of the unedited SAE
    passthrough: Tensor  # (...) bool: tokens left untouched (position 0, massive norms)
    gated: Tensor | None = None  # (...) bool: tokens where a guardrail gate was on; None without a guardrail


class SAEBottleneck(Bottleneck):
    """A sae-lens SAE on the residual stream after one decoder layer, honouring the active feature edits."""

    splices = SPLICES

    def __init__(self, sae: nn.Module, config: SAEConfig, layer: int, initialized: bool = True) -> None:
        super().__init__()
        self.sae = sae.requires_grad_(False)  # trained only through `training_step` (its caller enables gradients)
        self.config = config
        self.layer = layer
        self.register_buffer("input_scale", torch.ones(()))  # training-time input scaling, 1 once folded
        self.register_buffer("typical_norm", torch.zeros(()))  # 0 = unknown: no massive-norm passthrough
        self.register_buffer("initialized", torch.tensor(initialized))
        self.interventions: list[FeatureIntervention] = []
        self.splice: Splice = "error_term" if config.sae_error_term else "reconstruction"
        self.error_term_gradients_only = False  # see `error_term_gradients`
        # Guardrail windows across decoding steps (KV cache): last position and window - 1 counts per intervention.
        self._gate_history: tuple[Tensor, list[Tensor | None]] | None = None

    # ----------------------------------------------------------------------------------------------- creation
    @classmethod
    def fresh(cls, config: SAEConfig, layer: int, module_path: str) -> SAEBottleneck:
        """An untrained sae-lens *training* SAE of `config.sae_architecture` (seeded by config.seed and layer),
        recording the base model and the Hugging Face module path it reads (`module_path`)."""
        from sae_lens.registry import get_sae_training_class
        from sae_lens.saes.sae import SAEMetadata

        if config.sae_architecture not in TRAINABLE_SAE_ARCHITECTURES:
            raise CodeunlearnError(
                f"SAE architecture {config.sae_architecture!r} cannot be trained here",
                f"use one of {TRAINABLE_SAE_ARCHITECTURES}, or attach a saved SAE with attach_sae",
            )
        sae_class, cfg_class = get_sae_training_class(SAE_LENS_ARCHITECTURES[config.sae_architecture])
        fields: dict[str, Any] = {
            "d_in": config.hidden_size,
            "d_sae": config.codes_per_layer,
            "dtype": "float32",
            "device": "cpu",
            # inputs arrive pre-scaled to an average norm of sqrt(d_in); folded into the weights after training
            "normalize_activations": "expected_average_only_in",
            "metadata": SAEMetadata(
                model_name=config.base_model,
                hook_name=residual_hook_name(layer),
                hf_hook_name=module_path,
                hook_head_index=None,
                prepend_bos=False,
            ),
        }
        if config.sae_architecture == "topk":
            fields["k"] = config.sae_k
        else:
            fields["l1_coefficient"] = config.sae_l1_coefficient
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed * 1_000_003 + layer)
            sae = sae_class(cfg_class(**fields))
        return cls(sae, config, layer, initialized=False)

    @classmethod
    def from_directory(cls, path: str | Path, config: SAEConfig, layer: int | None = None) -> SAEBottleneck:
        """Load a saved SAE directory (ours or any sae-lens one) for the model `config` describes."""
        sae, layer = load_sae(path, layer, config.hidden_size)
        bottleneck = cls(sae, config, layer)
        info = sae.cfg.metadata.get(METADATA_KEY) or {}
        bottleneck.typical_norm.fill_(float(info.get("typical_norm", 0.0)))
        return bottleneck

    @classmethod
    def is_foreign_source(cls, path: Path) -> bool:
        """A sae-lens (or Gemma Scope) SAE directory, or a directory whose subdirectories are."""
        if is_sae_directory(path):
            return True
        return path.is_dir() and any(p.is_dir() and is_sae_directory(p) for p in path.iterdir())

    @classmethod
    def attach_foreign(cls, model: nn.Module, path: Path) -> BottleneckedModel:
        """The SAEs saved in `path` by sae-lens, attached at the layers their hook names record (`attach_sae`)."""
        return attach_sae(model, path)

    @classmethod
    def load_layers(cls, path: Path, config: SAEConfig) -> dict[int, SAEBottleneck]:
        """One sae-lens directory per layer (`layer_{L}`), as `save_layers` writes them."""
        return {
            layer: cls.from_directory(path / LAYER_DIR.format(layer=layer), config, layer) for layer in config.layers
        }

    @classmethod
    def save_layers(cls, path: Path, bottlenecks: dict[int, Bottleneck], adapters: dict[str, Tensor]) -> None:
        """One sae-lens directory per layer, loadable by sae-lens itself (an SAE has no adapters)."""
        for layer, bottleneck in bottlenecks.items():
            bottleneck.save(path / LAYER_DIR.format(layer=layer))

    def save(self, path: str | Path) -> None:
        """Write a sae-lens directory (cfg.json + sae_weights.safetensors) that `sae_lens.SAE.load_from_disk` loads:
        the inference form, with any training-time input scaling folded into the weights."""
        from sae_lens.saes.sae import TrainingSAE

        sae = self.sae
        if float(self.input_scale) != 1.0:
            sae = copy.deepcopy(sae)
            sae.fold_activation_norm_scaling_factor(float(self.input_scale))
        sae.cfg.metadata[METADATA_KEY] = {"layer": self.layer, "typical_norm": float(self.typical_norm)}
        if isinstance(sae, TrainingSAE):
            sae.save_inference_model(path)
        else:
            sae.save_model(path)

    def _apply(self, fn, *args: Any, **kwargs: Any):  # keep sae-lens's own device/dtype records in step
        result = super()._apply(fn, *args, **kwargs)
        self.sae.device = self.sae.W_enc.device
        self.sae.cfg.device = str(self.sae.W_enc.device)
        return result

    # ----------------------------------------------------------------------------------------------- shape
    @property
    def num_features(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def architecture(self) -> str:
        """sae-lens architecture name (`standard`, `topk`, `jumprelu`, ...)."""
        return self.sae.cfg.architecture()

    @property
    def hook_name(self) -> str:
        return self.sae.cfg.metadata.hook_name or residual_hook_name(self.layer)

    def fingerprint_bytes(self) -> bytes:
        """What identifies this SAE's features: its encoder."""
        return self.sae.W_enc.detach().cpu().float().numpy().tobytes()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.sae.parameters())

    # ----------------------------------------------------------------------------------------------- math
    def encode(self, x: Tensor) -> Tensor:
        """Feature activations (..., d_sae) of raw states x (..., d_in), in fp32."""
        return self.sae.encode(x.float() * self.input_scale)

    def decode(self, acts: Tensor) -> Tensor:
        """States (..., d_in) reconstructed from feature activations, in fp32."""
        return self.sae.decode(acts) / self.input_scale

    def passthrough_mask(self, x: Tensor, positions: Tensor | None) -> Tensor:
        """Tokens left untouched: position 0 (attention sink) and massive-norm tokens (when the norm is known)."""
        mask = torch.zeros(x.shape[:-1], dtype=torch.bool, device=x.device)
        if self.config.passthrough_first_position and x.dim() > 1:
            if positions is None:
                mask[..., 0] = True
            else:
                mask |= positions.expand(x.shape[:-1]) == 0
        if self.config.massive_norm_factor > 0 and float(self.typical_norm) > 0:
            mask |= x.float().norm(dim=-1) > self.config.massive_norm_factor * self.typical_norm
        return mask

    @property
    def transparent(self) -> bool:
        """Whether the output is exactly the input (error term kept, no edit): the SAE need not run."""
        return self.splice == "error_term" and not self.interventions

    def quantize(self, x: Tensor, positions: Tensor | None = None) -> SAEOutput:
        """Pass states x (..., d_in) through the SAE: encode, apply the edits, decode (with the error term)."""
        if not bool(self.initialized):
            raise CodeunlearnError(
                "the SAE is untrained", "train it (codeunlearn train --kind sae) or load a trained one"
            )
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()
            passthrough = self.passthrough_mask(x, positions)
            acts = self.encode(xf.detach() if self.error_term_gradients_only else xf)
            gated = None
            if self.splice == "zero_ablation":
                y = torch.zeros_like(xf)
            else:
                edited, gated = self._edit(acts, passthrough, positions) if self.interventions else (acts, None)
                if self.splice == "reconstruction":
                    y = self.decode(edited)
                elif edited is acts:
                    y = xf
                else:
                    changed = (edited != acts).any(-1, keepdim=True)
                    # decode(edited) + (x - decode(acts)); untouched tokens are returned bit for bit
                    shift = self.decode(edited) - self.decode(acts)
                    if self.error_term_gradients_only:
                        shift = shift.detach()
                    y = torch.where(changed, xf + shift, xf)
            y = torch.where(passthrough.unsqueeze(-1), xf, y).to(x.dtype)
        return SAEOutput(output=y, acts=acts, passthrough=passthrough, gated=gated)

    @contextlib.contextmanager
    def error_term_gradients(self) -> Iterator[None]:
        """Gradients reach the states before this SAE only through its error term: the encoder / decoder path is
        detached (no gradient to the states through it, nor to the SAE's weights), so d output / d x is the identity.
        The forward values are unchanged, edits included. The error-term attack (`codeunlearn.evaluate.attacks.bypass`)
        fine-tunes upstream weights under it, so they learn to route information around the features an edit watches."""
        if self.splice != "error_term":
            raise CodeunlearnError(
                f"the SAE at layer {self.layer} runs with splice {self.splice!r}, which has no error term",
                "run it with its error term (splice `error_term`)",
            )
        previous = self.error_term_gradients_only
        self.error_term_gradients_only = True
        try:
            yield
        finally:
            self.error_term_gradients_only = previous

    @classmethod
    @contextlib.contextmanager
    def spliced(cls, bottlenecks: list[Bottleneck], splice: str) -> Iterator[None]:
        """Temporarily run SAEs with another splice (`error_term`, `reconstruction`, `zero_ablation`)."""
        if splice not in SPLICES:
            raise CodeunlearnError(f"unknown SAE splice {splice!r}", f"use one of {SPLICES}")
        previous = [b.splice for b in bottlenecks]
        for bottleneck in bottlenecks:
            bottleneck.splice = splice
        try:
            yield
        finally:
            for bottleneck, value in zip(bottlenecks, previous, strict=True):
                bottleneck.splice = value

    # ----------------------------------------------------------------------------------------------- edits
    def set_edits(self, layer: int, edits: list[Edit]) -> None:
        """Compile the active edits that name features at `layer` into interventions
        (`codeunlearn.kinds.sae.interventions`)."""
        self.set_interventions([compile_edit(e, layer) for e in edits if layer in e.layers and e.layers[layer].codes])

    def tally(self, result: SAEOutput) -> Tally:
        """Per feature: the counted tokens it fires on (activation > 0), its activation sum and maximum."""
        acts = result.acts[~result.passthrough].float()  # (N, d_sae)
        return Tally(
            counts=(acts > 0).sum(0).cpu(),
            tokens=len(acts),
            activation_sum=acts.sum(0).double().cpu(),
            activation_max=acts.max(0).values.cpu() if len(acts) else None,
        )

    strength_meaning = "activation"

    def firing_strength(self, states: Tensor, result: SAEOutput, units: Tensor) -> Tensor:
        """Each feature's activation where it fires (positive, not a passthrough token), -inf elsewhere."""
        acts = result.acts[..., units.to(result.acts.device)].float()
        fires = (acts > 0) & ~result.passthrough.unsqueeze(-1)
        return torch.where(fires, acts, float("-inf"))

    def output_vectors(self, units: Tensor) -> Tensor:
        """The features' decoder rows, in the units of the raw states (the decoder bias left out)."""
        return self.sae.W_dec[units.to(self.sae.W_dec.device)].detach().float() / self.input_scale

    def set_interventions(self, interventions: list[FeatureIntervention]) -> None:
        """Install the compiled edits of this layer (in order); [] restores the unedited SAE."""
        for intervention in interventions:
            bad = intervention.features[(intervention.features < 0) | (intervention.features >= self.num_features)]
            if len(bad):
                raise CodeunlearnError(
                    f"edit names features {bad[:5].tolist()} at layer {self.layer}; the SAE has {self.num_features}",
                    "use an edit made for this SAE",
                )
        self.interventions = list(interventions)
        self._gate_history = None

    def _edit(self, acts: Tensor, passthrough: Tensor, positions: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Apply the interventions. Guardrail windows continue across calls that extend the same sequences (decoding
        with a KV cache feeds one token per call): the counts of the last window - 1 tokens are remembered. This needs
        the decoder layer to receive `position_ids` (Llama-family layers do; GPT-2 blocks do not, and there each
        call's window starts afresh)."""
        edited, gated, tails = apply_interventions(
            acts, self.interventions, passthrough, self._history(acts, positions)
        )
        if positions is not None and acts.dim() == 3 and gated is not None:
            self._gate_history = (positions.expand(acts.shape[:-1])[:, -1].detach().cpu(), tails)
        else:
            self._gate_history = None
        return edited, gated

    def _history(self, acts: Tensor, positions: Tensor | None) -> list[Tensor | None] | None:
        """The remembered counts, when this call continues the previous one (the next positions of the same rows)."""
        if self._gate_history is None or positions is None or acts.dim() != 3:
            return None
        last, tails = self._gate_history
        start = positions.expand(acts.shape[:-1])[:, 0].cpu()
        if last.shape != start.shape or not bool((start == last + 1).all()):
            return None
        return tails

    # ----------------------------------------------------------------------------------------------- training
    @property
    def trainable(self) -> bool:
        from sae_lens.saes.sae import TrainingSAE

        return isinstance(self.sae, TrainingSAE)

    @torch.no_grad()
    def initialize(self, states: Tensor, positions: Tensor | None = None) -> None:
        """Set the typical norm, the input scale (average norm -> sqrt(d_in)) and b_dec (the scaled mean) from the
        ordinary tokens of a first batch of states (..., d_in); data-parallel, `states` is this process's share and
        the means are over every process's."""
        states = states.float()
        ordinary = self._fit_typical_norm(states, positions)
        norm = float(distributed.all_mean(ordinary.norm(dim=-1), 0).clamp_min(1e-12))
        self.input_scale.fill_(math.sqrt(self.sae.cfg.d_in) / norm)
        self.sae.b_dec.data.copy_(distributed.all_mean(ordinary, 0) * self.input_scale)
        self.initialized.fill_(True)

    def training_step(self, states: Tensor, dead: Tensor | None, step: int):
        """sae-lens's training forward pass (MSE + L1 or aux-k) on ordinary-token states (N, d_in)."""
        from sae_lens.saes.sae import TrainStepInput

        if not self.trainable:
            raise CodeunlearnError(
                f"the SAE at layer {self.layer} was loaded for inference", "train a fresh SAE (codeunlearn train)"
            )
        coefficients = {
            name: float(c.value if hasattr(c, "value") else c) for name, c in self.sae.get_coefficients().items()
        }
        step_input = TrainStepInput(
            sae_in=states.float() * self.input_scale,
            coefficients=coefficients,
            dead_neuron_mask=dead,
            n_training_steps=step,
            is_logging_step=False,
        )
        return self.sae.training_forward_pass(step_input)

    @torch.no_grad()
    def fold_input_scale(self) -> None:
        """Fold the training-time input scaling into the weights, so the SAE reads raw states."""
        if float(self.input_scale) != 1.0:
            self.sae.fold_activation_norm_scaling_factor(float(self.input_scale))
            self.input_scale.fill_(1.0)

    @torch.no_grad()
    def finish_training(self) -> None:
        """Turn the trained SAE into exactly what `save` writes and `load_from_disk` reads back: the input scale
        folded in, then sae-lens's inference class with its saving transform applied (e.g. TopK's decoder norms
        folded). Feature activations and outputs are unchanged up to float rounding."""
        from sae_lens import SAE

        self.fold_input_scale()
        if not self.trainable:
            return
        state = {k: v.clone() for k, v in self.sae.state_dict().items()}
        self.sae.process_state_dict_for_saving_inference(state)
        cfg = self.sae.cfg.get_inference_sae_cfg_dict()
        cfg["metadata"] = dict(cfg["metadata"])
        with torch.random.fork_rng(devices=[]):  # its random initialisation is overwritten; keep the RNG as it was
            inference = SAE.from_dict(cfg)
        inference.process_state_dict_for_loading(state)
        inference.load_state_dict(state)
        self.sae = inference.to(self.input_scale.device).requires_grad_(False)

    # ----------------------------------------------------------------------------------------------- export
    def inference_sae(self) -> nn.Module:
        """The sae-lens inference SAE that reads raw states, as `save` writes it: this bottleneck's own SAE, or
        (mid-training: a training class or an input scale not yet folded) a finished copy of it."""
        if not self.trainable and float(self.input_scale) == 1.0:
            return self.sae
        finished = copy.deepcopy(self)
        finished.finish_training()
        return finished.sae

    def inference_tensors(self) -> dict[str, Tensor]:
        """The inference SAE's weights (and a JumpReLU's thresholds) and the typical norm, as fp32 copies."""
        sae = self.inference_sae()
        names = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if sae.cfg.architecture() == "jumprelu" else [])
        tensors = {name: getattr(sae, name) for name in names}
        tensors["typical_norm"] = self.typical_norm
        return {name: tensor.detach().float().clone() for name, tensor in tensors.items()}


def _sae_sources(saes: Any) -> list[tuple[int | None, SAESource]]:
    """(layer or None, source) pairs from `{layer: source}`, one source, or a list of sources; a directory whose
    subdirectories are SAE directories (a downloaded release) stands for all of them."""
    if isinstance(saes, dict):
        return [(int(layer), source) for layer, source in saes.items()]
    if isinstance(saes, (str, Path)):
        path = Path(saes)
        if path.is_dir() and not is_sae_directory(path):
            found = sorted(p for p in path.iterdir() if p.is_dir() and is_sae_directory(p))
            if found:
                return [(None, p) for p in found]
        return [(None, path)]
    if isinstance(saes, nn.Module):
        return [(None, saes)]
    return [(None, source) for source in saes]


def attach_sae(
    model: nn.Module,
    saes: dict[int, SAESource] | SAESource | list[SAESource],
    error_term: bool = True,
    passthrough_first_position: bool = True,
) -> BottleneckedModel:
    """Attach trained SAEs saved by sae-lens (or by codeunlearn, or a downloaded Gemma Scope folder).

    `saes` is `{layer: directory or sae-lens SAE}`, or directories alone (each SAE's recorded hook name, e.g.
    `blocks.12.hook_resid_post`, gives its layer), or one directory holding such directories. An SAE whose
    d_in or hook layer does not match the model is refused with a one-line error.
    """
    layers = decoder_layers(model)
    config = SAEConfig(
        layers=[0],
        sae_architecture="pretrained",
        sae_error_term=error_term,
        passthrough_first_position=passthrough_first_position,
        hidden_size=hidden_size(model),
        num_hidden_layers=len(layers),
        model_type=model_type_of(model),
        base_model=str(getattr(model.config, "_name_or_path", "")),
    )
    bottlenecks: dict[int, SAEBottleneck] = {}
    for layer, source in _sae_sources(saes):
        bottleneck = load_sae_module(source, config, layer)
        if bottleneck.layer in bottlenecks:
            raise CodeunlearnError(f"two SAEs for layer {bottleneck.layer}", "attach one SAE per layer")
        bottlenecks[bottleneck.layer] = bottleneck
    config.layers = check_layer_indices(sorted(bottlenecks), len(layers))
    config.sae_width = bottlenecks[config.layers[0]].num_features
    device = next(model.parameters()).device
    return BottleneckedModel(model, config, {layer: bn.to(device) for layer, bn in bottlenecks.items()})
