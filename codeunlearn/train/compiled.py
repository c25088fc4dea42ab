"""`compiled_layers`: `torch.compile` of the frozen model's decoder layers for the duration of a training run
(`--compile`).

What is compiled is each stock decoder layer (inside a bottleneck's wrapper, the layer it wraps), with its downstream
adapters: one graph per layer and no graph break (llama, qwen2, gemma2 and gpt2 layers, checked with
`torch._dynamo.explain`). The bottlenecks stay eager: their observers, the k-means fit, the exception that ends a
truncated forward and the fp32 distance math are Python that a graph would break on. Layers of one class share their
compiled code (their weights are the graph's inputs), so a run compiles a few graphs: with and without gradients,
and once more when a shape changes.

The modules are compiled in place (`nn.Module.compile`), so parameter names, state dicts and the adapters'
names do not change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from codeunlearn.bottleneck.architectures import decoder_layers
from codeunlearn.bottleneck.model import BottleneckedModel, BottleneckLayer


def frozen_layers(bmodel: BottleneckedModel) -> list[nn.Module]:
    """The decoder layers of `bmodel`'s base model, the one inside each bottleneck's wrapper in its place."""
    return [layer.layer if isinstance(layer, BottleneckLayer) else layer for layer in decoder_layers(bmodel.model)]


@contextlib.contextmanager
def compiled_layers(bmodel: BottleneckedModel, enabled: bool = True) -> Iterator[None]:
    """Run the block with every frozen decoder layer of `bmodel` compiled (when `enabled`); afterwards they run
    eagerly again, so a caller's model is left as it was."""
    if not enabled:
        yield
        return
    layers = frozen_layers(bmodel)
    for layer in layers:
        layer.compile()
    try:
        yield
    finally:
        for layer in layers:
            # `nn.Module.compile` keeps the compiled callable here; torch has no public call that removes it.
            layer._compiled_call_impl = None
