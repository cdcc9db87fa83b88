"""What the best-response token attacks share: the noise level each observed position is read at,
how well that reading matches the truth, and how precise the attacker is where it is confident.

Naive threat model: the noise is unknown, so no level (None: the decoder treats rows as noiseless).
Adaptive: the kit's ``ExposureDetector`` (fitted on public text through the shadow mechanism) reads
the level of each position from the norm of what was received (of every view, when given several).
"""

from __future__ import annotations

from typing import Any

import torch

from client_sdk.audit import LevelBayesDecoder

from .base import Observation
from .kit import AttackKit

__all__ = ["bayes_decode", "confident_precision", "decode_likelihood", "detected_scale", "exposure_report"]


def detected_scale(kit: AttackKit, threat_model: str, rows: torch.Tensor) -> torch.Tensor | None:
    """(n,) the detected per-coordinate noise scale of ``rows`` (n, d) or (K, n, d) (K views of the same
    positions), None for the naive attacker or a mechanism without noise."""
    if threat_model == "naive" or kit.known.noise == "none":
        return None
    return kit.exposure_detector().predict_scale(rows.float()).cpu()


def exposure_report(kit: AttackKit, threat_model: str, rows: torch.Tensor, observation: Observation) -> dict[str, Any]:
    """Detection figures for the scored ``rows`` (n, d) or (K, n, d) of ``observation``: the levels, the
    share detected as exposed (least noisy level) and, with ``observation.exposure``, the accuracy of
    that reading against the truth and the true exposed share. Empty for the naive attacker."""
    if threat_model == "naive" or kit.known.noise == "none":
        return {}
    detector = kit.exposure_detector()
    level = detector.predict_level(rows.float()).cpu()  # (n,)
    exposed = level == 0 if detector.exposed_level is not None else torch.zeros_like(level, dtype=torch.bool)
    out: dict[str, Any] = {
        "levels": [round(float(v), 6) for v in detector.levels],
        "detected_exposed_share": round(float(exposed.float().mean()), 6) if exposed.numel() else 0.0,
    }
    if observation.exposure is not None:
        truth = observation.exposure[observation.scored].bool().cpu()
        out["exposure_accuracy"] = round(float((exposed == truth).float().mean()), 6) if truth.numel() else 0.0
        out["true_exposed_share"] = round(float(truth.float().mean()), 6) if truth.numel() else 0.0
    return out


def confident_precision(hits: torch.Tensor, confidence: torch.Tensor, threshold: float) -> dict[str, Any]:
    """Attacker precision where it is confident: the hit rate at positions with posterior >= ``threshold``
    and their share of the scored positions (precision None when there are none)."""
    sure = confidence >= threshold
    share = float(sure.float().mean()) if sure.numel() else 0.0
    precision = round(float(hits[sure].float().mean()), 6) if bool(sure.any()) else None
    return {"threshold": threshold, "precision": precision, "share": round(share, 6)}


def decode_likelihood(decoder: LevelBayesDecoder, likelihood: str) -> str:
    """'auto' -> 'laplace' (re-rank with the exact noise form) for Laplace noise, else 'gaussian'."""
    if likelihood == "auto":
        return "laplace" if decoder.noise == "laplace" else "gaussian"
    return likelihood


def _fingerprint(value: torch.Tensor | float | int | None) -> tuple:
    """A cheap content key of a tensor (shape, sum, sum of squares, a strided sample) or a number."""
    if value is None or not torch.is_tensor(value):
        return (value,)
    flat = value.detach().reshape(-1).double()
    sample = flat[:: max(1, flat.numel() // 64)][:64]
    return (tuple(value.shape), float(flat.sum()), float(flat.pow(2).sum()), tuple(sample.tolist()))


@torch.no_grad()
def bayes_decode(
    kit: AttackKit,
    threat_model: str,
    rows: torch.Tensor,
    scale: torch.Tensor | None,
    *,
    views: torch.Tensor | int | float = 1,
    likelihood: str = "auto",
    spread: str = "pooled",
    shrinkage: float = 0.1,
    fallback: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(token ids (n,), confidence (n,), likelihood used) of the kit's per-level Bayes decoder on ``rows``
    (n, d) at ``scale`` (n,) over ``views``; memoised in the kit by content, so the attacks that decode
    the same rows (A0-bayes, A0-multiview at k = 1, A0-context's fallback) pay once."""
    decoder = kit.bayes_decoder(threat_model, spread=spread, shrinkage=shrinkage, fallback=fallback)
    form = decode_likelihood(decoder, likelihood)
    memo = kit.cache.setdefault("bayes_decoded", {})
    key = (
        threat_model,
        form,
        spread,
        shrinkage,
        fallback,
        _fingerprint(rows),
        _fingerprint(scale),
        _fingerprint(views),
    )
    if key not in memo:
        if len(memo) >= 64:
            memo.pop(next(iter(memo)))
        ids, conf = decoder.predict(rows, scale, views=views, likelihood=form)
        memo[key] = (ids.cpu(), conf.cpu())
    ids, conf = memo[key]
    return ids, conf, form
