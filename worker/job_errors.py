"""The errors a tenant sees when the worker ends a job: actionable, and never an exception's text."""

from __future__ import annotations

import secrets
from typing import Any


def internal_error() -> dict[str, Any]:
    """The job error shown to a tenant for an unexpected worker exception: a generic message and a
    fresh reference (``err_<hex>``) the caller logs with the traceback; never the exception's text."""
    ref = f"err_{secrets.token_hex(8)}"
    message = (
        "The worker hit an internal error and the job cannot continue. "
        f"Quote error reference {ref} to the service's operator; the job's checkpoints are kept."
    )
    return {"code": "worker_error", "message": message, "param": None, "ref": ref}


def attempts_error(attempts: int) -> dict[str, Any]:
    """The job error when a job was claimed more than ``max_attempts`` times."""
    message = (
        f"The job was started {attempts} times; each time its worker stopped before finishing (a crash, "
        "a restart or an out-of-memory kill), so it is not retried again. Its checkpoints are kept: check "
        "the job's events, then create a new job (a smaller batch_size or max_tokens often helps) or "
        "contact the service's operator if it happens again."
    )
    return {"code": "max_attempts_exceeded", "message": message, "param": None}
