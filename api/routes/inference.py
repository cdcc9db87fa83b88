"""Private inference on fine-tuned models, and the text endpoints the gateway refuses.

- ``POST /v1/privtune/inference/sessions`` ``{"model": "ft:..."}``: open a session on an inference
  worker (404 for an unknown model, another organization's, or one whose job did not succeed).
- ``POST /v1/privtune/inference/sessions/{id}/forward``: a wire ``infer`` payload (perturbed states;
  for generation the new positions, ``extra reset="1"`` to start over) in, the middle's output out.
  An expired or lost session is 409 ``session_expired``: the SDK opens a new one and replays.
- ``DELETE /v1/privtune/inference/sessions/{id}``: close it.
- ``POST /v1/chat/completions`` and ``/v1/completions``: 400. The gateway never accepts text; the SDK
  (``client_sdk.FineTunedModel``) or the local endpoint (``privtune proxy``) does the private part.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.deps import PrincipalDep, RedisDep, RelayDep, SessionDep, SettingsDep
from api.routes.split import _BINARY_BODY, _read_body
from client_sdk import wire
from client_sdk.jobspec import PrivtuneMethod
from service import inference as channel
from service.db import repo
from service.errors import BadRequest, Conflict, NotFound, StepTimeout

router = APIRouter(tags=["privtune"])
PREFIX = "/v1/privtune/inference/sessions"


class SessionCreate(BaseModel):
    model: str = Field(description="A fine-tuned model of this organization (``ft:...``).")


def _expired(session_id: str) -> Conflict:
    return Conflict(
        f"Inference session {session_id} has expired or was lost with its worker; open a new one.",
        code=channel.SESSION_EXPIRED,
        param="session",
    )


def _owner(redis: Any, session_id: str, org_id: str) -> str:
    """The worker holding ``session_id`` of ``org_id`` (404 for another organization's, 409 if gone)."""
    value = redis.get(channel.session_key(session_id))
    if value is None:
        raise _expired(session_id)
    worker, _, owner = (value.decode() if isinstance(value, bytes) else value).partition(" ")
    if owner != org_id:
        raise NotFound(f"No inference session {session_id!r}.", param="session")
    return worker


@router.post(PREFIX, summary="Open a private inference session")
async def open_session(
    body: SessionCreate,
    principal: PrincipalDep,
    session: SessionDep,
    settings: SettingsDep,
    relay: RelayDep,
) -> Any:
    """Open a session of a fine-tuned model on an inference worker; returns its id and expiry."""
    job = await run_in_threadpool(repo.job_for_model, session, principal.organization_id, body.model)
    if job is None:
        raise NotFound(
            f"The model {body.model!r} does not exist or its job has not succeeded.",
            param="model",
            code="model_not_found",
        )
    await run_in_threadpool(session.rollback)
    session_id = f"sess_{uuid.uuid4().hex}"
    message = channel.open_message(session_id, job["id"], body.model, principal.organization_id)
    try:
        await relay.request(channel.OPEN_KEY, message, settings.inference_timeout_s, "opening a session")
    except StepTimeout:
        raise StepTimeout("No inference worker answered; start one (privtune up starts one) and retry.") from None
    method = PrivtuneMethod.from_job(job)
    return {
        "id": session_id,
        "object": "privtune.inference_session",
        "model": body.model,
        "task": method.task,
        "expires_after_idle_s": settings.inference_idle_timeout_s,
        "max_context": settings.inference_max_context,
        "max_batch_size": method.batch_size,  # classification: texts per request
        "max_tokens": method.max_tokens,
    }


@router.post(
    PREFIX + "/{session_id}/forward",
    summary="One private forward pass of a session",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the infer_reply payload"}},
    openapi_extra=_BINARY_BODY,
)
async def forward(
    session_id: str, request: Request, principal: PrincipalDep, settings: SettingsDep, redis: RedisDep, relay: RelayDep
) -> Response:
    """Relay a perturbed ``infer`` payload to the session's worker and answer its output."""
    worker = await run_in_threadpool(_owner, redis, session_id, principal.organization_id)
    body = await _read_body(request, settings.max_step_bytes)
    header, _ = wire.inspect(body, wire.WireLimits(max_payload_bytes=settings.max_step_bytes))
    if header.kind != "infer" or header.job_id != session_id:
        raise BadRequest("An inference payload has kind 'infer' and the session id as its job_id.", param="kind")
    key, what = channel.worker_key(worker), f"inference session {session_id}"
    try:
        reply = await relay.request(key, channel.OP_FORWARD + body, settings.inference_timeout_s, what)
    except StepTimeout:
        await run_in_threadpool(redis.delete, channel.session_key(session_id))  # its worker is gone
        raise _expired(session_id) from None
    return Response(reply, media_type="application/octet-stream")


@router.delete(PREFIX + "/{session_id}", summary="Close a session")
def close_session(session_id: str, principal: PrincipalDep, settings: SettingsDep, redis: RedisDep) -> Any:
    worker = _owner(redis, session_id, principal.organization_id)
    redis.delete(channel.session_key(session_id))
    key = channel.worker_key(worker)
    pipe = redis.pipeline()
    pipe.rpush(key, uuid.uuid4().hex.encode() + channel.close_message(session_id))
    pipe.expire(key, settings.redis_key_ttl_s)  # every channel key expires
    pipe.execute()
    return {"id": session_id, "object": "privtune.inference_session", "deleted": True}


_TEXT_REFUSED = (
    "This service never accepts text: the data stays on your device. Use the SDK "
    "(client_sdk.FineTunedModel(model).generate(...)) or run `privtune proxy --model <model>` on your device "
    "and point your OpenAI client's base_url at it."
)


@router.post("/v1/chat/completions", include_in_schema=False)
@router.post("/v1/completions", include_in_schema=False)
def text_refused(principal: PrincipalDep) -> Any:
    raise BadRequest(_TEXT_REFUSED, param="messages", code="text_not_accepted")
