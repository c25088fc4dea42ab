"""A causal LM edited by codeunlearn: a stock transformers model with bottlenecks (a vector-quantized codebook or a
sparse autoencoder) after some decoder layers.

This file is copied into every model directory that `codeunlearn export` writes, and is what
`AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)` runs. It imports only `torch` and
`transformers` (codeunlearn need not be installed) and is meant to be read: it is short on purpose.

What the model computes
-----------------------
1. The base model is the stock transformers class of `config.base_config` (e.g. `LlamaForCausalLM`), built with
   `AutoModelForCausalLM.from_config`; its weights are stored unchanged under `causal_lm.` in `model.safetensors`.
2. After each decoder layer listed in `config.bottleneck["layers"]`, a forward hook passes the residual stream (or,
   with `site = "block_output"`, only what the layer wrote into it) through a vector-quantizer: every token's state
   is centred, rotated, split into heads and snapped to the nearest of `codebook_size` search keys per head, in
   fp32, for `num_stages` residual stages; the later layers receive only the selected codes' output values.
   Position 0 (the attention sink) and tokens of massive norm pass through unquantized.
3. The edits (`config.edits`, each a topic and its code ids) are already folded into two boolean masks per layer:
   an `excluded` code is dropped from the nearest-key search (the next-nearest code takes over); a `substituted`
   code is still found, but it and that head's later stages are replaced by a substitute vector (the data mean).
4. Optional LoRA adapters (`config.adapters`) on the layers after the first bottleneck add `B @ A @ x` to the
   outputs of their linear modules; they were trained to read the quantized stream and are active with it.

With an SAE (`config.bottleneck["kind"] == "sae"`) steps 2-3 are instead (see `SparseAutoencoder`):

2. The residual stream after each listed layer is encoded by a sae-lens SAE (`config.saes[layer]`: `standard`
   = ReLU, `topk`, or `jumprelu`), in fp32, into feature activations `acts`. The error term is kept:
   output = decode(edited acts) + (h - decode(acts)), so where no edit changes a feature the output is h itself,
   bit for bit (an SAE with no edit is not even run). Position 0 and tokens of massive norm pass through untouched.
3. The edits (`config.edits`, read here, in order) act on features *where they fire* (activation > 0): `zero` sets
   them to 0; `clamp` to `multiplier * scale`; `guardrail` does either only at tokens where a causal window gate
   is on: the mean number of the edit's features firing over the last `window` tokens exceeds the layer's
   threshold. The window continues across KV-cache decoding steps (the last `window - 1` counts are remembered while
   each call continues the previous one's positions). Left padding (position id 0, as `generate` assigns it) passes
   through and counts 0, as the zeros before a sequence start do, so a padded row is gated as it would be alone.
   Padding is recognised by that position id only: a batched forward must pass `position_ids` (e.g.
   `(attention_mask.cumsum(-1) - 1).clamp(min=0)`), else its pads are numbered as tokens and count.

Why a new `model_type` instead of the base one: with a built-in `model_type` (say `llama`) transformers would load
its stock class and silently drop the bottleneck tensors as unexpected keys -- a model that was never edited.
Loading this one without `trust_remote_code=True` fails instead.

`from_pretrained(DIR, trust_remote_code=True, bottleneck_enabled=False)` turns bottlenecks and adapters off, which
gives exactly the base model (for audits); every other argument (`dtype`, `device_map`, ...) works as usual. The
bottleneck tensors stay in fp32 whatever `dtype` the base model is loaded in.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel

# Where each supported architecture keeps its decoder layers (dotted path from the *ForCausalLM module).
DECODER_LAYER_PATHS = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "mixtral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "gemma3_text": "model.layers",
    "phi3": "model.layers",
    "olmo": "model.layers",
    "olmo2": "model.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
}

# Nearest-key search in chunks of this many tokens bounds the (heads, tokens, codes) distance block.
SEARCH_CHUNK = 512
# sae-lens SAE architectures this file computes (their sae-lens `encode` / `decode`, at inference).
SAE_ARCHITECTURES = ("standard", "topk", "jumprelu")


def _base_config_from_dict(data: dict[str, Any]) -> PretrainedConfig:
    """The nested base model config (a dict in config.json) as its stock config class."""
    data = dict(data)
    return AutoConfig.for_model(data.pop("model_type"), **data)


class CodeunlearnConfig(PretrainedConfig):
    """Config of an edited model: the base model's config nested whole, plus the bottleneck and its edits.

    Args:
        base_config: the base model's config (a dict with its `model_type`, or a config object).
        bottleneck: shape of the bottlenecks (`layers`, `site`, `num_heads`, `codebook_size`, `num_stages`,
            `passthrough_first_position`, `massive_norm_factor`, `hidden_size`, ...).
        edits: the active edits, in the order they were applied: `topic`, `intervention` and, per layer, the
            removed code ids (codebook: flat id = (stage * num_heads + head) * codebook_size + code; informational,
            the masks they imply are stored in the weights) or the SAE features with their `scales`, the
            `multiplier` and the `guardrail` (`window`, `action`, per-layer `thresholds`), which this file reads.
        adapters: LoRA adapters, `{"targets": [module paths in the base model], "scaling": float, "rank": int}`.
        saes: SAE bottlenecks, per layer (a string key): the sae-lens `architecture`, `d_in`, `d_sae`,
            `apply_b_dec_to_input`, and for `topk` `k` and `rescale_acts_by_decoder_norm`; `sae_lens_dir` names the
            sae-lens directory (cfg.json + sae_weights.safetensors) of the same SAE in this export.
        decoder_layers_path: dotted path of the decoder-layer list in the base model.
        bottleneck_enabled: False runs the base model alone (bottlenecks and adapters off).
        codeunlearn_version: version of codeunlearn that wrote the export.
    """

    model_type = "codeunlearn"
    # Declared so that `dtype` and `attn_implementation` given to from_pretrained reach the base model's config.
    sub_configs: ClassVar[dict[str, type]] = {"base_config": AutoConfig}

    def __init__(
        self,
        base_config: dict[str, Any] | PretrainedConfig | None = None,
        bottleneck: dict[str, Any] | None = None,
        edits: list[dict[str, Any]] | None = None,
        adapters: dict[str, Any] | None = None,
        saes: dict[str, dict[str, Any]] | None = None,
        decoder_layers_path: str | None = None,
        bottleneck_enabled: bool = True,
        codeunlearn_version: str | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(base_config, dict):
            base_config = _base_config_from_dict(base_config)
        self.base_config = base_config
        self.base_model_type = base_config.model_type if base_config is not None else None
        self.bottleneck = dict(bottleneck or {})
        self.edits = list(edits or [])
        self.adapters = dict(adapters or {})
        self.saes = {str(layer): dict(spec) for layer, spec in (saes or {}).items()}
        if decoder_layers_path is None and self.base_model_type is not None:
            decoder_layers_path = DECODER_LAYER_PATHS.get(self.base_model_type)
        self.decoder_layers_path = decoder_layers_path
        self.bottleneck_enabled = bool(bottleneck_enabled)
        self.codeunlearn_version = codeunlearn_version
        kwargs.pop("base_model_type", None)  # derived from base_config; written to config.json for readers
        super().__init__(**kwargs)

    def get_text_config(self, *args: Any, **kwargs: Any) -> PretrainedConfig:
        """The base model's config: generation, caches and tokenizers read vocabulary and layer facts from it."""
        return self.base_config if self.base_config is not None else self

    # Read-only views of the base model's sizes, for tools that read them off the top-level config (lm-eval reads
    # max_position_embeddings to cap the context length).
    @property
    def vocab_size(self) -> int:
        return self._base_attribute("vocab_size")

    @property
    def hidden_size(self) -> int:
        return self._base_attribute("hidden_size")

    @property
    def max_position_embeddings(self) -> int:
        return self._base_attribute("max_position_embeddings")

    def _base_attribute(self, name: str) -> Any:
        base = self.__dict__.get("base_config")
        if base is None or not hasattr(base, name):
            raise AttributeError(name)
        return getattr(base, name)


