"""Every query of the gateway and the worker. Functions take a ``Session``, run in the caller's
transaction (``session_scope`` commits) and return plain dicts: no ORM object escapes.

Worker-facing: :func:`claim_job`, :func:`heartbeat`, :func:`release_job`, :func:`finish_job`,
:func:`add_event`, :func:`add_checkpoint`, :func:`latest_checkpoint`, :func:`get_job`,
:func:`get_file`, :func:`recent_checkpoints`, :func:`prune_checkpoints`; gateway reaper:
:func:`reap_expired`, :func:`requeue_stale_queued`. Lease times are the database's clock (:func:`db_now`).
"""

from service.db.errors import InvalidCursor, InvalidTransition, LeaseLost, ObjectNotFound, RepoError
from service.db.repo import status
from service.db.repo.events import (
    add_checkpoint,
    add_event,
    latest_checkpoint,
    list_checkpoints,
    list_events,
    prune_checkpoints,
    recent_checkpoints,
)
from service.db.repo.files import create_file, delete_file, get_file, list_files, new_file_id, require_file
from service.db.repo.jobs import (
    cancel_job,
    create_job,
    fail_job,
    fine_tuned_models,
    get_job,
    job_for_model,
    list_jobs,
    pause_job,
    require_job,
    resume_job,
)
from service.db.repo.keys import Principal, authenticate, create_api_key, get_or_create_organization, revoke_api_key
from service.db.repo.lease import (
    check_control,
    claim_job,
    db_now,
    defer_queued,
    finish_job,
    heartbeat,
    org_running_jobs,
    reap_expired,
    release_job,
    requeue_stale_queued,
)
from service.db.repo.naming import default_model_name

__all__ = [
    "InvalidCursor",
    "InvalidTransition",
    "LeaseLost",
    "ObjectNotFound",
    "Principal",
    "RepoError",
    "add_checkpoint",
    "add_event",
    "authenticate",
    "cancel_job",
    "check_control",
    "claim_job",
    "create_api_key",
    "create_file",
    "create_job",
    "db_now",
    "defer_queued",
    "default_model_name",
    "delete_file",
    "fail_job",
    "fine_tuned_models",
    "finish_job",
    "get_file",
    "get_job",
    "get_or_create_organization",
    "heartbeat",
    "job_for_model",
    "latest_checkpoint",
    "list_checkpoints",
    "list_events",
    "list_files",
    "list_jobs",
    "new_file_id",
    "org_running_jobs",
    "pause_job",
    "prune_checkpoints",
    "reap_expired",
    "recent_checkpoints",
    "release_job",
    "requeue_stale_queued",
    "require_file",
    "require_job",
    "resume_job",
    "revoke_api_key",
    "status",
]
