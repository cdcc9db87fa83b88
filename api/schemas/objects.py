"""OpenAI-shaped response objects, and the functions that build them from repository snapshots."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class JobError(BaseModel):
    code: str | None
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    """``fine_tuning.job`` plus PrivTune progress (``steps_completed``, ``total_steps``)."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None
    organization_id: str
    status: str
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    training_file: str | None
    validation_file: str | None
    result_files: list[str]
    trained_tokens: int | None
    error: JobError | None
    seed: int
    estimated_finish: int | None
    integrations: list[dict[str, Any]] | None
    metadata: dict[str, str] | None
    steps_completed: int
    total_steps: int | None


class JobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None


class JobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any]


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    expires_at: int | None
    status_details: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool


class JobDeleted(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    deleted: bool


class ModelObject(BaseModel):
    """A model; base models also carry ``privtune``: what this server accepts for jobs on them
    (``client_sdk.jobspec.ServerLimits``), so the SDK can refuse a bad job before any local work."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    privtune: dict[str, int | list[str]] | None = None


class ModelList(BaseModel):
    """``/v1/models`` is a plain list (no paging)."""

    object: Literal["list"] = "list"
    data: list[ModelObject]


class ListPage(BaseModel, Generic[T]):
    """A cursor page: newest first; fetch the next one with ``after=last_id`` while ``has_more``."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


def page(items: Sequence[dict[str, Any]], has_more: bool, build: Callable[[dict[str, Any]], dict]) -> dict:
    """The list envelope for repository snapshots ``items``."""
    data = [build(item) for item in items]
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def job_object(job: dict[str, Any]) -> dict[str, Any]:
    """The public JSON of a job snapshot (no lease or internal fields)."""
    return {
        "id": job["id"],
        "object": "fine_tuning.job",
        "created_at": job["created_at"],
        "finished_at": job["finished_at"],
        "model": job["model"],
        "fine_tuned_model": job["fine_tuned_model"],
        "organization_id": job["organization_id"],
        "status": job["status"],
        "hyperparameters": job["hyperparameters"] or {},
        "method": job["method"] or {},
        "training_file": job["training_file"],
        "validation_file": job["validation_file"],
        "result_files": [],
        "trained_tokens": job["trained_tokens"],
        "error": job["error"],
        "seed": job["seed"],
        "estimated_finish": _estimated_finish(job),
        "integrations": None,
        "metadata": job["metadata"],
        "steps_completed": job["steps_completed"],
        "total_steps": job["total_steps"],
    }


def _estimated_finish(job: dict[str, Any]) -> int | None:
    done, total, started = job["steps_completed"], job["total_steps"], job["started_at"]
    if job["status"] != "running" or not (done and total and started) or done >= total:
        return None
    now = time.time()
    return int(now + (now - started) / done * (total - done))


def event_object(event: dict[str, Any]) -> dict[str, Any]:
    """The public JSON of an event snapshot."""
    keys = ("id", "created_at", "level", "message", "type", "data")
    return {"object": "fine_tuning.job.event", **{k: event[k] for k in keys}}


def checkpoint_object(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The public JSON of a checkpoint snapshot (its storage path stays private)."""
    return {
        "id": ckpt["id"],
        "object": "fine_tuning.job.checkpoint",
        "created_at": ckpt["created_at"],
        "fine_tuned_model_checkpoint": ckpt["fine_tuned_model_checkpoint"],
        "fine_tuning_job_id": ckpt["job_id"],
        "step_number": ckpt["step_number"],
        "metrics": ckpt["metrics"] or {},
    }


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    """The public JSON of a file snapshot."""
    keys = ("id", "bytes", "created_at", "filename", "purpose", "status", "expires_at")
    return {"object": "file", **{k: row[k] for k in keys}, "status_details": None}


def model_object(model_id: str, created: int, owned_by: str, limits: dict[str, int] | None = None) -> dict[str, Any]:
    """The public JSON of a model (``limits``: a base model's ``privtune`` limits)."""
    out: dict[str, Any] = {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}
    if limits is not None:
        out["privtune"] = limits
    return out
