"""Llama-family causal LMs: the pieces the split runtime cuts and runs.

The blocks are ``LlamaDecoderLayer`` instances (LoRA targets ``self_attn.q_proj`` / ``v_proj``).
Position ids are ``arange(t)`` for every row, exactly what ``LlamaModel`` uses when it is given
no position ids; with right padding this numbers every real token correctly.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

from .attention import KVCache, capture_attentions, causal_bias

IS_CAUSAL = True
LORA_TARGETS = ("q_proj", "v_proj")


def parts_of(model: nn.Module) -> dict[str, nn.Module | None]:
    """Return embeddings, blocks, final norm and (if untied) LM head of a loaded ``LlamaForCausalLM``."""
    tied = getattr(model.config, "tie_word_embeddings", True)
    return {
        "embeddings": model.model.embed_tokens,
        "layers": model.model.layers,
        "norm": model.model.norm,
        "lm_head": None if tied else model.lm_head,
    }


def new_embeddings(config) -> nn.Module:
    """Build a freshly initialised token embedding."""
    return nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)


def new_layers(config, start: int, stop: int) -> nn.ModuleList:
    """Build freshly initialised decoder blocks ``start..stop-1`` (0-based)."""
    return nn.ModuleList(LlamaDecoderLayer(config, layer_idx=i) for i in range(start, stop))


def new_norm(config) -> nn.Module:
    """Build the final RMSNorm."""
    return LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)


def new_lm_head(config) -> nn.Module | None:
    """Build an untied LM head, or return ``None`` when the head is tied to the input embeddings."""
    if getattr(config, "tie_word_embeddings", True):
        return None
    return nn.Linear(config.hidden_size, config.vocab_size, bias=False)


def embed(embeddings: nn.Module, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
    """Token embeddings (Llama adds no position embedding; positions enter through RoPE)."""
    return inputs_embeds if inputs_embeds is not None else embeddings(input_ids)  # (b, t, d)


def word_embeddings(embeddings: nn.Module) -> torch.Tensor:
    """Return the token-embedding matrix ``(|V|, d)``."""
    return embeddings.weight


class Blocks(nn.Module):
    """A contiguous run of decoder blocks with causal + key-padding attention and RoPE."""

    def __init__(self, config, layers: nn.ModuleList) -> None:
        super().__init__()
        self.layers = layers
        self.rotary_emb = LlamaRotaryEmbedding(config)

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        output_attentions: bool = False,
        key_bias: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Run the blocks on ``hidden`` ``(b, t, d)``; return the new hidden states and, if asked, attentions.

        ``key_bias`` ``(b, T)``, optional: added to every attention logit towards key j (log-weights).
        ``cache``: the keys and values of the P positions already run (incremental decoding); then
        ``attention_mask`` is ``(b, P + t)`` and the new positions are numbered P..P+t-1.
        """
        t = hidden.shape[1]
        past = cache.length if cache is not None else 0
        position_ids = torch.arange(past, past + t, device=hidden.device)[None]  # (1, t)
        rope = self.rotary_emb(hidden, position_ids)  # cos, sin: (1, t, head_dim)
        attention_mask = attention_mask.to(hidden.device)
        bias = causal_bias(attention_mask, hidden.dtype, queries=t)  # (b, 1, t, P + t)
        if key_bias is not None:
            bias = bias + key_bias.to(hidden.dtype)[:, None, None, :]
        modules = [layer.self_attn for layer in self.layers]
        with capture_attentions(modules, output_attentions) as weights:
            for layer in self.layers:
                hidden = layer(
                    hidden, attention_mask=bias, position_ids=position_ids, position_embeddings=rope, cache=cache
                )
        return hidden, tuple(weights) if weights is not None else None
