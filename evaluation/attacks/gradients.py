"""The server's top and the device's head as the attacks model them: the top's output (the pooled
representation on the head-on-device protocol) and the gradient rows the device returns through its
private head, dL/d(representation) (b, d)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from client_sdk.models.attention import eager_attention

from .base import AttackUnavailable, Observation

__all__ = ["head_gradients", "observe_gradients", "step_sizes", "top_mode", "top_output"]


def _device(module: Any) -> torch.device:
    first = next(iter(module.parameters()), None) if hasattr(module, "parameters") else None
    return first.device if first is not None else torch.device("cpu")


@contextmanager
def top_mode(top: torch.nn.Module, eager: bool = False) -> Iterator[torch.nn.Module]:
    """Run ``top`` in eval mode (no dropout) and, with ``eager``, with eager attention (double backward);
    both are restored afterwards."""
    configs = [c for m in top.modules() if (c := getattr(m, "config", None)) is not None]
    was_training = top.training
    top.eval()
    try:
        with eager_attention(configs) if eager else nullcontext():
            yield top
    finally:
        top.train(was_training)


@torch.no_grad()
def top_output(
    top: torch.nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor, chunk: int = 64
) -> torch.Tensor:
    """The top's output for ``hidden`` (N, T, d) in eval mode, ``chunk`` texts at a time (CPU, float32):
    the pooled representation (N, d) for a classification top without a head (the protocol's), logits
    (N, C) with a server-side head (upload mode)."""
    device = _device(top)
    with top_mode(top):
        parts = [
            top(hidden[s : s + chunk].to(device), attention_mask[s : s + chunk].to(device)).float().cpu()
            for s in range(0, hidden.shape[0], chunk)
        ]  # each (b, d_out)
    return torch.cat(parts)


def step_sizes(n: int, batch_size: int) -> torch.Tensor:
    """(n,) the batch size of each row when ``n`` rows arrive in consecutive steps of ``batch_size``."""
    sizes = torch.full((n,), batch_size, dtype=torch.long)
    if n % batch_size:
        sizes[-(n % batch_size) :] = n % batch_size
    return sizes


def head_gradients(head: torch.nn.Module, representation: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-text dL/d(representation) (n, d) of the device's head: W^T (softmax(W r + b) - onehot(y)),
    the row of one text's cross-entropy (multiply by 1 / batch size for a step's mean)."""
    r = representation.detach().float().requires_grad_(True)  # (n, d)
    with torch.enable_grad():
        loss = F.cross_entropy(head(r), labels.to(r.device), reduction="sum")  # texts are independent
        (grad,) = torch.autograd.grad(loss, r)
    return grad.detach()  # (n, d)


def observe_gradients(
    observation: Observation,
    top: torch.nn.Module,
    head: torch.nn.Module | None = None,
    batch_size: int = 8,
    num_labels: int | None = None,
    generator: torch.Generator | None = None,
) -> Observation:
    """Add the gradients the device would return on the head-on-device protocol: rows in consecutive
    steps of ``batch_size``, each dL/d(representation) of the step's mean cross-entropy through the
    device's ``head`` (so scaled by 1 / step size), the representation being ``top``'s output in eval mode.

    ``head``: the device's head, ``(b, d) -> (b, C)``; None: a fresh ``ClassifierHead`` of
    ``num_labels`` (default: ``observation.num_labels``, else labels.max() + 1) classes drawn from
    ``generator`` (default seed 0), i.e. the head at initialisation. Needs ``observation.labels``.
    Real runs should record ``grad_output`` during training instead (top and head then change between
    steps); this helper is for tests and quick studies.
    """
    if observation.labels is None:
        raise AttackUnavailable("observe_gradients needs the observation's task labels")
    representation = top_output(top, observation.hidden, observation.attention_mask)  # (n, d)
    if head is None:
        from client_sdk.models.ends import ClassifierHead

        c = num_labels or observation.num_labels or int(observation.labels.max()) + 1
        head = ClassifierHead(representation.shape[-1], c, generator or torch.Generator().manual_seed(0))
    with torch.no_grad():
        c = int(head(representation[:1]).shape[-1])
    sizes = step_sizes(observation.n, batch_size)  # (n,)
    grad = head_gradients(head, representation, observation.labels) / sizes.unsqueeze(1)  # (n, d)
    return replace(observation, grad_output=grad, grad_batch_size=sizes, num_labels=c)
