"""Errors raised by the repository: members of the service's error tree (``service.errors``), so each
carries its HTTP status and envelope fields and the gateway renders it without a translation table."""

from __future__ import annotations

from service.errors import BadRequest, Conflict, NotFound, ServiceError


class RepoError(ServiceError):
    """Base of every repository error (409 ``conflict`` unless a subclass says otherwise)."""

    status_code, default_code = 409, "conflict"


class ObjectNotFound(RepoError, NotFound, LookupError):
    """No such object, or it belongs to another organization (the two are indistinguishable)."""

    status_code, default_code = 404, "not_found"

    def __init__(self, kind: str, object_id: str, param: str | None = None):
        NotFound.__init__(self, f"No {kind} found with id {object_id!r}.", param=param)
        self.kind, self.object_id = kind, object_id


class InvalidCursor(RepoError, BadRequest, ValueError):
    """An ``after`` cursor that names no object of the listed collection (400, param ``after``)."""

    status_code, default_code = 400, "invalid_cursor"

    def __init__(self, after: str):
        BadRequest.__init__(self, f"The cursor 'after={after}' does not name an object of this list.", param="after")
        self.after = after


class InvalidTransition(RepoError, Conflict):
    """A state change that the job's current status does not allow (e.g. cancelling a finished job):
    409 ``invalid_job_status``, retryable only when waiting will help (a pause still being saved)."""

    status_code, default_code = 409, "invalid_job_status"

    def __init__(self, job_id: str, action: str, status: str, retryable: bool = False, detail: str = ""):
        message = f"Job {job_id} cannot be {action}: its status is {status!r}."
        Conflict.__init__(self, f"{message} {detail}".strip(), retryable=retryable)
        self.job_id, self.action, self.status, self.retryable = job_id, action, status, retryable


class LeaseLost(RepoError):
    """The calling worker no longer owns the job's lease; it must stop working on the job."""

    def __init__(self, job_id: str, worker_id: str, owner: str | None, status: str | None):
        super().__init__(f"worker {worker_id!r} lost the lease on {job_id}: owner is {owner!r}, status {status!r}")
        self.job_id, self.worker_id, self.owner, self.status = job_id, worker_id, owner, status
