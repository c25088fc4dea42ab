"""What wraps a bottleneck of any kind around a frozen causal LM (the kinds themselves are in `codeunlearn.kinds`).

- `config`: `BottleneckConfig`, the fields every kind shares, and the flat JSON layout;
- `base`: `Bottleneck`, the interface every kind's per-layer module implements;
- `registry`: kind string -> (module class, config class, trainer), filled by `codeunlearn.kinds`;
- `model`: `BottleneckedModel`, the frozen model with a bottleneck wrapped around chosen decoder layers;
- `loading`: the one path from a bottleneck source to a `BottleneckedModel`;
- `edit`: what a topic removes;
- `adapters`, `architectures`: downstream LoRA adapters and where each supported architecture keeps its layers.
"""

from codeunlearn.bottleneck.config import BottleneckConfig
from codeunlearn.bottleneck.edit import Edit, LayerCodes
from codeunlearn.bottleneck.model import BottleneckedModel

__all__ = ["BottleneckConfig", "BottleneckedModel", "Edit", "LayerCodes"]
