"""The request body of ``POST /v1/fine_tuning/jobs``: OpenAI's fields around the one job contract.

``method.type = "privtune"`` carries the split-training configuration (``client_sdk.jobspec.
PrivtuneMethod``, the same model the SDK builds and the worker parses); ``"supervised"`` (with a
``training_file`` holding privatized data) is the upload mode. Bounds that depend on the server's
settings (batch size, tokens) and on the model (split layer) are checked in ``api.job_spec``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from client_sdk.jobspec import LegacyHyperparameters, PrivtuneMethod


class SupervisedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: LegacyHyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["privtune", "supervised"]
    privtune: PrivtuneMethod | None = None
    supervised: SupervisedConfig | None = None


class JobCreate(BaseModel):
    """What a client may send to create a job (the OpenAI fields plus ``method.privtune``)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    training_file: str | None = Field(None, max_length=64)
    validation_file: str | None = Field(None, max_length=64)
    method: Method | None = None
    hyperparameters: LegacyHyperparameters | None = None
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, Any] | None = None
    integrations: list[dict[str, Any]] | None = None
