"""Errors raised by the PrivTune HTTP client.

Every error is a ``PrivTuneError``; catch a leaf to act on one failure, or a branch to act on many::

    PrivTuneError                       missing configuration, or anything below
     ├── APIError                       a request failed (.message, .request, .body)
     │    ├── APIStatusError            the server answered 4xx/5xx; other 4xx statuses raise this
     │    │    │                        (.response, .status_code, .request_id, .code, .param, .type)
     │    │    ├── BadRequestError              400
     │    │    ├── AuthenticationError          401
     │    │    ├── PermissionDeniedError        403
     │    │    ├── NotFoundError                404
     │    │    ├── ConflictError                409
     │    │    │    ├── StepOutOfOrderError     409, code "step_out_of_order" (.expected_step)
     │    │    │    ├── JobNotRunningError      409, code "job_not_running" (.job_status; the SDK waits
     │    │    │    │                           while a worker takes the job back)
     │    │    │    └── SessionExpiredError     409, code "session_expired" (the SDK reopens the session)
     │    │    ├── PayloadTooLargeError         413
     │    │    ├── UnprocessableEntityError     422
     │    │    ├── RateLimitError               429
     │    │    └── InternalServerError          >= 500
     │    │         ├── ServiceUnavailableError 503
     │    │         └── BottomExportError       code "bottom_export_failed": the provider cannot export
     │    │                                     the bottom model; never retried
     │    ├── APIConnectionError        no response: DNS, refused, reset, TLS ...
     │    │    └── APITimeoutError      the request timed out
     │    └── APIResponseValidationError  a 2xx body that is not the object it should be
     └── BottomArtifactError            a downloaded bottom fails verification or its manifest is unsafe

The server's error envelope is ``{"error": {"message", "type", "param", "code"}}`` (a step out of
order adds ``"expected_step"``); :func:`status_error_from_response` is the one place where statuses
map to classes. Connection errors name the method and URL they tried; when the base URL lacks the
usual ``/v1``, they and a 404 ``unknown_url`` say so (see ``client_sdk._http.base_url_hint``).
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = [
    "PrivTuneError",
    "APIError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "ConflictError",
    "SessionExpiredError",
    "StepOutOfOrderError",
    "JobNotRunningError",
    "BottomExportError",
    "PayloadTooLargeError",
    "UnprocessableEntityError",
    "RateLimitError",
    "InternalServerError",
    "ServiceUnavailableError",
    "APIConnectionError",
    "APITimeoutError",
    "APIResponseValidationError",
    "BottomArtifactError",
    "status_error_from_response",
]

STEP_OUT_OF_ORDER = "step_out_of_order"
SESSION_EXPIRED = "session_expired"
JOB_NOT_RUNNING = "job_not_running"
BOTTOM_EXPORT_FAILED = "bottom_export_failed"
UNKNOWN_URL = "unknown_url"
EXPECTED_STEP_HEADER = "x-expected-step"


class PrivTuneError(Exception):
    """Base class of every error this SDK's HTTP layer raises."""


