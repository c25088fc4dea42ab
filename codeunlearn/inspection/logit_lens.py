"""The logit lens of a unit: the tokens its output vector promotes and suppresses through the model's final norm
and LM head alone.

It reads the direct path only: the vector as if it were the last residual state, ignoring every layer after the
bottleneck (which may amplify, cancel or reroute it). Found generically: the LM head is
`model.get_output_embeddings()`, the final norm an attribute of the decoder (`model.base_model`, e.g. `model.model`)
named as the supported architectures name it (`norm` in the Llama family, `ln_f` in GPT-2, `final_layer_norm` in
GPT-NeoX); an architecture without either is refused with a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from codeunlearn.errors import CodeunlearnError
from codeunlearn.inspection.contexts import token_texts

LABEL = "logit lens (direct path only, ignores later layers)"
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f")


def final_norm(model: nn.Module) -> nn.Module:
    """The norm the decoder applies to the last residual state before the LM head."""
    for owner in (getattr(model, "base_model", None), getattr(model, "model", None)):
        for name in FINAL_NORM_NAMES:
            module = getattr(owner, name, None) if owner is not None else None
            if isinstance(module, nn.Module):
                return module
    raise CodeunlearnError(
        f"cannot find the final norm of {type(model).__name__} (none of {', '.join(FINAL_NORM_NAMES)} on its decoder)",
        "inspect a causal LM whose decoder ends in a norm (Llama, Gemma, Qwen, Mistral, GPT-2, GPT-NeoX families)",
    )


def lm_head(model: nn.Module) -> nn.Module:
    """The model's LM head (`get_output_embeddings`)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise CodeunlearnError(
            f"{type(model).__name__} has no LM head (get_output_embeddings() is None)",
            "load the model as a causal LM (AutoModelForCausalLM), not a base model",
        )
    return head


def check_logit_lens(model: nn.Module) -> None:
    """Fail early (before a slow pass over the corpora) where the model has no final norm or LM head."""
    final_norm(model)
    lm_head(model)


@torch.no_grad()
def direct_logits(model: nn.Module, vectors: Tensor) -> Tensor:
    """Logits (U, vocab) of output vectors (U, hidden) read as last residual states: final norm, then LM head."""
    head = lm_head(model)
    weight = next(head.parameters())
    states = vectors.to(device=weight.device, dtype=weight.dtype)
    return head(final_norm(model)(states)).float()


@dataclass
class TokenEffect:
    """One token of a logit lens: its id, its text and its direct-path logit."""

    token_id: int
    token: str
    logit: float

    def to_dict(self) -> dict[str, Any]:
        return {"token_id": self.token_id, "token": self.token, "logit": self.logit}


@dataclass
class LogitEffects:
    """The tokens a unit's output vector promotes most (highest logits) and suppresses most (lowest logits)."""

    promoted: list[TokenEffect]
    suppressed: list[TokenEffect]

    def to_dict(self) -> dict[str, Any]:
        return {
            "promoted": [t.to_dict() for t in self.promoted],
            "suppressed": [t.to_dict() for t in self.suppressed],
        }


def logit_effects(model: nn.Module, tokenizer: Any, vectors: Tensor, k: int = 10) -> list[LogitEffects]:
    """The top `k` promoted and suppressed tokens of each output vector (U, hidden)."""
    logits = direct_logits(model, vectors).cpu()
    k = min(k, logits.shape[-1])
    top, bottom = logits.topk(k, dim=-1), logits.topk(k, dim=-1, largest=False)

    def effects(values: Tensor, ids: Tensor) -> list[TokenEffect]:
        return [
            TokenEffect(i, token_texts(tokenizer, [i])[0], float(v))
            for v, i in zip(values.tolist(), ids.tolist(), strict=True)
        ]

    return [
        LogitEffects(effects(top.values[row], top.indices[row]), effects(bottom.values[row], bottom.indices[row]))
        for row in range(len(logits))
    ]
