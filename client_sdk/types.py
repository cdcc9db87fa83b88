"""Typed objects the gateway returns: one small pydantic model per object, OpenAI-shaped.

Every model keeps fields it does not know (``extra="allow"``), so a newer gateway never breaks an
older SDK; unknown fields are reachable as attributes and through ``model_dump()``.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "JOB_STATUSES",
    "TERMINAL_STATUSES",
    "BottomManifest",
    "CursorPage",
    "FileDeleted",
    "FileObject",
    "FineTuningJob",
    "FineTuningJobCheckpoint",
    "FineTuningJobEvent",
    "Hyperparameters",
    "JobError",
    "Method",
    "Model",
]

JOB_STATUSES = ("validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class _Object(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, protected_namespaces=())


class Hyperparameters(_Object):
    """Training hyperparameters; each is a number or ``"auto"``."""

    batch_size: int | Literal["auto"] | None = None
    learning_rate_multiplier: float | Literal["auto"] | None = None
    n_epochs: int | Literal["auto"] | None = None


class Method(_Object):
    """The fine-tuning method: ``type`` names it and the key of the same name holds its settings
    (e.g. ``{"type": "privtune", "privtune": {...}}``; read them as ``method.privtune``)."""

    type: str


class JobError(_Object):
    """Why a job failed."""

    code: str | None = None
    message: str
    param: str | None = None


class FineTuningJob(_Object):
    """A fine-tuning job (``object == "fine_tuning.job"``) plus PrivTune's progress counters."""

    id: str
    object: str = "fine_tuning.job"
    created_at: int
    finished_at: int | None = None
    model: str
    fine_tuned_model: str | None = None
    organization_id: str | None = None
    status: str  # one of JOB_STATUSES
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    training_file: str | None = None
    validation_file: str | None = None
    result_files: list[str] = Field(default_factory=list)
    trained_tokens: int | None = None
    error: JobError | None = None
    seed: int | None = None
    estimated_finish: int | None = None
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None = None
    steps_completed: int | None = None
    total_steps: int | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the job has succeeded, failed or been cancelled; it will not change again."""
        return self.status in TERMINAL_STATUSES


class FineTuningJobEvent(_Object):
    """One entry of a job's log (``type == "metrics"`` events carry ``step``, ``train_loss`` ... in ``data``)."""

    id: str
    object: str = "fine_tuning.job.event"
    created_at: int
    level: str = "info"  # info | warn | error
    message: str
    type: str | None = None  # message | metrics
    data: dict[str, Any] | None = None


class FineTuningJobCheckpoint(_Object):
    """A checkpoint saved during training."""

    id: str
    object: str = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any] = Field(default_factory=dict)


class FileObject(_Object):
    """An uploaded file."""

    id: str
    object: str = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str | None = None
    expires_at: int | None = None


class FileDeleted(_Object):
    """The answer to deleting a file."""

    id: str
    object: str = "file"
    deleted: bool


class Model(_Object):
    """A model the gateway serves (base models and fine-tuned ones)."""

    id: str
    object: str = "model"
    created: int
    owned_by: str


class BottomManifest(_Object):
    """What a bottom-model artifact holds: ``files`` maps each file name to its sha256 and ``digest``
    is the sha256 over the sorted, concatenated file hashes (see ``client_sdk.models.artifact``)."""

    model: str
    family: str
    split_layer: int
    hidden_size: int
    vocab_size: int
    num_layers: int
    files: dict[str, str]
    digest: str


T = TypeVar("T", bound=BaseModel)


class CursorPage(BaseModel, Generic[T]):
    """One page of a list, newest first. Fetch the next page with ``after=page.next_after``."""

    model_config = ConfigDict(extra="allow")

    object: str = "list"
    data: list[T]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None

    @property
    def next_after(self) -> str | None:
        """The ``after`` cursor of the next page, or None when this is the last page."""
        if not self.has_more or not self.data:
            return None
        return getattr(self.data[-1], "id", None)