class APIError(PrivTuneError):
    """A request to the gateway failed. ``body`` is the decoded response body, if there was one."""

    message: str
    request: httpx.Request
    body: object | None

    def __init__(self, message: str, request: httpx.Request, *, body: object | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request
        self.body = body


class APIStatusError(APIError):
    """The gateway answered with a 4xx or 5xx status."""

    response: httpx.Response
    status_code: int
    request_id: str | None
    code: str | None
    param: str | None
    type: str | None

    def __init__(
        self,
        message: str,
        *,
        response: httpx.Response,
        body: object | None,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message, response.request, body=body)
        self.response = response
        self.status_code = response.status_code
        self.request_id = response.headers.get("x-request-id")
        self.code = code
        self.param = param
        self.type = type

    def __str__(self) -> str:
        details = [f"status {self.status_code}"]
        if self.code:
            details.append(f"code {self.code!r}")
        if self.param:
            details.append(f"param {self.param!r}")
        if self.request_id:
            details.append(f"request id {self.request_id}")
        return f"{self.message} ({', '.join(details)})"


class BadRequestError(APIStatusError):
    """400: the request is invalid (or the job is in a state that forbids the action)."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing, unknown or revoked."""


class PermissionDeniedError(APIStatusError):
    """403: the key may not touch this resource."""


class NotFoundError(APIStatusError):
    """404: no such job, file, model or bottom."""


class ConflictError(APIStatusError):
    """409: the request conflicts with the resource's current state."""


class StepOutOfOrderError(ConflictError):
    """409 ``step_out_of_order``: resend from ``expected_step`` (e.g. after the worker resumed)."""

    expected_step: int | None

    def __init__(self, message: str, *, expected_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.expected_step = expected_step


class JobNotRunningError(ConflictError):
    """409 ``job_not_running``: the job takes no steps now; ``job_status`` is its status then (``queued``
    while a worker takes it back after a crash, ``paused``, or a final one)."""

    job_status: str | None

    def __init__(self, message: str, *, job_status: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.job_status = job_status


class SessionExpiredError(ConflictError):
    """An inference session expired or was lost with its worker; ``FineTunedModel`` opens a new one and
    replays what it had sent."""


class PayloadTooLargeError(APIStatusError):
    """413: the request body exceeds the gateway's limit (e.g. a step batch that is too big)."""


class UnprocessableEntityError(APIStatusError):
    """422: the body is well-formed but its values are rejected."""


class RateLimitError(APIStatusError):
    """429: too many requests; retried automatically before this is raised."""


class InternalServerError(APIStatusError):
    """5xx (or an unexpected status): the server failed; retried automatically before this is raised."""


class ServiceUnavailableError(InternalServerError):
    """503: the server cannot answer yet (e.g. a bottom still being prepared); honours Retry-After."""


class BottomExportError(InternalServerError):
    """The provider failed to export the bottom model (code ``bottom_export_failed``): waiting will not
    help, so it is never retried; ``client.bottoms`` names the model and split layer in the message."""


class APIConnectionError(APIError):
    """No response arrived: the connection could not be made or broke. The message names the
    method and URL that were tried."""

    def __init__(self, *, message: str | None = None, request: httpx.Request) -> None:
        super().__init__(message or f"Connection error: {request.method} {request.url}.", request, body=None)


class APITimeoutError(APIConnectionError):
    """The request timed out (connect, read, write or pool)."""

    def __init__(self, request: httpx.Request, *, message: str | None = None) -> None:
        super().__init__(message=message or f"Request timed out: {request.method} {request.url}.", request=request)


class APIResponseValidationError(APIError):
    """The server answered 2xx but the body is not the object the client expected."""

    def __init__(self, message: str, *, response: httpx.Response, body: object | None) -> None:
        super().__init__(message, response.request, body=body)
        self.response = response
        self.status_code = response.status_code


class BottomArtifactError(PrivTuneError):
    """A bottom download cannot be trusted: a sha256 or the digest differs, or a file name is unsafe."""


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def _decode_body(response: httpx.Response) -> object | None:
    try:
        return response.json()
    except ValueError:
        return response.text or None


def _as_int(value: object) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def status_error_from_response(response: httpx.Response, *, unknown_url_hint: str = "") -> APIStatusError:
    """Return the error for a 4xx/5xx response: its class from the status (and code), its fields
    from the ``{"error": {...}}`` envelope; a step out of order takes ``expected_step`` from the
    envelope or the ``x-expected-step`` header. ``unknown_url_hint`` is appended to the message of a
    404 ``unknown_url`` (e.g. a base URL without ``/v1``). The response body must already be read."""
    body = _decode_body(response)
    error: dict[str, Any] = {}
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
    message = error.get("message")
    if not isinstance(message, str) or not message:
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            message = body["error"]
        elif isinstance(body, dict) and "detail" in body:  # FastAPI's default error shape
            detail = body["detail"]
            message = detail if isinstance(detail, str) else f"invalid request: {detail}"
        else:
            text = body if isinstance(body, str) else ""
            message = f"HTTP {response.status_code} {response.reason_phrase}" + (f": {text[:500]}" if text else "")
    fields = {
        "response": response,
        "body": body,
        "code": error.get("code"),
        "param": error.get("param"),
        "type": error.get("type"),
    }
    status = response.status_code
    if status == 409 and fields["code"] == STEP_OUT_OF_ORDER:
        expected = _as_int(error.get("expected_step"))
        if expected is None:
            expected = _as_int(response.headers.get(EXPECTED_STEP_HEADER))
        return StepOutOfOrderError(message, expected_step=expected, **fields)
    if status == 409 and fields["code"] == JOB_NOT_RUNNING:
        job_status = error.get("job_status")
        return JobNotRunningError(message, job_status=job_status if isinstance(job_status, str) else None, **fields)
    if status >= 500 and fields["code"] == BOTTOM_EXPORT_FAILED:
        return BottomExportError(message, **fields)
    if status == 409 and fields["code"] == SESSION_EXPIRED:
        return SessionExpiredError(message, **fields)
    if status == 404 and fields["code"] == UNKNOWN_URL and unknown_url_hint:
        message = f"{message.rstrip()} {unknown_url_hint.strip()}"
    cls = _STATUS_ERRORS.get(status) or (InternalServerError if status >= 500 else APIStatusError)
    return cls(message, **fields)
