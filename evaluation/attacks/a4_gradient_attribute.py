"""A4, attribute inference from the returned gradients: not applicable on the head-on-device protocol.

On the old protocol A4 trained an attribute classifier on shadow gradients: public texts run through
the server's top and its head, with their public labels, gave dL/d(logits) rows (and their outer
product with the pooled states) in the same coordinates as the observed rows. With the head on the
device the server holds neither W, nor its bias, nor the device's softmax, so it cannot compute a
single shadow row, and a classifier trained on anything else does not live in the observed rows'
coordinates. What a row carries beyond the label (``a1_label``: the rows cluster by label) is the
head's confidence, a (C-1)-dimensional function of the pooled representation that the server
computes itself, which A3 and A5 (attribute inference on h~) already attack with shadow data. So
``a4_gradient_attribute`` always raises ``AttackUnavailable`` with that reason: the harness records
it as the result row's ``skipped``, with ``asr`` None.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import THREAT_MODELS, AttackResult, AttackUnavailable, Observation
from .kit import AttackKit

__all__ = ["A4_SKIPPED", "a4_gradient_attribute"]

A4_SKIPPED = (
    "not applicable on the head-on-device protocol: shadow gradients need the device's private head "
    "(the server never holds W), and what the dL/d(representation) rows carry beyond the label "
    "partition (A1-label) is a function of the representation that A3/A5 attack"
)


def a4_gradient_attribute(
    observation: Observation,
    kit: AttackKit | None = None,
    threat_models: str | Sequence[str] = THREAT_MODELS,
    generator: torch.Generator | None = None,
    **options,
) -> list[AttackResult]:
    """Always raises ``AttackUnavailable`` (``A4_SKIPPED``): see the module doc."""
    raise AttackUnavailable(A4_SKIPPED)
