"""The worker's step state machine, free of Redis and the database.

``StepServer.handle(payload) -> reply`` implements the protocol of ``client_sdk/protocol.py`` on top
of a :class:`~worker.trainer.TopTrainer`: step ordering, idempotent retries, one optimizer step per
gradient, flush, inference and completion. Every path trains through it: the Celery job runner feeds
it from Redis, the upload source (``worker.upload_source``) from a privatized file, benchmarks and
the evaluation in-process.

A refused request raises :class:`service.errors.StepRejected` (the type the relay carries to the
gateway) and changes nothing: every check runs before the gradient is applied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from client_sdk import protocol, wire
from service.errors import StepRejected
from worker.trainer import TopTrainer


@dataclass
class _Served:
    step: int
    reply: bytes


#: callback after each optimizer step: (header of the request, gradient norm, batch size)
UpdateHook = Callable[[wire.WireHeader, float, int], None]
#: callback for a request's ``metrics`` extra (device-side aggregates), checked: (step, metrics)
MetricsHook = Callable[[int, dict[str, float]], None]


class StepServer:
    """Serves one job's step requests. ``finished`` turns True after the completion request."""

    def __init__(
        self,
        trainer: TopTrainer,
        shape: protocol.StepShape,
        job_id: str,
        limits: wire.WireLimits = wire.DEFAULT_LIMITS,
        on_update: UpdateHook | None = None,
        on_finish: Callable[[], None] | None = None,
        checkpoint_step: Callable[[], int] | None = None,
        on_metrics: MetricsHook | None = None,
    ):
        self.trainer, self.shape, self.job_id, self.limits = trainer, shape, job_id, limits
        self.on_update, self.on_finish, self.on_metrics = on_update, on_finish, on_metrics
        self.checkpoint_step = checkpoint_step or (lambda: 0)
        self.last: _Served | None = None
        self.finished = False

    def handle(self, payload: bytes) -> bytes:
        """Serve one request and return the reply bytes; raises :class:`StepRejected` on bad input."""
        try:
            header, infos = wire.inspect(payload, self.limits)
            request = protocol.check_request(header, infos, self.shape, self.job_id)
            _, tensors = wire.decode(payload, self.limits)
            metrics = protocol.parse_metrics(header.extra[protocol.METRICS]) if protocol.METRICS in header.extra else {}
        except wire.WireError as exc:
            raise StepRejected.from_wire(exc) from None
        report = (lambda: self.on_metrics(header.step, metrics)) if metrics and self.on_metrics else (lambda: None)
        if request.kind == "infer":
            report()
            output = self.trainer.infer(tensors[protocol.HIDDEN], tensors[protocol.ATTENTION_MASK])
            return self._encode_output(output, header.step, "infer_reply")
        if request.kind == "final":  # completion: idempotent once done, not numbered, names its last step
            if not self.finished:
                self._check_complete(request.last_step)
                report()
                if self.on_finish:
                    self.on_finish()
            self.finished = True
            return wire.encode({}, wire.WireHeader(self.job_id, header.step, "step_reply"))
        if self.last is not None and header.step == self.last.step:  # a retry: same reply, no second update
            return self.last.reply
        grad = tensors.get(protocol.GRAD_OUTPUT)
        expected = self.trainer.steps_applied + (2 if self.trainer.has_pending else 1)
        if self.trainer.has_pending and grad is None:
            # A device without the gradient of the forward this worker holds never got that reply (a new
            # device process, or the reply lost with a gateway): send it back to that step, whose reply
            # is replayed (``self.last``), never a 400 it cannot act on.
            expected = self.trainer.steps_applied + 1
        if header.step != expected:
            raise StepRejected(
                409,
                "step_out_of_order",
                f"expected step {expected}, got {header.step}",
                param="step",
                expected_step=expected,
            )
        self._check_gradient(grad, header.step)
        report()  # before the update, whose metrics event shows the device's running loss
        if grad is not None:
            grad_norm = self.trainer.apply_gradient(grad)
            if self.on_update:
                self.on_update(header, grad_norm, grad.shape[0])
        if request.kind == "flush":
            reply = wire.encode({}, self._reply_header(header.step, "step_reply"))
        else:
            output = self.trainer.forward(tensors[protocol.HIDDEN], tensors[protocol.ATTENTION_MASK])
            reply = self._encode_output(output, header.step, "step_reply")
        self.last = _Served(header.step, reply)
        return reply

    def _reply_header(self, step: int, kind: str) -> wire.WireHeader:
        return wire.WireHeader(self.job_id, step, kind, extra={protocol.CHECKPOINT: str(self.checkpoint_step())})

    def _encode_output(self, output: torch.Tensor, step: int, kind: str) -> bytes:
        float_dtype = "float32" if self.shape.task == "classification" else "float16"
        return wire.encode({protocol.OUTPUT: output}, self._reply_header(step, kind), float_dtype=float_dtype)

    def _check_complete(self, last_step: int | None) -> None:
        """Completion only when the device's last step request (``last_step``, the flush) matches what was
        applied: exactly ``last_step - 1`` gradients and no forward awaiting one. Otherwise 409
        ``step_out_of_order`` with ``expected_step`` = applied + 1, the step to resend from (a forward
        still awaiting its gradient is that step; its reply is replayed)."""
        applied, pending = self.trainer.steps_applied, self.trainer.has_pending
        if last_step is not None and applied == last_step - 1 and not pending:
            return
        expected = applied + 1
        raise StepRejected(
            409,
            "step_out_of_order",
            f"cannot complete: {applied} steps applied{' and one awaiting its gradient' if pending else ''}, but the "
            f"device's last step was {last_step}; resend from step {expected}",
            param=protocol.LAST_STEP,
            expected_step=expected,
        )

    def _check_gradient(self, grad: torch.Tensor | None, step: int) -> None:
        """The gradient must answer the pending forward exactly (its shape). A gradient with no forward
        to answer (this worker resumed from a checkpoint after that forward) is a 409
        ``step_out_of_order`` naming this step: resend it without ``grad_output``. (A step without the
        gradient of a pending forward never gets here: ``handle`` sends it back to that forward.)"""
        pending = self.trainer.pending_shape()
        if pending is None and grad is not None:
            raise StepRejected(
                409,
                "step_out_of_order",
                f"no forward awaits this gradient (the worker resumed from step {self.trainer.steps_applied}): "
                f"resend step {step} without grad_output",
                param=protocol.GRAD_OUTPUT,
                expected_step=step,
            )
        if grad is not None and tuple(grad.shape) != pending:
            raise StepRejected.from_wire(
                wire.ShapeRejected(
                    f"grad_output has shape {list(grad.shape)}; expected {list(pending)}", param=protocol.GRAD_OUTPUT
                )
            )
