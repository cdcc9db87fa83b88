"""Deleting stored artifacts: one fine-tuned model (``DELETE /v1/models``), one job, and the retention
sweep (``settings.retention_days``).

A job's artifacts are everything under ``settings.artifact_dir/jobs/<job id>`` (the ``final`` adapter and
the checkpoint directories) plus any checkpoint path its rows record inside ``artifact_dir``. Deletion
first marks the job (``jobs.artifacts_deleted_at``, committed: from then on the model is 404 and
cannot be used), then removes the files, so a crash in between leaves no usable half-deleted model.
Nothing outside ``artifact_dir`` (or ``file_dir`` for uploads) is ever removed.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.db import repo
from service.db.base import now_s
from service.db.errors import ObjectNotFound
from service.db.repo import files as file_repo
from service.db.repo import jobs as job_repo
from service.db.session import session_scope
from service.settings import Settings

log = logging.getLogger("api.retention")

DAY_S = 86400


def job_artifact_dir(settings: Settings, job_id: str) -> Path:
    """``artifact_dir/jobs/<job id>``: where the worker keeps a job's adapter and checkpoints."""
    assert settings.artifact_dir is not None
    return Path(settings.artifact_dir) / "jobs" / job_id


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return path.resolve() != root.resolve()


def _remove(path: Path) -> bool:
    """Remove a file or a directory tree; True if something was there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
        return True
    if path.exists() or path.is_symlink():
        path.unlink()
        return True
    return False


def delete_artifacts(settings: Settings, job_id: str, checkpoint_paths: Iterable[str] = ()) -> list[str]:
    """Remove the job's stored artifacts (its directory and the recorded checkpoint paths that lie inside
    ``artifact_dir``; anything else is left alone). Returns the paths removed."""
    assert settings.artifact_dir is not None
    root = Path(settings.artifact_dir)
    removed = []
    for path in (job_artifact_dir(settings, job_id), *(Path(p) for p in checkpoint_paths if p)):
        if _inside(path, root) and _remove(path):
            removed.append(str(path))
    return removed


def delete_model_artifacts(session: Session, settings: Settings, job: dict[str, Any]) -> list[str]:
    """Delete the artifacts of ``job`` (a snapshot): mark and commit, then remove the files."""
    job_repo.mark_artifacts_deleted(session, job["id"])
    paths = job_repo.checkpoint_paths(session, job["id"])
    repo.delete_checkpoints(session, job["id"])  # /checkpoints lists nothing whose files are gone
    session.commit()
    return delete_artifacts(settings, job["id"], paths)


@dataclass
class RetentionResult:
    """What one sweep deleted: jobs whose artifacts were removed, uploaded files removed."""

    jobs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


def retention_sweep(
    session_factory: sessionmaker[Session], settings: Settings, now: int | None = None
) -> RetentionResult:
    """Delete the artifacts (as ``DELETE /v1/models`` does) of jobs finished more than
    ``settings.retention_days`` ago, and uploaded files older than that which no unfinished job uses.
    ``retention_days = 0`` keeps everything. Returns what it deleted; a file it cannot remove is
    logged and the sweep goes on (the row is already gone, so nothing refers to it)."""
    result = RetentionResult()
    if settings.retention_days <= 0:
        return result
    cutoff = int((now_s() if now is None else now) - settings.retention_days * DAY_S)
    with session_scope(session_factory) as session:
        jobs = job_repo.jobs_past_retention(session, cutoff)
    for job in jobs:
        with session_scope(session_factory) as session:
            if not job_repo.mark_artifacts_deleted(session, job["id"]):
                continue  # another sweep or a DELETE took it
            paths = job_repo.checkpoint_paths(session, job["id"])
        result.jobs.append(job["id"])
        result.paths += _removing(lambda job=job, paths=paths: delete_artifacts(settings, job["id"], paths))
    with session_scope(session_factory) as session:
        old_files = file_repo.files_older_than(session, cutoff)
    assert settings.file_dir is not None
    for row in old_files:
        try:
            with session_scope(session_factory) as session:
                file_repo.delete_file(session, row["id"], row["organization_id"])
        except ObjectNotFound:  # deleted meanwhile
            continue
        result.files.append(row["id"])
        path = Path(row["path"])
        if _inside(path, Path(settings.file_dir)):
            result.paths += _removing(lambda path=path: [str(path)] if _remove(path) else [])
    if result.jobs or result.files:
        log.info("retention: deleted the artifacts of %d jobs and %d files", len(result.jobs), len(result.files))
    return result


def _removing(remove: Any) -> list[str]:
    try:
        return remove()
    except OSError as exc:
        log.warning("retention: could not remove stored data: %s", exc)
        return []
