"""A small classifier for the attribute attacks: standardised features, MLP (or logistic regression), full-batch Adam."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fit_predict(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    generator: torch.Generator,
    *,
    hidden_units: int = 64,
    epochs: int = 200,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
) -> torch.Tensor:
    """Train on ``train_x`` (n, f) with integer labels ``train_y`` (n,) and predict labels for ``test_x`` (m, f): (m,).

    Features are standardised with the training mean and std. ``hidden_units`` 0 gives logistic
    regression. Weights are initialised from ``generator``; training is deterministic on CPU.
    """
    classes, y = torch.unique(train_y, return_inverse=True)
    if classes.numel() < 2:
        return classes.expand(test_x.shape[0]).clone()
    mean, std = train_x.mean(dim=0), train_x.std(dim=0).clamp_min(1e-6)
    x, xt = (train_x.float() - mean) / std, (test_x.float() - mean) / std  # (n, f), (m, f)
    f, c = x.shape[1], classes.numel()
    model = (
        nn.Sequential(nn.Linear(f, hidden_units), nn.ReLU(), nn.Linear(hidden_units, c))
        if hidden_units
        else nn.Linear(f, c)
    )
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / layer.in_features**0.5)
                layer.bias.zero_()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return classes[model(xt).argmax(dim=-1)]
