"""Job statuses. The status column is the control flag the worker polls on every heartbeat/step."""

from __future__ import annotations

VALIDATING_FILES = "validating_files"
QUEUED = "queued"
RUNNING = "running"
PAUSED = "paused"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

ALL = (VALIDATING_FILES, QUEUED, RUNNING, PAUSED, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
#: A worker may claim a job in these statuses (running only under an expired or own lease).
CLAIMABLE = frozenset({QUEUED, RUNNING})
CANCELLABLE = frozenset({VALIDATING_FILES, QUEUED, RUNNING, PAUSED})
PAUSABLE = frozenset({VALIDATING_FILES, QUEUED, RUNNING})
