"""SAE test helpers: a model whose first residual state is context-free, and a hand-built SAE whose feature 0 fires
on exactly one token, so every intervention has an answer known in advance.

Layer 0 of the model writes nothing (its attention output and MLP down projections are zero), so the residual
stream after layer 0 is the token embedding itself: the same vector for a token whatever precedes it. Feature 0 of
the hand-built SAE reads the direction of TOPIC's embedding with a bias that only TOPIC clears; features 1..3 never
fire. Long paddings are possible because the model accepts 4,096 positions.
"""

from __future__ import annotations

import torch
from helpers import HIDDEN, VOCAB
from torch import Tensor

TOPIC = 7  # the token feature 0 fires on
TOPIC_ACT = 0.1  # its activation there: e.e / |e|^2 - 0.9
NUM_FEATURES = 4
MAX_POSITIONS = 4096


def context_free_model(seed: int = 0) -> torch.nn.Module:
    """A 3-layer Llama whose residual stream after layer 0 is exactly the token embedding."""
    import transformers as tf

    config = tf.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
    )
    torch.manual_seed(seed)
    model = tf.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
    model.requires_grad_(False)
    return model


def topic_sae(model: torch.nn.Module, layer: int = 0, seed: int = 1):
    """A sae-lens StandardSAE (ReLU) on `blocks.{layer}.hook_resid_post` whose feature 0 fires on TOPIC only, with
    activation TOPIC_ACT, built with sae-lens's own classes."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    emb = model.model.embed_tokens.weight.detach()
    cfg = StandardSAEConfig(
        d_in=HIDDEN,
        d_sae=NUM_FEATURES,
        apply_b_dec_to_input=False,
        metadata=SAEMetadata(hook_name=f"blocks.{layer}.hook_resid_post", model_name="tiny-llama"),
    )
    sae = StandardSAE(cfg)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.fill_(-1e6)  # features 1..3 never fire
        sae.b_dec.zero_()
        sae.W_enc[:, 0] = emb[TOPIC] / emb[TOPIC].norm() ** 2
        sae.b_enc[0] = -0.9
        sae.W_dec.copy_(torch.randn(NUM_FEATURES, HIDDEN, generator=generator))
    pre = emb @ sae.W_enc[:, 0] - 0.9
    assert (pre > 0).nonzero().flatten().tolist() == [TOPIC]  # the construction holds for this seed
    return sae


def tokens_without_topic(length: int, seed: int) -> Tensor:
    """Random token ids, never TOPIC."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB - 1, (length,), generator=generator)
    return ids + (ids >= TOPIC).long()
