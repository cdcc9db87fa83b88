"""``/v1/privtune/webhooks``: register, list and delete the endpoints that receive job-end events;
and :func:`webhook_dispatcher`, the gateway's background task that delivers them.

An endpoint gets one signed POST (``service.webhooks``, Standard Webhooks) when a job of the caller's
organization ends: ``fine_tuning.job.succeeded``, ``fine_tuning.job.failed`` or
``fine_tuning.job.cancelled``. The signing secret (``whsec_...``) is shown only in the create response;
lists show it redacted. Endpoints are scoped to the organization (another's id is 404).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, Field

from api.deps import PrincipalDep, SessionDep
from service import webhooks
from service.db.repo import webhooks as repo
from service.errors import BadRequest

router = APIRouter(prefix="/v1/privtune/webhooks", tags=["privtune"])
log = logging.getLogger("api.webhooks")

MAX_URL_LENGTH = 2048


class WebhookCreate(BaseModel):
    url: str = Field(description="An http(s) URL that receives the signed POSTs.", max_length=MAX_URL_LENGTH)


class WebhookEndpointObject(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    created_at: int
    secret: str = Field(description="The whsec_ signing secret in the create response; redacted in lists.")


class WebhookList(BaseModel):
    object: Literal["list"] = "list"
    data: list[WebhookEndpointObject]
    has_more: bool = False


class WebhookDeleted(BaseModel):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool = True


def check_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL with a host and no credentials; 400 ``param: url`` otherwise."""
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.username is None
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        valid = False
    if not valid or any(c.isspace() for c in url):
        raise BadRequest("The webhook url must be an absolute http or https URL.", param="url", code="invalid_url")
    return url


def redact(secret: str) -> str:
    """``whsec_****`` + the secret's last four characters."""
    return webhooks.SECRET_PREFIX + "****" + secret[-4:]


def _endpoint(row: dict[str, Any], secret: str) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "webhook_endpoint",
        "url": row["url"],
        "created_at": row["created_at"],
        "secret": secret,
    }


@router.post("", response_model=WebhookEndpointObject, summary="Register a webhook endpoint")
def create_webhook(body: WebhookCreate, principal: PrincipalDep, session: SessionDep) -> Any:
    """Register ``url`` for this organization's job-end events; the response's ``secret`` is the only
    time it is shown."""
    secret = webhooks.new_secret()
    row = repo.create_endpoint(session, principal.organization_id, check_url(body.url), secret)
    session.commit()
    return _endpoint(row, secret)


@router.get("", response_model=WebhookList, summary="List webhook endpoints")
def list_webhooks(principal: PrincipalDep, session: SessionDep) -> Any:
    """This organization's endpoints, newest first, secrets redacted."""
    rows = repo.list_endpoints(session, principal.organization_id)
    return {"object": "list", "data": [_endpoint(r, redact(r["secret"])) for r in rows], "has_more": False}


@router.delete("/{webhook_id}", response_model=WebhookDeleted, summary="Delete a webhook endpoint")
def delete_webhook(webhook_id: str, principal: PrincipalDep, session: SessionDep) -> Any:
    """Delete the endpoint and its pending deliveries (404 if absent or another organization's)."""
    repo.delete_endpoint(session, principal.organization_id, webhook_id)
    session.commit()
    return {"id": webhook_id, "object": "webhook_endpoint.deleted", "deleted": True}


# ---- the dispatcher ------------------------------------------------------------------------------


async def run_dispatcher(app: FastAPI, interval_s: float, http_client: httpx.Client, executor: Executor) -> None:
    """:func:`service.webhooks.dispatch_once` every ``interval_s`` seconds until cancelled, in
    ``executor`` (a thread of its own: a slow endpoint never holds the request thread pool); errors are
    logged, not fatal."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval_s)
        state = app.state
        try:
            await loop.run_in_executor(
                executor, webhooks.dispatch_once, state.session_factory, state.settings, http_client
            )
        except Exception:  # a database outage must not kill the loop
            log.exception("webhook dispatcher pass failed")


@contextlib.asynccontextmanager
async def webhook_dispatcher(app: FastAPI) -> AsyncIterator[None]:
    """Run the webhook dispatcher for the lifetime of the block, every ``settings.webhook_interval_s``
    seconds (no-op when it is 0). On exit the loop stops at once; a pass in flight finishes in its
    thread (its claimed row is retried after its lease if it never records)."""
    interval_s = float(app.state.settings.webhook_interval_s)
    if interval_s <= 0:
        yield
        return
    client = httpx.Client(follow_redirects=False)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="privtune-webhooks")
    task = asyncio.create_task(run_dispatcher(app, interval_s, client, executor))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        executor.submit(client.close)  # after a pass in flight, in its thread
        executor.shutdown(wait=False)
