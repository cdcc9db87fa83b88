"""A2, nearest neighbour: each observed token is the vocabulary token with the most cosine-similar prototype.

The math is ``client_sdk.audit.nearest_prototype`` (the on-device audit runs the same attack).
Naive: the bottom's raw prototypes. Adaptive: prototypes passed through the mechanism's deterministic
part (the OPT-3 shift of each token alone; clipping leaves cosine unchanged, so for noise-only
mechanisms the two threat models coincide). The lone-token shift is not the in-context one, so the
adaptive A2 can score below the naive one (minilm-l6, privtune eta=20: 0.45 vs 0.49); the adaptive
learned A0 is the Kerckhoffs attacker to watch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from client_sdk.audit import nearest_prototype

from .base import THREAT_MODELS, AttackResult, Observation, check_threat_models, token_result
from .kit import AttackKit

__all__ = ["a2_nearest_prototype"]


@torch.no_grad()
def a2_nearest_prototype(
    observation: Observation,
    kit: AttackKit,
    threat_models: str | Sequence[str] = THREAT_MODELS,
    generator: torch.Generator | None = None,
    *,
    block_size: int = 4096,
) -> list[AttackResult]:
    """A2 on every scored token of ``observation``: top-1 recovery, one result per threat model.

    Deterministic (``generator`` is accepted for a uniform signature and unused).
    """
    results = []
    scored = observation.scored  # (n, t)
    for model in check_threat_models(threat_models):
        started = time.perf_counter()
        protos = kit.attack_prototypes(model)  # (V, d)
        predicted = torch.zeros_like(observation.input_ids)  # (n, t)
        rows = observation.hidden[scored].to(kit.device)  # (n_scored, d)
        predicted[scored] = nearest_prototype(rows, protos, block_size=block_size).cpu()
        details = {"vocabulary": int(protos.shape[0]), "seconds": round(time.perf_counter() - started, 3)}
        results.append(token_result("A2", model, predicted, observation, details))
    return results