class CodebookQuantizer(nn.Module):
    """The inference-time forward pass of one layer's codebook bottleneck, edits included (no training state)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.site = spec.get("site", "residual")
        self.num_heads = int(spec["num_heads"])
        self.num_stages = int(spec.get("num_stages", 1))
        self.passthrough_first_position = bool(spec.get("passthrough_first_position", True))
        self.massive_norm_factor = float(spec.get("massive_norm_factor", 0.0))
        dim, size = int(spec["hidden_size"]), int(spec["codebook_size"])
        head_dim = dim // self.num_heads
        shape = (self.num_stages, self.num_heads, size)
        f32 = {"dtype": torch.float32}
        self.register_buffer("mean", torch.zeros(dim, **f32))  # centring of the states
        self.register_buffer("rotation", torch.eye(dim, **f32))  # fixed random orthogonal matrix
        self.register_buffer("typical_norm", torch.ones((), **f32))  # for the massive-norm passthrough
        self.register_buffer("keys", torch.zeros(*shape, head_dim, **f32))  # what the search compares against
        self.register_buffer("values", torch.zeros(*shape, head_dim, **f32))  # what the next layers receive
        self.register_buffer("substitute", torch.zeros(self.num_stages, self.num_heads, head_dim, **f32))
        self.register_buffer("excluded", torch.zeros(shape, dtype=torch.bool))  # edit: out of the search
        self.register_buffer("substituted", torch.zeros(shape, dtype=torch.bool))  # edit: replaced by `substitute`
        self._norm_cache: dict[int, tuple[tuple[int, ...], torch.Tensor]] = {}  # per stage: squared key norms

    def passthrough_mask(self, x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """Tokens left unquantized: position 0 (attention sink) and tokens of massive norm."""
        mask = torch.zeros(x.shape[:-1], dtype=torch.bool, device=x.device)
        if self.passthrough_first_position:
            if positions is None:
                mask[..., 0] = True
            else:
                mask |= positions.to(x.device).expand(x.shape[:-1]) == 0
        if self.massive_norm_factor > 0:
            mask |= x.norm(dim=-1) > self.massive_norm_factor * self.typical_norm
        return mask

    @staticmethod
    def _lookup(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """table (heads, codes, d), idx (tokens, heads) -> (tokens, heads, d)."""
        heads = torch.arange(table.shape[0], device=idx.device)
        return table[heads, idx]

    def _nearest(self, z: torch.Tensor, stage: int) -> torch.Tensor:
        """Index of the nearest searchable key per head, in fp32. z (N, H, d) -> (N, H).

        The same computation as `codeunlearn.kinds.codebook.kmeans.nearest` (one batched GEMM per chunk of tokens, the
        keys read transposed in place), so that the export picks the codes the edited model picks, ties included."""
        keys = self.keys[stage].float()
        tag = (keys.data_ptr(), keys._version, self.excluded.data_ptr(), self.excluded._version)
        cached = self._norm_cache.get(stage)
        if cached is None or cached[0] != tag:  # excluded codes get +inf: they are never nearest
            key_sq = keys.pow(2).sum(-1).masked_fill(self.excluded[stage].bool(), float("inf"))
            cached = (tag, key_sq)
            self._norm_cache[stage] = cached
        bias, keys_t = cached[1].unsqueeze(1), keys.transpose(1, 2)
        points = z.transpose(0, 1)
        out = [
            torch.baddbmm(bias, part.float(), keys_t, alpha=-2.0).argmin(-1) for part in points.split(SEARCH_CHUNK, 1)
        ]
        if not out:
            return torch.zeros(0, z.shape[1], dtype=torch.long, device=z.device)
        return torch.cat(out, dim=1).T

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Quantize states x (..., dim); returns the same shape and dtype."""
        with torch.autocast(device_type=x.device.type, enabled=False):  # distances in bf16 pick near-random codes
            passthrough = self.passthrough_mask(x, positions)
            flat = x.reshape(-1, x.shape[-1]).float()
            z = ((flat - self.mean.float()) @ self.rotation.float()).view(flat.shape[0], self.num_heads, -1)
            out = torch.zeros_like(z)
            dropped = torch.zeros(z.shape[:2], dtype=torch.bool, device=x.device)  # head already substituted
            for stage in range(self.num_stages):
                keys = self.keys[stage]
                idx = self._nearest(z, stage)
                z = z - self._lookup(keys, idx).float()  # the next stage quantizes what is left
                newly = ~dropped & self.substituted[stage].bool().gather(1, idx.T).T
                dropped = dropped | newly
                out = out + self._lookup(self.values[stage], idx) * (~dropped).unsqueeze(-1)
                out = out + self.substitute[stage].unsqueeze(0) * newly.unsqueeze(-1)
            y = (out.reshape(flat.shape) @ self.rotation.float().T + self.mean.float()).view(x.shape)
            return torch.where(passthrough.unsqueeze(-1), x.float(), y).to(x.dtype)


