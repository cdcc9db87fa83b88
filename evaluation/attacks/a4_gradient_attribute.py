"""A4, gradient-based attribute inference: a classifier on what the gradients reveal, trained on shadow data.

Observed features per text: u = its dL/d(logits) row times its step's batch size (= softmax - onehot(y)
for cross-entropy) and, with ``features="grad+outer"`` (default), u (x) pooled(h~): the per-text
gradient of a linear head on the pooled split-layer states (what the server can compute from the
rows and h~). Shadow features: the public texts (clean for naive, through the mechanism for adaptive)
run through the same top model (``kit.top``, eval mode) with their public task labels. The top the
shadow data meets is the kit's (usually the final one), whereas observed rows were produced during
training: an approximation in the server's disfavour.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from client_sdk.audit import majority_rate

from ._classifier import fit_predict
from .base import (
    THREAT_MODELS,
    AttackResult,
    AttackUnavailable,
    Observation,
    check_threat_models,
    default_generator,
    pooled,
)
from .kit import AttackKit, top_logits

__all__ = ["a4_gradient_attribute"]


def _features(u: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """(n, c) per-text logit gradients -> (n, c) or (n, c + c * d) features."""
    if kind == "grad":
        return u
    outer = u.unsqueeze(-1) * pooled(hidden, mask).cpu().unsqueeze(1)  # (n, c, d)
    return torch.cat([u, outer.flatten(1)], dim=1)


def _shadow_gradients(kit: AttackKit, shadow: Observation) -> torch.Tensor:
    """Per-text dL/d(logits) (n, c) of the shadow texts through ``kit.top`` with their public labels."""
    logits = top_logits(kit.top, shadow.hidden, shadow.attention_mask)  # (n, c)
    return logits.softmax(dim=-1) - F.one_hot(kit.public_labels, logits.shape[-1]).float()


def a4_gradient_attribute(
    observation: Observation,
    kit: AttackKit,
    threat_models: str | Sequence[str] = THREAT_MODELS,
    generator: torch.Generator | None = None,
    *,
    features: str = "grad+outer",
    hidden_units: int = 64,
    epochs: int = 200,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
) -> list[AttackResult]:
    """A4 on every text of ``observation``; one result per threat model. Needs ``grad_output``,
    ``kit.top``, public attributes and public task labels. ``generator`` (default seed 0) initialises
    the classifier."""
    if features not in ("grad", "grad+outer"):
        raise ValueError(f"features must be 'grad' or 'grad+outer', got {features!r}")
    if observation.attribute is None or observation.grad_output is None:
        raise AttackUnavailable("A4 needs recorded grad_output and the observation's attributes (scoring)")
    if kit.top is None or kit.public_attributes is None or kit.public_labels is None:
        raise AttackUnavailable("A4 needs the server's top model and public attributes and task labels")
    seed = int(torch.randint(0, 2**62, (1,), generator=default_generator(generator)))
    observed = _features(
        observation.per_sample_gradient().float().cpu(), observation.hidden, observation.attention_mask, features
    )
    results = []
    for model in check_threat_models(threat_models):
        started = time.perf_counter()
        shadow = kit.public(model)
        train = _features(_shadow_gradients(kit, shadow), shadow.hidden, shadow.attention_mask, features)
        predicted = fit_predict(
            train, kit.public_attributes, observed, torch.Generator().manual_seed(seed),
            hidden_units=hidden_units, epochs=epochs, lr=lr, weight_decay=weight_decay,
        )  # fmt: skip
        asr = float((predicted == observation.attribute).float().mean())
        details = {"features": features, "shadow_texts": shadow.n, "seconds": round(time.perf_counter() - started, 3)}
        results.append(AttackResult("A4", asr, majority_rate(observation.attribute), model, observation.n, details))
    return results
