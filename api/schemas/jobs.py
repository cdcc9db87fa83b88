"""The request body of ``POST /v1/fine_tuning/jobs``.

``method.type = "privtune"`` carries the split-training configuration; ``"supervised"`` (with a
``training_file`` holding privatized data) is the upload mode. Bounds that depend on the server's
settings (batch size, tokens) and on the model (split layer) are checked in ``api.job_spec``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MECHANISMS = ("none", "gaussian", "dchi", "dchi_importance", "opt3", "opt3_importance", "privtune")
DEFAULT_LEARNING_RATE = 5e-4


def _auto_or_number(value: Any, kind: type, low: float, high: float) -> Any:
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and value != int(value)):
        raise ValueError(f"must be 'auto' or a{'n integer' if kind is int else ' number'}")
    if not low <= value <= high:
        raise ValueError(f"must be between {low:g} and {high:g}")
    return kind(value)


class Hyperparameters(BaseModel):
    """OpenAI's (legacy) hyperparameters; each is ``"auto"`` or a number."""

    model_config = ConfigDict(extra="forbid")

    batch_size: Any = "auto"
    learning_rate_multiplier: Any = "auto"
    n_epochs: Any = "auto"

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, v: Any) -> Any:
        return _auto_or_number(v, int, 1, 1 << 20)

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _lr(cls, v: Any) -> Any:
        return _auto_or_number(v, float, 1e-6, 1000.0)

    @field_validator("n_epochs")
    @classmethod
    def _epochs(cls, v: Any) -> Any:
        return _auto_or_number(v, int, 1, 50)


class LoraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, ge=1, le=256, description="LoRA rank.")
    alpha: int = Field(16, ge=1, le=4096, description="LoRA scaling numerator.")
    dropout: float = Field(0.0, ge=0.0, le=0.5, description="Dropout on the LoRA path.")
    target_modules: list[str] | None = Field(None, min_length=1, max_length=64, description="Module names to adapt.")


class OptimizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(DEFAULT_LEARNING_RATE, ge=1e-6, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    warmup_steps: int = Field(0, ge=0, le=10_000_000)
    max_grad_norm: float = Field(1.0, gt=0.0, le=1e4)


class PrivacyConfig(BaseModel):
    """The mechanism the device applies; further declared parameters are recorded as given."""

    model_config = ConfigDict(extra="allow")

    mechanism: Literal["none", "gaussian", "dchi", "dchi_importance", "opt3", "opt3_importance", "privtune"] = "none"
    eta: float | None = Field(None, gt=0.0, description="Privacy parameter (larger = less noise).")
    metric: str | None = Field(None, max_length=64, description="Distance the mechanism uses (e.g. l2).")


class PrivtuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Literal["classification", "generation"] = "classification"
    num_labels: int | None = Field(None, ge=2, le=100_000, description="Classes (classification only).")
    split_layer: int = Field(3, ge=1, le=1024, description="Layers that stay on the device.")
    max_tokens: int = Field(64, ge=1, description="Longest sequence a step may carry.")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    batch_size: int = Field(32, ge=1, description="Largest batch a step may carry.")
    n_epochs: int = Field(1, ge=1, le=50)
    total_steps: int | None = Field(None, ge=1, le=10_000_000, description="Steps the device will send.")
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    noise_aware: bool | None = Field(
        None,
        description="Top model weights each token by its precision estimated from its norm (attention keys, "
        "pool). None: on for classification when privacy.mechanism adds noise.",
    )


class SupervisedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["privtune", "supervised"]
    privtune: PrivtuneConfig | None = None
    supervised: SupervisedConfig | None = None


class JobCreate(BaseModel):
    """What a client may send to create a job (the OpenAI fields plus ``method.privtune``)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    training_file: str | None = Field(None, max_length=64)
    validation_file: str | None = Field(None, max_length=64)
    method: Method | None = None
    hyperparameters: Hyperparameters | None = None
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, Any] | None = None
    integrations: list[dict[str, Any]] | None = None
