"""Builds the FastAPI app. Nothing is built at import time: ``create_app(settings)`` for tests and
embedding, ``api.main:app_factory`` for ``uvicorn --factory``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio.to_thread
from fastapi import FastAPI

from api.auth import AuthMiddleware
from api.errors import install_error_handlers
from api.idempotency import install_idempotency
from api.limits import KeyLimiter, LimitMiddleware
from api.middleware import BodyGuardMiddleware, RequestContextMiddleware, route_body_limit
from api.observability import ObservabilityMiddleware, close_probes
from api.reaper import reaper_task
from api.routes import dashboard, files, health, inference, jobs, models, split
from api.routes import metrics as metrics_route
from api.routes import webhooks as webhooks_route
from api.sweeps import sweep_task
from service.db.session import make_engine, make_session_factory
from service.logging import configure_logging
from service.settings import Settings, get_settings

TAGS = [
    {"name": "fine-tuning", "description": "OpenAI-compatible fine-tuning jobs, events and checkpoints."},
    {"name": "files", "description": "Privatized training files (upload mode)."},
    {"name": "models", "description": "Base models and your fine-tuned models."},
    {"name": "privtune", "description": "Split training: bottom-model downloads, steps and completion."},
    {"name": "health", "description": "Probes."},
]


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    anyio.to_thread.current_default_thread_limiter().total_tokens = app.state.settings.threadpool_size
    async with (
        reaper_task(app, app.state.settings.reaper_interval_s),
        sweep_task(app),
        webhooks_route.webhook_dispatcher(app),
    ):
        yield
    redis = getattr(app.state, "redis", None)
    if redis is not None:
        redis.close()
    if getattr(app.state, "async_redis", None) is not None:
        await app.state.async_redis.aclose()
    await app.state.limiter.aclose()
    close_probes(app)
    app.state.engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new gateway app for ``settings`` (default: :func:`get_settings`). The engine, Redis client
    and Celery app connect lazily; the schema must already be migrated (``upgrade_to_head``)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="PrivTune fine-tuning API",
        version="0.1.0",
        description="Private split fine-tuning, OpenAI-compatible where OpenAI has the concept.",
        openapi_tags=TAGS,
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.engine = make_engine(settings.database_url)
    app.state.session_factory = make_session_factory(app.state.engine)
    app.state.redis = None
    app.state.celery = None
    install_error_handlers(app)
    app.state.limiter = KeyLimiter(settings)
    body_limit = route_body_limit(settings.max_step_bytes, settings.max_file_bytes, settings.request_body_limit)
    # Middleware order, outermost first: request id -> observability -> auth -> per-key limits -> body
    # guard -> idempotency -> the app (the last added runs first).
    install_idempotency(app)  # inside the body guard: its body read is limited and timed too
    app.add_middleware(BodyGuardMiddleware, body_limit=body_limit, read_timeout_s=settings.body_read_timeout_s)
    app.add_middleware(LimitMiddleware, limiter=app.state.limiter)  # the last added runs first:
    app.add_middleware(AuthMiddleware, session_factory=app.state.session_factory)  # key before any body
    app.add_middleware(ObservabilityMiddleware)  # inside RequestContextMiddleware: sees the request id
    app.add_middleware(RequestContextMiddleware)
    for module in (jobs, split, inference, files, models, health, dashboard):
        app.include_router(module.router)
    app.include_router(metrics_route.router)
    app.include_router(webhooks_route.router)
    return app


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory api.main:app_factory`` (settings from the environment; JSON logs
    by default, ``PRIVTUNE_LOG_FORMAT=text`` for plain lines)."""
    settings = get_settings()
    configure_logging(settings)
    return create_app(settings)
