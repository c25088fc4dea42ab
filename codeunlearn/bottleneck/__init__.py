"""The bottleneck kinds and what wraps them around a frozen causal LM.

- `config`: the shared `BottleneckConfig` and one subclass per kind (`CodebookConfig`, `SAEConfig`);
- `base`: `Bottleneck`, the interface every kind's per-layer module implements;
- `codebook` (+ `kmeans`), `sae`: the kinds;
- `registry`: kind string -> (module class, config class), filled here;
- `model`: `BottleneckedModel`, the frozen model with a bottleneck wrapped around chosen decoder layers;
- `edit`, `interventions`: what a topic removes and what that does to SAE features;
- `adapters`, `architectures`: downstream LoRA adapters and where each supported architecture keeps its layers.
"""

from codeunlearn.bottleneck.codebook import CodebookBottleneck
from codeunlearn.bottleneck.config import BottleneckConfig, CodebookConfig, SAEConfig
from codeunlearn.bottleneck.registry import all_interventions, kind_names, register_kind
from codeunlearn.bottleneck.sae import SAEBottleneck

register_kind(CodebookBottleneck, CodebookConfig)
register_kind(SAEBottleneck, SAEConfig)

KINDS = kind_names()
INTERVENTIONS = all_interventions()

from codeunlearn.bottleneck.edit import Edit, LayerCodes  # noqa: E402
from codeunlearn.bottleneck.model import BottleneckedModel  # noqa: E402

__all__ = [
    "INTERVENTIONS",
    "KINDS",
    "BottleneckConfig",
    "BottleneckedModel",
    "CodebookBottleneck",
    "CodebookConfig",
    "Edit",
    "LayerCodes",
    "SAEBottleneck",
    "SAEConfig",
]
