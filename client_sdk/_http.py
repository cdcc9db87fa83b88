"""Transport core of the client: configuration, headers, retries with backoff and error mapping.

Retry policy (the OpenAI client's): connection errors, timeouts, 408, 429 and >= 500 are retried up
to ``max_retries`` times; 409 only when the server says ``x-should-retry: true``; nothing is retried
when it says ``x-should-retry: false``. The wait is the server's ``retry-after-ms`` / ``Retry-After``
(seconds or an HTTP date, capped at 60 s), else exponential backoff with jitter. A POST carries an
``Idempotency-Key`` that stays the same across the retries of one call.

Errors that may come from a wrong ``base_url`` say so: a connection error or timeout names the
method and URL it tried, and both it and a 404 ``unknown_url`` hint at a missing ``/v1``.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from client_sdk._constants import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    IDEMPOTENCY_HEADER,
    INITIAL_RETRY_DELAY,
    MAX_RETRY_AFTER,
    MAX_RETRY_DELAY,
    USER_AGENT,
)
from client_sdk.errors import APIConnectionError, APITimeoutError, PrivTuneError, status_error_from_response

log = logging.getLogger("client_sdk.client")

Sleep = Callable[[float], None]


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Return the wait the server asks for, in seconds (``retry-after-ms`` first, then ``Retry-After``
    as seconds or an HTTP date), capped at ``MAX_RETRY_AFTER``; None when absent or unparsable."""
    seconds: float | None = None
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            seconds = float(ms) / 1000.0
    except ValueError:
        seconds = None
    if seconds is None and (value := headers.get("retry-after")) is not None:
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return None
            seconds = when.timestamp() - time.time()
    if seconds is None or seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def backoff_delay(retries_done: int) -> float:
    """Exponential backoff for the next retry: 0.5 s, 1 s, 2 s ... capped at 8 s, minus up to 25 % jitter."""
    delay = min(INITIAL_RETRY_DELAY * 2.0 ** min(retries_done, 32), MAX_RETRY_DELAY)
    return delay * (1.0 - 0.25 * random.random())


def should_retry(response: httpx.Response) -> bool:
    """Whether a failed response may be retried: the server's ``x-should-retry`` decides when present,
    else 408, 429 and >= 500 are retried (409 only when the server says so)."""
    hint = response.headers.get("x-should-retry", "").strip().lower()
    if hint in ("true", "false"):
        return hint == "true"
    status = response.status_code
    return status in (408, 429) or status >= 500


def base_url_hint(base_url: str) -> str:
    """A sentence for errors that a wrong base URL may cause: empty when ``base_url`` ends with
    ``/v1``, else a suggestion to add it."""
    if base_url.rstrip("/").endswith("/v1"):
        return ""
    return f"The base_url usually ends with /v1: try {base_url.rstrip('/')}/v1."


def connection_error_message(request: httpx.Request, base_url: str, cause: Exception) -> str:
    """The message of an ``APIConnectionError``: the method and URL tried, why it failed, and
    where the gateway was expected (plus the ``/v1`` hint of :func:`base_url_hint`)."""
    reason = str(cause) or type(cause).__name__
    text = f"Connection error: {request.method} {request.url} failed ({reason}). Is the gateway running at {base_url}?"
    return _with_hint(text, base_url)


def timeout_message(request: httpx.Request, base_url: str) -> str:
    """The message of an ``APITimeoutError``: the method and URL that timed out, plus the ``/v1``
    hint of :func:`base_url_hint` when it applies."""
    return _with_hint(f"Request timed out: {request.method} {request.url}.", base_url)


def _with_hint(text: str, base_url: str) -> str:
    hint = base_url_hint(base_url)
    return f"{text} {hint}" if hint else text


def path_segment(value: object) -> str:
    """Percent-encode one path segment (ids, model names, file names), slashes included."""
    return quote(str(value), safe="")


class HTTPCore:
    """Configuration plus one ``request`` method that retries and maps errors; no endpoints."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.Client | None = None,
        sleep: Sleep = time.sleep,
    ) -> None:
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if not api_key:
            raise PrivTuneError(
                f"No API key: pass api_key to the client or set the {API_KEY_ENV} environment variable "
                "(create one with `privtune keys create`)."
            )
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.max_retries = max_retries
        self.sleep = sleep  # what waits between retries and polls (public: resources poll too)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.Client(timeout=self.timeout)

    def close(self) -> None:
        """Close the connection pool, unless the ``http_client`` was passed in (its owner closes it)."""
        if self._owns_http:
            self._http.close()

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.api_key}",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        }

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json: Any = None,
        content: bytes | None = None,
        files: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        retry_unavailable: bool = True,
    ) -> httpx.Response:
        """Send ``method base_url/path`` with retries and return the 2xx response.

        Raises the ``APIStatusError`` subclass of the final status, ``APITimeoutError`` or
        ``APIConnectionError``. With ``stream=True`` the body is unread; close the response.
        With ``retry_unavailable=False`` a 503 is raised at once (for callers that poll).
        """
        url = f"{self.base_url}/{path.lstrip('/')}"
        merged = self._headers()
        if method.upper() == "POST":
            merged[IDEMPOTENCY_HEADER] = f"privtune-{uuid.uuid4().hex}"
        merged.update(headers or {})
        retries_done = 0
        while True:
            request = self._http.build_request(
                method,
                url,
                params=params,
                json=json,
                content=content,
                files=files,
                data=data,
                headers=merged,
                timeout=self.timeout,
            )
            retries_left = self.max_retries - retries_done
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TimeoutException as exc:
                if retries_left <= 0:
                    raise APITimeoutError(request, message=timeout_message(request, self.base_url)) from exc
                delay, reason = backoff_delay(retries_done), "timed out"
            except httpx.TransportError as exc:
                if retries_left <= 0:
                    message = connection_error_message(request, self.base_url, exc)
                    raise APIConnectionError(message=message, request=request) from exc
                delay, reason = backoff_delay(retries_done), f"connection error ({exc})"
            else:
                if response.status_code < 400:
                    return response
                retryable = should_retry(response) and (retry_unavailable or response.status_code != 503)
                if retries_left <= 0 or not retryable:
                    response.read()
                    response.close()
                    raise status_error_from_response(response, unknown_url_hint=base_url_hint(self.base_url))
                response.close()
                server_delay = parse_retry_after(response.headers)
                delay = backoff_delay(retries_done) if server_delay is None else server_delay
                reason = f"status {response.status_code}"
            log.info("%s %s: %s; retrying in %.2f s (%d left)", method, url, reason, delay, retries_left - 1)
            self.sleep(delay)
            retries_done += 1


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address) is reachable only from this machine."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
