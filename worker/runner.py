"""One training job on one worker: claim, resume, serve steps from Redis, checkpoint, finish.

The database is the source of truth: the job's status is the control flag (cancel and pause are
seen at the next step or within a second while idle), and the lease, renewed at every step, lets
the reaper hand a dead worker's job to another one, which resumes from the last checkpoint.
See ``client_sdk/protocol.py`` for the step protocol and its numbering.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from client_sdk import privatized_file, wire
from client_sdk.jobspec import DeclaredPrivacy, step_shape
from client_sdk.models.catalog import describe_model
from service.db import repo
from service.errors import StepRejected
from service.relay import WorkerChannel
from worker.step_server import StepServer
from worker.trainer import TopTrainer, TrainSpec, pick_device
from worker.upload_source import UploadSource

log = logging.getLogger(__name__)


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
        self.outcome = "succeeded"  # what _finish recorded (another status if the job ended first)
        self.last_checkpoint_step = 0
        self._train_loss: float | None = None  # the device's latest reported running mean
        self._last_heartbeat = float("-inf")
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
        source = None
        if (job.get("method") or {}).get("type") == "supervised":
            file = self._db_file(job["training_file"])
            data = privatized_file.load(file["path"], self.settings.max_file_bytes, info.hidden_size)
            per_epoch = -(-len(data) // spec.method.batch_size)
            spec = spec.with_total_steps(per_epoch * spec.method.n_epochs)
            source = UploadSource(data, spec.method.batch_size, spec.seed, self.job_id)
        self.job, self.spec = job, spec
        self.trainer = TopTrainer(spec, self.device, model_cache_dir=self.settings.model_cache_dir)
        self.server = StepServer(
            self.trainer,
            step_shape(spec.method, info.hidden_size, server_head=spec.server_head),
            self.job_id,
            self.limits,
            on_update=lambda header, norm, batch: self._after_update(norm, batch),
            on_finish=self._finish,
            checkpoint_step=lambda: self.last_checkpoint_step,
            on_metrics=self._device_metrics,
        )
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
            self._privacy_event(spec.method.privacy)
        if source is not None:
            self._event(
                "Upload mode: the classification head trains here, on the server, with the uploaded labels "
                "(labels are shared in this mode; interactive jobs keep the head and the labels on the device)",
                data={"kind": "server_head"},
            )
            return self._train_upload(source)
        return self._serve()

    def _privacy_event(self, privacy: DeclaredPrivacy) -> None:
        """Record what the device declared about its privacy mechanism (and its eta search, if any)."""
        message = f"Privacy declared by the device: mechanism {privacy.mechanism}"
        if privacy.eta is not None:
            message += f", eta {privacy.eta:g}"
        audit = privacy.audit
        if audit:
            message += (
                f"; eta chosen on the device for target ASR {audit['target_asr']} (audited ASR {audit['measured_asr']})"
            )
        data = {"kind": "privacy", "mechanism": privacy.mechanism, "eta": privacy.eta, "audit": audit}
        self._event(message, data=data)

    def _db_file(self, file_id: str) -> dict[str, Any]:
        with self.sessionmaker.begin() as session:
            row = repo.get_file(session, file_id)
        if row is None:
            raise ValueError(f"training file {file_id} no longer exists")
        return row

    def _stop_requested(self, status: str) -> str | None:
        """React to a control status: the end state to return, or None to go on."""
        if status == "cancelled":
            self.channel.discard_pending()
            self._event("Job cancelled; worker stopped and released its memory", data={"kind": "job_cancelled"})
            return "cancelled"
        if status == "paused":
            return self._pause("Job paused")
        if status != "running":
            log.warning("job %s has status %s; stopping", self.job_id, status)
            return status
        return None

    def _train_upload(self, source: UploadSource) -> str:
        """Upload mode: no device in the loop; the same step server, checkpoints, events, cancel and pause."""
        outcome: list[str] = []

        def should_stop() -> bool:
            end = self._stop_requested(self._control())
            if end:
                outcome.append(end)
            return end is not None

        if not source.run(self.server, self.spec.total_steps, should_stop):
            return outcome[0]
        return self.outcome

    def _serve(self) -> str:
        idle_limit = float(getattr(self.settings, "device_idle_timeout_s", 900))
        last_seen = time.monotonic()
        while True:
            end = self._stop_requested(self._control())
            if end:
                return end
            message = self.channel.receive(timeout_s=1.0)
            if message is None:
                if time.monotonic() - last_seen > idle_limit:
                    return self._pause(f"No step from the device for {idle_limit:.0f} s; job paused", idle=True)
                continue
            last_seen = time.monotonic()
            try:
                reply = self.server.handle(message.payload)
            except StepRejected as rejection:
                self.channel.reject(message.request_id, rejection)
                continue
            self.channel.reply(message.request_id, reply)
            if self.server.finished:
                return self.outcome

    def _control(self) -> str:
        """The job's status, read before every step; the lease is renewed every ``heartbeat_seconds``."""
        now = time.monotonic()
        if now - self._last_heartbeat >= float(self.settings.heartbeat_seconds):
            self._last_heartbeat = now
            return self._db(
                repo.heartbeat, self.worker_id, self.settings.lease_seconds, steps_completed=self.trainer.steps_applied
            )
        return self._db(repo.check_control, self.worker_id)

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

    def _device_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Aggregates the device chose to report (``protocol.METRICS``): the running training loss is kept
        for the next metrics event; validation results are an event of their own."""
        if "train_loss" in metrics:
            self._train_loss = metrics["train_loss"]
        valid = {k: v for k, v in metrics.items() if k.startswith("valid_")}
        if valid:  # measured by the device on its validation split after the updates applied so far
            applied = self.trainer.steps_applied
            shown = ", ".join(f"{k}={v:.4f}" for k, v in valid.items())
            self._event(f"Step {applied}: {shown}", type="metrics", data={"step": applied, **valid})

    def _after_update(self, grad_norm: float, batch: int) -> None:
        step = self.trainer.steps_applied
        start, samples = self._window
        samples += batch
        self._window = (start, samples)
        loss = self._train_loss  # the device's running mean, if it reports one
        every = int(getattr(self.settings, "log_every_steps", 10))
        if step % every == 0 or step == self.spec.total_steps:
            elapsed = max(time.monotonic() - start, 1e-9)
            data = {
                "step": step,
                "train_loss": loss,
                "samples_per_second": round(samples / elapsed, 3),
                "grad_norm": round(grad_norm, 6),
                "learning_rate": self.trainer.scheduler.get_last_lr()[0],
                "total_steps": self.spec.total_steps,
            }
            shown = "not reported by the device" if loss is None else f"{loss:.4f} (device running mean)"
            self._event(f"Step {step}/{self.spec.total_steps}: training loss {shown}", type="metrics", data=data)
            self._window = (time.monotonic(), 0)
        if step % int(self.settings.checkpoint_every) == 0:
            self._checkpoint({"step": step, "train_loss": loss})

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
        self._db(
            repo.heartbeat, self.worker_id, self.settings.lease_seconds, steps_completed=self.trainer.steps_applied
        )
        if not self._db(repo.finish_job, self.worker_id, "succeeded", fine_tuned_model=self._model_name()):
            self.outcome = self._db(repo.get_job)["status"]  # e.g. cancelled while the completion was served
            self._event(
                f"Completion not recorded: the job was {self.outcome} first", data={"kind": "completion_refused"}
            )
            return
        self.outcome = "succeeded"
        self._event(
            f"Job succeeded after {self.trainer.steps_applied} steps; model {self._model_name()}",
            data={"kind": "job_succeeded", "step": self.trainer.steps_applied},
        )
