"""The device's private, trained end of a split model (architecture.md, "Two training modes").

* :class:`ClassifierHead`: a linear head over the server's pooled representation ``(b, d)``,
  initialised from the device's own entropy; the server never sees its weights.
* :class:`DeviceTail` (causal LMs): the last k blocks, the final norm and the LM head, fed with the
  server's hidden state ``(b, t, d)``; LoRA adapters on its blocks are trained on the device. With
  k = 0 it is the final norm and LM head alone (public weights: the server could recompute it).

Both expose ``trainable()`` (the parameters the device's optimiser updates) and ``state()`` /
``load_state()`` (exactly those tensors, for the device's checkpoints).
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import KVCache
from .bottom import BottomModel, family_module, truncated_config
from .lora import add_lora

__all__ = ["ClassifierHead", "DeviceTail", "EndModule"]


class EndModule(nn.Module):
    """What both ends share: the trainable tensors by name, saved and restored as a flat dict."""

    def trainable(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().cpu().contiguous() for name, p in self.trainable().items()}

    @torch.no_grad()
    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        params = self.trainable()
        if set(tensors) != set(params):
            missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
            raise ValueError(f"device state does not fit this end: missing {missing[:3]}, unexpected {extra[:3]}")
        for name, p in params.items():
            p.copy_(tensors[name].to(p.device, p.dtype))


class ClassifierHead(EndModule):
    """``(b, d)`` representation -> ``(b, C)`` logits; weights N(0, std^2) from ``generator``, bias 0."""

    def __init__(self, hidden_size: int, num_labels: int, generator: torch.Generator, std: float = 0.02) -> None:
        super().__init__()
        self.classifier = nn.Linear(hidden_size, num_labels)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.randn(self.classifier.weight.shape, generator=generator) * std)
            self.classifier.bias.zero_()

    def forward(self, representation: torch.Tensor) -> torch.Tensor:
        return self.classifier(representation.float())  # (b, C)


class DeviceTail(EndModule):
    """Blocks L-k+1..L, the final norm and the LM head (shared with the bottom, frozen) of a causal LM.

    ``layers`` are the k base blocks (frozen); ``lora_r`` > 0 adds trainable adapters to their
    ``lora_targets`` with A drawn from ``generator``.
    """

    def __init__(
        self,
        bottom: BottomModel,
        layers: nn.ModuleList,
        num_layers: int,
        lora_r: int = 8,
        lora_alpha: float = 16.0,
        lora_targets: tuple[str, ...] = ("q_proj", "v_proj"),
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not bottom.is_causal:
            raise ValueError(f"a device tail needs a causal LM; family {bottom.family!r} is an encoder")
        family = family_module(bottom.config.model_type)
        self.config = truncated_config(bottom.config, num_layers)
        self.tail_layers = len(layers)
        layers.requires_grad_(False)
        self.blocks = family.Blocks(self.config, layers)
        self.adapted: list[str] = []
        if lora_r and self.tail_layers:
            self.adapted = add_lora(self.blocks, lora_targets, lora_r, lora_alpha, generator)
        self._bottom = [bottom]  # not a submodule: the norm and LM head are the bottom's (frozen, not saved)

    @property
    def bottom(self) -> BottomModel:
        return self._bottom[0]

    def hidden(self, hidden: torch.Tensor, attention_mask: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The tail blocks and the final norm: ``(b, t, d)`` -> ``(b, t, d)``."""
        hidden = hidden.float()
        if self.tail_layers:
            hidden, _ = self.blocks(hidden, attention_mask, cache=cache)  # (b, t, d)
        return self.bottom.norm(hidden)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits ``(b, t, |V|)`` of the server's hidden state ``(b, t, d)`` (``attention_mask`` ``(b, T)``)."""
        weight = self.bottom.lm_head.weight if self.bottom.lm_head is not None else self.bottom.input_embeddings()
        return nn.functional.linear(self.hidden(hidden, attention_mask, cache), weight)  # (b, t, |V|)
