"""Typed dependencies: settings, a database session, the caller's organization, Redis, the step
relay and the task enqueuer. Tests replace any of them with ``app.dependency_overrides``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.auth import INVALID_KEY, MISSING_KEY, PRINCIPAL
from service.db import repo
from service.errors import Authentication
from service.redis_client import async_redis_client, redis_client
from service.relay import StepRelay
from service.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer sk-pt-...`")


def get_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    """A session for this request; routes commit explicitly, anything uncommitted is rolled back."""
    session = request.app.state.session_factory()
    try:
        yield session
    finally:
        session.close()


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_db)]


def get_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> repo.Principal:
    """The organization of the bearer key, as ``api.auth.AuthMiddleware`` resolved it before the body
    was read (no second lookup); 401 when there is none (the middleware answers such requests first)."""
    principal = request.scope.get("state", {}).get(PRINCIPAL)
    if principal is None:
        if credentials is None:
            raise Authentication(MISSING_KEY, code="missing_api_key")
        raise Authentication(INVALID_KEY)
    return principal


PrincipalDep = Annotated[repo.Principal, Depends(get_principal)]


def get_redis(request: Request) -> Any:
    """The app's Redis client, created on first use (no connection is made until a command runs)."""
    state = request.app.state
    if getattr(state, "redis", None) is None:
        settings = state.settings  # a step waits up to step_timeout_s for its worker (BLPOP)
        state.redis = redis_client(settings.redis_url, longest_wait_s=settings.step_timeout_s)
    return state.redis


RedisDep = Annotated[Any, Depends(get_redis)]


def get_async_redis(request: Request) -> Any:
    """The app's ``redis.asyncio`` client (step and inference waits hold no thread), created on first
    use on the app's event loop and closed in the lifespan."""
    state = request.app.state
    if getattr(state, "async_redis", None) is None:
        settings = state.settings
        longest = max(settings.step_timeout_s, settings.inference_timeout_s)
        state.async_redis = async_redis_client(settings.redis_url, longest_wait_s=longest)
    return state.async_redis


def get_relay(request: Request) -> StepRelay:
    """The step relay over the app's async Redis client; its lists expire after ``redis_key_ttl_s``."""
    return StepRelay(get_async_redis(request), key_ttl_s=request.app.state.settings.redis_key_ttl_s)


RelayDep = Annotated[StepRelay, Depends(get_relay)]


class Enqueuer(Protocol):
    """Sends work to the workers by task name."""

    def job(self, job_id: str) -> None: ...

    def export(self, model: str, split_layer: int, tail_layers: int = 0) -> None: ...


class CeleryEnqueuer:
    """:class:`Enqueuer` over the shared Celery app (``service.queue``)."""

    def __init__(self, celery: Any):
        """Queue ``worker.export_bottom(model, split_layer)``."""
        self.celery = celery

    def job(self, job_id: str) -> None:
        """Queue ``worker.run_job(job_id)``."""
        from service.queue import enqueue_job

        enqueue_job(self.celery, job_id)

    def export(self, model: str, split_layer: int, tail_layers: int = 0) -> None:
        """Queue ``worker.export_bottom(model, split_layer, tail_layers)``."""
        from service.queue import enqueue_export

        enqueue_export(self.celery, model, split_layer, tail_layers)


def get_enqueuer(request: Request) -> Enqueuer:
    """The app's enqueuer (its Celery app is created on first use)."""
    return app_enqueuer(request.app)


def app_enqueuer(app: Any) -> Enqueuer:
    """The enqueuer of ``app`` (also used by the lease reaper outside a request)."""
    state = app.state
    if getattr(state, "celery", None) is None:
        from service.queue import make_celery

        state.celery = make_celery(state.settings)
    return CeleryEnqueuer(state.celery)


EnqueuerDep = Annotated[Enqueuer, Depends(get_enqueuer)]
