"""A3, attribute inference: a classifier on the pooled observed h~, trained on shadow (public) data.

Naive: trained on clean shadow representations, mean-pooled. Adaptive: on shadow text passed through
the victim's mechanism, and (``pooling='auto'`` -> 'precision' for noise mechanisms) each position
weighted by its detected precision 1 / (s + v_i) before pooling, v_i the noise variance of the level
read from its norm (``AttackKit.exposure_detector``) and s the mean within-text variance of clean
states, so the near-clean (exposed) positions dominate the pooled vector instead of the buried
noise. ASR = attribute accuracy on the observed texts; chance = their majority-attribute rate;
``details["asr_mean_pooling"]`` gives the mean-pooled figure alongside when precision pooling is used.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from client_sdk.audit import majority_rate, noise_variance

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

__all__ = ["a3_attribute", "precision_weights"]


@torch.no_grad()
def precision_weights(kit: AttackKit, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, T) weights 1 / (s + v_i) of the real positions of ``hidden`` (N, T, d) (0 at padding): v_i the
    per-coordinate noise variance of each position's detected level, s the mean per-coordinate variance
    of the clean public states (so noiseless positions get finite weight)."""
    real = attention_mask.bool()
    expected = kit.public_expected()
    spread = float(expected.hidden[expected.scored].float().var(dim=0).mean())
    scale = kit.exposure_detector().predict_scale(hidden[real].float()).cpu()
    weight = torch.zeros(real.shape)
    weight[real] = 1.0 / (spread + noise_variance(scale, kit.known.noise, hidden.shape[-1]) + 1e-12)
    return weight


def _pool(kit: AttackKit, obs: Observation, precision: bool) -> torch.Tensor:
    """(N, d) mean-pooled or precision-weighted pooled states of ``obs``."""
    if not precision:
        return pooled(obs.hidden, obs.attention_mask).cpu()
    return pooled(obs.hidden, precision_weights(kit, obs.hidden, obs.attention_mask)).cpu()


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
    pooling: str = "auto",
) -> list[AttackResult]:
    """A3 on every text of ``observation``; one result per threat model. ``generator`` (default seed 0)
    initialises the classifier (the same initialisation for each threat model). ``pooling``: 'auto'
    (precision-weighted for the adaptive attacker on a noise mechanism, else mean), 'mean' or 'precision'."""
    if observation.attribute is None or kit.public_attributes is None:
        raise AttackUnavailable("A3 needs attributes for the observation (scoring) and the public texts (training)")
    if pooling not in ("auto", "mean", "precision"):
        raise ValueError(f"pooling must be 'auto', 'mean' or 'precision', got {pooling!r}")
    seed = int(torch.randint(0, 2**62, (1,), generator=default_generator(generator)))
    results = []
    for model in check_threat_models(threat_models):
        started = time.perf_counter()
        shadow = kit.public(model)
        noisy = model == "adaptive" and kit.known.noise != "none"
        use = ("precision" if noisy else "mean") if pooling == "auto" else pooling
        if use == "precision" and not noisy:
            use = "mean"  # no noise level to weight by
        options = {"hidden_units": hidden_units, "epochs": epochs, "lr": lr, "weight_decay": weight_decay}
        fit = lambda precision, shadow=shadow, options=options: fit_predict(
            _pool(kit, shadow, precision), kit.public_attributes, _pool(kit, observation, precision),
            torch.Generator().manual_seed(seed), **options,
        )  # fmt: skip
        predicted = fit(use == "precision")
        asr = float((predicted == observation.attribute).float().mean())
        details = {"shadow_texts": shadow.n, "hidden_units": hidden_units, "epochs": epochs, "pooling": use}
        if use == "precision":
            details["asr_mean_pooling"] = float((fit(False) == observation.attribute).float().mean())
        details["seconds"] = round(time.perf_counter() - started, 3)
        results.append(AttackResult("A3", asr, majority_rate(observation.attribute), model, observation.n, details))
    return results
