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


def causal_bias(attention_mask: torch.Tensor, dtype: torch.dtype, queries: int | None = None) -> torch.Tensor:
    """Return an additive causal + key-padding mask ``(b, 1, q, T)`` (query i sees real keys j <= i).

    ``attention_mask`` ``(b, T)`` covers every key; the ``q`` queries (default all T) are the last q
    positions (with a KV cache, T = cached + new). With right padding no real query row is fully
    masked; padded query rows still see the real prefix, so they stay finite (their outputs are
    meaningless and must be ignored downstream).
    """
    t = attention_mask.shape[-1]
    q = t if queries is None else queries
    causal = torch.ones(t, t, dtype=torch.bool, device=attention_mask.device).tril()[t - q :]  # (q, T)
    keep = causal[None, None] & attention_mask.to(torch.bool)[:, None, None, :]  # (b, 1, q, T)
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


class KVCache:
    """Keys and values of the positions seen so far, per block: what a ``transformers`` attention layer
    calls ``update`` on (duck-typed ``Cache``), so incremental decoding costs one position per step."""

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}  # layer index -> (b, h_kv, T, head_dim)
        self.values: dict[int, torch.Tensor] = {}

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new positions' ``key`` / ``value`` ``(b, h_kv, t, head_dim)``; return all of them."""
        if layer_idx in self.keys:
            key = torch.cat([self.keys[layer_idx], key], dim=-2)
            value = torch.cat([self.values[layer_idx], value], dim=-2)
        self.keys[layer_idx], self.values[layer_idx] = key, value
        return key, value

    @property
    def length(self) -> int:
        """Positions cached (0 when empty)."""
        return next(iter(self.keys.values())).shape[-2] if self.keys else 0
