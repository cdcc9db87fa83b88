"""The service's log format, shared by the gateway and the worker: one JSON object per line (or text).

:func:`configure_logging` installs one handler on the root logger; every record carries the id of the
request being served (:data:`request_id_var`, set by the gateway's observability middleware), so a
line from a route, the error handler or the access log can be joined to the client's ``x-request-id``.

A JSON line has ``time`` (ISO 8601 UTC), ``level``, ``logger``, ``message``, ``request_id`` (null
outside a request), ``exc_info`` (the formatted traceback, a string) when there is one, and any of
``method``, ``route``, ``status``, ``duration_ms`` (and other scalar ``extra=`` fields) the call gave.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

from service.settings import Settings

#: The request id of the request this task/thread is serving (None outside one).
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("privtune_request_id", default=None)

#: Attributes every LogRecord has; anything else on a record came from ``extra=`` and is emitted.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id"}
_HANDLER_NAME = "privtune"


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id`` from :data:`request_id_var` (unless the call passed one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped by JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                line[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def configure_logging(settings: Settings, *, level: int | str = logging.INFO, stream: IO[str] | None = None) -> None:
    """Route every logger through one root handler writing ``settings.log_format`` lines (``json`` or
    ``text``) to ``stream`` (default stderr) at ``level``. Idempotent: calling it again replaces the
    handler it installed before and leaves other handlers alone. Uvicorn's own access log is turned off
    (the gateway writes its own access line, with the route and the request id)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "celery"):  # let them propagate to our one handler
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
