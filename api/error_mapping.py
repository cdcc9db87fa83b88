"""Translation of library and domain exceptions into :class:`api.errors.APIError` (used by the
handlers in ``api.errors``; kept apart so the error tree stays free of third-party imports)."""

from __future__ import annotations

import re

from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from api.db.errors import InvalidCursor, InvalidTransition, ObjectNotFound, RepoError
from api.errors import (
    APIError,
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
)
from api.relay import StepRejected, StepTimeout
from client_sdk import wire

_TENSOR_NAME = re.compile(r"tensor(?:\(s\))? \[?'([^']+)'")

_WIRE_CODES = {
    wire.TruncatedPayload: "truncated_payload",
    wire.NotSafetensors: "not_safetensors",
    wire.SchemaError: "invalid_header",
    wire.DtypeRejected: "dtype_rejected",
    wire.ShapeRejected: "shape_rejected",
    wire.NonFiniteTensor: "non_finite_tensor",
}

MAPPED_TYPES: tuple[type[Exception], ...] = (
    RepoError,
    wire.WireError,
    StepRejected,
    StepTimeout,
    OperationalError,
    InterfaceError,
    PoolTimeout,
    RedisConnectionError,
    RedisTimeoutError,
    BrokerError,
)


def wire_param(exc: Exception) -> str | None:
    """The tensor a wire error names, if any."""
    match = _TENSOR_NAME.search(str(exc))
    return match.group(1) if match else None


def to_api_error(exc: Exception) -> APIError:
    """The :class:`APIError` for any exception (500 ``server_error`` when nothing more specific fits)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ObjectNotFound):
        return NotFound(str(exc), param=exc.param)
    if isinstance(exc, InvalidCursor):
        return BadRequest(str(exc), param="after", code="invalid_cursor")
    if isinstance(exc, InvalidTransition):
        return Conflict(str(exc), code="invalid_job_status", retryable=exc.retryable)
    if isinstance(exc, RepoError):
        return Conflict(str(exc), code="conflict")
    if isinstance(exc, wire.SizeLimitExceeded):
        return PayloadTooLarge(str(exc), param=wire_param(exc))
    if isinstance(exc, wire.WireError):
        return BadRequest(str(exc), param=wire_param(exc), code=_wire_code(exc))
    if isinstance(exc, StepRejected):
        extra = {} if exc.expected_step is None else {"expected_step": exc.expected_step}
        err = APIError(exc.message, param=exc.param, code=exc.code, headers=exc.headers, extra=extra)
        err.status_code = exc.status_code
        err.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        if exc.expected_step is not None:
            err.headers.setdefault("x-expected-step", str(exc.expected_step))
        return err
    if isinstance(exc, StepTimeout):
        return ServiceUnavailable(str(exc) or "the worker did not answer in time", code="step_timeout", retry_after=1)
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
        return ServiceUnavailable(
            "The database is unavailable; retry shortly.", code="database_unavailable", retry_after=2
        )
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return ServiceUnavailable("Redis is unavailable; retry shortly.", code="redis_unavailable", retry_after=2)
    if isinstance(exc, BrokerError):
        return ServiceUnavailable(
            "The job queue is unavailable; retry shortly.", code="queue_unavailable", retry_after=2
        )
    return APIError("The server had an error while processing your request.", code="internal_error")


def _wire_code(exc: Exception) -> str:
    for cls, code in _WIRE_CODES.items():
        if isinstance(exc, cls):
            return code
    return "invalid_payload"
