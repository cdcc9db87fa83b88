"""A0, learned inversion: a token classifier trained on public text representations.

The model is ``client_sdk.audit.TokenDiscriminant`` (class-conditional Gaussians with one shared,
shrunk covariance: a linear discriminant; method.md section 8; the on-device audit uses the same),
fitted on the real, non-special tokens of the kit's public texts:

- naive: clean representations (means and covariance);
- adaptive: the victim's mechanism applied to them: class means from the mechanism's noiseless output
  (the attacker can compute it: Kerckhoffs), covariance from its noisy output around those means.

Classes are the tokens seen in the public text; with ``fallback`` (default) every other vocabulary
token is an extra class centred on its prototype (adaptive: the prototype's noiseless mechanism
output) with prior weight ``fallback_count``. Without it, a token never seen in public text is a miss.
``details["coverage"]`` is the fraction of scored tokens seen in the public text.
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
    fallback: bool = True,
    fallback_count: float = 0.5,
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
        options = {"shrinkage": shrinkage, "prior": prior, "fallback_count": fallback_count}
        if model == "adaptive":
            options["mean_hidden"] = kit.public_expected().hidden[keep]
        if fallback:
            protos = kit.attack_prototypes(model)
            options.update(fallback_ids=torch.arange(protos.shape[0]), fallback_means=protos)
        lda = TokenDiscriminant.fit(public.hidden[keep], public.input_ids[keep], **options)
        predicted = torch.zeros_like(observation.input_ids)  # (n, t)
        predicted[scored] = lda.predict(observation.hidden[scored].to(kit.device)).cpu()
        details = {
            "classes": int(lda.classes.numel()), "coverage": lda.coverage(truth), "public_tokens": int(keep.sum()),
            "shrinkage": shrinkage, "prior": prior, "fallback": fallback, "seconds": round(time.perf_counter() - started, 3),
        }  # fmt: skip
        results.append(token_result("A0-learned", model, predicted, observation, details))
    return results
