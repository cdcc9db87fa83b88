"""Attention masks and attention-weight capture shared by the family block runners."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Return an additive key-padding mask ``(b, 1, 1, t)``: 0 where a key is real, the dtype minimum where padded."""
    keep = attention_mask.to(torch.bool)[:, None, None, :]  # (b, 1, 1, t)
    zeros = torch.zeros(keep.shape, dtype=dtype, device=attention_mask.device)
    return zeros.masked_fill(~keep, torch.finfo(dtype).min)


def causal_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Return an additive causal + key-padding mask ``(b, 1, t, t)`` (query i sees real keys j <= i).

    With right padding no real query row is fully masked; padded query rows still see the real
    prefix, so they stay finite (their outputs are meaningless and must be ignored downstream).
    """
    t = attention_mask.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=attention_mask.device).tril()  # (t, t)
    keep = causal[None, None] & attention_mask.to(torch.bool)[:, None, None, :]  # (b, 1, t, t)
    zeros = torch.zeros(keep.shape, dtype=dtype, device=attention_mask.device)
    return zeros.masked_fill(~keep, torch.finfo(dtype).min)


@contextmanager
def eager_attention(configs: Iterable[Any]) -> Iterator[None]:
    """Run with the eager attention kernel for the block (the fused kernels return no attention
    weights and have no double backward): each Hugging Face ``config`` is switched and restored after."""
    unique = {id(c): c for c in configs}
    saved = {key: getattr(config, "_attn_implementation", None) for key, config in unique.items()}
    try:
        for config in unique.values():
            config._attn_implementation = "eager"
        yield
    finally:
        for key, config in unique.items():
            config._attn_implementation = saved[key]


@contextmanager
def capture_attentions(modules: Sequence[nn.Module], enabled: bool) -> Iterator[list[torch.Tensor] | None]:
    """Collect the softmax attention weights ``(b, h, t, t)`` returned by ``modules`` during the block.

    While enabled, the modules' configs are switched to the eager attention implementation (the
    fused kernels return no weights) and restored afterwards. Yields ``None`` when disabled. Not
    thread-safe: do not run the same modules concurrently while capturing.
    """
    if not enabled:
        yield None
        return
    weights: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _args, out: weights.append(out[1])) for m in modules]
    try:
        with eager_attention(m.config for m in modules):
            yield weights
    finally:
        for handle in handles:
            handle.remove()
