"""Failures as OpenAI error envelopes ``{"error": {"message", "type", "param", "code"}}``: the one place
where the proxy maps exceptions to statuses (never a traceback in a response)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from client_sdk.errors import APIConnectionError, APIStatusError  # torch-free

log = logging.getLogger("privtune.proxy")

_TYPE_NAMES = {"str", "int", "float", "bool", "none", "dict"}


class ProxyError(Exception):
    """An error response: status and the envelope's fields."""

    def __init__(self, status: int, message: str, *, type: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def invalid(message: str, param: str | None = None, code: str | None = "invalid_value") -> ProxyError:
    """A 400 ``invalid_request_error``."""
    return ProxyError(400, message, type="invalid_request_error", param=param, code=code)


def model_not_found(model: str) -> ProxyError:
    message = f"The model `{model}` does not exist or you do not have access to it (this proxy serves one model)."
    return ProxyError(404, message, type="invalid_request_error", param="model", code="model_not_found")


def from_model_error(exc: Exception, renames: dict[str, str]) -> ProxyError:
    """The response for an exception raised by the model object: a ``ValueError`` is the caller's (400,
    its ``param`` renamed to the request's field), a PrivTune ``APIStatusError`` keeps its status, an
    unreachable PrivTune service is 502 (the openai client retries it), anything else is 500."""
    if isinstance(exc, ProxyError):
        return exc
    if isinstance(exc, ValueError):
        param = getattr(exc, "param", None)
        return invalid(str(exc), renames.get(param, param), getattr(exc, "code", None) or "invalid_value")
    if isinstance(exc, APIStatusError):
        kind = exc.type or ("server_error" if exc.status_code >= 500 else "invalid_request_error")
        message = f"PrivTune service: {exc.message}"
        return ProxyError(exc.status_code, message, type=kind, param=renames.get(exc.param, exc.param), code=exc.code)
    if isinstance(exc, APIConnectionError):
        return ProxyError(502, f"PrivTune service unreachable: {exc.message}", type="server_error", code="bad_gateway")
    log.error("the model failed", exc_info=exc)
    return ProxyError(500, f"The model failed ({type(exc).__name__}); see the proxy's log.", type="server_error")


def _param(loc: tuple[Any, ...]) -> str | None:
    """``("body", "messages", 0, "content", "str")`` -> ``"messages[0].content"`` (union tags dropped)."""
    param = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path") else loc:
        if isinstance(part, int):
            param += f"[{part}]"
        elif not (part in _TYPE_NAMES or "[" in part or "-" in part or part[:1].isupper()):
            param += f".{part}" if param else part
    return param or None


def validation_error(exc: RequestValidationError) -> ProxyError:
    """A 400 naming the first invalid field, in OpenAI's words."""
    first = dict(next(iter(exc.errors()), {"loc": (), "msg": "invalid request", "type": ""}))
    if first.get("type") == "json_invalid" or first.get("loc") == ("body",):
        return invalid("We could not parse the JSON body of your request: it must be a JSON object.", None, None)
    param = _param(tuple(first.get("loc", ())))
    if first.get("type") == "missing":
        return invalid(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    message = str(first.get("msg")).removeprefix("Value error, ")
    return invalid(f"Invalid value for '{param}': {message}.", param)


def install(app: FastAPI) -> None:
    """Render every error in the envelope: ours, request validation, unknown routes, anything else."""

    @app.exception_handler(ProxyError)
    async def _proxy(_: Request, exc: ProxyError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "unknown_url", 405: "method_not_allowed"}.get(exc.status_code)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return ProxyError(exc.status_code, message, type="invalid_request_error", code=code).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=exc)
        return ProxyError(500, "The proxy had an error; see its log.", type="server_error").response()
