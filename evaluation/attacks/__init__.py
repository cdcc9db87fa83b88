"""The paper's attacks (method.md section 7), one small module each, under two threat models.

Every attack has the signature ``attack(observation, kit, threat_models=("naive", "adaptive"),
generator=None, **options) -> list[AttackResult]`` (one result per threat model), runs batched
tensor code with bounded cost, and raises ``AttackUnavailable`` when the observation or kit lacks
what it needs (attributes, gradients, the top model)::

    kit = AttackKit.from_privatizer(privatizer, public_texts, public_attributes=..., public_labels=..., top=top)
    obs = observe(privatizer, private_texts, attributes=..., labels=...)   # or the harness's recording
    obs = observe_gradients(obs, top, head)                                # A1 / A1-label
    results = run_attacks(obs, kit)                                        # every attack that can run

The protocol is U-shaped: the server's top returns the pooled representation (b, d), the device's
private head classifies it, and the device returns dL/d(representation) rows (b, d). No logits,
loss, label or head weights reach the server.

============ =========================================================== ==================
name         attack                                                      scored on
============ =========================================================== ==================
A0-opt       inversion by optimisation through the bottom; adaptive:     tokens (subset)
             per-position noise likelihood, full vocabulary, Bayes start
A0-learned   linear-discriminant token classifier fitted on public text  tokens
A0-bayes     noise level read from each norm + per-level Bayes decoder   tokens
A0-multiview A0-bayes on the average of every linked view (k = 1..K)     tokens
A0-context   sequence model over the received states (fresh noise each   tokens
             epoch), starting from the Bayes posterior
A1           DLG: match per-text parameter gradients of the server's top tokens (subset)
A1-label     k-means on the returned dL/d(representation) rows, k = C;   texts
             best one-to-one cluster -> label matching (an upper bound)
A2           nearest split-layer prototype (cosine)                      tokens
A3           attribute classifier on pooled h~ (adaptive: precision-     texts
             weighted pooling by the detected noise level)
A3-top       attribute classifier on the server's top output             texts
A4           (not applicable: shadow gradients need the device's head)   -
A5           K-means on pooled h~, clusters named by shadow attributes   texts
============ =========================================================== ==================

Every token attack's details carry ``by_class`` (content / function / punctuation) and
``by_exposure`` (exposed / buried) splits when the observation carries ``token_class`` / ``exposure``
truth (``base.token_result``). The best-response attacks (method.md section 9) use the adaptive
attacker's shadow of the mechanism, refitted on public text (``AttackKit.from_privatizer(refit=True)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .a0_bayes import a0_bayes
from .a0_context import a0_context
from .a0_learned import a0_learned
from .a0_multiview import a0_multiview
from .a0_optimisation import a0_optimisation
from .a1_gradient import a1_gradient_inversion
from .a1_label import a1_label_clustering
from .a2_nearest import a2_nearest_prototype
from .a3_attribute import a3_attribute
from .a3_top import a3_top
from .a4_gradient_attribute import a4_gradient_attribute
from .a5_kmeans import a5_kmeans
from .base import THREAT_MODELS, AttackResult, AttackUnavailable, Observation, check_threat_models
from .kit import AttackKit, KnownMechanism, observe, observe_gradients, top_output

__all__ = [
    "ATTACKS",
    "THREAT_MODELS",
    "AttackKit",
    "AttackResult",
    "AttackUnavailable",
    "KnownMechanism",
    "Observation",
    "a0_bayes",
    "a0_context",
    "a0_learned",
    "a0_multiview",
    "a0_optimisation",
    "a1_gradient_inversion",
    "a1_label_clustering",
    "a2_nearest_prototype",
    "a3_attribute",
    "a3_top",
    "a4_gradient_attribute",
    "a5_kmeans",
    "observe",
    "observe_gradients",
    "run_attacks",
    "top_output",
]

Attack = Callable[..., list[AttackResult]]

ATTACKS: dict[str, Attack] = {
    "A0-opt": a0_optimisation,
    "A0-learned": a0_learned,
    "A0-bayes": a0_bayes,
    "A0-multiview": a0_multiview,
    "A0-context": a0_context,
    "A1": a1_gradient_inversion,
    "A1-label": a1_label_clustering,
    "A2": a2_nearest_prototype,
    "A3": a3_attribute,
    "A3-top": a3_top,
    "A4": a4_gradient_attribute,
    "A5": a5_kmeans,
}
"""Attack name -> function, in method.md order."""

_SEED_ORDER = ("A0-opt", "A0-learned", "A1", "A1-label", "A2", "A3", "A4", "A5", "A0-bayes", "A0-multiview",
               "A0-context", "A3-top")  # fmt: skip
"""The order the runner draws per-attack seeds in: the older attacks first, so adding one changes no seed."""


def run_attacks(
    observation: Observation,
    kit: AttackKit,
    names: Sequence[str] | None = None,
    threat_models: str | Sequence[str] = THREAT_MODELS,
    generator: torch.Generator | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    skip_unavailable: bool = True,
) -> list[AttackResult]:
    """Run the attacks ``names`` (default: all of ``ATTACKS``) and concatenate their results.

    ``options`` maps an attack name to its keyword options. Each attack gets its own generator seeded
    from ``generator`` (default seed 0), so results do not depend on which others ran. An attack that
    raises ``AttackUnavailable`` is skipped when ``skip_unavailable`` (else the error propagates).
    """
    names = list(ATTACKS) if names is None else list(names)
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attacks {unknown}; known: {list(ATTACKS)}")
    models = check_threat_models(threat_models)
    base = generator if generator is not None else torch.Generator().manual_seed(0)
    seeds = torch.randint(0, 2**62, (len(_SEED_ORDER),), generator=base).tolist()
    results: list[AttackResult] = []
    for name in names:
        g = torch.Generator().manual_seed(seeds[_SEED_ORDER.index(name)])
        try:
            results += ATTACKS[name](observation, kit, models, g, **dict((options or {}).get(name, {})))
        except AttackUnavailable:
            if not skip_unavailable:
                raise
    return results