class FeatureEdit(NamedTuple):
    """One SAE edit at one layer: where they fire, `features` are set to `values` (where the gate, if any, is on)."""

    features: torch.Tensor  # (n,) long feature ids
    values: torch.Tensor  # (n,) fp32: 0 (zero), or multiplier * scale (clamp)
    window: int  # tokens in the guardrail's causal window; 0 = no gate (always on)
    threshold: float  # the gate is on where the window score is strictly above this


def feature_edits(edits: list[dict[str, Any]], layer: int) -> list[FeatureEdit]:
    """The SAE edits of `config.edits` that name features at `layer`, in the order they were applied."""
    compiled = []
    for edit in edits:
        codes = edit["layers"].get(str(layer))
        if not codes or not codes["codes"]:
            continue
        guardrail = edit.get("guardrail") if edit["intervention"] == "guardrail" else None
        action = guardrail["action"] if guardrail else edit["intervention"]
        # explicit CPU tensors: __init__ may run under a meta-device context; moved to the states' device when used
        features = torch.tensor(codes["codes"], dtype=torch.long, device="cpu")
        if action == "clamp":
            values = torch.tensor(codes["scales"], dtype=torch.float32, device="cpu") * float(edit["multiplier"])
        else:
            values = torch.zeros(len(codes["codes"]), dtype=torch.float32, device="cpu")
        window = int(guardrail["window"]) if guardrail else 0
        threshold = float(guardrail["thresholds"][str(layer)]) if guardrail else 0.0
        compiled.append(FeatureEdit(features, values, window, threshold))
    return compiled


