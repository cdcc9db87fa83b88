"""``FineTuneJob.create(dataset, ...)``: private split fine-tuning from the data owner's side.

What happens on the device: every option is checked first (against the job contract and the limits
the gateway publishes for the model), so a job the server would refuse fails before any local work;
then the bottom model is downloaded (cached by digest) and run locally, the privacy mechanism is
prepared from the user's own data (neighbours, importance, centroids), every batch is perturbed
before it leaves, the server's output is finished by the device's own end (a classification head, or
a generation tail), the loss is computed with the local labels, and only dL/d(server output) is
returned. What the server receives is exactly ``Privatizer.privatize`` of the batch, that gradient
and, unless ``report_metrics=False``, loss means over windows of steps and validation aggregates.

A :class:`FineTuneJob` is the OpenAI ``FineTuningJob`` object the server returns, extended with what
only the device measured (``.metrics``, ``.report``): one job type, not a wrapper beside it.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import sys
import warnings
from typing import Any

from pydantic import ConfigDict, Field, PrivateAttr

from client_sdk.client import Client
from client_sdk.errors import PrivTuneError
from client_sdk.options import Hyperparameters, PrivacyConfig, PrivacyTargetError
from client_sdk.session import DeviceSession
from client_sdk.training import DEFAULT_WORKER_WAIT, TrainingReport
from client_sdk.types import FineTuningJob, FineTuningJobCheckpoint, FineTuningJobEvent

__all__ = ["FineTuneJob", "Hyperparameters", "PrivacyConfig", "PrivacyTargetError", "PrivacyWarning"]


class FineTuneJob(FineTuningJob):
    """A fine-tuning job the device trains: the server's ``fine_tuning.job`` object (every field of
    ``FineTuningJob``: ``id``, ``status``, ``fine_tuned_model`` ...) plus what only the device measured
    (``metrics``: accuracies, bytes, privacy record; ``report``: per-step losses, throughput).

    It is immutable like the object it extends: :meth:`refresh`, :meth:`cancel` and :meth:`pause`
    return the job's new state.
    """

    model_config = ConfigDict(extra="allow", frozen=True, arbitrary_types_allowed=True)

    metrics: dict[str, Any] = Field(default_factory=dict, exclude=True)
    _client: Client = PrivateAttr()
    _report: TrainingReport | None = PrivateAttr(default=None)

    @classmethod
    def of(
        cls,
        client: Client,
        job: FineTuningJob,
        report: TrainingReport | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> FineTuneJob:
        """The device's view of the server's ``job`` (``client`` is what follows it)."""
        out = cls.model_validate({**job.model_dump(), "metrics": metrics or {}})
        out._client, out._report = client, report
        return out

    @property
    def report(self) -> TrainingReport | None:
        """What the device measured step by step (None for a job this device did not train)."""
        return self._report

    def __repr__(self) -> str:
        return f"FineTuneJob(id={self.id!r}, status={self.status!r}, metrics={self.metrics})"

    __str__ = __repr__

    # ---- following a job ----------------------------------------------------------------------
    def _with(self, job: FineTuningJob) -> FineTuneJob:
        return FineTuneJob.of(self._client, job, self._report, self.metrics)

    def refresh(self) -> FineTuneJob:
        """The job as the server has it now."""
        return self._with(self._client.fine_tuning.jobs.retrieve(self.id))

    def events(self, limit: int | None = None) -> list[FineTuningJobEvent]:
        """The job's events, newest first (all of them, or the first ``limit``)."""
        return list(itertools.islice(self._client.fine_tuning.jobs.list_events(self.id), limit))

    def checkpoints(self) -> list[FineTuningJobCheckpoint]:
        """The job's checkpoints, newest first."""
        return list(self._client.fine_tuning.jobs.checkpoints.list(self.id))

    def cancel(self) -> FineTuneJob:
        """Cancel the job; returns its new state."""
        return self._with(self._client.fine_tuning.jobs.cancel(self.id))

    def pause(self) -> FineTuneJob:
        """Pause the job at its next checkpoint; returns its new state."""
        return self._with(self._client.fine_tuning.jobs.pause(self.id))

    # ---- training ---------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        dataset: Any,
        model: str = "minilm-l6",
        task: str = "classification",
        privacy: PrivacyConfig | None = None,
        hyperparameters: Hyperparameters | dict | None = None,
        *,
        split_layer: int = 3,
        max_length: int = 64,
        validation_split: float = 0.1,
        seed: int = 0,
        suffix: str | None = None,
        metadata: dict[str, str] | None = None,
        client: Client | None = None,
        progress: bool = True,
        cache_dir: str | None = None,
        tail_layers: int | None = None,
        state_dir: str | None = None,
        report_metrics: bool = True,
        wire_dtype: str = "q8",
        worker_wait_s: float = DEFAULT_WORKER_WAIT,
        **columns: str | None,
    ) -> FineTuneJob:
        """Train privately on ``dataset`` and return the finished job (``metrics`` has the validation results).

        ``task="classification"``: (text, label) pairs, dicts, a .jsonl/.jsonl.gz/.csv path or a
        ``datasets.Dataset``; ``text_column`` / ``label_column`` name the columns of dict rows (default:
        ``text``, ``label`` and their usual synonyms, ``client_sdk.data.TEXT_KEYS`` / ``LABEL_KEYS``). The
        head is trained on the device.
        ``task="generation"`` (a causal LM, e.g. ``smollm2-135m``): (prompt, completion) pairs, dicts with
        ``prompt_column`` / ``completion_column``, or OpenAI chat rows (``{"messages": [...]}``, loss on
        the assistant turns); the last ``tail_layers`` blocks, the final norm and the LM head run on the
        device. ``state_dir``: where the device keeps its end of the model (default
        ``$PRIVTUNE_STATE_DIR`` or ``~/.cache/privtune/jobs``); ``report_metrics=False`` sends no loss
        aggregates for the job's events. ``wire_dtype``: ``"q8"`` (8-bit blockwise, about half the bytes)
        or ``"float16"`` for the perturbed states and gradients. ``worker_wait_s``: how long to wait, per
        outage, for a worker to take the job back after a crash (``job_not_running``) before giving up.

        Ctrl-C while the job trains pauses it (the worker checkpoints and releases), prints its id, the
        step reached and the ``FineTuneJob.resume(...)`` call that continues it, and raises
        ``KeyboardInterrupt``; a second Ctrl-C during the pause request exits at once.

        Raises ``JobSpecError`` (``.param`` names the option) before any local work for an option the
        job contract or the server's limits refuse, ``DatasetError`` for a dataset it cannot read,
        ``BottomExportError`` (before any job is created) when the provider cannot export the bottom,
        ``JobInterruptedError`` when the job is paused, cancelled or fails under it."""
        session = DeviceSession.prepare(
            dataset,
            model=model,
            task=task,
            privacy=privacy,
            hyperparameters=hyperparameters,
            split_layer=split_layer,
            max_length=max_length,
            validation_split=validation_split,
            seed=seed,
            client=client,
            cache_dir=cache_dir,
            tail_layers=tail_layers,
            state_dir=state_dir,
            report_metrics=report_metrics,
            wire_dtype=wire_dtype,
            worker_wait_s=worker_wait_s,
            **columns,
        )
        record = session.client.fine_tuning.jobs.create(**session.job_body(suffix, metadata))
        if progress:
            print(f"created job {record.id} (status {record.status})", file=sys.stderr)
        return cls._run(session, record, progress)

    @classmethod
    def resume(cls, job_id: str, dataset: Any, *, progress: bool = True, **options: Any) -> FineTuneJob:
        """Continue an interrupted or paused job. Pass the dataset and the keyword arguments of
        :meth:`create` (model, task, privacy, hyperparameters, split_layer, seed, ...) that created it;
        the device's end is restored from its state directory at the worker's checkpoint."""
        for create_only in ("suffix", "metadata"):
            options.pop(create_only, None)
        session = DeviceSession.prepare(dataset, **options)
        record = session.client.fine_tuning.jobs.retrieve(job_id)
        if record.status == "paused":
            record = session.client.fine_tuning.jobs.resume(job_id)
        # Start from step 1; the worker answers with the step it expects (its last checkpoint + 1).
        return cls._run(session, record, progress)

    @classmethod
    def _run(cls, session: DeviceSession, record: Any, progress: bool) -> FineTuneJob:
        """Train the job and complete it; Ctrl-C pauses it (see :meth:`create`)."""
        state: dict[str, Any] = {}  # the trainer, once there is one (the step reached)
        try:
            return cls._train(session, record, progress, state)
        except KeyboardInterrupt:
            trainer = state.get("trainer")
            _pause_on_interrupt(session, record.id, trainer.report.steps if trainer else 0)
            raise

    @classmethod
    def _train(cls, session: DeviceSession, record: Any, progress: bool, state: dict[str, Any]) -> FineTuneJob:
        session.wait_running(record.id)
        trainer = state["trainer"] = session.trainer(record.id)
        noiseless = not session.privatizer.mechanism.uses_noise
        if noiseless:
            warnings.warn(
                f"mechanism {session.privacy.mechanism!r} adds no noise: the server receives your token "
                "representations as computed (plain split learning, not private fine-tuning)",
                PrivacyWarning,
                stacklevel=4,
            )
        if progress:
            print(session.privacy_summary(), file=sys.stderr)
        before = trainer.evaluate(session.valid) if session.valid else {}
        desc = (
            f"fine-tuning, NO noise (mechanism={session.privacy.mechanism!r})" if noiseless else "private fine-tuning"
        )
        bar = _ProgressBar(session.total_steps, 1, desc) if progress else None
        if bar and trainer.wait:
            trainer.wait.on_wait = bar.waiting
        update = bar.update if bar else None
        try:
            report = trainer.train(start_step=1, progress=update)
            complete = functools.partial(session.client.fine_tuning.jobs.complete, record.id)
            record, after = trainer.finish(complete, session.valid, progress=update)
        finally:
            if bar:
                bar.close()
        session.save_final(trainer)
        return cls.of(session.client, record, report, session.metrics(trainer, report, before, after))

    def load_model(self, **options: Any) -> Any:
        """The fine-tuned model, for private inference from this device (``client_sdk.FineTunedModel``;
        ``options`` are its keyword arguments). Not ``.model``: that is the OpenAI job's base-model field."""
        from client_sdk.inference import FineTunedModel

        if not self.fine_tuned_model:
            raise ValueError(f"job {self.id} has no fine-tuned model (status {self.status!r})")
        return FineTunedModel(self.fine_tuned_model, client=self._client, **options)


