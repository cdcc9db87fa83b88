"""Our split-training endpoints: bottom-model downloads, the step relay and completion.

- ``GET /v1/privtune/bottoms/{model}/{split_layer}``: the export's manifest, or 503
  ``bottom_model_preparing`` (Retry-After: 2) while the export task (queued once) runs, or 500
  ``bottom_export_failed`` (``x-should-retry: false``) while the worker's error of a failed export lasts.
- ``GET .../files/{filename}``: a file listed in the manifest; ETag = its sha256, immutable.
- ``POST /v1/fine_tuning/jobs/{id}/steps``: a ``step`` / ``infer`` payload in, the worker's reply out.
- ``POST /v1/fine_tuning/jobs/{id}/complete``: optional completion payload (``final="1"``, no
  tensors); the worker saves the adapter and finishes; returns the job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from api import catalog
from api.deps import EnqueuerDep, PrincipalDep, RedisDep, RelayDep, SessionDep, SettingsDep
from api.schemas.objects import FineTuningJob, job_object
from client_sdk import protocol, wire
from client_sdk.jobspec import PrivtuneMethod, step_shape
from client_sdk.models.artifact import artifact_name
from service.db import repo
from service.db.repo import status as st
from service.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, ServiceError, ServiceUnavailable
from service.metrics import RELAY_BYTES, STEP_SECONDS

router = APIRouter(tags=["privtune"])

TailQuery = Annotated[int, Query(ge=0, le=1024, description="Generation: blocks of the device's tail (0: none).")]
IMMUTABLE = "public, max-age=31536000, immutable"
_BINARY_BODY = {
    "requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
}


def _bottom_dir(settings: Any, model: str, split_layer: int, tail_layers: int) -> Path:
    info = catalog.check_split_layer(model, split_layer, param="split_layer")
    if tail_layers and (info.family != "llama" or not 0 < tail_layers < info.num_layers - split_layer):
        raise BadRequest(
            f"tail_layers={tail_layers} needs a causal LM and must leave the server at least one of the "
            f"{info.num_layers - split_layer} blocks after split layer {split_layer}.",
            param="tail_layers",
        )
    return settings.bottoms_dir / model / artifact_name(split_layer, tail_layers)


def export_error_key(model: str, name: str) -> str:
    """Where the worker leaves a failed export's error, ``{"code", "message"}`` (``worker.tasks``)."""
    return f"pt:export:error:{model}:{name}"


def _export_failed(raw: bytes | str, model: str, split_layer: int) -> ServiceError:
    """The 500 the device sees for a failed export: the worker's safe message, no retry."""
    try:
        message = str(json.loads(raw)["message"])
    except (ValueError, KeyError, TypeError):
        message = f"Exporting the bottom model {model} (split layer {split_layer}) failed."
    return ServiceError(message, code="bottom_export_failed", headers={"x-should-retry": "false"})


def _manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


@router.get("/v1/privtune/bottoms/{model}/{split_layer}", summary="Bottom-model manifest (export on demand)")
def bottom_manifest(
    model: str,
    split_layer: int,
    principal: PrincipalDep,
    settings: SettingsDep,
    redis: RedisDep,
    enqueue: EnqueuerDep,
    tail_layers: TailQuery = 0,
) -> Any:
    """The device artifact's manifest (the bottom, and with ``tail_layers`` the base weights of a
    generation tail); 503 ``bottom_model_preparing`` while it is exported (queued once); 500
    ``bottom_export_failed`` (no retry) while the failure of the last export is remembered."""
    directory = _bottom_dir(settings, model, split_layer, tail_layers)
    manifest = _manifest(directory)
    if manifest is not None:
        return JSONResponse(manifest)
    name = artifact_name(split_layer, tail_layers)
    guard = f"pt:export:{model}:{name}"
    if redis.set(guard, principal.organization_id, nx=True, ex=settings.export_guard_ttl_s):
        failed = redis.get(export_error_key(model, name))  # the worker deleted the guard when it failed
        if failed is not None:
            redis.delete(guard)  # a request after the error key expires may try again
            raise _export_failed(failed, model, split_layer)
        try:
            enqueue.export(model, split_layer, tail_layers)
        except Exception:
            redis.delete(guard)
            raise
    raise ServiceUnavailable(
        f"The bottom model {model} (split layer {split_layer}) is being prepared; retry shortly.",
        code="bottom_model_preparing",
        retry_after=2,
    )


@router.get("/v1/privtune/bottoms/{model}/{split_layer}/files/{filename}", summary="Download a bottom-model file")
def bottom_file(
    model: str,
    split_layer: int,
    filename: str,
    request: Request,
    principal: PrincipalDep,
    settings: SettingsDep,
    tail_layers: TailQuery = 0,
) -> Any:
    """A file listed in the manifest; ETag = its sha256; ``If-None-Match`` answers 304."""
    directory = _bottom_dir(settings, model, split_layer, tail_layers)
    files = (_manifest(directory) or {}).get("files") or {}
    if filename not in files:
        raise NotFound(f"{filename!r} is not a file of the {model} l{split_layer} export.", param="filename")
    etag = f'"{files[filename]}"'
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE}
    wanted = [tag.strip().removeprefix("W/") for tag in request.headers.get("if-none-match", "").split(",")]
    if etag in wanted or "*" in wanted:
        return Response(status_code=304, headers=headers)
    path = (directory / filename).resolve()
    if directory.resolve() not in path.parents or not path.is_file():
        raise NotFound(f"{filename!r} is missing from the export.", param="filename")
    return FileResponse(path, media_type="application/octet-stream", headers=headers)


