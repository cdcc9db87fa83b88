"""Defaults of the HTTP client: where it connects, how long it waits and how often it retries."""

from __future__ import annotations

import platform

import httpx

from client_sdk import __version__

BASE_URL_ENV = "PRIVTUNE_BASE_URL"
API_KEY_ENV = "PRIVTUNE_API_KEY"
CACHE_DIR_ENV = "PRIVTUNE_CACHE_DIR"
STATE_DIR_ENV = "PRIVTUNE_STATE_DIR"  # the device's own end of each job (client_sdk.end_state)

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_BOTTOM_CACHE = "~/.cache/privtune/bottoms"
DEFAULT_STATE_DIR = "~/.cache/privtune/jobs"

#: Connecting should be quick; reading may not be: a training step waits for the job's worker.
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=600.0, pool=10.0)

#: Retries after the first attempt, on connection errors, timeouts, 408, 429, >= 500 and whatever
#: the server marks ``x-should-retry: true``.
DEFAULT_MAX_RETRIES = 2
INITIAL_RETRY_DELAY = 0.5  # seconds; doubles per retry, with up to 25 % jitter taken off
MAX_RETRY_DELAY = 8.0  # seconds, the cap of the exponential backoff
MAX_RETRY_AFTER = 60.0  # seconds, the cap on a server's Retry-After / retry-after-ms

#: How long to wait between polls of a bottom that is still being prepared, when the server's
#: 503 carries no Retry-After.
DEFAULT_POLL_INTERVAL = 2.0
DEFAULT_BOTTOM_WAIT = 600.0

USER_AGENT = f"privtune-python/{__version__} python/{platform.python_version()} httpx/{httpx.__version__}"
IDEMPOTENCY_HEADER = "Idempotency-Key"
