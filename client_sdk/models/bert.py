"""BERT-family encoders (BERT, RoBERTa): the pieces the split runtime cuts and runs.

The blocks are the Hugging Face layer classes themselves, so weights, numerics and module names
(``attention.self.query`` / ``value``, which LoRA targets) are those of the full model.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer
from transformers.models.roberta.modeling_roberta import RobertaEmbeddings, RobertaLayer

from .attention import capture_attentions, padding_bias

IS_CAUSAL = False
LORA_TARGETS = ("query", "value")
_CLASSES = {"bert": (BertEmbeddings, BertLayer), "roberta": (RobertaEmbeddings, RobertaLayer)}


def parts_of(model: nn.Module) -> dict[str, nn.Module | None]:
    """Return the embeddings and block list of a loaded ``BertModel`` / ``RobertaModel``."""
    return {"embeddings": model.embeddings, "layers": model.encoder.layer, "norm": None, "lm_head": None}


def new_embeddings(config) -> nn.Module:
    """Build freshly initialised embeddings of the config's model type."""
    return _CLASSES[config.model_type][0](config)


def new_layers(config, start: int, stop: int) -> nn.ModuleList:
    """Build freshly initialised blocks ``start..stop-1`` (0-based) of the config's model type."""
    layer_cls = _CLASSES[config.model_type][1]
    return nn.ModuleList(layer_cls(config, layer_idx=i) for i in range(start, stop))


def embed(embeddings: nn.Module, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
    """Word + position + token-type embeddings and LayerNorm, as the full model computes them."""
    return embeddings(input_ids=input_ids, inputs_embeds=inputs_embeds)  # (b, t, d)


def word_embeddings(embeddings: nn.Module) -> torch.Tensor:
    """Return the word-embedding matrix ``(|V|, d)``."""
    return embeddings.word_embeddings.weight


class Blocks(nn.Module):
    """A contiguous run of encoder blocks with bidirectional key-padding attention."""

    def __init__(self, config, layers: nn.ModuleList) -> None:
        super().__init__()
        self.layers = layers

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        output_attentions: bool = False,
        key_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Run the blocks on ``hidden`` ``(b, t, d)``; return the new hidden states and, if asked, attentions.

        ``key_bias`` ``(b, t)``, optional: added to every attention logit towards key j (log-weights).
        """
        attention_mask = attention_mask.to(hidden.device)
        bias = padding_bias(attention_mask, hidden.dtype)  # (b, 1, 1, t)
        if key_bias is not None:
            bias = bias + key_bias.to(hidden.dtype)[:, None, None, :]
        modules = [layer.attention.self for layer in self.layers]
        with capture_attentions(modules, output_attentions) as weights:
            for layer in self.layers:
                hidden = layer(hidden, bias)  # (b, t, d)
        return hidden, tuple(weights) if weights is not None else None