def window_scores(counts: torch.Tensor, window: int) -> torch.Tensor:
    """Causal moving average of `counts` (..., T) over the last `window` positions, zero-padded on the left:
    score[t] = sum(counts[max(0, t - window + 1) : t + 1]) / window."""
    counts = counts.float()
    lead, length = counts.shape[:-1], counts.shape[-1]
    padded = F.pad(counts.reshape(-1, 1, length), (window - 1, 0))
    summed = F.conv1d(padded, torch.ones(1, 1, window, device=counts.device, dtype=counts.dtype))
    return (summed / window).reshape(*lead, length)


class SparseAutoencoder(nn.Module):
    """The inference-time forward pass of one layer's SAE bottleneck: a sae-lens SAE with its error term, passthrough
    tokens and feature edits (zero / clamp / guardrail), as codeunlearn computes them."""

    def __init__(self, bottleneck: dict[str, Any], sae: dict[str, Any], edits: list[FeatureEdit]) -> None:
        super().__init__()
        self.architecture = sae["architecture"]
        if self.architecture not in SAE_ARCHITECTURES:
            raise ValueError(f"SAE architecture {self.architecture!r} is not one of {SAE_ARCHITECTURES}")
        self.k = int(sae.get("k") or 0)
        self.apply_b_dec_to_input = bool(sae.get("apply_b_dec_to_input", True))
        self.rescale_acts_by_decoder_norm = bool(sae.get("rescale_acts_by_decoder_norm", False))
        self.error_term = bool(bottleneck.get("sae_error_term", True))
        self.passthrough_first_position = bool(bottleneck.get("passthrough_first_position", True))
        self.massive_norm_factor = float(bottleneck.get("massive_norm_factor", 0.0))
        self.edits = edits
        d_in, d_sae = int(sae["d_in"]), int(sae["d_sae"])
        f32 = {"dtype": torch.float32}
        self.register_buffer("W_enc", torch.zeros(d_in, d_sae, **f32))
        self.register_buffer("b_enc", torch.zeros(d_sae, **f32))
        self.register_buffer("W_dec", torch.zeros(d_sae, d_in, **f32))
        self.register_buffer("b_dec", torch.zeros(d_in, **f32))
        if self.architecture == "jumprelu":
            self.register_buffer("threshold", torch.zeros(d_sae, **f32))
        self.register_buffer("typical_norm", torch.zeros((), **f32))  # 0 = unknown: no massive-norm passthrough
        # Guardrail windows across decoding steps: (last position per row, per edit the last window - 1 counts).
        self._gate_history: tuple[torch.Tensor, list[torch.Tensor | None]] | None = None

    @property
    def transparent(self) -> bool:
        """With the error term and no edit the output is exactly the input: the SAE need not run."""
        return self.error_term and not self.edits

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations (..., d_sae) of fp32 states x (..., d_in): sae-lens's `encode`."""
        sae_in = x - self.b_dec if self.apply_b_dec_to_input else x
        pre = sae_in @ self.W_enc + self.b_enc
        if self.architecture == "standard":
            return torch.relu(pre)
        if self.architecture == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold).to(pre.dtype)
        if self.rescale_acts_by_decoder_norm:  # topk: the k largest (rescaled) pre-activations, ReLU'd
            pre = pre * self.W_dec.norm(dim=-1)
        values, indices = torch.topk(pre, k=self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, values.relu())

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """States (..., d_in) reconstructed from feature activations: sae-lens's `decode`."""
        if self.rescale_acts_by_decoder_norm:
            acts = acts * (1 / self.W_dec.norm(dim=-1))
        return acts @ self.W_dec + self.b_dec

    def passthrough_mask(self, x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """Tokens left untouched: position 0 (the attention sink, and left padding) and tokens of massive norm."""
        mask = torch.zeros(x.shape[:-1], dtype=torch.bool, device=x.device)
        if self.passthrough_first_position and x.dim() > 1:
            if positions is None:
                mask[..., 0] = True
            else:
                mask |= positions.to(x.device).expand(x.shape[:-1]) == 0
        if self.massive_norm_factor > 0 and float(self.typical_norm) > 0:
            mask |= x.norm(dim=-1) > self.massive_norm_factor * self.typical_norm
        return mask

    def apply_edits(
        self, acts: torch.Tensor, passthrough: torch.Tensor, history: list[torch.Tensor | None] | None
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Edited activations, and per edit the firing counts that continue its window (None when not gated).

        Only firing features change and passthrough tokens never do. Every gate reads the unedited activations, and
        a later edit overwrites an earlier one's value for a shared feature."""
        edited = acts.clone()
        fires = (acts > 0) & ~passthrough.unsqueeze(-1)
        tails: list[torch.Tensor | None] = []
        for index, edit in enumerate(self.edits):
            features = edit.features.to(acts.device)
            hit = fires[..., features]
            tail = None
            if edit.window > 0:
                counts = (acts[..., features] > 0).sum(-1).masked_fill(passthrough, 0)  # features firing per token
                if history is not None and history[index] is not None:
                    counts = torch.cat([history[index].to(counts), counts], -1)
                scores = window_scores(counts, edit.window)[..., counts.shape[-1] - acts.shape[-2] :]
                hit = hit & (scores > edit.threshold).unsqueeze(-1)
                tail = counts[..., max(0, counts.shape[-1] - (edit.window - 1)) :]
            tails.append(tail)
            values = edit.values.to(device=acts.device, dtype=acts.dtype)
            edited[..., features] = torch.where(hit, values, edited[..., features])
        return edited, tails

    def _history(self, acts: torch.Tensor, positions: torch.Tensor | None) -> list[torch.Tensor | None] | None:
        """The remembered window counts, when this call continues the previous one (the next position of every row,
        as in decoding with a KV cache); None starts every window afresh."""
        if self._gate_history is None or positions is None or acts.dim() != 3:
            return None
        last, tails = self._gate_history
        start = positions.expand(acts.shape[:-1])[:, 0].cpu()
        if last.shape != start.shape or not bool((start == last + 1).all()):
            return None
        return tails

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Pass states x (..., d_in) through the edited SAE; returns the same shape and dtype."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()
            passthrough = self.passthrough_mask(xf, positions)
            acts = self.encode(xf)
            edited = acts
            if self.edits:
                edited, tails = self.apply_edits(acts, passthrough, self._history(acts, positions))
                gated = any(edit.window > 0 for edit in self.edits)
                if gated and positions is not None and acts.dim() == 3:
                    self._gate_history = (positions.expand(acts.shape[:-1])[:, -1].detach().cpu(), tails)
                else:
                    self._gate_history = None
            if not self.error_term:
                y = self.decode(edited)
            elif edited is acts:
                y = xf
            else:  # decode(edited) + (x - decode(acts)); tokens no edit changed are returned bit for bit
                changed = (edited != acts).any(-1, keepdim=True)
                y = torch.where(changed, xf + (self.decode(edited) - self.decode(acts)), xf)
            return torch.where(passthrough.unsqueeze(-1), xf, y).to(x.dtype)


class LowRankAdapter(nn.Module):
    """A LoRA adapter: adds `B @ (A @ x) * scaling` to a linear module's output."""

    def __init__(self, in_features: int, out_features: int, rank: int, scaling: float) -> None:
        super().__init__()
        self.scaling = float(scaling)
        self.lora_A = nn.Parameter(torch.zeros(rank, in_features), requires_grad=False)
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank), requires_grad=False)

    def forward(self, x: torch.Tensor, base_output: torch.Tensor) -> torch.Tensor:
        x = x.to(self.lora_A.device)
        if x.dtype != self.lora_A.dtype:
            x = x.to(self.lora_A.dtype)
        delta = F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling
        return (base_output + delta.to(base_output.device)).to(base_output.dtype)


