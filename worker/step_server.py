"""The worker's step state machine, free of Redis and the database.

``StepServer.handle(payload) -> reply`` implements the protocol of ``client_sdk/protocol.py`` on top
of a :class:`~worker.trainer.TopTrainer`: step ordering, idempotent retries, one optimizer step per
gradient, flush, inference and completion. The Celery job runner feeds it from Redis; benchmarks and
the evaluation feed it in-process, so every path trains through the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from client_sdk import protocol, wire
from worker.trainer import TopTrainer


class StepRejected(Exception):
    """A request the worker refuses; maps to an HTTP error in the gateway's envelope."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None, expected: int | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.expected = status, code, message, param, expected


@dataclass
class _Served:
    step: int
    reply: bytes


#: callback after each optimizer step: (header of the request, gradient norm, batch size)
UpdateHook = Callable[[wire.WireHeader, float, int], None]


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
    ):
        self.trainer, self.shape, self.job_id, self.limits = trainer, shape, job_id, limits
        self.on_update, self.on_finish = on_update, on_finish
        self.last: _Served | None = None
        self.finished = False

    def handle(self, payload: bytes) -> bytes:
        """Serve one request and return the reply bytes; raises :class:`StepRejected` on bad input.

        Nothing changes on a rejected request: every check runs before the gradient is applied.
        """
        try:
            header, tensors = wire.decode(payload, self.limits)
        except wire.WireError as exc:
            raise StepRejected(400, "invalid_payload", str(exc)) from None
        if header.job_id != self.job_id or header.kind not in ("step", "infer"):
            raise StepRejected(400, "invalid_payload", "payload is not a step or inference request of this job")
        if header.kind == "infer":
            self._check_activations(tensors)
            output = self.trainer.infer(tensors[protocol.HIDDEN], tensors[protocol.ATTENTION_MASK])
            return self._encode_output(output, header.step, "infer_reply")
        if header.extra.get(protocol.FINAL) == "1":  # completion: idempotent, not numbered
            if not self.finished and self.on_finish:
                self.on_finish()
            self.finished = True
            return wire.encode({}, wire.WireHeader(self.job_id, header.step, "step_reply"))
        if self.last is not None and header.step == self.last.step:  # a retry: same reply, no second update
            return self.last.reply
        trainer = self.trainer
        expected = trainer.steps_applied + (2 if trainer.has_pending else 1)
        if header.step != expected:
            raise StepRejected(
                409,
                "step_out_of_order",
                f"expected step {expected}, got {header.step}",
                param="step",
                expected=expected,
            )
        grad = tensors.get(protocol.GRAD_OUTPUT)
        self._check_gradient(grad)
        flush = protocol.HIDDEN not in tensors
        if not flush:
            self._check_activations(tensors)
        if grad is not None:
            grad_norm = trainer.apply_gradient(grad)
            if self.on_update:
                self.on_update(header, grad_norm, grad.shape[0])
        if flush:
            reply = wire.encode({}, wire.WireHeader(self.job_id, header.step, "step_reply"))
        else:
            output = trainer.forward(tensors[protocol.HIDDEN], tensors[protocol.ATTENTION_MASK])
            reply = self._encode_output(output, header.step, "step_reply")
        self.last = _Served(header.step, reply)
        return reply

    def _encode_output(self, output: torch.Tensor, step: int, kind: str) -> bytes:
        float_dtype = "float32" if self.shape.task == "classification" else "float16"
        return wire.encode({protocol.OUTPUT: output}, wire.WireHeader(self.job_id, step, kind), float_dtype=float_dtype)

    def _check_gradient(self, grad: torch.Tensor | None) -> None:
        pending = self.trainer.pending_shape()
        if pending is not None and grad is None:
            raise StepRejected(
                400,
                "missing_gradient",
                "this step must carry grad_output for the previous step",
                param=protocol.GRAD_OUTPUT,
            )
        if pending is None and grad is not None:
            raise StepRejected(
                400,
                "unexpected_gradient",
                "no pending output: send this step without grad_output",
                param=protocol.GRAD_OUTPUT,
            )
        if grad is not None and tuple(grad.shape) != pending:
            raise StepRejected(
                400,
                "invalid_payload",
                f"grad_output has shape {list(grad.shape)}; expected {list(pending)}",
                param=protocol.GRAD_OUTPUT,
            )

    def _check_activations(self, tensors: dict[str, torch.Tensor]) -> None:
        for spec in self.shape.activation_specs():
            t = tensors.get(spec.name)
            if t is None:
                raise StepRejected(400, "invalid_payload", f"payload lacks tensor {spec.name!r}", param=spec.name)
            if t.dim() != len(spec.shape) or any(
                w is not None and g != w for g, w in zip(t.shape, spec.shape, strict=True)
            ):
                raise StepRejected(
                    400, "invalid_payload", f"tensor {spec.name!r} has shape {list(t.shape)}", param=spec.name
                )
        hidden, mask = tensors[protocol.HIDDEN], tensors[protocol.ATTENTION_MASK]
        reason = self.shape.check_sizes(tuple(hidden.shape), tuple(mask.shape))
        if reason:
            raise StepRejected(400, "invalid_payload", reason, param=protocol.HIDDEN)