async def _running_job(request: Request, session: Any, org_id: str, job_id: str, max_bytes: int) -> dict[str, Any]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"The step payload is {declared} bytes; the limit is {max_bytes}.")
    job = await run_in_threadpool(repo.require_job, session, job_id, org_id)
    await run_in_threadpool(session.rollback)  # end the read transaction before a long relay wait
    return job


def check_step(body: bytes, job: dict[str, Any], max_bytes: int, *, require_final: bool = False) -> wire.WireHeader:
    """Validate a step-channel payload for ``job`` from its header alone (torch-free) and return the
    header: the wire format and limits, then the step protocol against the job's ``StepShape``. A
    ``WireError`` here is answered with its one status and leaves the job untouched."""
    header, infos = wire.inspect(body, wire.WireLimits(max_payload_bytes=max_bytes))
    shape = step_shape(PrivtuneMethod.from_job(job), catalog.describe(job["model"]).hidden_size)
    protocol.check_request(header, infos, shape, job["id"], require_final=require_final)
    return header


def _not_running(job: dict[str, Any]) -> Conflict:
    return Conflict(
        f"Job {job['id']} is not running (status {job['status']!r}); steps are accepted only while it runs.",
        code="job_not_running",
        extra={"job_status": job["status"]},
    )


async def _read_body(request: Request, max_bytes: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"The step payload exceeds the limit of {max_bytes} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/v1/fine_tuning/jobs/{fine_tuning_job_id}/steps",
    summary="Send one training step",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the step_reply payload"}},
    openapi_extra=_BINARY_BODY,
)
async def post_step(
    fine_tuning_job_id: str,
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    relay: RelayDep,
) -> Response:
    """Relay a payload to the job's worker and answer its reply: a ``step`` (hidden, attention_mask,
    grad_output of the previous step; or grad_output alone to flush the last gradient) or an ``infer``
    request (hidden, attention_mask; no state change). A retried step gets the same reply."""
    limit = settings.max_step_bytes
    job = await _running_job(request, session, principal.organization_id, fine_tuning_job_id, limit)
    if job["status"] != st.RUNNING:
        raise _not_running(job)
    body = await _read_body(request, limit)
    header = await run_in_threadpool(check_step, body, job, limit)
    with STEP_SECONDS.labels(kind="step").time():
        reply = await relay.submit(fine_tuning_job_id, header.step, body, settings.step_timeout_s)
    RELAY_BYTES.labels(direction="in").inc(len(body))
    RELAY_BYTES.labels(direction="out").inc(len(reply))
    return Response(reply, media_type="application/octet-stream")


@router.post(
    "/v1/fine_tuning/jobs/{fine_tuning_job_id}/complete",
    summary="Finish interactive training",
    response_model=FineTuningJob,
    openapi_extra=_BINARY_BODY,
)
async def complete_job(
    fine_tuning_job_id: str,
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    relay: RelayDep,
) -> Any:
    """Finish interactive training (optional body: a ``step`` payload with extra ``final="1"`` and no
    tensors; send the last gradient before as a flush step). The worker saves the adapter and ends
    the job. Idempotent once the job has succeeded."""
    limit = settings.max_step_bytes
    job = await _running_job(request, session, principal.organization_id, fine_tuning_job_id, limit)
    if job["status"] == st.SUCCEEDED:
        return job_object(job)
    if job["status"] != st.RUNNING:
        raise _not_running(job)
    body = await _read_body(request, limit)
    if body:
        header = await run_in_threadpool(check_step, body, job, limit, require_final=True)
        step = header.step
    else:  # no payload: complete only if every step of the job was applied (the flush was total_steps + 1)
        total = job.get("total_steps")
        if not total:
            raise BadRequest(
                "This job's number of steps is not known: send the completion payload (extra final and last_step).",
                param=protocol.LAST_STEP,
            )
        step, extra = 0, protocol.completion_extra(int(total) + 1)
        body = wire.encode({}, wire.WireHeader(job_id=fine_tuning_job_id, step=step, kind="step", extra=extra))
    with STEP_SECONDS.labels(kind="complete").time():
        reply = await relay.submit(fine_tuning_job_id, step, body, settings.step_timeout_s)
    RELAY_BYTES.labels(direction="in").inc(len(body))
    RELAY_BYTES.labels(direction="out").inc(len(reply))
    await run_in_threadpool(session.rollback)  # see the worker's commits
    return job_object(await run_in_threadpool(repo.require_job, session, fine_tuning_job_id))
