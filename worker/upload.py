"""Privatized-upload mode (classification only): the device uploaded perturbed hidden states with
their labels (``client_sdk.upload``), so the worker trains to completion alone.

The file was validated by the gateway at upload (safetensors of kind ``privatized_batch``: ``hidden``,
``labels``, optional ``attention_mask``; never text or token ids) and is parsed again here with the
same torch-free checks before any tensor is read. Batches are rebuilt from the step number
(``client_sdk.data.batch_indices``), so a resumed job continues exactly where its checkpoint left off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from client_sdk import wire
from client_sdk.data import batch_indices


@dataclass(frozen=True)
class PrivatizedData:
    hidden: torch.Tensor  # (n, t, d) float32
    attention_mask: torch.Tensor  # (n, t) int64
    labels: torch.Tensor  # (n,) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_privatized_file(path: str | Path, max_bytes: int, hidden_size: int, num_labels: int) -> PrivatizedData:
    """Read and check an uploaded privatized file; raises ``ValueError`` with the reason."""
    data = Path(path).read_bytes()
    _, tensors = wire.decode(data, wire.WireLimits(max_payload_bytes=max_bytes))
    hidden, labels = tensors.get("hidden"), tensors.get("labels")
    if hidden is None or labels is None or hidden.dim() != 3 or hidden.shape[-1] != hidden_size:
        raise ValueError(f"training file must hold hidden (n, t, {hidden_size}) and labels (n,)")
    mask = tensors.get("attention_mask")
    mask = torch.ones(hidden.shape[:2], dtype=torch.int64) if mask is None else mask.long()
    labels = labels.long()
    if labels.shape != hidden.shape[:1] or mask.shape != hidden.shape[:2]:
        raise ValueError("labels (n,) and attention_mask (n, t) must match hidden (n, t, d)")
    if labels.numel() == 0 or int(labels.min()) < 0 or int(labels.max()) >= num_labels:
        raise ValueError(f"labels must lie in 0..{num_labels - 1}")
    return PrivatizedData(hidden, mask, labels)


def total_steps(n_examples: int, batch_size: int, n_epochs: int) -> int:
    return -(-n_examples // batch_size) * n_epochs


def train_steps(
    trainer, data: PrivatizedData, batch_size: int, seed: int, total: int, should_stop: Callable[[], bool]
) -> Iterator[tuple[float, float, int]]:
    """Run steps ``trainer.steps_applied + 1 .. total``; yields (loss, grad norm, batch size) per step.

    ``should_stop`` is asked before every step (cancel / pause); the generator ends when it says so.
    """
    while trainer.steps_applied < total:
        if should_stop():
            return
        idx = torch.tensor(batch_indices(len(data), batch_size, trainer.steps_applied + 1, seed))
        logits = trainer.forward(data.hidden[idx], data.attention_mask[idx]).requires_grad_(True)  # (b, c)
        loss = F.cross_entropy(logits, data.labels[idx].to(logits.device))
        loss.backward()
        grad_norm = trainer.apply_gradient(logits.grad)
        yield loss.item(), grad_norm, int(idx.shape[0])
