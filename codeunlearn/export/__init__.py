"""Export an edited model so that plain `transformers` loads it, and publish it.

One job per module:

- `remote_code/modeling_codeunlearn.py`: the self-contained modeling file (imports only torch and transformers)
  copied into every export; model_type `codeunlearn`, loaded with `trust_remote_code=True`.
- `save`: `save_pretrained(bmodel, dir, tokenizer)` writes the edited `BottleneckedModel` as that directory
  (safetensors, config with the edit list, tokenizer, card) atomically, after checking it reloads to the same logits;
  `as_transformers_model(bmodel)` is the same model in memory.
- `linear`: a different method: feature directions projected out of the residual stream and folded into the stock
  weights (`fold_projection`, `mean_difference_directions`, `sae_edit_directions`, `save_linear_export`); no remote
  code needed.
- `bake`: a third method: the edited bottleneck model distilled into the stock weights (`bake`, `BakeConfig`,
  `save_baked`); no remote code and no switch.
- `card`: the model card (`huggingface_hub.ModelCard`) read from an exported directory.
- `push`: `push_to_hub(dir, repo_id)` with `huggingface_hub` (create_repo, then one commit with the files and card).

Names are imported lazily, so `import codeunlearn.export` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "save_pretrained": "codeunlearn.export.save",
    "as_transformers_model": "codeunlearn.export.save",
    "verify_export": "codeunlearn.export.save",
    "fold_projection": "codeunlearn.export.linear",
    "projection_hooks": "codeunlearn.export.linear",
    "mean_difference_directions": "codeunlearn.export.linear",
    "sae_edit_directions": "codeunlearn.export.linear",
    "layer_states": "codeunlearn.export.linear",
    "save_linear_export": "codeunlearn.export.linear",
    "bake": "codeunlearn.export.bake",
    "BakeConfig": "codeunlearn.export.bake",
    "save_baked": "codeunlearn.export.bake",
    "model_card": "codeunlearn.export.card",
    "write_model_card": "codeunlearn.export.card",
    "push_to_hub": "codeunlearn.export.push",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'codeunlearn.export' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
