"""Text metrics for generation fine-tuning (torch-free): ROUGE-L between a generated and a reference text."""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lowercased word tokens: maximal runs of letters, digits and underscores (punctuation is dropped)."""
    return _WORD.findall(text.lower())


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len(a) * len(b)) time, O(len(b)) memory)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (beta = 1) over lowercased word tokens: with L the LCS length, P = L / |prediction| and
    R = L / |reference|, the score is 2PR / (P + R). 0.0 when either text has no word (as rouge-score does)."""
    pred, ref = words(prediction), words(reference)
    if not pred or not ref:
        return 0.0
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def mean_rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """The mean of :func:`rouge_l` over aligned predictions and references (same non-zero length)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    return sum(rouge_l(p, r) for p, r in zip(predictions, references, strict=True)) / len(predictions)
