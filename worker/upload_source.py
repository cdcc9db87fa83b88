"""Upload mode's device stand-in: trains a job from its privatized file through the same
:class:`~worker.step_server.StepServer` as an interactive job.

The device uploaded perturbed hidden states with their labels (``client_sdk.privatized_file``), so
labels are shared by construction and the loss is computed here, on the worker: each step's batch is
cut from the file (rebuilt from the step number, so a resumed job continues where its checkpoint left
off), sent to the step server as a wire payload with the previous step's gradient, and the
cross-entropy of the reply against the uploaded labels gives the next gradient. Pause, cancel,
checkpoints, events and completion are those of the step server and the runner.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import torch
import torch.nn.functional as F

from client_sdk import privatized_file, protocol, wire
from client_sdk.data import batch_indices
from worker.step_server import StepServer


class UploadSource:
    """Sends the steps of ``data`` to ``server`` until ``total_steps`` are applied, then completes."""

    def __init__(self, data: privatized_file.PrivatizedData, batch_size: int, seed: int, job_id: str):
        self.data, self.batch_size, self.seed, self.job_id = data, batch_size, seed, job_id

    def _payload(self, step: int, grad: torch.Tensor | None, loss: float | None) -> bytes:
        """Step ``step``: its batch (none after the last step: a flush), the previous gradient and loss
        (reported as the training loss of the job's events: labels are the server's in this mode)."""
        tensors: dict[str, torch.Tensor] = {}
        if step <= self.total_steps:
            idx = torch.tensor(batch_indices(len(self.data), self.batch_size, step, self.seed))
            mask = self.data.attention_mask[idx]  # (b, t)
            t = max(int(mask.sum(dim=1).max()), 1)  # trim the file's padding to the batch's longest text
            tensors[protocol.HIDDEN] = self.data.hidden[idx, :t]  # (b, t, d)
            tensors[protocol.ATTENTION_MASK] = mask[:, :t].to(torch.uint8)
        if grad is not None:
            tensors[protocol.GRAD_OUTPUT] = grad  # (b, c)
        extra = {} if loss is None else {protocol.METRICS: json.dumps({"train_loss": round(loss, 6)})}
        return wire.encode(tensors, wire.WireHeader(self.job_id, step, "step", extra=extra), float_dtype="float32")

    def _final(self) -> bytes:
        # every gradient of steps 1..total_steps is applied: the last step request was the flush, total_steps + 1
        extra = protocol.completion_extra(self.total_steps + 1)
        return wire.encode({}, wire.WireHeader(self.job_id, 0, "step", extra=extra))

    def run(self, server: StepServer, total_steps: int, should_stop: Callable[[], bool]) -> bool:
        """Train from the server's next step to ``total_steps`` and complete the job; returns False
        when ``should_stop`` (asked before every step: cancel, pause) ended it first."""
        self.total_steps = total_steps
        step = server.trainer.steps_applied + 1  # after a resume: the checkpoint's step + 1, no gradient
        grad, loss = None, None
        while step <= total_steps + 1:
            if step > total_steps and grad is None:  # resumed after the last step: nothing to flush
                break
            if should_stop():
                return False
            reply = server.handle(self._payload(step, grad, loss))
            if step > total_steps:
                break
            logits = wire.decode(reply)[1][protocol.OUTPUT].requires_grad_(True)  # (b, c)
            idx = batch_indices(len(self.data), self.batch_size, step, self.seed)
            batch_loss = F.cross_entropy(logits, self.data.labels[idx])
            batch_loss.backward()
            grad, loss = logits.grad.detach(), batch_loss.item()
            step += 1
        server.handle(self._final())
        return True
