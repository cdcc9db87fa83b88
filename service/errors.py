"""The service's one error tree: every failure a client can act on, with its HTTP status, its OpenAI
envelope and its fields (imports no FastAPI, no torch; the gateway renders it, the worker raises it)::

    ServiceError                 500 server_error        (anything unexpected)
     ├── BadRequest              400 invalid_request_error
     ├── Authentication          401 invalid_request_error, code invalid_api_key
     ├── NotFound                404 invalid_request_error, code not_found
     ├── Conflict                409 invalid_request_error, x-should-retry: false unless retryable
     ├── RequestTimeout          408 invalid_request_error, code request_timeout (the body stalled)
     ├── PayloadTooLarge         413 invalid_request_error, code payload_too_large
     ├── UnsupportedMediaType    415 invalid_request_error, code unsupported_media_type
     ├── Unprocessable           422 invalid_request_error
     ├── RateLimited             429 type requests, code rate_limit_exceeded, Retry-After + retry-after-ms
     ├── ServiceUnavailable      503 server_error, Retry-After
     │    └── StepTimeout        503 code step_timeout: the worker did not answer in time
     └── StepRejected            the worker refused a step (status chosen by the worker; the relay
                                 carries it from the worker to the gateway as JSON)

Repository errors (``service.db.errors``) are members of this tree. A wire error maps to exactly one
status (:data:`WIRE_STATUS`, :func:`from_wire_error`), wherever it is raised.
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar

from client_sdk import wire

__all__ = [
    "WIRE_STATUS",
    "Authentication",
    "BadRequest",
    "Conflict",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RequestTimeout",
    "ServiceError",
    "ServiceUnavailable",
    "StepRejected",
    "StepTimeout",
    "Unprocessable",
    "UnsupportedMediaType",
    "error_body",
    "from_wire_error",
]


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None, **extra: Any) -> dict:
    """The OpenAI error envelope ``{"error": {message, type, param, code, ...extra}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code, **extra}}


class ServiceError(Exception):
    """An error with its HTTP status and envelope fields; ``extra`` adds keys to the envelope."""

    status_code: int = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.param = message, param
        self.code = code if code is not None else self.default_code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    @property
    def error_type(self) -> str:
        """``invalid_request_error`` for 4xx, ``server_error`` for 5xx."""
        return "invalid_request_error" if self.status_code < 500 else "server_error"

    def body(self) -> dict[str, Any]:
        """The OpenAI envelope of this error."""
        return error_body(self.message, self.error_type, self.param, self.code, **self.extra)


class BadRequest(ServiceError):
    status_code, default_code = 400, "invalid_request"


class Authentication(ServiceError):
    status_code, default_code = 401, "invalid_api_key"


class PermissionDenied(ServiceError):
    """403: the caller may not do this to that object (e.g. delete a base model)."""

    status_code, default_code = 403, "permission_denied"


class NotFound(ServiceError):
    status_code, default_code = 404, "not_found"


class Conflict(ServiceError):
    """409; by default tells the OpenAI client not to retry (``x-should-retry: false``)."""

    status_code, default_code = 409, "conflict"

    def __init__(self, message: str, *, retryable: bool = False, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        if retryable:
            self.headers.setdefault("retry-after", "1")
        else:
            self.headers.setdefault("x-should-retry", "false")


class PayloadTooLarge(ServiceError):
    status_code, default_code = 413, "payload_too_large"


class Unprocessable(ServiceError):
    status_code, default_code = 422, "invalid_value"


class RequestTimeout(ServiceError):
    """408: the request body sent nothing for too long; the connection is closed."""

    status_code, default_code = 408, "request_timeout"

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("connection", "close")


class UnsupportedMediaType(ServiceError):
    status_code, default_code = 415, "unsupported_media_type"


class RateLimited(ServiceError):
    """429 in OpenAI's shape (type ``requests``): retry after ``retry_after_s`` seconds (``Retry-After``
    rounded up, ``retry-after-ms`` exact). ``reason`` is the limit hit (requests, concurrency, active_jobs)."""

    status_code, default_code = 429, "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, reason: str = "requests", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.reason = reason
        self.headers.setdefault("retry-after", str(max(1, math.ceil(retry_after_s))))
        self.headers.setdefault("retry-after-ms", str(max(1, math.ceil(retry_after_s * 1000))))

    @property
    def error_type(self) -> str:
        return "requests"


class ServiceUnavailable(ServiceError):
    """503 with ``Retry-After`` (seconds): retry later, nothing was changed."""

    status_code, default_code = 503, "service_unavailable"

    def __init__(self, message: str, *, retry_after: int = 1, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("retry-after", str(retry_after))


class StepTimeout(ServiceUnavailable):
    """No reply from the job's worker in time: it is busy, starting or gone. Safe to retry."""

    default_code = "step_timeout"


#: The one status of each wire error, wherever it is raised (gateway, worker, upload check):
#: unreadable bytes are 400, too large 413, readable but wrong tensors 422.
WIRE_STATUS: dict[type[wire.WireError], int] = {
    wire.TruncatedPayload: 400,
    wire.NotSafetensors: 400,
    wire.SchemaError: 400,
    wire.SizeLimitExceeded: 413,
    wire.DtypeRejected: 422,
    wire.ShapeRejected: 422,
    wire.NonFiniteTensor: 422,
}


def wire_status(exc: wire.WireError) -> int:
    """The HTTP status of a wire error (its most specific class in :data:`WIRE_STATUS`, else 400)."""
    return next((status for cls in type(exc).__mro__ if (status := WIRE_STATUS.get(cls)) is not None), 400)


class StepRejected(ServiceError):
    """The worker refused a step request; nothing changed. ``expected_step`` (409
    ``step_out_of_order``) tells the device where to resume. Crosses Redis as JSON (:meth:`to_json`)."""

    def __init__(
        self, status_code: int, code: str, message: str, *, param: str | None = None, expected_step: int | None = None
    ) -> None:
        extra = {} if expected_step is None else {"expected_step": expected_step}
        super().__init__(message, param=param, code=code, extra=extra)
        self.status_code = int(status_code)
        self.expected_step = expected_step
        if self.status_code == 409:
            self.headers.setdefault("x-should-retry", "false")
        if expected_step is not None:
            self.headers.setdefault("x-expected-step", str(expected_step))

    @classmethod
    def from_wire(cls, exc: wire.WireError) -> StepRejected:
        """The rejection of a payload the codec refused (same status and code as at the gateway)."""
        return cls(wire_status(exc), exc.code, exc.message, param=exc.param)

    def to_json(self) -> bytes:
        fields = {
            "status": self.status_code,
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "expected_step": self.expected_step,
        }
        return json.dumps(fields).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> StepRejected:
        fields = json.loads(data)
        return cls(
            fields["status"],
            fields["code"],
            fields["message"],
            param=fields.get("param"),
            expected_step=fields.get("expected_step"),
        )


def from_wire_error(exc: wire.WireError) -> ServiceError:
    """The service error for a wire error: its one status, its code, the tensor as ``param``."""
    status = wire_status(exc)
    cls = {400: BadRequest, 413: PayloadTooLarge, 422: Unprocessable}[status]
    return cls(exc.message, param=exc.param, code=exc.code)
