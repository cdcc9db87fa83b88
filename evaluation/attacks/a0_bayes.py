"""A0-bayes: the best-response per-token decoder on one view (method.md section 9).

Each position's noise level is read from the norm of what was received (``ExposureDetector``,
adaptive only), then the token is decoded by ``client_sdk.audit.LevelBayesDecoder``: class means from
the mechanism's noiseless output on public text (adaptive; clean states for the naive attacker), the
pooled within-class spread plus the noise variance of the detected level, a log-frequency prior, and
(for Laplace noise, ``likelihood='auto'``) a re-rank of the top candidates with the Laplace likelihood.
A pooled covariance over levels 64x apart (A0-learned) is not a best response; this is.

Details: ``seconds``, ``classes``, ``coverage``; ``confident`` (precision at posterior >= 0.9 and its
share); adaptive: the detected levels, ``detected_exposed_share`` and, with ``observation.exposure``,
``exposure_accuracy``; and the ``by_class`` / ``by_exposure`` splits (``base.token_result``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from ._levels import bayes_decode, confident_precision, detected_scale, exposure_report
from .base import THREAT_MODELS, AttackResult, Observation, check_threat_models, token_result
from .kit import AttackKit

__all__ = ["a0_bayes"]


@torch.no_grad()
def a0_bayes(
    observation: Observation,
    kit: AttackKit,
    threat_models: str | Sequence[str] = THREAT_MODELS,
    generator: torch.Generator | None = None,
    *,
    spread: str = "pooled",
    shrinkage: float = 0.1,
    likelihood: str = "auto",
    fallback: bool = True,
    confidence: float = 0.9,
) -> list[AttackResult]:
    """A0-bayes on every scored token of ``observation`` (view 0); one result per threat model.

    Deterministic given the kit (``generator`` is accepted for a uniform signature and unused)."""
    results = []
    scored = observation.scored  # (n, t)
    truth = observation.input_ids[scored]  # (m,)
    rows = observation.hidden[scored].float()  # (m, d)
    for model in check_threat_models(threat_models):
        started = time.perf_counter()
        decoder = kit.bayes_decoder(model, spread=spread, shrinkage=shrinkage, fallback=fallback)
        scale = detected_scale(kit, model, rows)  # (m,) or None
        ids, conf, form = bayes_decode(
            kit, model, rows, scale, likelihood=likelihood, spread=spread, shrinkage=shrinkage, fallback=fallback
        )
        predicted = torch.zeros_like(observation.input_ids)  # (n, t)
        predicted[scored] = ids.cpu()
        details = {
            "classes": int(decoder.classes.numel()), "coverage": decoder.coverage(truth), "spread": spread,
            "likelihood": form, "confident": confident_precision(ids.cpu() == truth, conf.cpu(), confidence),
            **exposure_report(kit, model, rows, observation), "seconds": round(time.perf_counter() - started, 3),
        }  # fmt: skip
        results.append(token_result("A0-bayes", model, predicted, observation, details))
    return results
