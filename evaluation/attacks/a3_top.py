"""A3-top, attribute inference through the server's own top model.

The server holds its top (the middle layers it fine-tunes; ``AttackKit.top``), whose output is the
pooled representation the device's head classifies: a feature extractor trained on the very task,
and one that has learned to read the noisy states. A3-top runs it (eval mode, ``top_output``) on the
shadow texts (clean for the naive attacker, through the mechanism for the adaptive one) and on the
observed texts, and trains the A3 classifier on those features. Needs ``kit.top`` and attributes
(else ``AttackUnavailable``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from client_sdk.audit import majority_rate

from ._classifier import fit_predict
from .base import THREAT_MODELS, AttackResult, AttackUnavailable, Observation, check_threat_models, default_generator
from .gradients import top_output
from .kit import AttackKit

__all__ = ["a3_top"]


def a3_top(
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
    """A3-top on every text of ``observation``; one result per threat model (``generator``, default
    seed 0, initialises the classifier)."""
    if observation.attribute is None or kit.public_attributes is None:
        raise AttackUnavailable("A3-top needs attributes for the observation (scoring) and the public texts (training)")
    if kit.top is None:
        raise AttackUnavailable("A3-top needs the server's top model (kit.top)")
    seed = int(torch.randint(0, 2**62, (1,), generator=default_generator(generator)))
    features = top_output(kit.top, observation.hidden, observation.attention_mask)  # (n, d_out)
    results = []
    for model in check_threat_models(threat_models):
        started = time.perf_counter()
        key = f"top_features_{model}"
        if key not in kit.cache:
            shadow = kit.public(model)
            kit.cache[key] = top_output(kit.top, shadow.hidden, shadow.attention_mask)  # (n_pub, d_out)
        predicted = fit_predict(
            kit.cache[key], kit.public_attributes, features, torch.Generator().manual_seed(seed),
            hidden_units=hidden_units, epochs=epochs, lr=lr, weight_decay=weight_decay,
        )  # fmt: skip
        asr = float((predicted == observation.attribute).float().mean())
        details = {"shadow_texts": int(kit.cache[key].shape[0]), "feature_dim": int(features.shape[1]),
                   "seconds": round(time.perf_counter() - started, 3)}  # fmt: skip
        results.append(AttackResult("A3-top", asr, majority_rate(observation.attribute), model, observation.n, details))
    return results