def _get_submodule(root: nn.Module, dotted: str) -> nn.Module:
    module = root
    for part in dotted.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def _linear_shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a GPT-2 style Conv1D (weight stored transposed)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.weight.shape[0], module.weight.shape[1]


def _bottleneck_module(config: CodeunlearnConfig, layer: int) -> nn.Module:
    """The bottleneck after decoder layer `layer`: its codebook (edits in its masks) or its SAE (edits from the config)."""
    if config.bottleneck.get("kind", "vq") == "sae":
        return SparseAutoencoder(config.bottleneck, config.saes[str(layer)], feature_edits(config.edits, layer))
    return CodebookQuantizer(config.bottleneck)


class CodeunlearnForCausalLM(PreTrainedModel, GenerationMixin):
    """The base causal LM with the edited bottlenecks (codebooks or SAEs, and adapters) applied through forward hooks.

    Hooks rather than wrapper modules keep the base model's own module tree, so its weights keep their stock names
    (under `causal_lm.`) and device maps, attention backends and tensor-parallel plans apply unchanged.
    """

    config_class = CodeunlearnConfig
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # The nearest-key search and the SAEs must stay fp32 when the model is loaded with dtype=bfloat16 or float16.
    _keep_in_fp32_modules_strict: ClassVar[list[str]] = ["bottlenecks"]

    def __init__(self, config: CodeunlearnConfig) -> None:
        super().__init__(config)
        if config.base_config is None:
            raise ValueError("CodeunlearnConfig has no base_config: this is not an exported codeunlearn model")
        kind = config.bottleneck.get("kind", "vq")
        if kind not in ("vq", "sae"):
            raise ValueError(f"bottleneck kind {kind!r} is not supported by this file")
        if not config.decoder_layers_path:
            raise ValueError(f"no decoder-layer path known for model_type {config.base_model_type!r}")
        self.causal_lm = AutoModelForCausalLM.from_config(config.base_config)
        layers = _get_submodule(self.causal_lm, config.decoder_layers_path)
        layer_ids = [int(layer) for layer in config.bottleneck.get("layers", [])]
        self.bottlenecks = nn.ModuleDict({str(i): _bottleneck_module(config, i) for i in layer_ids})
        for i in layer_ids:
            layers[i].register_forward_hook(functools.partial(self._bottleneck_hook, i), with_kwargs=True)
        targets = list(config.adapters.get("targets", []))
        self.adapters = nn.ModuleList()
        for number, target in enumerate(targets):
            module = _get_submodule(self.causal_lm, target)
            in_features, out_features = _linear_shape(module)
            rank, scaling = int(config.adapters["rank"]), float(config.adapters["scaling"])
            self.adapters.append(LowRankAdapter(in_features, out_features, rank, scaling))
            module.register_forward_hook(functools.partial(self._adapter_hook, number))
        self.post_init()

    # ------------------------------------------------------------------------------------------------ hooks
    def _bottleneck_hook(self, index: int, layer: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """Replace decoder layer `index`'s output by its bottleneck's output (what codeunlearn's BottleneckLayer does)."""
        quantizer = self.bottlenecks[str(index)]
        if not self.config.bottleneck_enabled or getattr(quantizer, "transparent", False):
            return None  # None keeps the layer's output as it is
        hidden_in = args[0] if args else kwargs["hidden_states"]
        h = output[0] if isinstance(output, tuple) else output
        block_output = getattr(quantizer, "site", "residual") == "block_output"
        x = h - hidden_in if block_output else h
        device = next(quantizer.buffers()).device
        y = quantizer(x.to(device), kwargs.get("position_ids")).to(h.device)
        if block_output:
            y = y + hidden_in
        return (y, *output[1:]) if isinstance(output, tuple) else y

    def _adapter_hook(self, number: int, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not self.config.bottleneck_enabled:
            return None
        return self.adapters[number](args[0], output)

    # ------------------------------------------------------------------------------------------------ model API
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """The base model's forward (same arguments and outputs); the hooks apply the bottlenecks."""
        return self.causal_lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            **kwargs,
        )

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The base model's own `generate` (its cache and input preparation); the hooks apply the bottlenecks."""
        kwargs.setdefault("generation_config", self.generation_config)
        return self.causal_lm.generate(*args, **kwargs)

    def prepare_inputs_for_generation(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.causal_lm.prepare_inputs_for_generation(*args, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.causal_lm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.causal_lm.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.causal_lm.get_output_embeddings()

    def get_decoder(self) -> nn.Module:
        return self.causal_lm.get_decoder()


__all__ = ["CodeunlearnConfig", "CodeunlearnForCausalLM"]
