"""``client.fine_tuning.jobs`` (and ``.jobs.checkpoints``): OpenAI's fine-tuning endpoints plus
PrivTune's split-training exchange (``post_step``, ``complete``)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any

from client_sdk._http import path_segment as _seg
from client_sdk.pagination import SyncCursorPage
from client_sdk.resources._base import SyncAPIResource, page_params
from client_sdk.types import FineTuningJob, FineTuningJobCheckpoint, FineTuningJobEvent

__all__ = ["Checkpoints", "FineTuning", "Jobs"]

OCTET = "application/octet-stream"


def _job_path(job_id: str, *rest: str) -> str:
    return "/".join(["fine_tuning/jobs", _seg(job_id), *rest])


class Checkpoints(SyncAPIResource):
    """``client.fine_tuning.jobs.checkpoints``: the checkpoints a job saved."""

    def list(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> SyncCursorPage[FineTuningJobCheckpoint]:
        """Return the first page of the job's checkpoints, newest first, strictly after the
        checkpoint id ``after``; iterating the page yields every later checkpoint too."""
        return self._page(
            _job_path(job_id, "checkpoints"),
            FineTuningJobCheckpoint,
            page_params(after, limit),
            lambda cursor: self.list(job_id, after=cursor, limit=limit),
        )


class Jobs(SyncAPIResource):
    """``client.fine_tuning.jobs``: create, list, follow and steer fine-tuning jobs.

    Interactive split jobs are created here without a ``training_file``; the official ``openai``
    client requires one in ``create`` and so can list, inspect and cancel those jobs but not
    create them.
    """

    @cached_property
    def checkpoints(self) -> Checkpoints:
        """The job checkpoints resource."""
        return Checkpoints(self._client)

    def create(
        self,
        *,
        model: str,
        method: Mapping[str, Any] | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        training_file: str | None = None,
        validation_file: str | None = None,
        suffix: str | None = None,
        seed: int | None = None,
        metadata: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> FineTuningJob:
        """Create a fine-tuning job and return it. Arguments left as None are not sent; ``extra``
        keys are sent as they are. An interactive PrivTune job needs no ``training_file``."""
        fields = {
            "model": model,
            "method": method,
            "hyperparameters": hyperparameters,
            "training_file": training_file,
            "validation_file": validation_file,
            "suffix": suffix,
            "seed": seed,
            "metadata": metadata,
            **extra,
        }
        body = {key: value for key, value in fields.items() if value is not None}
        return self._request("POST", "fine_tuning/jobs", FineTuningJob, json=body)

    def list(
        self, *, after: str | None = None, limit: int | None = None, metadata: Mapping[str, str] | None = None
    ) -> SyncCursorPage[FineTuningJob]:
        """Return the first page of jobs, newest first, strictly after the job id ``after``;
        ``metadata`` keeps only jobs whose metadata holds every given pair (sent as
        ``metadata[k]=v``). Iterating the page yields every matching job, page after page."""
        filters = [(f"metadata[{key}]", value) for key, value in (metadata or {}).items()]
        return self._page(
            "fine_tuning/jobs",
            FineTuningJob,
            page_params(after, limit, filters),
            lambda cursor: self.list(after=cursor, limit=limit, metadata=metadata),
        )

    def retrieve(self, job_id: str) -> FineTuningJob:
        """Return the job's current state."""
        return self._request("GET", _job_path(job_id), FineTuningJob)

    def cancel(self, job_id: str) -> FineTuningJob:
        """Ask the gateway to cancel the job; returns it (status ``cancelled`` once the worker stopped).
        Cancelling a finished job is a ``ConflictError`` (not retried)."""
        return self._request("POST", _job_path(job_id, "cancel"), FineTuningJob)

    def pause(self, job_id: str) -> FineTuningJob:
        """Pause the job at its next checkpoint; returns it."""
        return self._request("POST", _job_path(job_id, "pause"), FineTuningJob)

    def resume(self, job_id: str) -> FineTuningJob:
        """Resume a paused job from its last checkpoint; returns it."""
        return self._request("POST", _job_path(job_id, "resume"), FineTuningJob)

    def list_events(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> SyncCursorPage[FineTuningJobEvent]:
        """Return the first page of the job's events, newest first, strictly after the event id
        ``after``; iterating the page yields every later event too."""
        return self._page(
            _job_path(job_id, "events"),
            FineTuningJobEvent,
            page_params(after, limit),
            lambda cursor: self.list_events(job_id, after=cursor, limit=limit),
        )

    def post_step(self, job_id: str, payload: bytes) -> bytes:
        """Send one ``client_sdk.wire`` step payload and return the reply payload's bytes.

        Transient failures are retried: the server answers a repeated step number with the reply it
        already computed, so a retry never takes a second optimizer step. A ``StepOutOfOrderError``
        says which step to resend (``expected_step``); a ``JobNotRunningError`` (``job_status``) that the
        job takes no steps now, e.g. while a worker takes it back after a crash (``WorkerWait`` waits).
        """
        headers = {"Content-Type": OCTET, "Accept": OCTET}
        response = self._client.request("POST", _job_path(job_id, "steps"), content=bytes(payload), headers=headers)
        return response.content

    def complete(self, job_id: str, payload: bytes | None = None) -> FineTuningJob:
        """Finish an interactive job with its completion payload (``DeviceTrainer.finish_payload``: extra
        ``final`` and ``last_step``, no tensors); returns the job. A ``StepOutOfOrderError`` means the
        worker's applied steps differ from the payload's ``last_step``: train again from ``expected_step``
        (``DeviceTrainer.finish`` does)."""
        content = None if payload is None else bytes(payload)
        headers = None if payload is None else {"Content-Type": OCTET}
        return self._request("POST", _job_path(job_id, "complete"), FineTuningJob, content=content, headers=headers)


class FineTuning(SyncAPIResource):
    """``client.fine_tuning``: groups the fine-tuning resources, as the OpenAI client does."""

    @cached_property
    def jobs(self) -> Jobs:
        """The fine-tuning jobs resource."""
        return Jobs(self._client)
