"""The device's HTTP client for the PrivTune gateway: OpenAI-style resources for jobs, files and
models, plus the split endpoints (bottom-model downloads and the per-step exchange).

    from client_sdk.client import Client

    with Client() as client:  # PRIVTUNE_BASE_URL, PRIVTUNE_API_KEY
        bottom_dir = client.bottoms.download("smollm2-135m", split_layer=2)
        job = client.fine_tuning.jobs.create(model="smollm2-135m", method={"type": "privtune", "privtune": {...}})
        reply = client.fine_tuning.jobs.post_step(job.id, client_sdk.wire.encode(...))
        for event in client.fine_tuning.jobs.list_events(job.id):  # every page, fetched as needed
            print(event.message)

Torch-free: importing this module loads httpx and pydantic only. Interactive split jobs are created
here without a ``training_file``; the official ``openai`` client requires one in ``create`` and so
can list, inspect and cancel those jobs but not create them.
"""

from __future__ import annotations

from functools import cached_property

import httpx

from client_sdk._http import HTTPCore
from client_sdk.pagination import SyncCursorPage, SyncPage
from client_sdk.resources import Bottoms, Files, FineTuning, Models
from client_sdk.resources.inference import Inference

__all__ = ["Client", "SyncCursorPage", "SyncPage"]


class Client(HTTPCore):
    """Synchronous client of the PrivTune gateway.

    ``base_url`` defaults to ``$PRIVTUNE_BASE_URL``, else ``http://127.0.0.1:8000/v1``; ``api_key`` to
    ``$PRIVTUNE_API_KEY`` (a ``PrivTuneError`` if neither is set). Failed requests are retried as the
    OpenAI client does (see ``client_sdk._http``); errors are the classes of ``client_sdk.errors``.
    ``sleep`` is what waits between retries and polls (inject a recorder in tests).

    Resources: ``fine_tuning.jobs`` (with ``.checkpoints``), ``files``, ``models``, ``bottoms`` and ``inference``.
    """

    @cached_property
    def fine_tuning(self) -> FineTuning:
        """Fine-tuning jobs: ``client.fine_tuning.jobs.create/list/retrieve/cancel/...``."""
        return FineTuning(self)

    @cached_property
    def files(self) -> Files:
        """Uploaded files: ``client.files.create/list/retrieve/delete/content``."""
        return Files(self)

    @cached_property
    def models(self) -> Models:
        """Served models: ``client.models.list/retrieve``."""
        return Models(self)

    @cached_property
    def inference(self) -> Inference:
        """Private inference sessions: ``client.inference.open/forward/close`` (see ``FineTunedModel``)."""
        return Inference(self)

    @cached_property
    def bottoms(self) -> Bottoms:
        """Bottom models for the device: ``client.bottoms.manifest/download``."""
        return Bottoms(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def with_options(self, *, timeout: float | httpx.Timeout | None = None, max_retries: int | None = None) -> Client:
        """Return a client sharing this one's connections, with another timeout and/or retry count."""
        return Client(
            self.base_url,
            self.api_key,
            timeout=self.timeout if timeout is None else timeout,
            max_retries=self.max_retries if max_retries is None else max_retries,
            http_client=self._http,
            sleep=self.sleep,
        )
