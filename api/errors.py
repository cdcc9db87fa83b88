"""The one place where failures become HTTP responses in the OpenAI error envelope.

Every error body is ``{"error": {"message", "type", "param", "code"}}`` (all four keys)::

    APIError (500 server_error)
     ├── BadRequest          400  invalid_request_error
     ├── Authentication      401  invalid_request_error, code invalid_api_key
     ├── NotFound            404  invalid_request_error
     ├── Conflict            409  invalid_request_error, x-should-retry: false unless retryable
     ├── PayloadTooLarge     413  invalid_request_error
     ├── Unprocessable       422  invalid_request_error
     └── ServiceUnavailable  503  server_error, Retry-After

``install_error_handlers`` also maps repository errors, wire errors, relay errors, request
validation errors, unknown routes, a database / Redis / broker outage (503) and anything else (500).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("api.errors")


class APIError(Exception):
    """An error the client can act on; rendered as the OpenAI envelope."""

    status_code = 500
    type = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.message, self.param = message, param
        self.code = code if code is not None else self.default_code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


class BadRequest(APIError):
    status_code, type = 400, "invalid_request_error"


class Authentication(APIError):
    status_code, type, default_code = 401, "invalid_request_error", "invalid_api_key"


class NotFound(APIError):
    status_code, type, default_code = 404, "invalid_request_error", "not_found"


class Conflict(APIError):
    """409; by default tells the OpenAI client not to retry (``x-should-retry: false``)."""

    status_code, type = 409, "invalid_request_error"

    def __init__(self, message: str, *, retryable: bool = False, **kwargs: Any):
        super().__init__(message, **kwargs)
        if retryable:
            self.headers.setdefault("retry-after", "1")
        else:
            self.headers.setdefault("x-should-retry", "false")


class PayloadTooLarge(APIError):
    status_code, type, default_code = 413, "invalid_request_error", "payload_too_large"


class Unprocessable(APIError):
    status_code, type = 422, "invalid_request_error"


class ServiceUnavailable(APIError):
    """503 with ``Retry-After`` (seconds): retry later, nothing was changed."""

    status_code, type, default_code = 503, "server_error", "service_unavailable"

    def __init__(self, message: str, *, retry_after: int = 1, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.headers.setdefault("retry-after", str(retry_after))


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None, **extra: Any) -> dict:
    """The OpenAI error envelope."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code, **extra}}


def render(exc: APIError, request: Request | None = None) -> JSONResponse:
    """The JSON response for ``exc`` (with ``x-request-id`` when the request has one)."""
    headers = dict(exc.headers)
    request_id = _request_id(request)
    if request_id:
        headers.setdefault("x-request-id", request_id)
    body = error_body(exc.message, exc.type, exc.param, exc.code, **exc.extra)
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


def _request_id(request: Request | None) -> str | None:
    if request is None:
        return None
    return request.scope.get("state", {}).get("request_id")


def install_error_handlers(app: FastAPI) -> None:
    """Register every exception -> response mapping on ``app``."""
    from api.error_mapping import to_api_error  # translation table for library exceptions

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        return render(exc if isinstance(exc, APIError) else to_api_error(exc), request)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return render(_validation_to_api_error(exc), request)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404 and exc.detail in (None, "Not Found"):
            message = f"Unknown request URL: {request.method} {request.url.path}."
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
        else:
            message = str(exc.detail)
        err = APIError(
            message, code={404: "unknown_url", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code)
        )
        err.status_code = exc.status_code
        err.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        err.headers.update(exc.headers or {})
        return render(err, request)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        mapped = to_api_error(exc)
        if mapped.status_code == 500:
            log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return render(mapped, request)

    app.add_exception_handler(APIError, api_error)
    for exc_type in _mapped_types():
        app.add_exception_handler(exc_type, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


def _mapped_types() -> tuple[type[Exception], ...]:
    from api.error_mapping import MAPPED_TYPES

    return MAPPED_TYPES


def _validation_to_api_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    param = ".".join(loc) or None
    message = f"Invalid value for '{param}': {first.get('msg')}" if param else str(first.get("msg"))
    if first.get("type") == "json_invalid":
        message, param = "The request body is not valid JSON.", None
    return BadRequest(message, param=param, code="invalid_value" if param else "invalid_request")
