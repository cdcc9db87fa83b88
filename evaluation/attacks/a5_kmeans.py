"""A5, unsupervised attribute inference: K-means on the pooled observed h~, clusters named by shadow data.

K = the number of attribute values in the shadow data. The observed texts' mean-pooled h~
(standardised with their own statistics) are clustered; each shadow text (clean for naive, through
the mechanism for adaptive, standardised the same way) is assigned to its nearest centre, and each
cluster takes the majority shadow attribute of its members (a cluster with no shadow member takes
the overall shadow majority). ASR = attribute accuracy; chance = the majority-attribute rate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from client_sdk.audit import majority_rate
from client_sdk.privacy.state import kmeans

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

__all__ = ["a5_kmeans", "best_kmeans"]


def best_kmeans(points: torch.Tensor, k: int, generator: torch.Generator, restarts: int, iters: int) -> torch.Tensor:
    """Centres (k, f) of the lowest-inertia run among ``restarts`` k-means++ runs."""
    best, best_inertia = None, float("inf")
    for _ in range(restarts):
        centres = kmeans(points, k, generator, iters=iters)  # (k, f)
        inertia = float(torch.cdist(points, centres).min(dim=1).values.pow(2).sum())
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
    return best


def a5_kmeans(
    observation: Observation,
    kit: AttackKit,
    threat_models: str | Sequence[str] = THREAT_MODELS,
    generator: torch.Generator | None = None,
    *,
    restarts: int = 4,
    iters: int = 50,
) -> list[AttackResult]:
    """A5 on every text of ``observation``; one result per threat model (only the cluster naming
    differs between them). ``generator`` (default seed 0) seeds k-means++."""
    if observation.attribute is None or kit.public_attributes is None:
        raise AttackUnavailable("A5 needs attributes for the observation (scoring) and the public texts (naming)")
    started = time.perf_counter()
    x = pooled(observation.hidden, observation.attention_mask).cpu().double()  # (n, d)
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    values = torch.unique(kit.public_attributes)
    k = int(values.numel())
    centres = best_kmeans((x - mean) / std, k, default_generator(generator), restarts, iters)  # (k, d)
    cluster = torch.cdist((x - mean) / std, centres).argmin(dim=1)  # (n,)
    fallback = int(torch.mode(kit.public_attributes).values)
    clustering_s = time.perf_counter() - started
    results = []
    for model in check_threat_models(threat_models):
        started = time.perf_counter()
        shadow = kit.public(model)
        s = (pooled(shadow.hidden, shadow.attention_mask).cpu().double() - mean) / std  # (n_pub, d)
        shadow_cluster = torch.cdist(s, centres).argmin(dim=1)  # (n_pub,)
        counts = torch.zeros(k, int(values.max()) + 1, dtype=torch.long)
        counts.index_put_((shadow_cluster, kit.public_attributes), torch.ones_like(shadow_cluster), accumulate=True)
        names = torch.where(counts.sum(dim=1) > 0, counts.argmax(dim=1), torch.full((k,), fallback))  # (k,)
        asr = float((names[cluster] == observation.attribute).float().mean())
        details = {"k": k, "restarts": restarts, "seconds": round(clustering_s + time.perf_counter() - started, 3)}
        results.append(AttackResult("A5", asr, majority_rate(observation.attribute), model, observation.n, details))
    return results
