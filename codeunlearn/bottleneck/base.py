"""`Bottleneck`: what every bottleneck kind implements at one decoder layer, so that `BottleneckedModel`,
training, statistics and export treat every kind alike (SAELens-style: one class per kind behind one interface,
found through `codeunlearn.bottleneck.registry`; the kinds themselves live in `codeunlearn.kinds`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from torch import Tensor, nn

from codeunlearn import distributed
from codeunlearn.bottleneck.config import BottleneckConfig
from codeunlearn.bottleneck.edit import Edit

# The one tensors file of a bottleneck directory where a kind keeps its layers' tensors together (a codebook), and
# where downstream adapters are kept.
WEIGHTS_NAME = "bottleneck.safetensors"


class BottleneckOutput(Protocol):
    """What `Bottleneck.quantize` returns (a kind adds its own fields: a codebook's `codes`, an SAE's `acts`)."""

    output: Tensor  # same shape/dtype as the input states
    passthrough: Tensor  # (...) bool: tokens left untouched (position 0, massive norms)


@dataclass
class Tally:
    """What one batch adds to a layer's statistics (`codeunlearn.unlearn.statistics`): per unit, how many counted
    tokens it fires on; and, for a kind whose units have activations, their sum and maximum."""

    counts: Tensor  # (num_features,) long
    tokens: int
    activation_sum: Tensor | None = None  # (num_features,) float64
    activation_max: Tensor | None = None  # (num_features,) float32; None when no token was counted


def layer_state(bottlenecks: dict[int, Bottleneck] | nn.ModuleDict) -> dict[str, Tensor]:
    """Every layer's tensors keyed `{layer}.{name}` (the layout of `WEIGHTS_NAME` and of training checkpoints)."""
    return {f"{layer}.{k}": v for layer, bn in bottlenecks.items() for k, v in bn.state_dict().items()}


class Bottleneck(nn.Module):
    """One bottleneck at one decoder layer. A kind subclasses it and registers the subclass with its config class."""

    config: BottleneckConfig
    initialized: Tensor  # bool buffer: trained or loaded (an untrained bottleneck refuses to run)
    typical_norm: Tensor  # scalar buffer: the median token norm, which massive-norm passthrough is measured against
    # Other ways of splicing the bottleneck in that a kind runs on request (`BottleneckedModel.splice`), e.g. an SAE
    # without its error term; () for a kind that has none.
    splices: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------------------------------ creation and files
    @classmethod
    def fresh(cls, config: BottleneckConfig, layer: int, module_path: str) -> Bottleneck:
        """An untrained bottleneck for decoder layer `layer` (at `module_path` in the model) of `config`'s shape."""
        raise NotImplementedError

    @classmethod
    def load_layers(cls, path: Path, config: BottleneckConfig) -> dict[int, Bottleneck]:
        """Every layer's bottleneck saved in directory `path` by `save_layers`."""
        raise NotImplementedError

    @classmethod
    def save_layers(cls, path: Path, bottlenecks: dict[int, Bottleneck], adapters: dict[str, Tensor]) -> None:
        """Write every layer's bottleneck into the directory `path`, and the downstream adapters' tensors
        (`adapters.{name}`) into `WEIGHTS_NAME` where there are any; `BottleneckedModel.save_pretrained` writes the
        config and the edits."""
        raise NotImplementedError

    @classmethod
    def is_foreign_source(cls, path: Path) -> bool:
        """Whether directory `path` holds this kind's modules in another library's format (e.g. sae-lens SAE
        directories), which `attach_foreign` wraps around a model without a `bottleneck_config.json`."""
        return False

    @classmethod
    def attach_foreign(cls, model: nn.Module, path: Path) -> Any:
        """The `BottleneckedModel` of `model` with the modules `is_foreign_source` recognised in `path`."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ shape
    @property
    def num_features(self) -> int:
        """Distinct unit ids (codes, features) an edit may name at this layer."""
        raise NotImplementedError

    def fingerprint_bytes(self) -> bytes:
        """What identifies this bottleneck's units (hashed into `BottleneckedModel.fingerprint`)."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What gradient training updates (a codebook's output values, an SAE's weights)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ running
    @classmethod
    def spliced(cls, bottlenecks: list[Bottleneck], splice: str) -> contextlib.AbstractContextManager[None]:
        """Run `bottlenecks` (one model's, of this kind) with the splice `splice` (one of `splices`) for a while."""
        raise NotImplementedError

    @property
    def transparent(self) -> bool:
        """Whether the output is exactly the input (so the wrapper may skip running it)."""
        return False

    def passthrough_mask(self, x: Tensor, positions: Tensor | None) -> Tensor:
        """Tokens left untouched: position 0 (attention sink) and massive-norm tokens."""
        raise NotImplementedError

    def _fit_typical_norm(self, states: Tensor, positions: Tensor | None) -> Tensor:
        """Set the `typical_norm` buffer (the median token norm, position 0 left out) from fp32 states (..., d), this
        process's share of them (the median is over every process's); return this share's ordinary tokens' states
        (N, d), those `passthrough_mask` leaves to the bottleneck."""
        norms = states.norm(dim=-1)
        if self.config.passthrough_first_position and norms.dim() > 1:
            norms = norms[..., 1:]
        self.typical_norm.copy_(distributed.gather_rows(norms.reshape(-1)).median())
        return states[~self.passthrough_mask(states, positions)]

    def quantize(self, x: Tensor, positions: Tensor | None = None) -> Any:
        """Pass states x (..., d) through the bottleneck with the active edits; a `BottleneckOutput`."""
        raise NotImplementedError

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        return self.quantize(x, positions).output

    # ------------------------------------------------------------------------------------------ edits and statistics
    def set_edits(self, layer: int, edits: list[Edit]) -> None:
        """Install the active edits (in order; each may or may not name this layer); [] restores the unedited
        bottleneck. Raises `CodeunlearnError` (changing nothing) where the edits together are not allowed."""
        raise NotImplementedError

    def tally(self, result: Any) -> Tally:
        """What one `quantize` result adds to this layer's statistics (passthrough tokens are not counted)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ inspection
    # What `firing_strength` ranks a unit's firings by, in words (`codeunlearn inspect` says it on its page).
    strength_meaning: str = "firing strength"

    def firing_strength(self, states: Tensor, result: Any, units: Tensor) -> Tensor:
        """How strongly each unit of `units` (long, (U,)) fires at each token of one `quantize` call on `states`:
        (..., U) float32, -inf where it does not fire and at passthrough tokens, so that a unit fires exactly where
        `tally` counts it. Larger is stronger (`strength_meaning` says what it is)."""
        raise NotImplementedError

    def output_vectors(self, units: Tensor) -> Tensor:
        """What each unit of `units` (long, (U,)) writes into the residual stream when it fires, (U, hidden) float32:
        the direction a logit lens reads (the part every token shares, a codebook's mean or an SAE's decoder bias,
        left out)."""
        raise NotImplementedError

    def unit_label(self, unit: int) -> str:
        """A unit id as a reader knows it (a codebook adds the stage, head and entry a flat code id stands for)."""
        return str(unit)

    # ------------------------------------------------------------------------------------------ export
    def inference_tensors(self) -> dict[str, Tensor]:
        """The layer's tensors in inference form (fp32 copies, with the edit masks where the kind keeps them as
        tensors), named as the exported modeling file's module for this kind names its buffers."""
        raise NotImplementedError
