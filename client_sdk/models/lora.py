"""Low-rank adapters for the device's own trainable end (the SDK does not depend on peft).

``LoRALinear`` wraps a frozen ``nn.Linear``: y = W x + (alpha / r) * B A x, with A drawn from the
device's generator and B = 0, so an adapter starts as the base layer and only A, B train.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable rank-``r`` update."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.scale = alpha / r
        weight = base.weight
        a = torch.empty(r, base.in_features, dtype=weight.dtype)
        bound = 1.0 / math.sqrt(base.in_features)  # kaiming-uniform(a=sqrt(5)), as nn.Linear and peft do
        a.uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(a.to(weight.device))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=weight.dtype, device=weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., in) -> (..., out)."""
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scale


def add_lora(
    module: nn.Module, targets: tuple[str, ...], r: int, alpha: float, generator: torch.Generator | None = None
) -> list[str]:
    """Replace every ``nn.Linear`` child of ``module`` whose name is in ``targets`` by a :class:`LoRALinear`;
    returns the qualified names replaced (``ValueError`` if none matched)."""
    replaced = []
    for name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                setattr(parent, child_name, LoRALinear(child, r, alpha, generator))
                replaced.append(f"{name}.{child_name}" if name else child_name)
    if not replaced:
        raise ValueError(f"no linear layer named one of {list(targets)} to adapt")
    return replaced
