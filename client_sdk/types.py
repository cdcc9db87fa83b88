"""Typed objects the gateway returns: one small pydantic model per object, OpenAI-shaped.

Every model keeps fields it does not know (``extra="allow"``), so a newer gateway never breaks an
older SDK; unknown fields are reachable as attributes and through ``model_dump()``. Lists of them
come as pages (``client_sdk.pagination``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "JOB_STATUSES",
    "TERMINAL_STATUSES",
    "BottomManifest",
    "FileDeleted",
    "FileObject",
    "FineTuningJob",
    "FineTuningJobCheckpoint",
    "FineTuningJobEvent",
    "JobError",
    "JobHyperparameters",
    "Method",
    "Model",
]

JOB_STATUSES = ("validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class _Object(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, protected_namespaces=())


class JobHyperparameters(_Object):
    """The hyperparameters a job reports; each is a number or ``"auto"``. (The device-side settings
    one passes to ``FineTuneJob.create`` are ``client_sdk.jobs.Hyperparameters``.)"""

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
    hyperparameters: JobHyperparameters | None = None
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
    """A model the gateway serves (base models and fine-tuned ones). ``privtune``, when the gateway
    sends it, holds PrivTune's facts about the model (e.g. its limits: split layers, max tokens)."""

    id: str
    object: str = "model"
    created: int
    owned_by: str
    privtune: dict[str, Any] | None = None


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
