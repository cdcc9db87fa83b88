"""The device half of interactive split training (U-shaped): privatize, send, finish the forward
pass through the device's own end, train that end, return dL/d(server output).

Labels, text, logits and the loss never leave this module: the wire carries perturbed hidden
states and gradients, plus (unless ``report_metrics=False``) a few aggregates for the job's events:
the mean training loss over each window of ``REPORT_EVERY`` steps and the validation results at the
end of each epoch. With ``prefetch`` the next batch is privatised in a background thread while the
reply to the current one is awaited (the bottom is frozen, so it does not depend on the reply); the
SDK turns it off when the gateway is on this machine, where the two compete for the same cores.

Crashes on the provider's side are followed, not fatal: while a worker takes the job back the gateway
answers ``job_not_running`` and the device waits (:class:`WorkerWait`) and sends the same request
again; the new worker's ``step_out_of_order`` (``expected_step``) then rewinds the device to its
checkpoint; a completion the worker refuses (its applied steps differ from the device's) trains again
from there (:meth:`DeviceTrainer.finish`).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from client_sdk import protocol, wire
from client_sdk.data import batch_indices
from client_sdk.end_state import EndStore
from client_sdk.end_tasks import Batch
from client_sdk.errors import (
    APIConnectionError,
    InternalServerError,
    JobNotRunningError,
    RateLimitError,
    StepOutOfOrderError,
)
from client_sdk.jobspec import OptimizerSpec

REPORT_EVERY = 10  # steps per reported training-loss mean
DEFAULT_WORKER_WAIT = 600.0  # seconds the device waits for a worker to take a job back after a crash
MAX_REWINDS = 5  # refusals of one step (or completion) in a row before the device gives up

#: statuses in which a job comes back by itself (a worker restarting or claiming it)
WAITING_STATUSES = ("validating_files", "queued", "running")


class JobInterruptedError(RuntimeError):
    """The job stopped taking steps and will not come back by itself (``status``: paused, cancelled,
    failed or succeeded), or no worker took it back within the wait."""

    def __init__(self, message: str, job_id: str, status: str | None):
        super().__init__(message)
        self.job_id, self.status = job_id, status


@dataclass
class WorkerWait:
    """How the device waits through ``job_not_running`` (409) while a worker takes the job back.

    :meth:`call` sends a request; on ``JobNotRunningError`` it polls ``status()`` (the job's status now)
    with capped exponential backoff until it is ``running`` again and sends the same request once more,
    for at most ``timeout_s`` in all (per outage). A job that is paused, cancelled, failed or succeeded
    raises :class:`JobInterruptedError` naming the status (paused: how to resume); so does a wait past
    ``timeout_s``. ``on_wait(status)`` is told before each poll (the progress bar shows it).
    """

    job_id: str
    status: Callable[[], str]
    timeout_s: float = DEFAULT_WORKER_WAIT
    sleep: Callable[[float], None] = time.sleep
    initial_delay: float = 0.5
    max_delay: float = 10.0
    on_wait: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        if not self.timeout_s >= 0:
            raise ValueError(f"the worker wait must be >= 0 seconds, got {self.timeout_s}")

    def call(self, send: Callable[[], Any]) -> Any:
        """``send()``'s result, waiting for the job to run again as often as the gateway says it does not,
        and for the gateway itself while it cannot be reached (restarting: connection refused, 502-504,
        429 after the HTTP layer's own retries), then sending the same request again; a step is
        idempotent, so a request that did reach the worker gets its reply replayed."""
        while True:
            try:
                return send()
            except JobNotRunningError as exc:
                self.wait(exc.job_status)
            except (APIConnectionError, InternalServerError, RateLimitError) as exc:
                if isinstance(exc, InternalServerError) and exc.status_code not in (502, 503, 504):
                    raise  # the gateway answered with a failure of its own: nothing to wait for
                status = self._status_when_reachable(exc)
                if status != "running":
                    self.wait(status)

    def _status_when_reachable(self, first: Exception) -> str:
        """The job's status as soon as the gateway answers again (capped backoff, ``timeout_s`` in all)."""
        started, waited, delay = time.monotonic(), 0.0, self.initial_delay
        while True:
            elapsed = max(waited, time.monotonic() - started)
            if elapsed >= self.timeout_s:
                raise JobInterruptedError(
                    f"the gateway did not answer within {self.timeout_s:.0f} s ({first}); continue later with "
                    f"FineTuneJob.resume({self.job_id!r}, dataset, ...)",
                    self.job_id,
                    None,
                ) from first
            if self.on_wait:
                self.on_wait("gateway unreachable")
            pause = min(delay, self.timeout_s - elapsed)
            self.sleep(pause)
            waited, delay = waited + pause, min(delay * 2, self.max_delay)
            try:
                return self.status()
            except (APIConnectionError, InternalServerError, RateLimitError):
                continue

    def wait(self, status: str | None) -> None:
        """Return once the job runs again; raise :class:`JobInterruptedError` if it will not."""
        started, waited, delay = time.monotonic(), 0.0, self.initial_delay
        if status is None:  # a gateway that did not say: ask
            status = self.status()
        while True:
            if status == "running" and waited:
                return
            if status not in WAITING_STATUSES:
                raise JobInterruptedError(self._stopped(status), self.job_id, status)
            elapsed = max(waited, time.monotonic() - started)
            if elapsed >= self.timeout_s:
                raise JobInterruptedError(
                    f"no worker took job {self.job_id} back within {self.timeout_s:.0f} s (status {status!r}); "
                    f"continue later with FineTuneJob.resume({self.job_id!r}, dataset, ...)",
                    self.job_id,
                    status,
                )
            if self.on_wait:
                self.on_wait(status)
            pause = min(delay, self.timeout_s - elapsed)
            self.sleep(pause)
            waited, delay = waited + pause, min(delay * 2, self.max_delay)
            status = self.status()

    def _stopped(self, status: str | None) -> str:
        if status == "paused":
            return (
                f"job {self.job_id} is paused; resume it with FineTuneJob.resume({self.job_id!r}, dataset, "
                "**the options it was created with) or client.fine_tuning.jobs.resume() and train again"
            )
        return f"job {self.job_id} is {status} and takes no more steps"


@dataclass
class TrainingReport:
    """What the device measured: per-step losses, bytes sent and received, throughput."""

    steps: int = 0
    losses: list[float] = field(default_factory=list)  # one per trained step, in step order
    bytes_sent: int = 0
    bytes_received: int = 0
    samples: int = 0
    seconds: float = 0.0
    activation_elements: int = 0  # real (b * t * d) elements sent, for the wire-efficiency figure
    validation: list[dict[str, float]] = field(default_factory=list)  # per epoch: step, valid_loss, ...

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


class DeviceTrainer:
    """Drives one job's steps through ``post`` (bytes -> bytes, e.g. ``Client.post_step``).

    ``task`` is a :class:`~client_sdk.end_tasks.HeadTask` or :class:`~client_sdk.end_tasks.TailTask`
    holding the device's end; ``optimizer`` the job's optimiser contract (the device trains its end
    with the same AdamW settings and schedule as the server its adapter); ``store`` where the end is
    saved after every step (``None``: not saved, for experiments); ``gradient_noise`` (>= 0) adds
    Gaussian noise of that many times the gradient's RMS to what is returned (the device's end still
    trains on the exact gradient). It is an experiment knob, not a defence: docs/RESULTS.md measures
    that values up to 4 leave the answer tokens recoverable and 64 costs most of the utility.
    """

    def __init__(
        self,
        job_id: str,
        post: Callable[[bytes], bytes],
        task: Any,
        examples: Sequence[Any],
        batch_size: int,
        *,
        optimizer: OptimizerSpec,
        total_steps: int,
        seed: int = 0,
        generator: torch.Generator | None = None,
        store: EndStore | None = None,
        validation: Sequence[Any] = (),
        report_metrics: bool = True,
        float_dtype: str = "float16",
        gradient_noise: float = 0.0,
        prefetch: bool = True,
        wait: WorkerWait | None = None,
    ):
        self.job_id, self.post, self.task = job_id, post, task
        self.examples, self.batch_size, self.seed, self.total_steps = list(examples), batch_size, seed, total_steps
        self.generator, self.store, self.validation = generator, store, list(validation)
        self.report_metrics, self.float_dtype = report_metrics, float_dtype
        if gradient_noise < 0:
            raise ValueError(f"gradient_noise must be >= 0, got {gradient_noise}")
        # Its own generator: the noise generator is busy in the prefetch thread meanwhile.
        self.gradient_noise = gradient_noise
        seed = (generator.initial_seed() if generator is not None else seed) + 1
        self._grad_generator = torch.Generator().manual_seed(seed)
        self.spec = optimizer
        self.params = task.end.trainable()
        # A tail of 0 blocks has nothing to train (final norm and LM head stay the public ones): a
        # placeholder keeps the optimiser and its saved state uniform.
        trained = list(self.params.values()) or [torch.nn.Parameter(torch.zeros(1))]
        self.optimizer = torch.optim.AdamW(trained, lr=optimizer.learning_rate, weight_decay=optimizer.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: optimizer.lr_factor(s, total_steps)
        )
        self.report = TrainingReport()
        self._metrics: dict[str, float] = {}  # aggregates waiting for the next request
        self._window: list[float] = []
        self.prefetch, self.wait = prefetch, wait
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="privtune-prefetch")
        self._first_loss_step = 1  # the step of report.losses[0]

    # ---- the wire ---------------------------------------------------------------------------------
    def _send(
        self, tensors: dict[str, torch.Tensor], step: int, kind: str = "step", extra: dict[str, str] | None = None
    ) -> tuple[wire.WireHeader, dict[str, torch.Tensor]]:
        header = wire.WireHeader(self.job_id, step, kind, extra=extra or {})
        payload = wire.encode(tensors, header, float_dtype=self.float_dtype)
        reply = self.wait.call(lambda: self.post(payload)) if self.wait else self.post(payload)
        self.report.bytes_sent += len(payload)
        self.report.bytes_received += len(reply)
        return wire.decode(reply)

    def _extra(self) -> dict[str, str]:
        if not (self.report_metrics and self._metrics):
            return {}
        metrics, self._metrics = self._metrics, {}
        return {protocol.METRICS: json.dumps({k: round(v, 6) for k, v in metrics.items()})}

    # ---- the device's end -------------------------------------------------------------------------
    def _save(self, step: int) -> None:
        if self.store is not None:
            state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
            self.store.save(step, self.task.end.state(), state)

    def _restore(self, step: int) -> None:
        """Put the end back as it was after ``step`` (the worker resumed from its checkpoint there)."""
        if self.store is None:
            raise RuntimeError(f"the worker resumed from step {step}; without a device store the end cannot follow")
        tensors, state = self.store.load(step)
        self.task.end.load_state(tensors)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def _update(self, output: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, float]:
        """Forward through the end, one optimiser step on it; returns (dL/d(output), loss)."""
        output = output.float().requires_grad_(True)
        loss, _, _ = self.task.loss(output, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.params:
            torch.nn.utils.clip_grad_norm_(self.params.values(), self.spec.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        grad = output.grad.detach()
        if self.gradient_noise:  # N(0, (gradient_noise * rms(grad))^2) per element (see the class doc)
            rms = grad.pow(2).mean().sqrt()
            grad = grad + torch.randn(grad.shape, generator=self._grad_generator) * (self.gradient_noise * rms)
        return grad, float(loss.detach())

    def _batch(self, step: int) -> Batch:
        idx = batch_indices(len(self.examples), self.batch_size, step, self.seed)
        return self.task.batch([self.examples[i] for i in idx], self.generator)

    def _prefetch(self, step: int) -> Future[Batch] | None:
        """Step ``step``'s batch, privatised in the background (``prefetch``) or now."""
        if step > self.total_steps:
            return None
        if self.prefetch:
            return self._pool.submit(self._batch, step)
        done: Future[Batch] = Future()
        done.set_result(self._batch(step))
        return done

    # ---- training ---------------------------------------------------------------------------------
    def train(self, start_step: int = 1, progress: Callable[[int, float, float], None] | None = None) -> TrainingReport:
        """Run steps ``start_step..total_steps`` and flush the last gradient.

        A ``StepOutOfOrderError`` (the worker restarted from a checkpoint) rewinds to the step the
        worker expects, without a gradient, with the end restored as saved after the step before;
        batches are rebuilt from the step number. That step may be the one just refused (its gradient
        answered a forward the new worker never ran): it is sent again without the gradient. A
        ``JobNotRunningError`` waits for a worker (``wait``) and sends the same step again.
        """
        if self.store is not None and self.store.has(start_step - 1):
            self._restore(start_step - 1)
        elif start_step == 1:
            self._save(0)
        per_epoch = -(-len(self.examples) // self.batch_size)
        step, grad, started = start_step, None, time.perf_counter()
        self._forget_losses(step)
        refused: list[int] = []  # the expected steps of the refusals since the last answered step
        pending = self._prefetch(step)
        try:
            while step <= self.total_steps or grad is not None:
                batch = pending.result() if pending is not None else None
                tensors = dict(batch.tensors) if batch is not None else {}
                if grad is not None:
                    tensors[protocol.GRAD_OUTPUT] = grad
                pending = self._prefetch(step + 1)  # privatised while the worker computes
                try:
                    header, reply = self._send(tensors, step, extra=self._extra())
                except StepOutOfOrderError as exc:
                    refused.append(exc.expected_step)
                    if exc.expected_step is None or exc.expected_step < 1 or refused.count(exc.expected_step) > 1:
                        raise  # nothing to resend, or the same answer again: the device cannot follow
                    if len(refused) > MAX_REWINDS:
                        raise
                    if pending is not None:
                        pending.result()
                    step, grad = exc.expected_step, None
                    self._restore(step - 1)
                    self._forget_losses(step)
                    pending = self._prefetch(step)
                    continue
                refused.clear()
                if self.store is not None and protocol.CHECKPOINT in header.extra:
                    self.store.prune(int(header.extra[protocol.CHECKPOINT]))
                if batch is None:  # the flush of the last gradient
                    break
                grad, loss = self._update(reply[protocol.OUTPUT], batch)
                self._save(step)
                self._account(step, batch, loss, started, progress)
                if step % per_epoch == 0 and step < self.total_steps and self.validation:  # epoch ends
                    if pending is not None:
                        pending.result()  # the noise generator is not shared between threads
                    self._validate(step)
                step += 1
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="privtune-prefetch")
        self.report.seconds = time.perf_counter() - started
        return self.report

    def _forget_losses(self, step: int) -> None:
        """Drop the losses of ``step`` and later (they are trained again)."""
        if not self.report.losses:
            self._first_loss_step = step
        del self.report.losses[max(step - self._first_loss_step, 0) :]

    def finish(
        self,
        complete: Callable[[bytes], Any],
        validation: Sequence[Any] = (),
        progress: Callable[[int, float, float], None] | None = None,
    ) -> tuple[Any, dict[str, float]]:
        """Complete the job: ``complete(payload)`` (e.g. ``jobs.complete``) with :meth:`finish_payload`
        naming the last step answered, after the final :meth:`evaluate` of ``validation``. Returns
        (what ``complete`` returned, the final validation). When the worker refuses (its applied steps
        differ from this device's: a crash lost the last updates), the device trains again from the
        worker's ``expected_step``, flushes and completes again (at most ``MAX_REWINDS`` times)."""
        for attempt in range(MAX_REWINDS + 1):
            after = self.evaluate(validation) if validation else {}
            payload = self.finish_payload(after)
            try:
                send = functools.partial(complete, payload)
                result = self.wait.call(send) if self.wait else send()
                return result, after
            except StepOutOfOrderError as exc:
                expected = exc.expected_step
                if expected is None or not 1 <= expected <= self.total_steps or attempt == MAX_REWINDS:
                    raise
                self.train(start_step=expected, progress=progress)
        raise AssertionError("unreachable")

    def _account(self, step: int, batch: Batch, loss: float, started: float, progress: Any) -> None:
        mask = batch.tensors[protocol.ATTENTION_MASK]
        self.report.activation_elements += int(mask.sum()) * batch.tensors[protocol.HIDDEN].shape[-1]
        self.report.losses.append(loss)
        self.report.samples += batch.size
        self.report.steps = step
        self.report.seconds = time.perf_counter() - started
        self._window.append(loss)
        if len(self._window) >= REPORT_EVERY:
            self._metrics["train_loss"] = sum(self._window) / len(self._window)
            self._window = []
        if progress:
            progress(step, loss, self.report.samples_per_second)

    def _validate(self, step: int) -> None:
        result = self.evaluate(self.validation)
        self.report.validation.append({"step": step, **result})
        self._metrics.update(result)

    @torch.no_grad()
    def evaluate(self, examples: Sequence[Any], batch_size: int | None = None) -> dict[str, float]:
        """Loss and accuracy of the job's current model (server part + the device's end) on local examples:
        ``valid_loss`` and ``valid_accuracy`` (classification) or ``valid_mean_token_accuracy`` (generation)."""
        if not examples:
            raise ValueError("evaluate() needs at least one example")
        size, total_loss, correct, count = batch_size or self.batch_size, 0.0, 0, 0
        for start in range(0, len(examples), size):
            batch = self.task.batch(examples[start : start + size], self.generator)
            _, reply = self._send(batch.tensors, 0, kind="infer")
            loss, right, n = self.task.loss(reply[protocol.OUTPUT].float(), batch)
            total_loss, correct, count = total_loss + float(loss) * n, correct + right, count + n
        if not count:  # generation examples without a target token
            return {}
        accuracy = "valid_accuracy" if self.task.task == "classification" else "valid_mean_token_accuracy"
        return {"valid_loss": total_loss / count, accuracy: correct / count}

    def finish_payload(self, validation: dict[str, float] | None = None) -> bytes:
        """The completion request: the worker saves the final adapter and ends the job. It names the
        device's last step request (``protocol.LAST_STEP``: the flush, ``total_steps + 1``, which the
        worker checks against its applied steps) and carries the aggregates still waiting and
        ``validation`` (the final :meth:`evaluate`), unless metrics are off."""
        self._metrics.update(validation or {})
        extra = {**protocol.completion_extra(self.total_steps + 1), **self._extra()}
        return wire.encode({}, wire.WireHeader(self.job_id, 0, "step", extra=extra))
