"""`CodebookBottleneck`: a multi-head, optionally multi-stage vector quantizer for one residual position.

Why this shape:
- **Several codes per token** (heads x stages): one code per token cannot carry a 576-d residual state; splitting the
  rotated state into heads multiplies the bits while each head's codebook stays small enough to be interpretable
  and selectable. Residual stages add refinement bits; removal at stage s drops that head's stages >= s.
- **Search keys and output values are separate tensors.** Keys live in `vector_quantize_pytorch.VectorQuantize`
  (k-means init, EMA updates, dead-code replacement) and decide *which* code a token gets; values are what the
  downstream layers receive and are trained end to end (KL to the base model) without a straight-through
  estimator: the layer input is frozen, so only a direct value lookup gives the downstream loss a gradient.
- **Distances in fp32**, chunked: bf16 nearest-code search picks near-random codes (FINDINGS.md).
- **Removal** is a per-code mask: `exclude` drops the code from the search (the next-nearest code takes over),
  `substitute` keeps the search but replaces the token's head piece by the substitute vector (the data mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from vector_quantize_pytorch import VectorQuantize
from vector_quantize_pytorch.vector_quantize_pytorch import sample_vectors_distributed

from codeunlearn import __version__, distributed
from codeunlearn.bottleneck.adapters import ADAPTER_PREFIX
from codeunlearn.bottleneck.base import WEIGHTS_NAME, Bottleneck, Tally, layer_state
from codeunlearn.bottleneck.edit import Edit
from codeunlearn.errors import CodeunlearnError
from codeunlearn.io import atomic_save_tensors, load_tensors
from codeunlearn.kinds.codebook.config import CodebookConfig
from codeunlearn.kinds.codebook.kmeans import fit_residual_codebooks, nearest, squared_norms


@dataclass
class QuantizeOutput:
    """Result of quantizing a batch of states at one layer."""

    output: Tensor  # same shape/dtype as the input states
    codes: Tensor  # (..., num_stages, num_heads) long; -1 where the token passed through unquantized
    passthrough: Tensor  # (...) bool


def flat_code_ids(codes: Tensor, num_heads: int, codebook_size: int) -> Tensor:
    """(..., S, H) codes -> flat ids (stage * H + head) * C + code; -1 stays -1."""
    stages = codes.shape[-2]
    offsets = torch.arange(stages * num_heads, device=codes.device).view(stages, num_heads) * codebook_size
    return torch.where(codes >= 0, codes + offsets, codes)


def random_rotation(dim: int, seed: int) -> Tensor:
    """A fixed random orthogonal matrix (QR of a seeded Gaussian, signs fixed so it is unique)."""
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return q.float()


def _share_ema_updates(quantizer: VectorQuantize) -> None:
    """Make a quantizer's EMA step data-parallel when there are several processes: what the library's
    `sync_codebook=True` sets up, done here because its constructor refuses `sync_codebook` with k-means
    initialisation and several codebooks (our k-means fit is our own and already data-parallel)."""
    if distributed.world_size() > 1:
        codebook = quantizer._codebook
        codebook.all_reduce_fn = torch.distributed.all_reduce
        codebook.replace_sample_fn = sample_vectors_distributed


class CodebookBottleneck(Bottleneck):
    """Quantizes the states at one layer; downstream layers see only the codes' output values."""

    def __init__(self, config: CodebookConfig) -> None:
        super().__init__()
        if not config.hidden_size:
            raise CodeunlearnError(
                "bottleneck config has no hidden_size", "build it with attach_bottlenecks(model, ...)"
            )
        self.config = config
        dim, heads, size = config.hidden_size, config.num_heads, config.codebook_size
        self.quantizers = nn.ModuleList(
            VectorQuantize(
                dim=dim,
                codebook_size=size,
                heads=heads,
                separate_codebook_per_head=True,
                codebook_dim=dim // heads,
                kmeans_init=True,
                kmeans_iters=config.kmeans_iters,
                decay=config.ema_decay,
                threshold_ema_dead_code=config.dead_code_threshold,
                commitment_weight=0.0,
                ema_update=True,
                learnable_codebook=False,
                rotation_trick=False,
                sync_codebook=False,  # set per EMA step by `_share_ema_updates` (the constructor refuses it)
            )
            for _ in range(config.num_stages)
        )
        for quantizer in self.quantizers:
            # Without codebook_dim = dim // heads the library silently adds trained projections (FINDINGS.md).
            if not isinstance(quantizer.project_in, nn.Identity):
                raise AssertionError("VectorQuantize added an input projection; the codebook dims are wrong")
        self.values = nn.ParameterList(
            nn.Parameter(torch.zeros(heads, size, dim // heads)) for _ in range(config.num_stages)
        )
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("rotation", random_rotation(dim, config.seed))
        self.register_buffer("typical_norm", torch.ones(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("substitute", torch.zeros(config.num_stages, heads, dim // heads))
        shape = (config.num_stages, heads, size)
        self.register_buffer("excluded", torch.zeros(shape, dtype=torch.bool), persistent=False)
        self.register_buffer("substituted", torch.zeros(shape, dtype=torch.bool), persistent=False)
        self._norm_cache: dict[int, tuple[tuple[int, ...], Tensor]] = {}

    # ----------------------------------------------------------------------------------------------- files
    @classmethod
    def fresh(cls, config: CodebookConfig, layer: int, module_path: str) -> CodebookBottleneck:
        return cls(config)

    @classmethod
    def load_layers(cls, path: Path, config: CodebookConfig) -> dict[int, CodebookBottleneck]:
        """Every layer's codebook from the one tensors file (`{layer}.{name}`) that `save_layers` writes."""
        tensors = load_tensors(path / WEIGHTS_NAME, "bottleneck weights")
        bottlenecks = {}
        for layer in config.layers:
            bottleneck = cls(config)
            prefix = f"{layer}."
            state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            try:
                bottleneck.load_state_dict(state, strict=True)
            except RuntimeError as err:
                first = str(err).splitlines()[0]
                raise CodeunlearnError(
                    f"bottleneck weights at {path} do not match its config ({first})", "re-save the bottleneck"
                ) from None
            bottlenecks[layer] = bottleneck
        # Weights of a layer the config does not list mean the two files disagree (e.g. a hand-edited config):
        # loading would silently drop that layer's bottleneck.
        others = sorted(
            {k.split(".")[0] for k in tensors if not k.startswith(ADAPTER_PREFIX)} - set(map(str, config.layers))
        )
        if others:
            raise CodeunlearnError(
                f"bottleneck weights at {path} hold layers {others} that its config's layers {config.layers} do not list",
                "re-save the bottleneck (its config and weights must come from the same run)",
            )
        return bottlenecks

    @classmethod
    def save_layers(cls, path: Path, bottlenecks: dict[int, Bottleneck], adapters: dict[str, Tensor]) -> None:
        """One safetensors file with every layer's tensors (`{layer}.{name}`) and the downstream adapters."""
        atomic_save_tensors({**layer_state(bottlenecks), **adapters}, path / WEIGHTS_NAME, {"codeunlearn": __version__})

    # ----------------------------------------------------------------------------------------------- shape
    @property
    def num_features(self) -> int:
        return self.config.codes_per_layer

    def fingerprint_bytes(self) -> bytes:
        """What identifies the codes: the search keys of every stage."""
        return b"".join(
            self.keys(stage).detach().cpu().float().numpy().tobytes() for stage in range(self.config.num_stages)
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The codes' output values (the keys are fitted without gradients)."""
        return list(self.values)

    # ----------------------------------------------------------------------------------------------- geometry
    def keys(self, stage: int) -> Tensor:
        """Search keys of a stage, (heads, codebook_size, head_dim)."""
        return self.quantizers[stage].codebook

    def _to_code_space(self, x: Tensor) -> Tensor:
        return (x - self.mean) @ self.rotation

    def _from_code_space(self, z: Tensor) -> Tensor:
        return z @ self.rotation.T + self.mean

    def passthrough_mask(self, x: Tensor, positions: Tensor | None) -> Tensor:
        """Tokens left unquantized: position 0 (attention sink) and massive-norm tokens."""
        mask = torch.zeros(x.shape[:-1], dtype=torch.bool, device=x.device)
        if self.config.passthrough_first_position:
            if positions is None:
                mask[..., 0] = True
            else:
                mask |= positions.expand(x.shape[:-1]) == 0
        if self.config.massive_norm_factor > 0:
            mask |= x.norm(dim=-1) > self.config.massive_norm_factor * self.typical_norm
        return mask

    # ----------------------------------------------------------------------------------------------- fitting keys
    @torch.no_grad()
    def initialize(self, states: Tensor, positions: Tensor | None = None) -> float:
        """Fit every stage's search keys by k-means on the ordinary tokens of `states` (..., dim); returns the FVU.
        Data-parallel, `states` is this process's share and every process ends with the same keys
        (`codeunlearn.kinds.codebook.kmeans`).

        Sets the typical norm (median over non-first positions) and the centring mean (over ordinary tokens), then
        runs `config.kmeans_iters` Lloyd iterations per stage on what the earlier stages left over
        (`codeunlearn.kinds.codebook.kmeans`). Values start equal to the keys, so the module outputs centroids
        until (and unless) value training moves them.
        """
        states = states.float()
        ordinary = self._fit_typical_norm(states, positions)
        count = distributed.all_sum(len(ordinary))
        if count < self.config.codebook_size:
            raise CodeunlearnError(
                f"{count} ordinary tokens cannot fit {self.config.codebook_size} codes per head",
                f"train on at least {self.config.codebook_size} tokens (tens of tokens per code fit well)",
            )
        self.mean.copy_(distributed.all_mean(ordinary, 0))
        heads = self.config.num_heads
        with torch.autocast(device_type=states.device.type, enabled=False):
            z = self._to_code_space(ordinary).view(len(ordinary), heads, -1).transpose(0, 1)
            variance = distributed.all_sum(float((z - distributed.all_mean(z, 1).unsqueeze(1)).pow(2).sum()))
            keys, counts, residual = fit_residual_codebooks(
                z, self.config.num_stages, self.config.codebook_size, self.config.kmeans_iters, self.config.seed
            )
        for stage, quantizer in enumerate(self.quantizers):
            codebook = quantizer._codebook
            codebook.embed.copy_(keys[stage])
            codebook.cluster_size.copy_(counts[stage])
            codebook.embed_avg.copy_(keys[stage] * counts[stage].unsqueeze(-1))
            codebook.initted.fill_(True)
            self.values[stage].data.copy_(keys[stage])
        self.initialized.fill_(True)
        self._norm_cache.clear()
        return distributed.all_sum(float(residual.pow(2).sum())) / max(variance, 1e-12)

    @torch.no_grad()
    def fit_keys(self, states: Tensor, positions: Tensor | None = None) -> None:
        """One EMA step of the search keys (`vector_quantize_pytorch`: EMA updates and dead-code replacement) on
        the ordinary tokens of `states` (..., dim); the first call fits them by k-means (`initialize`) instead.
        Values are kept equal to the keys. Data-parallel, `states` is this process's share: the EMA sums are summed
        over the processes and replacement codes drawn from all of them, so every process keeps the same keys."""
        if not bool(self.initialized):
            self.initialize(states, positions)
            return
        self._norm_cache.clear()
        states = states.float()
        ordinary = states[~self.passthrough_mask(states, positions)]
        with torch.autocast(device_type=states.device.type, enabled=False):
            z = self._to_code_space(ordinary)
            for stage, quantizer in enumerate(self.quantizers):
                quantizer.train()
                _share_ema_updates(quantizer)
                _, idx, _ = quantizer(z.unsqueeze(0))
                z = z - self._lookup(self.keys(stage), idx.squeeze(0)).reshape(z.shape)
                self.values[stage].data.copy_(self.keys(stage))

    def dead_codes(self) -> Tensor:
        """Boolean (S, H, C): codes whose EMA usage fell below the dead-code threshold."""
        threshold = max(self.config.dead_code_threshold, 1e-3)
        return torch.stack([q._codebook.cluster_size < threshold for q in self.quantizers])

    # ----------------------------------------------------------------------------------------------- quantizing
    @staticmethod
    def _lookup(table: Tensor, idx: Tensor) -> Tensor:
        """table (H, C, d), idx (N, H) -> (N, H, d)."""
        heads = torch.arange(table.shape[0], device=idx.device)
        return table[heads, idx]

    def _key_norms(self, stage: int) -> Tensor:
        """Squared key norms of a stage with the excluded codes at +inf, cached until the keys or masks change
        (recomputing them reads every key again, which doubles the search's memory traffic when decoding).

        The tag catches replaced or copied-into tensors; `vector_quantize_pytorch` writes its EMA updates through
        `.data`, which bumps no version counter, so the key fitting methods clear the cache themselves."""
        keys, excluded = self.keys(stage), self.excluded[stage]
        tag = (keys.data_ptr(), keys._version, self.excluded.data_ptr(), self.excluded._version)
        cached = self._norm_cache.get(stage)
        if cached is None or cached[0] != tag:
            cached = (tag, squared_norms(keys, excluded))
            self._norm_cache[stage] = cached
        return cached[1]

    def _nearest(self, z: Tensor, stage: int) -> Tensor:
        """Nearest searchable key of a stage per head, fp32. z (N, H, d) -> (N, H)."""
        return nearest(z.transpose(0, 1), self.keys(stage), self._key_norms(stage)).T

    def quantize(self, x: Tensor, positions: Tensor | None = None) -> QuantizeOutput:
        """Quantize states x (..., dim); the edit masks (exclude / substitute) are honoured."""
        if not bool(self.initialized):
            raise CodeunlearnError("the bottleneck is untrained", "train it (codeunlearn train) or load a trained one")
        lead = x.shape[:-1]
        with torch.autocast(device_type=x.device.type, enabled=False):
            passthrough = self.passthrough_mask(x, positions)
            flat = x.reshape(-1, x.shape[-1]).float()
            z = self._to_code_space(flat).view(flat.shape[0], self.config.num_heads, -1)
            out = torch.zeros_like(z)
            dropped = torch.zeros(z.shape[:2], dtype=torch.bool, device=x.device)
            codes = []
            for stage in range(self.config.num_stages):
                keys = self.keys(stage)
                idx = self._nearest(z, stage)
                codes.append(idx)
                z = z - self._lookup(keys, idx).float()
                newly = ~dropped & self.substituted[stage].gather(1, idx.T).T
                dropped = dropped | newly
                out = out + self._lookup(self.values[stage], idx) * (~dropped).unsqueeze(-1)
                out = out + self.substitute[stage].unsqueeze(0) * newly.unsqueeze(-1)
            y = self._from_code_space(out.reshape(flat.shape)).view(x.shape)
            if x.requires_grad:
                # Straight-through path to the input: the forward value is unchanged, but a shallower bottleneck's
                # values still receive the downstream gradient through this one.
                y = y + (x.float() - x.float().detach())
            y = torch.where(passthrough.unsqueeze(-1), x.float(), y).to(x.dtype)
        codes = torch.stack(codes, dim=-2).view(*lead, self.config.num_stages, self.config.num_heads)
        codes = codes.masked_fill(passthrough[..., None, None], -1)
        return QuantizeOutput(output=y, codes=codes, passthrough=passthrough)

    # ----------------------------------------------------------------------------------------------- edits
    def set_removed(self, excluded: Tensor, substituted: Tensor) -> None:
        """Install the removal masks (S, H, C); a head must keep at least one searchable code."""
        if excluded.shape != self.excluded.shape or substituted.shape != self.substituted.shape:
            raise CodeunlearnError(
                f"edit masks have shape {tuple(excluded.shape)}, bottleneck expects {tuple(self.excluded.shape)}",
                "use an edit made for this bottleneck",
            )
        if bool(excluded.all(-1).any()):
            raise CodeunlearnError("an edit excludes every code of a head", "remove fewer codes or use `substitute`")
        self.excluded.copy_(excluded)
        self.substituted.copy_(substituted)

    def set_edits(self, layer: int, edits: list[Edit]) -> None:
        """Mask every code an active edit names at `layer`, by its intervention (`exclude` / `substitute`)."""
        shape = (self.config.num_stages, self.config.num_heads, self.config.codebook_size)
        masks = {
            name: torch.zeros(shape, dtype=torch.bool, device=self.excluded.device)
            for name in self.config.interventions
        }
        for edit in edits:
            if layer in edit.layers:
                masks[edit.intervention].view(-1)[torch.tensor(edit.layers[layer].codes, dtype=torch.long)] = True
        self.set_removed(masks["exclude"], masks["substitute"])

    def tally(self, result: QuantizeOutput) -> Tally:
        """How often each flat code id was chosen on the quantized tokens."""
        ids = flat_code_ids(result.codes, self.config.num_heads, self.config.codebook_size)
        ids = ids[~result.passthrough].flatten().cpu()
        return Tally(torch.bincount(ids, minlength=self.num_features), int((~result.passthrough).sum()))

    # ----------------------------------------------------------------------------------------------- inspection
    strength_meaning = (
        "closeness of the state to the code's search key (minus their distance, in the code's head after the earlier "
        "stages; 0 is an exact match)"
    )

    def _unit_slots(self, units: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(stage, head, entry) of flat code ids."""
        heads, size = self.config.num_heads, self.config.codebook_size
        return units // (heads * size), (units // size) % heads, units % size

    def firing_strength(self, states: Tensor, result: QuantizeOutput, units: Tensor) -> Tensor:
        """Minus the distance between the state and the key of each code in `units` where the search chose it
        (-inf elsewhere): what the search itself compares, so the top firings are the code's most typical tokens.
        The state is the one the code's stage searched, what the earlier stages' keys left over."""
        lead, heads = states.shape[:-1], self.config.num_heads
        with torch.autocast(device_type=states.device.type, enabled=False):
            flat = states.reshape(-1, states.shape[-1]).float()
            codes = result.codes.reshape(len(flat), self.config.num_stages, heads)
            z = self._to_code_space(flat).view(len(flat), heads, -1)
            distances = []
            for stage in range(self.config.num_stages):
                keys = self._lookup(self.keys(stage), codes[:, stage].clamp_min(0)).float()
                distances.append((z - keys).norm(dim=-1))
                z = z - keys  # as `quantize` does: the next stage searches what this stage's key left
            distance = torch.stack(distances, dim=1)  # (N, S, H)
            stage, head, entry = (t.to(flat.device) for t in self._unit_slots(units))
            chosen = codes[:, stage, head] == entry  # passthrough tokens carry -1: never chosen
            strength = torch.where(chosen, -distance[:, stage, head], float("-inf"))
        return strength.view(*lead, len(units))

    def output_vectors(self, units: Tensor) -> Tensor:
        """Each code's output value placed in its head and rotated back to the residual stream (the centring mean,
        which every token gets, left out): a quantized state is the mean plus the vectors of its codes."""
        stage, head, entry = self._unit_slots(units.cpu())
        head_dim = self.config.hidden_size // self.config.num_heads
        pieces = torch.zeros(len(units), self.config.num_heads, head_dim, device=self.rotation.device)
        for row, (s, h, c) in enumerate(zip(stage.tolist(), head.tolist(), entry.tolist(), strict=True)):
            pieces[row, h] = self.values[s][h, c].detach().float()
        return pieces.reshape(len(units), -1) @ self.rotation.T

    def unit_label(self, unit: int) -> str:
        stage, head, entry = (int(t) for t in self._unit_slots(torch.tensor(unit)))
        return f"{unit} (stage {stage}, head {head}, entry {entry})"

    # ----------------------------------------------------------------------------------------------- export
    def inference_tensors(self) -> dict[str, Tensor]:
        """Mean, rotation, typical norm, keys and values stacked over stages, substitutes and the edit masks."""
        tensors = {
            "mean": self.mean,
            "rotation": self.rotation,
            "typical_norm": self.typical_norm,
            "keys": torch.stack([self.keys(stage) for stage in range(self.config.num_stages)]),
            "values": torch.stack(list(self.values)),
            "substitute": self.substitute,
            "excluded": self.excluded,
            "substituted": self.substituted,
        }
        return {name: tensor.detach().clone() for name, tensor in tensors.items()}
