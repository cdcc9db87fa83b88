"""Typed dependencies: settings, a database session, the caller's organization, Redis, the step
relay and the task enqueuer. Tests replace any of them with ``app.dependency_overrides``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.db import repo
from service.errors import Authentication
from service.redis_client import redis_client
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
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> repo.Principal:
    """The organization of the bearer key; 401 when the key is missing, malformed or revoked."""
    if credentials is None:
        raise Authentication(
            "You didn't provide an API key. Send it as 'Authorization: Bearer sk-pt-...'.", code="missing_api_key"
        )
    principal = repo.authenticate(session, credentials.credentials)
    if principal is None:
        raise Authentication("Incorrect API key provided.")
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


def get_relay(request: Request) -> StepRelay:
    """The step relay over the app's Redis client."""
    return StepRelay(get_redis(request))


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
