"""What the device does with the server's output for each task: build a batch (perturbed activations
plus the private targets that never leave), and turn the server's output into the loss through its
own end (``client_sdk.models.ends``).

* :class:`HeadTask` (classification): texts -> perturbed states; the server returns the pooled
  representation ``(b, d)``; the device's head gives logits, cross-entropy with the local labels.
* :class:`TailTask` (generation): prompt/completion pairs or chats -> tokens with a loss mask ->
  perturbed states; the server returns the middle's hidden state ``(b, t, d)``; the device's tail
  gives logits; cross-entropy on the completion tokens only (position j - 1 predicts token j).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from client_sdk import protocol
from client_sdk.data import LabelMap

__all__ = ["Batch", "HeadTask", "TailTask"]


@dataclass
class Batch:
    """One batch: what is sent (``tensors``) and what stays (``targets``)."""

    tensors: dict[str, torch.Tensor]  # hidden (b, t, d), attention_mask (b, t) uint8
    targets: Any  # labels (b,) | (input_ids (b, t), loss_mask (b, t))
    size: int


def _activations(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {protocol.HIDDEN: out["hidden"], protocol.ATTENTION_MASK: out["attention_mask"].to(torch.uint8)}


class HeadTask:
    """Classification with the head on the device."""

    task = "classification"

    def __init__(self, end: torch.nn.Module, privatizer: Any, labels: LabelMap) -> None:
        self.end, self.privatizer, self.labels = end, privatizer, labels

    def batch(self, examples: Sequence[Any], generator: torch.Generator | None) -> Batch:
        out = self.privatizer.privatize([ex.text for ex in examples], generator=generator)
        targets = torch.tensor([self.labels.encode(ex.label) for ex in examples])
        return Batch(_activations(out), targets, len(examples))

    def loss(self, output: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, int, int]:
        """``output`` (b, d) -> (mean cross-entropy, correct predictions, predictions)."""
        logits = self.end(output)  # (b, C)
        correct = int((logits.argmax(-1) == batch.targets).sum())
        return F.cross_entropy(logits, batch.targets), correct, batch.size


class TailTask:
    """Generation with the tail on the device; loss on completion tokens only."""

    task = "generation"

    def __init__(self, end: torch.nn.Module, privatizer: Any, tokenizer: Any, max_length: int) -> None:
        self.end, self.privatizer, self.tokenizer, self.max_length = end, privatizer, tokenizer, max_length

    def batch(self, examples: Sequence[Any], generator: torch.Generator | None) -> Batch:
        from client_sdk.generation_data import encode_generation

        enc = encode_generation(examples, self.tokenizer, self.max_length)
        out = self.privatizer.privatize_ids(enc["input_ids"], enc["attention_mask"], generator=generator)
        return Batch(_activations(out), (enc["input_ids"], enc["loss_mask"].bool()), len(examples))

    def loss(self, output: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, int, int]:
        """``output`` (b, t, d) -> (mean cross-entropy over target tokens, correct next tokens, targets)."""
        input_ids, loss_mask = batch.targets  # (b, t), (b, t)
        logits = self.end(output, batch.tensors[protocol.ATTENTION_MASK])  # (b, t, |V|)
        targets = loss_mask[:, 1:]  # position j - 1 predicts token j
        predicted = logits[:, :-1][targets]  # (n, |V|)
        truth = input_ids[:, 1:][targets]  # (n,)
        if truth.numel() == 0:
            return logits.sum() * 0.0, 0, 0
        correct = int((predicted.argmax(-1) == truth).sum())
        return F.cross_entropy(predicted.float(), truth), correct, int(truth.numel())
