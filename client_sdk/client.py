"""The device's HTTP client for the PrivTune gateway (OpenAI-compatible jobs, files and models,
plus the split endpoints: bottom-model downloads and the per-step exchange).

    from client_sdk.client import Client

    with Client() as client:  # PRIVTUNE_BASE_URL, PRIVTUNE_API_KEY
        bottom_dir = client.download_bottom("smollm2-135m", split_layer=2)
        job = client.create_job(model="smollm2-135m", method={"type": "privtune", "privtune": {...}})
        reply = client.post_step(job.id, client_sdk.wire.encode(...))

Torch-free: importing this module loads httpx and pydantic only. Interactive split jobs are created
here without a ``training_file``; the official ``openai`` client requires one in ``create`` and so
can list, inspect and cancel those jobs but not create them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from client_sdk._constants import (
    CACHE_DIR_ENV,
    DEFAULT_BOTTOM_CACHE,
    DEFAULT_BOTTOM_WAIT,
    DEFAULT_POLL_INTERVAL,
    MAX_RETRY_AFTER,
)
from client_sdk._http import HTTPCore, parse_retry_after
from client_sdk._http import path_segment as _seg
from client_sdk.errors import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    BottomArtifactError,
    ServiceUnavailableError,
)
from client_sdk.types import (
    BottomManifest,
    CursorPage,
    FileDeleted,
    FileObject,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    Model,
)

__all__ = ["Client"]

M = TypeVar("M", bound=BaseModel)
OCTET = "application/octet-stream"
MANIFEST_FILE = "manifest.json"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def _parse(response: httpx.Response, model: type[M]) -> M:
    try:
        body = response.json()
    except ValueError:
        raise APIResponseValidationError(
            f"expected a JSON {model.__name__} from {response.request.url.path}, got {response.text[:200]!r}",
            response=response,
            body=response.text,
        ) from None
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise APIResponseValidationError(
            f"the server's {model.__name__} is malformed: {exc}", response=response, body=body
        ) from None


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or name == MANIFEST_FILE:
        raise BottomArtifactError(f"refusing unsafe {what} {name!r} in the bottom manifest")
    return name


class Client(HTTPCore):
    """Synchronous client of the PrivTune gateway.

    ``base_url`` defaults to ``$PRIVTUNE_BASE_URL``, else ``http://127.0.0.1:8000/v1``; ``api_key`` to
    ``$PRIVTUNE_API_KEY`` (a ``PrivTuneError`` if neither is set). Failed requests are retried as the
    OpenAI client does (see ``client_sdk._http``); errors are the classes of ``client_sdk.errors``.
    ``sleep`` is what waits between retries and polls (inject a recorder in tests).
    """

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
            sleep=self._sleep,
        )

    # ---- fine-tuning jobs -------------------------------------------------------------------

    def create_job(
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
        fields = dict(
            model=model, method=method, hyperparameters=hyperparameters, training_file=training_file,
            validation_file=validation_file, suffix=suffix, seed=seed, metadata=metadata, **extra,
        )  # fmt: skip
        body = {key: value for key, value in fields.items() if value is not None}
        return _parse(self.request("POST", "fine_tuning/jobs", json=body), FineTuningJob)

    def list_jobs(
        self, *, after: str | None = None, limit: int | None = None, metadata: Mapping[str, str] | None = None
    ) -> CursorPage[FineTuningJob]:
        """Return one page of jobs, newest first, strictly after the job id ``after``; ``metadata``
        keeps only jobs whose metadata holds every given pair (sent as ``metadata[k]=v``)."""
        params = self._page_params(after, limit)
        params += [(f"metadata[{key}]", value) for key, value in (metadata or {}).items()]
        return _parse(self.request("GET", "fine_tuning/jobs", params=params), CursorPage[FineTuningJob])

    def iter_jobs(
        self, *, limit: int | None = None, metadata: Mapping[str, str] | None = None
    ) -> Iterator[FineTuningJob]:
        """Yield every job, newest first, fetching pages of ``limit`` as needed."""
        return self._iterate(lambda after: self.list_jobs(after=after, limit=limit, metadata=metadata))

    def retrieve_job(self, job_id: str) -> FineTuningJob:
        """Return the job's current state."""
        return _parse(self.request("GET", f"fine_tuning/jobs/{_seg(job_id)}"), FineTuningJob)

    def cancel_job(self, job_id: str) -> FineTuningJob:
        """Ask the gateway to cancel the job; returns it (status ``cancelled`` once the worker stopped)."""
        return self._job_action(job_id, "cancel")

    def pause_job(self, job_id: str) -> FineTuningJob:
        """Pause the job at its next checkpoint; returns it."""
        return self._job_action(job_id, "pause")

    def resume_job(self, job_id: str) -> FineTuningJob:
        """Resume a paused job from its last checkpoint; returns it."""
        return self._job_action(job_id, "resume")

    def list_events(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> CursorPage[FineTuningJobEvent]:
        """Return one page of the job's events, newest first, strictly after the event id ``after``."""
        params = self._page_params(after, limit)
        response = self.request("GET", f"fine_tuning/jobs/{_seg(job_id)}/events", params=params)
        return _parse(response, CursorPage[FineTuningJobEvent])

    def iter_events(self, job_id: str, *, limit: int | None = None) -> Iterator[FineTuningJobEvent]:
        """Yield all of the job's events, newest first, fetching pages as needed."""
        return self._iterate(lambda after: self.list_events(job_id, after=after, limit=limit))

    def list_checkpoints(
        self, job_id: str, *, after: str | None = None, limit: int | None = None
    ) -> CursorPage[FineTuningJobCheckpoint]:
        """Return one page of the job's checkpoints, newest first."""
        params = self._page_params(after, limit)
        response = self.request("GET", f"fine_tuning/jobs/{_seg(job_id)}/checkpoints", params=params)
        return _parse(response, CursorPage[FineTuningJobCheckpoint])

    # ---- split training ----------------------------------------------------------------------

    def post_step(self, job_id: str, payload: bytes) -> bytes:
        """Send one ``client_sdk.wire`` step payload and return the reply payload's bytes.

        Transient failures are retried: the server answers a repeated step number with the reply it
        already computed, so a retry never takes a second optimizer step. A ``StepOutOfOrderError``
        says which step to resend (``expected_step``).
        """
        headers = {"Content-Type": OCTET, "Accept": OCTET}
        path = f"fine_tuning/jobs/{_seg(job_id)}/steps"
        return self.request("POST", path, content=bytes(payload), headers=headers).content

    def complete_job(self, job_id: str, payload: bytes | None = None) -> FineTuningJob:
        """Finish an interactive job, optionally with the final step's gradient payload; returns the job."""
        headers = {"Content-Type": OCTET} if payload is not None else None
        content = bytes(payload) if payload is not None else None
        response = self.request("POST", f"fine_tuning/jobs/{_seg(job_id)}/complete", content=content, headers=headers)
        return _parse(response, FineTuningJob)

    # ---- files and models ---------------------------------------------------------------------

    def upload_file(
        self, file: str | os.PathLike[str] | bytes, filename: str | None = None, purpose: str = "fine-tune"
    ) -> FileObject:
        """Upload a file (a path, or bytes with a ``filename``) and return its file object."""
        if isinstance(file, (bytes, bytearray, memoryview)):
            if not filename:
                raise ValueError("upload_file needs a filename when given bytes")
            content = bytes(file)
        else:
            content = Path(file).read_bytes()
            filename = filename or Path(file).name
        files = {"file": (filename, content, OCTET)}
        return _parse(self.request("POST", "files", files=files, data={"purpose": purpose}), FileObject)

    def list_files(self, *, after: str | None = None, limit: int | None = None) -> CursorPage[FileObject]:
        """Return one page of uploaded files, newest first."""
        response = self.request("GET", "files", params=self._page_params(after, limit))
        return _parse(response, CursorPage[FileObject])

    def retrieve_file(self, file_id: str) -> FileObject:
        """Return the file object."""
        return _parse(self.request("GET", f"files/{_seg(file_id)}"), FileObject)

    def delete_file(self, file_id: str) -> FileDeleted:
        """Delete the file."""
        return _parse(self.request("DELETE", f"files/{_seg(file_id)}"), FileDeleted)

    def file_content(self, file_id: str) -> bytes:
        """Return the file's bytes."""
        return self.request("GET", f"files/{_seg(file_id)}/content", headers={"Accept": "*/*"}).content

    def list_models(self) -> list[Model]:
        """Return every model the gateway serves (not paged)."""
        return list(_parse(self.request("GET", "models"), CursorPage[Model]).data)

    def retrieve_model(self, model_id: str) -> Model:
        """Return one model by id (a base model name or an ``ft:...`` id)."""
        return _parse(self.request("GET", f"models/{_seg(model_id)}"), Model)

    # ---- bottom models ------------------------------------------------------------------------

    def get_bottom_manifest(
        self, model: str, split_layer: int, wait_timeout: float = DEFAULT_BOTTOM_WAIT
    ) -> BottomManifest:
        """Return the manifest of the bottom of ``model`` cut after ``split_layer`` blocks.

        While the server is still preparing it (503) this polls, waiting as long as Retry-After says,
        for up to ``wait_timeout`` seconds; then the last ``ServiceUnavailableError`` is raised.
        """
        path = f"privtune/bottoms/{_seg(model)}/{_seg(split_layer)}"
        started, waited = time.monotonic(), 0.0
        while True:
            try:
                return _parse(self.request("GET", path, retry_unavailable=False), BottomManifest)
            except ServiceUnavailableError as exc:
                if exc.response.headers.get("x-should-retry", "").lower() == "false":
                    raise
                elapsed = max(waited, time.monotonic() - started)
                if elapsed >= wait_timeout:
                    exc.message = f"bottom {model!r} split {split_layer} not ready after {elapsed:.0f} s: {exc.message}"
                    raise
                delay = parse_retry_after(exc.response.headers)
                delay = min(DEFAULT_POLL_INTERVAL if delay is None else delay, MAX_RETRY_AFTER, wait_timeout - elapsed)
                self._sleep(delay)
                waited += delay

    def download_bottom(
        self,
        model: str,
        split_layer: int,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        wait_timeout: float = DEFAULT_BOTTOM_WAIT,
    ) -> Path:
        """Download the bottom artifact and return its directory, ``<cache_dir>/<digest>/``.

        ``cache_dir`` defaults to ``$PRIVTUNE_CACHE_DIR``, else ``~/.cache/privtune/bottoms``. Every
        file is checked against the manifest's sha256 (and the manifest against its digest) and
        written atomically; files already present with the right hash are not downloaded again.
        The directory also gets ``manifest.json``, so ``client_sdk.models.split.load_bottom`` can
        open it. A ``BottomArtifactError`` (bad hash, unsafe name) leaves the cache as it was.
        """
        manifest = self.get_bottom_manifest(model, split_layer, wait_timeout=wait_timeout)
        digest = _check_name(manifest.digest, "digest")
        names = {_check_name(name, "file name"): expected for name, expected in manifest.files.items()}
        if hashlib.sha256("".join(sorted(names.values())).encode("ascii")).hexdigest() != digest:
            raise BottomArtifactError(
                f"bottom manifest of {model!r} split {split_layer}: digest does not match its files"
            )
        root = Path(cache_dir or os.environ.get(CACHE_DIR_ENV) or DEFAULT_BOTTOM_CACHE).expanduser()
        target = root / digest
        created_dir = not target.exists()
        written: list[Path] = []
        try:
            target.mkdir(parents=True, exist_ok=True)
            for name, expected in sorted(names.items()):
                dest = target / name
                if dest.is_file() and _sha256_file(dest) == expected.lower():
                    continue
                path = f"privtune/bottoms/{_seg(model)}/{_seg(split_layer)}/files/{_seg(name)}"
                self._download_verified(path, dest, expected.lower())
                written.append(dest)
            manifest_text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
            manifest_path = target / MANIFEST_FILE
            if not manifest_path.is_file() or manifest_path.read_text(encoding="utf-8") != manifest_text:
                _write_atomic(manifest_path, lambda handle: handle.write(manifest_text.encode("utf-8")))
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            if created_dir and target.is_dir() and not any(target.iterdir()):
                target.rmdir()
            raise
        return target

    def _download_verified(self, path: str, dest: Path, expected: str) -> None:
        sha = hashlib.sha256()

        def fetch(handle: Any) -> None:
            response = self.request("GET", path, stream=True, headers={"Accept": OCTET})
            try:
                for chunk in response.iter_bytes(1 << 20):
                    sha.update(chunk)
                    handle.write(chunk)
            except httpx.TimeoutException as exc:
                raise APITimeoutError(response.request) from exc
            except httpx.TransportError as exc:
                message = f"download of {dest.name} broke: {exc}"
                raise APIConnectionError(message=message, request=response.request) from exc
            finally:
                response.close()
            if sha.hexdigest() != expected:
                raise BottomArtifactError(
                    f"bottom file {dest.name!r} failed verification: sha256 {sha.hexdigest()} != manifest {expected}"
                )

        _write_atomic(dest, fetch)

    # ---- helpers --------------------------------------------------------------------------------

    def _job_action(self, job_id: str, action: str) -> FineTuningJob:
        return _parse(self.request("POST", f"fine_tuning/jobs/{_seg(job_id)}/{action}"), FineTuningJob)

    @staticmethod
    def _page_params(after: str | None, limit: int | None) -> list[tuple[str, str | int]]:
        params: list[tuple[str, str | int]] = []
        if after is not None:
            params.append(("after", after))
        if limit is not None:
            params.append(("limit", limit))
        return params

    @staticmethod
    def _iterate(fetch: Callable[[str | None], CursorPage[M]]) -> Iterator[M]:
        after: str | None = None
        while True:
            page = fetch(after)
            yield from page.data
            after = page.next_after
            if after is None:
                return


def _sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def _write_atomic(dest: Path, write: Callable[[Any], object]) -> None:
    """Write ``dest`` through ``write(handle)`` into a temporary sibling, then rename it into place;
    on any failure the temporary file is removed and ``dest`` is untouched."""
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
