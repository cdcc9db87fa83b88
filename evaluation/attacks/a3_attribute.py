"""A3, attribute inference: a classifier on the mean-pooled observed h~, trained on shadow (public) data.

Naive: trained on clean shadow representations; adaptive: on shadow text passed through the victim's
mechanism. ASR = attribute accuracy on the observed texts; chance = their majority-attribute rate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

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
from .kit import AttackKit

__all__ = ["a3_attribute"]


def a3_attribute(
    observation: Observation,
    kit: AttackKit,
    threat_models: str | Sequence[str] = THREAT_MODELS,
    generator: torch.Generator | None = None,
    *,
    hidden_units: int = 64,
    epochs: int = 200,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
) -> list[AttackResult]:
    """A3 on every text of ``observation``; one result per threat model. ``generator`` (default seed 0)
    initialises the classifier (the same initialisation for each threat model)."""
    if observation.attribute is None or kit.public_attributes is None:
        raise AttackUnavailable("A3 needs attributes for the observation (scoring) and the public texts (training)")
    seed = int(torch.randint(0, 2**62, (1,), generator=default_generator(generator)))
    features = pooled(observation.hidden, observation.attention_mask).cpu()  # (n, d)
    results = []
    for model in check_threat_models(threat_models):
        started = time.perf_counter()
        shadow = kit.public(model)
        train = pooled(shadow.hidden, shadow.attention_mask).cpu()  # (n_pub, d)
        predicted = fit_predict(
            train, kit.public_attributes, features, torch.Generator().manual_seed(seed),
            hidden_units=hidden_units, epochs=epochs, lr=lr, weight_decay=weight_decay,
        )  # fmt: skip
        asr = float((predicted == observation.attribute).float().mean())
        details = {"shadow_texts": int(train.shape[0]), "hidden_units": hidden_units, "epochs": epochs,
                   "seconds": round(time.perf_counter() - started, 3)}  # fmt: skip
        results.append(AttackResult("A3", asr, majority_rate(observation.attribute), model, observation.n, details))
    return results
