"""A3, attribute inference: a classifier on the pooled observed h~, trained on shadow (public) data.

Naive: trained on clean shadow representations, mean-pooled. Adaptive: on shadow text passed through
the victim's mechanism, pooled by the noise level read from each position's norm
(``AttackKit.exposure_detector``): 'levels' (``pooling='auto'`` for noise mechanisms) concatenates the
mean of each level's positions, so the classifier weighs near-clean and buried positions itself;
'precision' weights each position by 1 / (s + v_i) (v_i its level's noise variance, s the clean
states' variance) before one mean, which lets the exposed positions dominate; 'mean' ignores the
levels. Precision weighting is not always better: when the attribute lives in the buried words (the
importance map exposes label words), it drowns them. ASR = attribute accuracy on the observed texts;
chance = their majority-attribute rate; for noise mechanisms ``details`` also give the other two
poolings' ASR (``asr_mean_pooling`` ...), computed alongside, not chosen after the fact.
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

__all__ = ["a3_attribute", "level_pooled", "precision_weights"]


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


@torch.no_grad()
def level_pooled(kit: AttackKit, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, L * d) the mean of each text's real positions at each detected noise level, concatenated
    (zeros for a level a text has no position at): the classifier weighs the near-clean and the
    buried positions itself, which precision weighting fixes at 1 / variance."""
    real = attention_mask.bool()
    detector = kit.exposure_detector()
    level = torch.full(real.shape, -1, dtype=torch.long)
    level[real] = detector.predict_level(hidden[real].float()).cpu()
    parts = [pooled(hidden, (level == k).long()).cpu() for k in range(detector.levels.numel())]  # each (n, d)
    return torch.cat(parts, dim=1)


def _pool(kit: AttackKit, obs: Observation, pooling: str) -> torch.Tensor:
    """(N, f) the pooled states of ``obs``: 'mean', 'precision' (weighted) or 'levels' (per-level means)."""
    if pooling == "levels":
        return level_pooled(kit, obs.hidden, obs.attention_mask)
    if pooling == "precision":
        return pooled(obs.hidden, precision_weights(kit, obs.hidden, obs.attention_mask)).cpu()
    return pooled(obs.hidden, obs.attention_mask).cpu()


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
    ('levels' for the adaptive attacker on a noise mechanism, else 'mean'), 'mean', 'precision' or
    'levels' (the last two need the noise level: the naive attacker falls back to 'mean')."""
    if observation.attribute is None or kit.public_attributes is None:
        raise AttackUnavailable("A3 needs attributes for the observation (scoring) and the public texts (training)")
    if pooling not in ("auto", "mean", "precision", "levels"):
        raise ValueError(f"pooling must be 'auto', 'mean', 'precision' or 'levels', got {pooling!r}")
    seed = int(torch.randint(0, 2**62, (1,), generator=default_generator(generator)))
    results = []
    for model in check_threat_models(threat_models):
        started = time.perf_counter()
        shadow = kit.public(model)
        noisy = model == "adaptive" and kit.known.noise != "none"
        use = ("levels" if noisy else "mean") if pooling == "auto" else pooling
        if not noisy:
            use = "mean"  # no noise level to weight or split by
        options = {"hidden_units": hidden_units, "epochs": epochs, "lr": lr, "weight_decay": weight_decay}
        rate = lambda how, shadow=shadow, options=options: float(
            (
                fit_predict(
                    _pool(kit, shadow, how), kit.public_attributes, _pool(kit, observation, how),
                    torch.Generator().manual_seed(seed), **options,
                )
                == observation.attribute
            ).float().mean()
        )  # fmt: skip
        asr = rate(use)
        details = {"shadow_texts": shadow.n, "hidden_units": hidden_units, "epochs": epochs, "pooling": use}
        if noisy:  # the other poolings alongside (the attacker's choice is ``pooling``, fixed in advance)
            details.update({f"asr_{how}_pooling": rate(how) for how in ("mean", "precision", "levels") if how != use})
        details["seconds"] = round(time.perf_counter() - started, 3)
        results.append(AttackResult("A3", asr, majority_rate(observation.attribute), model, observation.n, details))
    return results