class PrivacyWarning(UserWarning):
    """The job's mechanism gives no protection (``mechanism='none'``, or one without noise)."""


class _ProgressBar:
    """tqdm bar showing loss and samples/s (tqdm is imported only when a bar is shown)."""

    def __init__(self, total: int, start: int, desc: str):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=start - 1, unit="step", desc=desc)

    def update(self, step: int, loss: float, samples_per_second: float) -> None:
        self.bar.n = step
        self.bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples_per_second:.1f}")

    def waiting(self, status: str) -> None:
        """Shown while the job waits for a worker (after a crash); the next step's figures replace it."""
        self.bar.set_postfix_str(f"waiting for a worker (job {status})")

    def close(self) -> None:
        self.bar.close()


def resume_call(job_id: str, options: dict[str, Any]) -> str:
    """The ``FineTuneJob.resume(...)`` call that continues ``job_id``: the options that differ from
    :meth:`FineTuneJob.create`'s defaults, as given (``dataset`` and ``client`` stand for the user's)."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(FineTuneJob.create).parameters.items()
        if p.default is not p.empty
    }
    given = [f"{key}={value!r}" for key, value in options.items() if key not in defaults or defaults[key] != value]
    return f"FineTuneJob.resume({', '.join([repr(job_id), 'dataset', *given])})"


def _pause_on_interrupt(session: DeviceSession, job_id: str, step: int) -> None:
    """After Ctrl-C: pause the job (the worker checkpoints its applied steps and releases) and say how to
    continue. A second Ctrl-C during the request leaves at once, saying the job was not paused."""
    resume = resume_call(job_id, session.options)
    jobs = session.client.fine_tuning.jobs
    print(
        f"\ninterrupted at step {step} of {session.total_steps}: pausing job {job_id} (Ctrl-C again to leave "
        "without pausing) ...",
        file=sys.stderr,
        flush=True,
    )
    try:
        jobs.pause(job_id)
    except KeyboardInterrupt:
        print(
            f"job {job_id} was NOT paused and keeps its worker until the device idle timeout; pause it with "
            f"client.fine_tuning.jobs.pause({job_id!r}) or cancel it with client.fine_tuning.jobs.cancel({job_id!r}); "
            f"continue it with:\n    {resume}",
            file=sys.stderr,
            flush=True,
        )
        raise
    except PrivTuneError as exc:
        print(f"could not pause job {job_id}: {exc}\nto continue it later:\n    {resume}", file=sys.stderr, flush=True)
        return
    print(
        f"job {job_id} is paused at its last checkpoint (step {step} reached on this device). Continue it with:\n"
        f"    {resume}",
        file=sys.stderr,
        flush=True,
    )
