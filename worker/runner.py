"""One training job on one worker: claim, resume, serve steps from Redis, checkpoint, finish.

The database is the source of truth: the job's status is the control flag (cancel and pause are
seen at the next step or within a second while idle), and the lease, renewed at every step, lets
the reaper hand a dead worker's job to another one, which resumes from the last checkpoint.
See ``client_sdk/protocol.py`` for the step protocol and its numbering.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from api.db import repo
from api.relay import StepMessage, WorkerChannel
from client_sdk import protocol, wire
from client_sdk.models.catalog import describe_model
from worker.trainer import TopTrainer, TrainSpec, pick_device

log = logging.getLogger(__name__)


class _Rejected(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None, expected: int | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.expected = status, code, message, param, expected


@dataclass
class _Served:
    step: int
    reply: bytes


class JobRunner:
    """Runs ``job_id`` to an end state (succeeded, cancelled, paused, failed) or until the lease is lost."""

    def __init__(
        self,
        job_id: str,
        settings: Any,
        sessionmaker: Any,
        redis_client: Any,
        worker_id: str,
        device: str | None = None,
    ):
        self.job_id, self.settings, self.sessionmaker = job_id, settings, sessionmaker
        self.worker_id = worker_id
        self.channel = WorkerChannel(redis_client, job_id)
        self.device = pick_device(device)
        self.limits = wire.WireLimits(max_payload_bytes=settings.max_step_bytes)
        self.trainer: TopTrainer | None = None
        self.last: _Served | None = None
        self.last_checkpoint_step = 0
        self._window = (time.monotonic(), 0)  # (start, samples) for samples/s

    # ---- database helpers ---------------------------------------------------------------------
    def _db(self, fn, *args, **kwargs):
        with self.sessionmaker.begin() as session:
            return fn(session, self.job_id, *args, **kwargs)

    def _event(self, message: str, level: str = "info", type: str = "message", data: dict | None = None) -> None:
        self._db(repo.add_event, message, level=level, type=type, data=data)

    # ---- lifecycle ------------------------------------------------------------------------------
    def run(self) -> str:
        job = self._db(repo.claim_job, self.worker_id, self.settings.lease_seconds)
        if job is None:
            log.info("job %s is not claimable; nothing to do", self.job_id)
            return "skipped"
        try:
            return self._run(job)
        except repo.LeaseLost:
            log.warning("job %s: lease lost to another worker; stopping without writing", self.job_id)
            return "lease_lost"
        except Exception as exc:  # the job fails with a clear event; the task does not crash-loop
            log.exception("job %s failed", self.job_id)
            error = {"code": "worker_error", "message": f"{type(exc).__name__}: {exc}", "param": None}
            self._event(f"Job failed: {error['message']}", level="error")
            self._db(repo.finish_job, self.worker_id, "failed", error=error)
            return "failed"
        finally:
            if self.trainer is not None:
                self.trainer.close()
                self.trainer = None

    def _run(self, job: dict[str, Any]) -> str:
        spec = TrainSpec.from_job(job)
        info = describe_model(spec.model)
        cfg = (job.get("method") or {}).get("privtune") or {}
        self.shape = protocol.StepShape(
            hidden_size=info.hidden_size,
            task=spec.task,
            num_labels=spec.num_labels,
            max_batch_size=self.settings.max_batch_size,
            max_tokens=int(cfg.get("max_tokens") or self.settings.max_tokens),
        )
        self.job, self.spec = job, spec
        self.trainer = TopTrainer(spec, self.device, model_cache_dir=self.settings.model_cache_dir)
        checkpoint = self._db(repo.latest_checkpoint)
        if checkpoint:
            step = self.trainer.load(checkpoint["path"])
            self.last_checkpoint_step = step
            self._event(
                f"Job restarted on {self.worker_id}; resumed from checkpoint at step {step}",
                data={"step": step, "kind": "job_restarted"},
            )
        else:
            self._event(f"Training started on {self.device.type} ({self.worker_id})", data={"kind": "job_started"})
        return self._serve()

    def _serve(self) -> str:
        idle_limit = float(getattr(self.settings, "device_idle_timeout_s", 900))
        last_seen = time.monotonic()
        while True:
            status = self._db(
                repo.heartbeat, self.worker_id, self.settings.lease_seconds, steps_completed=self.trainer.steps_applied
            )
            if status == "cancelled":
                self.channel.discard_pending()
                self._event("Job cancelled; worker stopped and released its memory", data={"kind": "job_cancelled"})
                return "cancelled"
            if status == "paused":
                return self._pause("Job paused")
            if status != "running":
                log.warning("job %s has status %s; stopping", self.job_id, status)
                return status
            message = self.channel.receive(timeout_s=1.0)
            if message is None:
                if time.monotonic() - last_seen > idle_limit:
                    return self._pause(f"No step from the device for {idle_limit:.0f} s; job paused", idle=True)
                continue
            last_seen = time.monotonic()
            try:
                finished = self._handle(message)
            except _Rejected as rej:
                self.channel.reject(message.request_id, rej.status, rej.code, rej.message, rej.param, rej.expected)
                continue
            if finished:
                return "succeeded"

    def _pause(self, message: str, idle: bool = False) -> str:
        if self.trainer.steps_applied > self.last_checkpoint_step:
            self._checkpoint()
        self.trainer.drop_pending()
        self._db(repo.release_job, self.worker_id, "paused")
        self._event(
            f"{message} at step {self.trainer.steps_applied}; resume continues from there",
            level="warn" if idle else "info",
            data={"kind": "job_paused", "step": self.trainer.steps_applied},
        )
        return "paused"

    # ---- one request --------------------------------------------------------------------------
    def _handle(self, message: StepMessage) -> bool:
        """Serve one request; returns True when the job finished. Raises _Rejected on bad input."""
        try:
            header, tensors = wire.decode(message.payload, self.limits)
        except wire.WireError as exc:
            raise _Rejected(400, "invalid_payload", str(exc)) from None
        if header.job_id != self.job_id or header.kind not in ("step", "infer"):
            raise _Rejected(400, "invalid_payload", "payload is not a step or inference request of this job")
        if header.kind == "infer":
            self._check_activations(tensors)
            output = self.trainer.infer(tensors[protocol.HIDDEN], tensors[protocol.ATTENTION_MASK])
            self.channel.reply(message.request_id, self._encode_output(output, header.step, "infer_reply"))
            return False
        if header.extra.get(protocol.FINAL) == "1":  # completion: idempotent, not numbered
            self._finish()
            self.channel.reply(
                message.request_id, wire.encode({}, wire.WireHeader(self.job_id, header.step, "step_reply"))
            )
            return True
        if self.last is not None and header.step == self.last.step:  # a retry: same reply, no second update
            self.channel.reply(message.request_id, self.last.reply)
            return False
        trainer = self.trainer
        expected = trainer.steps_applied + (2 if trainer.has_pending else 1)
        if header.step != expected:
            raise _Rejected(
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
            self._after_update(header, grad_norm, batch=grad.shape[0])
        if flush:
            reply = wire.encode({}, wire.WireHeader(self.job_id, header.step, "step_reply"))
        else:
            output = trainer.forward(tensors[protocol.HIDDEN], tensors[protocol.ATTENTION_MASK])
            reply = self._encode_output(output, header.step, "step_reply")
        self.last = _Served(header.step, reply)
        self.channel.reply(message.request_id, reply)
        return False

    def _encode_output(self, output: torch.Tensor, step: int, kind: str) -> bytes:
        float_dtype = "float32" if self.shape.task == "classification" else "float16"
        return wire.encode({protocol.OUTPUT: output}, wire.WireHeader(self.job_id, step, kind), float_dtype=float_dtype)

    def _check_gradient(self, grad: torch.Tensor | None) -> None:
        if self.trainer.has_pending and grad is None:
            raise _Rejected(
                400,
                "missing_gradient",
                "this step must carry grad_output for the previous step",
                param=protocol.GRAD_OUTPUT,
            )
        if not self.trainer.has_pending and grad is not None:
            raise _Rejected(
                400,
                "unexpected_gradient",
                "no pending output: send this step without grad_output",
                param=protocol.GRAD_OUTPUT,
            )
        if grad is not None and tuple(grad.shape) != self.trainer.pending_shape():
            raise _Rejected(
                400,
                "invalid_payload",
                f"grad_output has shape {list(grad.shape)}; expected {list(self.trainer.pending_shape())}",
                param=protocol.GRAD_OUTPUT,
            )

    def _check_activations(self, tensors: dict[str, torch.Tensor]) -> None:
        for spec in self.shape.activation_specs():
            t = tensors.get(spec.name)
            if t is None:
                raise _Rejected(400, "invalid_payload", f"payload lacks tensor {spec.name!r}", param=spec.name)
            if t.dim() != len(spec.shape) or any(w is not None and g != w for g, w in zip(t.shape, spec.shape, strict=True)):
                raise _Rejected(
                    400, "invalid_payload", f"tensor {spec.name!r} has shape {list(t.shape)}", param=spec.name
                )
        reason = self.shape.check_sizes(
            tuple(tensors[protocol.HIDDEN].shape), tuple(tensors[protocol.ATTENTION_MASK].shape)
        )
        if reason:
            raise _Rejected(400, "invalid_payload", reason, param=protocol.HIDDEN)

    def _after_update(self, header: wire.WireHeader, grad_norm: float, batch: int) -> None:
        step = self.trainer.steps_applied
        start, samples = self._window
        samples += batch
        self._window = (start, samples)
        every = int(getattr(self.settings, "log_every_steps", 10))
        loss = header.extra.get(protocol.LOSS)
        if step % every == 0 or step == self.spec.total_steps:
            elapsed = max(time.monotonic() - start, 1e-9)
            data = {
                "step": step,
                "train_loss": float(loss) if loss is not None else None,
                "samples_per_second": round(samples / elapsed, 3),
                "grad_norm": round(grad_norm, 6),
                "learning_rate": self.trainer.scheduler.get_last_lr()[0],
                "total_steps": self.spec.total_steps,
            }
            msg = f"Step {step}/{self.spec.total_steps}: training loss={data['train_loss']}"
            self._event(msg, type="metrics", data=data)
            self._window = (time.monotonic(), 0)
        if step % int(self.settings.checkpoint_every) == 0:
            self._checkpoint({"step": step, "train_loss": float(loss) if loss is not None else None})

    # ---- artifacts ------------------------------------------------------------------------------
    def _job_dir(self) -> Path:
        return Path(self.settings.artifact_dir) / "jobs" / self.job_id

    def _model_name(self) -> str:
        suffix = self.job.get("suffix") or "privtune"
        return f"ft:{self.job['model']}:{self.job['organization_id']}:{suffix}:{self.job_id}"

    def _checkpoint(self, metrics: dict | None = None) -> None:
        step = self.trainer.steps_applied
        path = self.trainer.save(self._job_dir() / "checkpoints" / f"step-{step}", metrics)
        self._db(
            repo.add_checkpoint, step, metrics or {"step": step}, str(path), f"{self._model_name()}:ckpt-step-{step}"
        )
        self.last_checkpoint_step = step
        self._event(f"Checkpoint saved at step {step}", data={"kind": "checkpoint_saved", "step": step})

    def _finish(self) -> None:
        if self.trainer.steps_applied > self.last_checkpoint_step:
            self._checkpoint()
        self.trainer.save(self._job_dir() / "final")
        self._db(repo.finish_job, self.worker_id, "succeeded", fine_tuned_model=self._model_name())
        self._event(
            f"Job succeeded after {self.trainer.steps_applied} steps; model {self._model_name()}",
            data={"kind": "job_succeeded", "step": self.trainer.steps_applied},
        )
