"""A0, learned inversion: a token classifier trained on public text representations.

The model is ``client_sdk.audit.TokenDiscriminant`` (class-conditional Gaussians with one shared,
shrunk covariance: a linear discriminant; method.md section 8), fitted on the real, non-special tokens
of the kit's public texts: clean representations for the naive attacker, the victim's mechanism
applied to them for the adaptive one. Its output vocabulary is the set of tokens seen in the public
text (speed, and a class needs a mean); a scored token never seen there counts as a miss, and
``details["coverage"]`` reports the fraction of scored tokens that could be predicted at all.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from client_sdk.audit import TokenDiscriminant

from .base import THREAT_MODELS, AttackResult, Observation, check_threat_models, token_result
from .kit import AttackKit

__all__ = ["a0_learned"]


@torch.no_grad()
def a0_learned(
    observation: Observation,
    kit: AttackKit,
    threat_models: str | Sequence[str] = THREAT_MODELS,
    generator: torch.Generator | None = None,
    *,
    shrinkage: float = 0.1,
    prior: str = "empirical",
) -> list[AttackResult]:
    """Learned inversion on every scored token of ``observation``; one result per threat model.

    Deterministic given the kit (``generator`` is accepted for a uniform signature and unused).
    """
    results = []
    scored = observation.scored  # (n, t)
    truth = observation.input_ids[scored]
    for model in check_threat_models(threat_models):
        started = time.perf_counter()
        public = kit.public(model)
        keep = public.scored  # (n_pub, t_pub)
        lda = TokenDiscriminant.fit(public.hidden[keep], public.input_ids[keep], shrinkage=shrinkage, prior=prior)
        predicted = torch.zeros_like(observation.input_ids)  # (n, t)
        predicted[scored] = lda.predict(observation.hidden[scored]).cpu()
        details = {
            "classes": int(lda.classes.numel()), "coverage": lda.coverage(truth), "public_tokens": int(keep.sum()),
            "shrinkage": shrinkage, "prior": prior, "seconds": round(time.perf_counter() - started, 3),
        }  # fmt: skip
        results.append(token_result("A0-learned", model, predicted, observation, details))
    return results
