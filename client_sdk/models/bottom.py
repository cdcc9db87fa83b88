"""The device half of a split model: embeddings + blocks 1..l (+ final norm and LM head for causal LMs)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import nn

from .catalog import SUPPORTED_MODEL_TYPES, UnsupportedArchitectureError


def family_module(model_type: str) -> ModuleType:
    """Return the family runner module (``bert`` or ``llama``) for a Hugging Face ``model_type``."""
    family = SUPPORTED_MODEL_TYPES.get(model_type)
    if family is None:
        raise UnsupportedArchitectureError(
            f"model_type={model_type!r} is not supported; expected one of {sorted(SUPPORTED_MODEL_TYPES)}"
        )
    if family == "bert":
        from . import bert as module
    else:
        from . import llama as module
    return module


def truncated_config(config, num_layers: int):
    """Return a copy of ``config`` describing only the first ``num_layers`` blocks."""
    config = copy.deepcopy(config)
    config.num_hidden_layers = num_layers
    return config


@dataclass
class BottomOutput:
    """What the bottom model computes for a batch."""

    hidden: torch.Tensor  # (b, t, d) representations at the split layer
    attentions: tuple[torch.Tensor, ...] | None = None  # l x (b, h, t, t) softmax weights, rows = queries


class BottomModel(nn.Module):
    """Embeddings and blocks 1..l of a model, frozen on the device.

    For causal LMs it also holds the final norm and the LM head (tied to the input embeddings
    unless the model unties them), so the device can turn the server's last hidden state into
    logits (U-shaped split). ``prefix_ids`` / ``suffix_ids`` are the special tokens placed around a
    token when computing its prototype (see :meth:`token_prototypes`).
    """

    def __init__(
        self,
        config,
        split_layer: int,
        embeddings: nn.Module,
        layers: nn.ModuleList,
        norm: nn.Module | None = None,
        lm_head: nn.Module | None = None,
        prefix_ids: Sequence[int] = (),
        suffix_ids: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if len(layers) != split_layer:
            raise ValueError(f"BottomModel needs split_layer={split_layer} blocks, got {len(layers)}")
        self.config = truncated_config(config, split_layer)
        self.family: str = SUPPORTED_MODEL_TYPES[config.model_type]
        self.split_layer = split_layer
        self.hidden_size: int = config.hidden_size
        self.vocab_size: int = config.vocab_size
        self.is_causal: bool = self._family.IS_CAUSAL
        self.prefix_ids = tuple(int(i) for i in prefix_ids)
        self.suffix_ids = tuple(int(i) for i in suffix_ids)
        self.embeddings = embeddings
        self.blocks = self._family.Blocks(config, layers)
        if self.is_causal:
            self.norm = norm
            self.lm_head = lm_head  # None when tied to the input embeddings

    @property
    def _family(self) -> ModuleType:
        return family_module(self.config.model_type)

    @classmethod
    def from_full_model(
        cls, model: nn.Module, split_layer: int, prefix_ids: Sequence[int] = (), suffix_ids: Sequence[int] = ()
    ) -> BottomModel:
        """Cut the bottom out of a loaded full model (the modules are shared, not copied)."""
        family = family_module(model.config.model_type)
        parts = family.parts_of(model)
        layers = nn.ModuleList(list(parts["layers"])[:split_layer])
        return cls(
            model.config,
            split_layer,
            parts["embeddings"],
            layers,
            parts["norm"],
            parts["lm_head"],
            prefix_ids,
            suffix_ids,
        )

    @classmethod
    def from_config(
        cls, config, split_layer: int, prefix_ids: Sequence[int] = (), suffix_ids: Sequence[int] = ()
    ) -> BottomModel:
        """Build a randomly initialised bottom from a config (weights are loaded afterwards)."""
        family = family_module(config.model_type)
        config = truncated_config(config, split_layer)
        config._attn_implementation = "sdpa"
        norm = family.new_norm(config) if family.IS_CAUSAL else None
        lm_head = family.new_lm_head(config) if family.IS_CAUSAL else None
        layers = family.new_layers(config, 0, split_layer)
        return cls(config, split_layer, family.new_embeddings(config), layers, norm, lm_head, prefix_ids, suffix_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        *,
        inputs_embeds: torch.Tensor | None = None,
        cache: Any = None,
    ) -> BottomOutput:
        """Return the split-layer representations ``(b, t, d)`` of right-padded token ids ``(b, t)``.

        ``attention_mask`` ``(b, t)`` marks real tokens with 1 (all ones if omitted). With
        ``output_attentions`` the eager kernel runs and the l softmax weight tensors are returned.
        ``inputs_embeds`` ``(b, t, d)`` may replace ``input_ids`` (e.g. a relaxed one-hot times
        :meth:`input_embeddings`, for inversion attacks). ``cache`` (causal LMs): a
        ``client_sdk.models.attention.KVCache`` of the positions already run; ``attention_mask`` then
        covers them too, ``(b, P + t)``.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        if attention_mask is None:
            device = (input_ids if input_ids is not None else inputs_embeds).device
            attention_mask = torch.ones(shape, dtype=torch.long, device=device)  # (b, t)
        hidden = self._family.embed(self.embeddings, input_ids, inputs_embeds)  # (b, t, d)
        kwargs = {} if cache is None else {"cache": cache}
        hidden, attentions = self.blocks(hidden, attention_mask, output_attentions, **kwargs)
        return BottomOutput(hidden=hidden, attentions=attentions)

    def input_embeddings(self) -> torch.Tensor:
        """Return the input (word/token) embedding matrix ``(|V|, d)``."""
        return self._family.word_embeddings(self.embeddings)

    @torch.no_grad()
    def token_prototypes(self, batch_size: int = 2048) -> torch.Tensor:
        """Return the bottom's output for every vocabulary token on its own, ``(|V|, d)``.

        Each token v is run as the sequence ``prefix_ids + [v] + suffix_ids`` (BERT family:
        ``[CLS] v [SEP]``; Llama: ``[BOS] v``) and the output at v's position is kept. The
        vocabulary is processed in batches of ``batch_size`` sequences.
        """
        device = self.input_embeddings().device
        prefix = torch.tensor(self.prefix_ids, dtype=torch.long, device=device)
        suffix = torch.tensor(self.suffix_ids, dtype=torch.long, device=device)
        chunks = []
        for start in range(0, self.vocab_size, batch_size):
            ids = torch.arange(start, min(start + batch_size, self.vocab_size), device=device)[:, None]  # (n, 1)
            n = ids.shape[0]
            sequences = torch.cat([prefix.expand(n, -1), ids, suffix.expand(n, -1)], dim=1)  # (n, p + 1 + s)
            hidden = self(sequences, torch.ones_like(sequences)).hidden  # (n, p + 1 + s, d)
            chunks.append(hidden[:, len(self.prefix_ids)])  # (n, d)
        return torch.cat(chunks)  # (|V|, d)

    def lm_logits(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """Apply the final norm and the LM head to the server's last hidden state: ``(b, t, d) -> (b, t, |V|)``.

        Raises ``UnsupportedArchitectureError`` for encoders, which have no LM head here.
        """
        if not self.is_causal:
            raise UnsupportedArchitectureError(f"lm_logits needs a causal LM; family {self.family!r} is an encoder")
        weight = self.lm_head.weight if self.lm_head is not None else self.input_embeddings()  # (|V|, d)
        return nn.functional.linear(self.norm(last_hidden), weight)  # (b, t, |V|)
