"""One training job on one worker: claim, resume, serve steps from Redis, checkpoint, finish.

The database is the source of truth: the job's status is the control flag (cancel and pause are
seen at the next step or within a second while idle), and the lease, renewed from the claim on (by a
background thread during model setup, then by the serve loop), lets the reaper hand a dead worker's
job to another one, which resumes from the last valid checkpoint (``worker.checkpoints``).

Faults: an infrastructure error (``worker.infra.is_infra``: Redis, the database, the broker, a full
checkpoint disk) is retried with backoff while the lease holds, for at most ``infra_retry_s``; if it
lasts longer the job goes back to ``queued`` with its checkpoints and is enqueued again (or, with
the database unreachable, the lease simply expires and the reaper re-queues it). Any other error
fails the job with a generic message and an error reference that the worker's log carries with the
traceback. A job claimed more than ``max_attempts`` times fails with ``max_attempts_exceeded``. On
SIGTERM (``drain``) the job is checkpointed, released to ``queued`` and enqueued for another worker.
See ``client_sdk/protocol.py`` for the step protocol and its numbering.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client_sdk import privatized_file, wire
from client_sdk.jobspec import DeclaredPrivacy, step_shape
from client_sdk.models.catalog import describe_model
from service.db import repo
from service.errors import StepRejected
from service.relay import WorkerChannel
from worker import checkpoints
from worker.infra import Backoff, InfraUnavailable, is_disk_fault, is_infra, is_redis_fault
from worker.job_errors import attempts_error, internal_error
from worker.lease_keeper import LeaseKeeper
from worker.step_server import StepServer
from worker.trainer import TopTrainer, TrainSpec, pick_device
from worker.upload_source import UploadSource

log = logging.getLogger(__name__)

#: Seconds before a job refused by the per-organization running cap is offered to a worker again.
ORG_CAP_COUNTDOWN_S = 10.0
#: Called to send ``worker.run_job(job_id)`` again, after ``countdown`` seconds (None: at once).
Enqueue = Callable[[str, "float | None"], None]


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
        enqueue: Enqueue | None = None,
        drain: threading.Event | None = None,
        backoff: Backoff | None = None,
    ):
        """``enqueue`` re-sends the job (release after a fault or a drain, the per-organization cap);
        ``drain`` is set when the worker process is shutting down; ``backoff`` paces infrastructure
        retries."""
        self.job_id, self.settings, self.sessionmaker = job_id, settings, sessionmaker
        self.worker_id = worker_id
        self.channel = WorkerChannel(redis_client, job_id)
        self.device = pick_device(device)
        self.limits = wire.WireLimits(max_payload_bytes=settings.max_step_bytes)
        self.enqueue, self.drain = enqueue, drain or threading.Event()
        self.backoff = backoff or Backoff()
        self.trainer: TopTrainer | None = None
        self.outcome = "succeeded"  # what _finish recorded (another status if the job ended first)
        self.last_checkpoint_step = 0
        self._train_loss: float | None = None  # the device's latest reported running mean
        self._last_heartbeat = float("-inf")
        self._lease_until = float("-inf")  # time.monotonic() by which our lease surely still holds
        self._claimed_at = time.monotonic()
        self._keeper: LeaseKeeper | None = None  # renews the lease during setup
        self._window = (time.monotonic(), 0)  # (start, samples) for samples/s

    # ---- infrastructure helpers -----------------------------------------------------------------
    def _retry(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` with infrastructure faults retried while the lease holds (at most ``infra_retry_s``)."""
        self._take_keeper_renewal()
        budget = min(float(self.settings.infra_retry_s), self._lease_until - time.monotonic() - 1.0)

        def told(exc: BaseException, attempt: int) -> None:
            log.warning("job %s: %s (retry %d)", self.job_id, type(exc).__name__, attempt + 1)

        return self.backoff.call(lambda: fn(*args, **kwargs), budget, on_retry=told)

    def _lease_renewed(self, at: float | None = None) -> None:
        """Our lease was renewed at ``at`` (time.monotonic(), default now): it holds ``lease_seconds`` more."""
        self._lease_until = (time.monotonic() if at is None else at) + float(self.settings.lease_seconds)

    def _take_keeper_renewal(self) -> None:
        """Count the background renewals of the setup's :class:`LeaseKeeper`, if one runs."""
        renewed = None if self._keeper is None else self._keeper.renewed_at
        if renewed is not None and renewed + float(self.settings.lease_seconds) > self._lease_until:
            self._lease_renewed(renewed)

    def _db(self, fn, *args, **kwargs):
        def once():
            with self.sessionmaker.begin() as session:
                return fn(session, self.job_id, *args, **kwargs)

        return self._retry(once)

    def _event(self, message: str, level: str = "info", type: str = "message", data: dict | None = None) -> None:
        self._db(repo.add_event, message, level=level, type=type, data=data)

    def _send_again(self, countdown: float | None = None) -> None:
        """Enqueue the job again; if the broker is down the gateway's queued sweep sends it later."""
        if self.enqueue is None:
            log.warning("job %s: no enqueuer; the queued sweep will send it again", self.job_id)
            return
        try:
            self.enqueue(self.job_id, countdown)
        except Exception as exc:
            if not is_infra(exc):
                raise
            log.warning("job %s: re-enqueue failed (%s); the queued sweep will send it", self.job_id, exc)

    # ---- lifecycle ------------------------------------------------------------------------------
    def run(self) -> str:
        """Claim the job and run it to an end state; returns it (``succeeded``, ``cancelled``, ``paused``,
        ``failed``), or ``released`` (back to the queue), ``deferred`` (organization at its running cap),
        ``skipped`` (not claimable), ``lease_lost`` or ``infra_unavailable`` (nothing written)."""
        self._lease_renewed()  # the claim is what grants it; until then, retries may use a full lease
        try:
            job = self._claim()
        except InfraUnavailable:
            log.warning("job %s: cannot claim, infrastructure unavailable; the queued sweep re-sends it", self.job_id)
            return "infra_unavailable"
        if job is None or isinstance(job, str):
            return job or "skipped"
        try:
            if job["attempt"] > self.settings.max_attempts:
                return self._fail(attempts_error(job["attempt"] - 1), "max attempts exceeded")
            return self._run(job)
        except repo.LeaseLost:
            log.warning("job %s: lease lost to another worker; stopping without writing", self.job_id)
            return "lease_lost"
        except Exception as exc:
            if is_infra(exc):
                return self._give_back(exc)
            error = internal_error()
            log.exception("job %s failed (error reference %s)", self.job_id, error["ref"])
            return self._fail(error, f"internal error {error['ref']}")
        finally:
            if self.trainer is not None:
                self.trainer.close()
                self.trainer = None

    def _claim(self) -> dict[str, Any] | str | None:
        """The claimed job, ``"deferred"`` when its organization is at its running cap (the job is sent
        again after a countdown), or None when it is not claimable."""
        cap = int(self.settings.max_running_jobs_per_org)
        if self._db(repo.defer_queued, cap):
            log.info("job %s: its organization runs %d jobs already; sent again later", self.job_id, cap)
            self._send_again(ORG_CAP_COUNTDOWN_S)
            return "deferred"
        self._claimed_at = time.monotonic()
        job = self._db(repo.claim_job, self.worker_id, self.settings.lease_seconds, max_running_per_org=cap)
        if job is None:
            log.info("job %s is not claimable; nothing to do", self.job_id)
            return None
        self._lease_renewed(self._claimed_at)
        return job

    def _fail(self, error: dict[str, Any], reason: str) -> str:
        """End the job ``failed`` with ``error`` (its ``ref``, if any, is kept out of the stored error)."""
        public = {k: error[k] for k in ("code", "message", "param")}
        try:
            self._event(f"Job failed: {public['message']}", level="error", data={"kind": "job_failed", **public})
            self._db(repo.finish_job, self.worker_id, "failed", error=public)
        except Exception:
            log.exception("job %s: could not record its failure (%s)", self.job_id, reason)
        return "failed"

    def _give_back(self, exc: BaseException) -> str:
        """An infrastructure fault outlasted its retries: release the job to ``queued`` (its checkpoints
        kept) and enqueue it again; with the database unreachable too, just stop (the lease expires)."""
        cause = exc.__cause__ if isinstance(exc, InfraUnavailable) and exc.__cause__ else exc
        what = "the checkpoint disk" if is_disk_fault(cause) else "Redis or the database"
        log.warning("job %s: giving the job back after an infrastructure fault (%r)", self.job_id, cause)
        if (
            is_redis_fault(cause)
            and self.trainer is not None
            and self.trainer.steps_applied > self.last_checkpoint_step
        ):
            try:  # Redis is what failed: the disk and the database may still take the applied steps
                self._checkpoint()
            except repo.LeaseLost:
                return "lease_lost"
            except Exception:
                log.warning("job %s: no checkpoint before the release", self.job_id, exc_info=True)
        step = self.last_checkpoint_step
        try:
            with self.sessionmaker.begin() as session:
                if not repo.release_job(session, self.job_id, self.worker_id, "queued"):
                    return "lease_lost"
                repo.add_event(
                    session,
                    self.job_id,
                    f"Worker {self.worker_id} could not reach {what}; job released to the queue, it resumes "
                    f"from the checkpoint at step {step}",
                    level="warn",
                    data={"kind": "job_released", "reason": "infrastructure", "step": step},
                )
        except Exception:
            log.warning("job %s: the database is unreachable too; the lease will expire", self.job_id, exc_info=True)
            return "infra_unavailable"
        self._send_again()
        return "released"

    def _setup(self, job: dict[str, Any]) -> UploadSource | None:
        """Build the job's trainer and step server and restore its last valid checkpoint; returns the
        upload source of an upload-mode job (None: an interactive job)."""
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
        rows = self._db(repo.recent_checkpoints, limit=int(self.settings.checkpoint_keep) + 2)
        loaded = checkpoints.load_valid(self.trainer, rows)
        for row, _reason in loaded.skipped:
            self._event(
                f"Checkpoint at step {row['step_number']} is unusable (missing, or its files do not match their "
                "checksums); trying the previous one",
                level="warn",
                data={"kind": "checkpoint_skipped", "step": row["step_number"]},
            )
        if loaded.row is not None:
            self.last_checkpoint_step = loaded.step
            self._event(
                f"Job restarted on {self.worker_id}; resumed from checkpoint at step {loaded.step}",
                data={"step": loaded.step, "kind": "job_restarted"},
            )
        else:
            if rows:
                self._event("No usable checkpoint; training restarts from step 0", level="warn")
            self._event(f"Training started on {self.device.type} ({self.worker_id})", data={"kind": "job_started"})
            self._privacy_event(spec.method.privacy)
        return source

    def _run(self, job: dict[str, Any]) -> str:
        self._keeper = keeper = LeaseKeeper(
            self.sessionmaker, self.job_id, self.worker_id, self.settings.lease_seconds, self.settings.heartbeat_seconds
        )
        try:
            with keeper:  # setup may outlast the lease: renew it meanwhile
                source = self._setup(job)
        finally:
            self._take_keeper_renewal()
            self._keeper = None
        keeper.raise_if_lost()
        if self.drain.is_set():
            return self._drain()
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
        def once():
            with self.sessionmaker.begin() as session:
                return repo.get_file(session, file_id)

        row = self._retry(once)
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
            end = self._drain() if self.drain.is_set() else self._stop_requested(self._control())
            if end:
                outcome.append(end)
            return end is not None

        if not source.run(self.server, self.spec.total_steps, should_stop):
            return outcome[0]
        return self.outcome

    def _serve(self) -> str:
        idle_limit = float(self.settings.device_idle_timeout_s)
        first_limit = float(self.settings.first_step_timeout_s)
        last_seen, seen_any = time.monotonic(), False
        while True:
            if self.drain.is_set():
                return self._drain()
            end = self._stop_requested(self._control())
            if end:
                return end
            message = self._retry(self.channel.receive, timeout_s=1.0)
            if message is None:
                now = time.monotonic()
                if not seen_any and now - self._claimed_at > first_limit:
                    return self._pause(
                        f"No first step from the device within {first_limit:.0f} s of the job starting; job "
                        "paused to free the worker",
                        idle=True,
                        reason="first_step_timeout",
                    )
                if now - last_seen > idle_limit:
                    return self._pause(f"No step from the device for {idle_limit:.0f} s; job paused", idle=True)
                continue
            last_seen, seen_any = time.monotonic(), True
            try:
                reply = self.server.handle(message.payload)
            except StepRejected as rejection:
                self._retry(self.channel.reject, message.request_id, rejection)
                continue
            # a reply that cannot be sent is lost, not re-applied: the device's retry gets the stored reply
            self._retry(self.channel.reply, message.request_id, reply)
            if self.server.finished:
                return self.outcome

    def _control(self) -> str:
        """The job's status, read before every step; the lease is renewed every ``heartbeat_seconds``."""
        now = time.monotonic()
        if now - self._last_heartbeat >= float(self.settings.heartbeat_seconds):
            status = self._db(
                repo.heartbeat, self.worker_id, self.settings.lease_seconds, steps_completed=self.trainer.steps_applied
            )
            self._last_heartbeat = now
            self._lease_renewed(now)
            return status
        return self._db(repo.check_control, self.worker_id)

    def _pause(self, message: str, idle: bool = False, reason: str | None = None) -> str:
        if self.trainer.steps_applied > self.last_checkpoint_step:
            self._checkpoint()
        self.trainer.drop_pending()
        self._db(repo.release_job, self.worker_id, "paused")
        data = {"kind": "job_paused", "step": self.last_checkpoint_step, **({"reason": reason} if reason else {})}
        self._event(
            f"{message} at step {self.last_checkpoint_step}; resume continues from there",
            level="warn" if idle else "info",
            data=data,
        )
        return "paused"

    def _drain(self) -> str:
        """The worker is shutting down: checkpoint, release the job to ``queued`` and send it again, so
        another worker resumes it."""
        if self.trainer.steps_applied > self.last_checkpoint_step:
            self._checkpoint()
        self.trainer.drop_pending()
        if not self._db(repo.release_job, self.worker_id, "queued"):
            return "lease_lost"
        step = self.last_checkpoint_step
        self._event(
            f"Worker shutting down; job released at step {step}, another worker resumes it",
            level="warn",
            data={"kind": "job_released", "reason": "worker_shutdown", "step": step},
        )
        self._send_again()
        return "released"

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

    def _checkpoint(self, metrics: dict | None = None, required: bool = False) -> bool:
        """Write, register and prune: a durable checkpoint of the applied steps, registered only while
        this worker holds the lease, then all but the newest ``checkpoint_keep`` removed. A full or
        failing disk leaves the previous checkpoint valid: unless ``required``, an event says so and
        training goes on (returns False); a lost lease raises ``LeaseLost`` with nothing registered."""
        step = self.trainer.steps_applied
        root = self._job_dir() / "checkpoints"
        try:
            written = checkpoints.write_checkpoint(
                self.trainer, root, step, metrics, check_lease=lambda: self._db(repo.check_control, self.worker_id)
            )
        except OSError as exc:
            if required or not is_disk_fault(exc):
                raise
            log.warning("job %s: checkpoint at step %d not written: %r", self.job_id, step, exc)
            self._event(
                f"Checkpoint at step {step} could not be written (the worker's checkpoint disk is full or failing); "
                f"the checkpoint at step {self.last_checkpoint_step} stays valid and training continues",
                level="warn",
                data={"kind": "checkpoint_failed", "step": step, "kept_step": self.last_checkpoint_step},
            )
            return False
        name = f"{self._model_name()}:ckpt-step-{step}"
        try:
            self._db(
                repo.add_checkpoint,
                step,
                metrics or {"step": step},
                str(written.path),
                name,
                sha256=written.sha256,
                lease_owner=self.worker_id,
            )
        except repo.LeaseLost:
            checkpoints.remove_directories([str(written.path)])
            raise
        self.last_checkpoint_step = step
        checkpoints.remove_directories(self._db(repo.prune_checkpoints, int(self.settings.checkpoint_keep)))
        self._event(f"Checkpoint saved at step {step}", data={"kind": "checkpoint_saved", "step": step})
        return True

    def _finish(self) -> None:
        if self.trainer.steps_applied > self.last_checkpoint_step:
            self._checkpoint(required=True)
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
