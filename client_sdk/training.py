"""The device half of interactive split training: privatize, send, compute the loss locally, return
its gradient. Labels and text never leave this module; only perturbed hidden states and dL/d(logits).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from client_sdk import protocol, wire
from client_sdk.data import Example, LabelMap, batch_indices
from client_sdk.errors import StepOutOfOrderError


@dataclass
class TrainingReport:
    """What the device measured: per-step losses, bytes sent and received, throughput."""

    steps: int = 0
    losses: list[float] = field(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0
    samples: int = 0
    seconds: float = 0.0
    activation_elements: int = 0  # real (b * t * d) elements sent, for the wire-efficiency figure

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


class DeviceTrainer:
    """Drives one job's steps through ``post`` (bytes -> bytes, e.g. ``Client.post_step``)."""

    def __init__(
        self,
        job_id: str,
        post: Callable[[bytes], bytes],
        privatizer: Any,
        labels: LabelMap,
        examples: Sequence[Example],
        batch_size: int,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ):
        self.job_id, self.post, self.privatizer, self.labels = job_id, post, privatizer, labels
        self.examples, self.batch_size, self.seed = list(examples), batch_size, seed
        self.generator = generator
        self.report = TrainingReport()

    def _send(
        self, tensors: dict[str, torch.Tensor], step: int, kind: str = "step", extra: dict[str, str] | None = None
    ) -> dict[str, torch.Tensor]:
        payload = wire.encode(tensors, wire.WireHeader(self.job_id, step, kind, extra=extra or {}))
        reply = self.post(payload)
        self.report.bytes_sent += len(payload)
        self.report.bytes_received += len(reply)
        return wire.decode(reply)[1]

    def _activations(self, texts: list[str]) -> dict[str, torch.Tensor]:
        out = self.privatizer.privatize(texts, generator=self.generator)
        return {protocol.HIDDEN: out["hidden"], protocol.ATTENTION_MASK: out["attention_mask"].to(torch.uint8)}

    def train(
        self, total_steps: int, start_step: int = 1, progress: Callable[[int, float, float], None] | None = None
    ) -> TrainingReport:
        """Run steps ``start_step..total_steps`` and flush the last gradient.

        A ``StepOutOfOrderError`` (the worker restarted from a checkpoint) rewinds to the step the
        worker expects, without a gradient; batches are rebuilt from the step number.
        """
        step, grad, loss_value = start_step, None, None
        started = time.perf_counter()
        while step <= total_steps + 1:
            if step > total_steps and grad is None:  # the worker resumed after the last step: nothing to flush
                break
            tensors: dict[str, torch.Tensor] = {}
            extra = {} if loss_value is None else {protocol.LOSS: f"{loss_value:.6f}"}
            if step <= total_steps:
                idx = batch_indices(len(self.examples), self.batch_size, step, self.seed)
                batch = [self.examples[i] for i in idx]
                tensors = self._activations([ex.text for ex in batch])
                targets = torch.tensor([self.labels.encode(ex.label) for ex in batch])
            if grad is not None:
                tensors[protocol.GRAD_OUTPUT] = grad
            try:
                reply = self._send(tensors, step, extra=extra)
            except StepOutOfOrderError as exc:
                if exc.expected_step is None or exc.expected_step == step:
                    raise
                step, grad, loss_value = exc.expected_step, None, None
                continue
            if step > total_steps:
                break
            logits = reply[protocol.OUTPUT].float().requires_grad_(True)  # (b, c)
            loss = F.cross_entropy(logits, targets)
            loss.backward()
            grad, loss_value = logits.grad.detach(), loss.item()
            mask = tensors[protocol.ATTENTION_MASK]
            self.report.activation_elements += int(mask.sum()) * tensors[protocol.HIDDEN].shape[-1]
            self.report.losses.append(loss_value)
            self.report.samples += len(batch)
            self.report.steps = step
            self.report.seconds = time.perf_counter() - started
            if progress:
                progress(step, loss_value, self.report.samples_per_second)
            step += 1
        self.report.seconds = time.perf_counter() - started
        return self.report

    @torch.no_grad()
    def evaluate(self, examples: Sequence[Example], batch_size: int | None = None) -> float:
        """Accuracy of the job's current model on local examples (private inference through the worker)."""
        if not examples:
            return float("nan")
        size, correct = batch_size or self.batch_size, 0
        for start in range(0, len(examples), size):
            batch = examples[start : start + size]
            logits = self._send(self._activations([ex.text for ex in batch]), 0, kind="infer")[protocol.OUTPUT]
            truth = torch.tensor([self.labels.encode(ex.label) for ex in batch])
            correct += int((logits.argmax(-1) == truth).sum())
        return correct / len(examples)

    def finish_payload(self) -> bytes:
        """The completion request: the worker saves the final adapter and ends the job."""
        return wire.encode({}, wire.WireHeader(self.job_id, 0, "step", extra={protocol.FINAL: "1"}))
