"""Errors raised by the repository; the gateway maps them to HTTP in ``api.errors`` (one place)."""

from __future__ import annotations


class RepoError(Exception):
    """Base of every repository error."""


class ObjectNotFound(RepoError, LookupError):
    """No such object, or it belongs to another organization (the two are indistinguishable)."""

    def __init__(self, kind: str, object_id: str, param: str | None = None):
        super().__init__(f"No {kind} found with id {object_id!r}.")
        self.kind, self.object_id, self.param = kind, object_id, param


class InvalidCursor(RepoError, ValueError):
    """An ``after`` cursor that names no object of the listed collection."""

    def __init__(self, after: str):
        super().__init__(f"The cursor 'after={after}' does not name an object of this list.")
        self.after = after


class InvalidTransition(RepoError):
    """A state change that the job's current status does not allow (e.g. cancelling a finished job)."""

    def __init__(self, job_id: str, action: str, status: str, retryable: bool = False, detail: str = ""):
        message = f"Job {job_id} cannot be {action}: its status is {status!r}."
        super().__init__(f"{message} {detail}".strip())
        self.job_id, self.action, self.status, self.retryable = job_id, action, status, retryable


class LeaseLost(RepoError):
    """The calling worker no longer owns the job's lease; it must stop working on the job."""

    def __init__(self, job_id: str, worker_id: str, owner: str | None, status: str | None):
        super().__init__(f"worker {worker_id!r} lost the lease on {job_id}: owner is {owner!r}, status {status!r}")
        self.job_id, self.worker_id, self.owner, self.status = job_id, worker_id, owner, status
