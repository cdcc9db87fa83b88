"""A0-multiview: the per-level Bayes decoder on the average of every view the server received.

The server sees each text several times (each epoch, validation, inference) and links the views
(same length and mask). With fresh noise per send the zero-mean noise averages down: k distinct
views divide its variance by k (``client_sdk.audit.average_views``); identical re-sends (per-text
noise) count once (``distinct_views``). The level of each position is read from all k views together
(adaptive); the decoder is ``A0-bayes``'s with the noise variance divided by the number of distinct
views averaged.

``asr`` is the figure with all K views; ``details["asr_by_views"]``: the ASR with the first k views
for k = 1..K (for the threat models outside ``full_curve`` only k = 1 and K, None between: each k
costs a full-vocabulary decode), and ``details["distinct_views"]`` the mean number of distinct views
per text. Needs ``observation.views`` (else ``AttackUnavailable``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from client_sdk.audit import average_views, distinct_views

from ._levels import bayes_decode, confident_precision, detected_scale, exposure_report
from .base import THREAT_MODELS, AttackResult, AttackUnavailable, Observation, check_threat_models, token_result
from .kit import AttackKit

__all__ = ["a0_multiview"]


@torch.no_grad()
def a0_multiview(
    observation: Observation,
    kit: AttackKit,
    threat_models: str | Sequence[str] = THREAT_MODELS,
    generator: torch.Generator | None = None,
    *,
    spread: str = "pooled",
    shrinkage: float = 0.1,
    likelihood: str = "auto",
    max_views: int | None = None,
    confidence: float = 0.9,
    full_curve: Sequence[str] = ("adaptive",),
    atol: float = 0.05,
) -> list[AttackResult]:
    """A0-multiview on every scored token, with k = 1..K linked views; one result per threat model.

    ``max_views`` caps K (None: all). ``atol``: views of a text within this max-abs difference are one
    view re-sent (the wire's float16 rounding and the bottom's padding-dependent float error are
    ~1e-3; the noise is orders of magnitude larger), so per-text noise is not mistaken for K
    independent draws. Deterministic (``generator`` is unused)."""
    if observation.views is None:
        raise AttackUnavailable("A0-multiview needs every view of the attacked texts (observation.views)")
    views = observation.views if max_views is None else observation.views[:max_views]  # (K, n, t, d)
    scored = observation.scored  # (n, t)
    truth = observation.input_ids[scored]  # (m,)
    text_of = scored.nonzero()[:, 0]  # (m,) the text of each scored position
    results = []
    for model in check_threat_models(threat_models):
        started = time.perf_counter()
        curve, counts = [], []
        last = views.shape[0]
        for k in range(1, last + 1):
            if model not in full_curve and 1 < k < last:
                curve.append(None)
                counts.append(None)
                continue
            first = views[:k]
            rows_k = first[:, scored].float()  # (k, m, d)
            distinct = distinct_views(first, atol=atol)[text_of]  # (m,)
            mean = average_views(first, dedupe=True, atol=atol)[scored]  # (m, d)
            scale = detected_scale(kit, model, rows_k)
            ids, conf, form = bayes_decode(
                kit, model, mean, scale, views=1 if bool((distinct == 1).all()) else distinct.float(),
                likelihood=likelihood, spread=spread, shrinkage=shrinkage,
            )  # fmt: skip
            curve.append(round(float((ids.cpu() == truth).float().mean()), 6) if truth.numel() else 0.0)
            counts.append(round(float(distinct.float().mean()), 3) if distinct.numel() else 0.0)
        predicted = torch.zeros_like(observation.input_ids)  # (n, t)
        predicted[scored] = ids.cpu()
        details = {
            "views": int(views.shape[0]), "asr_by_views": curve, "distinct_views": counts, "likelihood": form,
            "confident": confident_precision(ids.cpu() == truth, conf.cpu(), confidence),
            **exposure_report(kit, model, rows_k, observation), "seconds": round(time.perf_counter() - started, 3),
        }  # fmt: skip
        results.append(token_result("A0-multiview", model, predicted, observation, details))
    return results
