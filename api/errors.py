"""The one place where failures become HTTP responses in the OpenAI error envelope.

Every error body is ``{"error": {"message", "type", "param", "code"}}`` (all four keys). The error
tree itself is ``service.errors`` (shared with the worker; repository errors are members of it), so
a ``ServiceError`` renders as it is; :func:`to_service_error` maps everything else exactly once:

    ServiceError (incl. repository errors, StepRejected, StepTimeout)   as it says
    client_sdk.wire.WireError                                            its one status (service.errors.WIRE_STATUS)
    client_sdk.jobspec.JobSpecError                                      400, its param
    client_sdk.privacy.PrivacyConfigError                                400, param = its parameter
    database / Redis / broker outages                                    503 + Retry-After (nothing changed)
    request validation errors                                            400, param = the field (and its cause's field)
    unknown routes / methods                                             404 unknown_url / 405
    anything else                                                        500 internal_error (logged; no detail leaks)
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from client_sdk import wire
from client_sdk.jobspec import JobSpecError, error_param
from client_sdk.privacy.errors import PrivacyConfigError
from service.errors import BadRequest, ServiceError, ServiceUnavailable, from_wire_error

log = logging.getLogger("api.errors")

_OUTAGES: tuple[tuple[tuple[type[Exception], ...], str, str], ...] = (
    (
        (OperationalError, InterfaceError, PoolTimeout),
        "The database is unavailable; retry shortly.",
        "database_unavailable",
    ),
    ((RedisConnectionError, RedisTimeoutError), "Redis is unavailable; retry shortly.", "redis_unavailable"),
    ((BrokerError,), "The job queue is unavailable; retry shortly.", "queue_unavailable"),
)
_HTTP_CODES = {400: "invalid_request", 404: "unknown_url", 405: "method_not_allowed", 413: "payload_too_large"}


def to_service_error(exc: BaseException) -> ServiceError:
    """The :class:`ServiceError` for any exception (500 ``internal_error`` when nothing more specific fits)."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, wire.WireError):
        return from_wire_error(exc)
    if isinstance(exc, JobSpecError):
        return BadRequest(exc.message, param=exc.param, code=exc.code)
    if isinstance(exc, PrivacyConfigError):
        return BadRequest(str(exc), param=exc.parameter, code="invalid_value")
    for types, message, code in _OUTAGES:
        if isinstance(exc, types):
            return ServiceUnavailable(message, code=code, retry_after=2)
    return ServiceError("The server had an error while processing your request.")


def validation_error(exc: RequestValidationError) -> BadRequest:
    """A 400 naming the first invalid field (a body, query or path parameter)."""
    errors = exc.errors()
    first = dict(errors[0]) if errors else {"loc": (), "msg": "invalid request"}
    loc = tuple(first.get("loc", ()))
    if loc and loc[0] in ("body", "query", "path", "header"):
        first["loc"] = loc[1:]
    if first.get("type") == "json_invalid":
        return BadRequest("The request body is not valid JSON.", code="invalid_request")
    param = error_param(first)
    message = str(first.get("msg")).removeprefix("Value error, ")
    return BadRequest(
        f"Invalid value for '{param}': {message}" if param else message,
        param=param,
        code="invalid_value" if param else "invalid_request",
    )


def render(exc: ServiceError, request: Request | None = None) -> JSONResponse:
    """The JSON response for ``exc`` (with ``x-request-id`` when the request has one)."""
    headers = dict(exc.headers)
    request_id = None if request is None else request.scope.get("state", {}).get("request_id")
    if request_id:
        headers.setdefault("x-request-id", request_id)
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=headers)


def _http_error(request: Request, exc: StarletteHTTPException) -> ServiceError:
    if exc.status_code == 404 and exc.detail in (None, "Not Found"):
        message = f"Unknown request URL: {request.method} {request.url.path}."
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
    elif exc.status_code == 400 and exc.detail == "There was an error parsing the body":  # FastAPI's own words
        message = "The request body could not be parsed (nested too deeply, or a number too long?)."
    else:
        message = str(exc.detail)
    code = _HTTP_CODES.get(exc.status_code) or ("invalid_request" if exc.status_code < 500 else None)
    err = ServiceError(message, code=code, headers=dict(exc.headers or {}))
    err.status_code = exc.status_code
    return err


def install_error_handlers(app: FastAPI) -> None:
    """Register every exception -> response mapping on ``app``."""

    async def known(request: Request, exc: Exception) -> JSONResponse:
        return render(to_service_error(exc), request)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return render(validation_error(exc), request)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return render(_http_error(request, exc), request)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        mapped = to_service_error(exc)
        if mapped.status_code == 500:
            log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return render(mapped, request)

    for exc_type in (
        ServiceError,
        wire.WireError,
        JobSpecError,
        PrivacyConfigError,
        *(t for ts, _, _ in _OUTAGES for t in ts),
    ):
        app.add_exception_handler(exc_type, known)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
