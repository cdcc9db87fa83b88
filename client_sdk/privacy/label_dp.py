"""Label differential privacy by randomised response (``PrivacyConfig(label_epsilon=...)``).

Each training text's label is replaced, once, by a randomised one: kept with probability
e^eps / (e^eps + K - 1), else one of the other K - 1 labels uniformly. The device's head trains on the
randomised labels, so every gradient it returns is post-processing of them: eps-label-DP for the
whole job, however many epochs. The draw for a text is keyed by a device secret and the text (stable
across epochs and a resumed job), and the device keeps the randomised labels with the job's state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from .accounting import label_keep_probability

__all__ = ["randomized_response"]


def _uniform(secret: str, text: str, salt: bytes) -> float:
    digest = hashlib.sha256(bytes.fromhex(secret) + salt + text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64  # [0, 1)


def randomized_response(
    labels: Sequence[int], texts: Sequence[str], num_labels: int, epsilon: float, secret: str
) -> list[int]:
    """The randomised label (an index in [0, num_labels)) of every text; deterministic given ``secret``."""
    if len(labels) != len(texts):
        raise ValueError(f"one label per text: {len(labels)} labels, {len(texts)} texts")
    if num_labels < 2:
        return list(labels)
    keep = label_keep_probability(epsilon, num_labels)
    out = []
    for text, label in zip(texts, labels, strict=True):
        if _uniform(secret, text, b"keep") < keep:
            out.append(int(label))
            continue
        other = int(_uniform(secret, text, b"other") * (num_labels - 1))  # one of the K - 1 others
        out.append(other if other < label else other + 1)
    return out
