"""The job contract: ``method.privtune`` as one typed model, built by the SDK, validated by the gateway,
parsed by the worker (torch-free; pydantic only).

    spec = PrivtuneMethod(task="classification", num_labels=2, total_steps=90,
                          privacy=DeclaredPrivacy.from_config(PrivTuneConfig(eta=10)))
    body = {"model": "minilm-l6", "method": {"type": "privtune", "privtune": spec.model_dump(mode="json")}}

Bounds that hold for every server are checked here; bounds of one server (its largest batch and
sequence length) and of one model (its split layers, its positions) are checked against
:class:`ServerLimits` by :func:`check_limits`, which the gateway calls with its settings and the SDK
calls with the limits the gateway publishes on the model object, before any local work starts.

An invalid value raises ``pydantic.ValidationError``; a declared mechanism parameter is validated by
the mechanism's own config dataclass and raises ``PrivacyConfigError`` naming the parameter
(``.parameter``), which pydantic keeps as the error's cause.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from client_sdk.privacy.config import MechanismConfig
from client_sdk.privacy.errors import PrivacyConfigError
from client_sdk.privacy.table import NOISE_MECHANISMS, config_from_dict, mechanism_info
from client_sdk.protocol import TASKS, StepShape

__all__ = [
    "DEFAULT_LEARNING_RATE",
    "TASKS",
    "DeclaredPrivacy",
    "FieldError",
    "JobSpecError",
    "LegacyHyperparameters",
    "LoraSpec",
    "OptimizerSpec",
    "PrivtuneMethod",
    "ServerLimits",
    "UnknownKeyError",
    "check_limits",
    "error_param",
    "step_shape",
    "unknown_key_message",
]

DEFAULT_LEARNING_RATE = 5e-4
Task = Literal["classification", "generation"]  # client_sdk.protocol.TASKS
P = "method.privtune"


class FieldError(ValueError):
    """A model-level check that is about one field: ``field`` names it (so the error's ``param`` does)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class UnknownKeyError(FieldError):
    """A key the spec does not define; the message lists the valid ones. ``field`` names the key."""

    def __init__(self, key: str, known: tuple[str, ...]) -> None:
        super().__init__(key, unknown_key_message(key, known))
        self.known = known


class JobSpecError(ValueError):
    """A job spec that a server's limits or a model's shape refuse; ``param`` names the field."""

    def __init__(self, message: str, param: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def unknown_key_message(key: str, known: tuple[str, ...]) -> str:
    """``unknown key 'epochs'; valid keys: batch_size, ... (did you mean 'n_epochs'?)``."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}; valid keys: {', '.join(known)}{hint}"


def error_param(error: dict[str, Any]) -> str | None:
    """The dotted field a pydantic error (one of ``ValidationError.errors()``) is about, its cause's
    field included (an unknown key, a mechanism parameter): ``method.privtune.privacy.eta``."""
    loc = [str(part) for part in error.get("loc", ())]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        loc.append(cause.field)
    elif isinstance(cause, PrivacyConfigError):
        loc.append(cause.parameter)
    return ".".join(loc) or None


class _Spec(BaseModel):
    """Strict: unknown keys are refused with the list of valid keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = tuple(cls.model_fields)
            for key in data:
                if key not in known:
                    raise UnknownKeyError(str(key), known)
        return data


class LoraSpec(_Spec):
    """LoRA on the server's part of the model."""

    r: int = Field(8, ge=1, le=256, description="LoRA rank.")
    alpha: int = Field(16, ge=1, le=4096, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, le=0.5, description="Dropout on the LoRA path.")
    target_modules: list[str] | None = Field(
        None, min_length=1, max_length=64, description="Module names to adapt (default: the family's q/v)."
    )


class OptimizerSpec(_Spec):
    """AdamW with a linear schedule (and optional warm-up), on the server's LoRA weights."""

    learning_rate: float = Field(DEFAULT_LEARNING_RATE, ge=1e-6, le=1.0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, le=10_000_000, description="Linear warm-up steps.")
    max_grad_norm: float = Field(1.0, gt=0.0, le=1e4, description="Gradient clipping norm.")


class DeclaredPrivacy(BaseModel):
    """What the device declares about its mechanism: the mechanism's full config (validated by its own
    config dataclass, so an unknown or out-of-range parameter is refused), plus what the device
    recorded (``record``: the honest privacy statement; ``audit``: its eta search, if any)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    mechanism: str = Field("none", description="A registered mechanism name (client_sdk.privacy.table).")
    record: dict[str, Any] | None = Field(None, description="The device's privacy record (fitted constants).")
    audit: dict[str, Any] | None = Field(None, description="The device's eta search for a target ASR.")

    @model_serializer(mode="wrap")
    def _drop_empty(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items() if not (k in ("record", "audit") and v is None)}

    @model_validator(mode="after")
    def _validate_config(self) -> DeclaredPrivacy:
        self.config()  # PrivacyConfigError (a ValueError) names the parameter
        return self

    def params(self) -> dict[str, Any]:
        """The declared mechanism parameters (every key but mechanism, record and audit)."""
        return dict(self.model_extra or {})

    def config(self) -> MechanismConfig:
        """The mechanism's validated config from the declared parameters (defaults for the rest)."""
        mechanism_info(self.mechanism)
        return config_from_dict({"mechanism": self.mechanism, **self.params()})

    @property
    def eta(self) -> float | None:
        """The declared eta, if the mechanism has one."""
        return getattr(self.config(), "eta", None)

    @classmethod
    def from_config(
        cls, config: MechanismConfig, record: dict[str, Any] | None = None, audit: dict[str, Any] | None = None
    ) -> DeclaredPrivacy:
        """The declaration of a config object (every field, so the server records all of it)."""
        return cls.model_validate({**config.to_dict(), "record": record, "audit": audit})


class PrivtuneMethod(_Spec):
    """``method.privtune``: task, labels, split, LoRA, optimiser, declared privacy and step bounds."""

    task: Task = "classification"
    num_labels: int | None = Field(None, ge=2, le=100_000, description="Classes (classification only).")
    split_layer: int = Field(3, ge=1, le=1024, description="Blocks that stay on the device.")
    max_tokens: int = Field(64, ge=1, le=1_000_000, description="Longest sequence a step may carry.")
    batch_size: int = Field(32, ge=1, le=1_000_000, description="Largest batch a step may carry.")
    n_epochs: int = Field(1, ge=1, le=50, description="Passes over the training data.")
    total_steps: int | None = Field(None, ge=1, le=10_000_000, description="Steps the device will send.")
    lora: LoraSpec = Field(default_factory=LoraSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    privacy: DeclaredPrivacy = Field(default_factory=DeclaredPrivacy)
    noise_aware: bool | None = Field(
        None,
        description="Top model weights each token by its precision estimated from its norm (attention keys, "
        "pool). None: on for classification when privacy.mechanism adds noise.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> PrivtuneMethod:
        if self.noise_aware and self.task == "generation":
            raise FieldError("noise_aware", "noise_aware applies to classification only")
        return self

    def check_complete(self, *, interactive: bool) -> None:
        """Raise :class:`JobSpecError` unless the spec can train: a classification job names its
        ``num_labels``; an interactive job (the device sends the steps) its ``total_steps``."""
        if self.task == "classification" and self.num_labels is None:
            raise JobSpecError("A classification job needs num_labels (>= 2).", f"{P}.num_labels")
        if interactive and self.total_steps is None:
            raise JobSpecError(
                "total_steps (the number of steps the device will send) is required.", f"{P}.total_steps"
            )

    def resolved(self) -> PrivtuneMethod:
        """The same spec with ``noise_aware`` decided (None -> on for noisy classification)."""
        if self.noise_aware is not None:
            return self
        aware = self.task == "classification" and self.privacy.mechanism in NOISE_MECHANISMS
        return self.model_copy(update={"noise_aware": aware})

    @classmethod
    def from_job(cls, job: dict[str, Any]) -> PrivtuneMethod:
        """The spec stored in a job row (``job["method"]["privtune"]``)."""
        return cls.model_validate((job.get("method") or {}).get("privtune") or {})


class LegacyHyperparameters(_Spec):
    """OpenAI's ``hyperparameters`` (legacy; each ``"auto"`` or a number), mirrored into ``method.privtune``."""

    batch_size: Literal["auto"] | int = Field("auto", description="'auto' or 1..1048576")
    learning_rate_multiplier: Literal["auto"] | float = Field("auto", description="'auto' or 1e-6..1000")
    n_epochs: Literal["auto"] | int = Field("auto", description="'auto' or 1..50")

    @model_validator(mode="after")
    def _bounds(self) -> LegacyHyperparameters:
        for name, low, high in (
            ("batch_size", 1, 1 << 20),
            ("learning_rate_multiplier", 1e-6, 1000.0),
            ("n_epochs", 1, 50),
        ):
            value = getattr(self, name)
            if value != "auto" and not low <= value <= high:
                raise FieldError(name, f"{name} must be 'auto' or between {low:g} and {high:g}, got {value!r}")
        return self

    def merged_into(self, spec: PrivtuneMethod) -> PrivtuneMethod:
        """``spec`` with these values where it did not set its own explicitly."""
        update: dict[str, Any] = {}
        if self.batch_size != "auto" and "batch_size" not in spec.model_fields_set:
            update["batch_size"] = self.batch_size
        if self.n_epochs != "auto" and "n_epochs" not in spec.model_fields_set:
            update["n_epochs"] = self.n_epochs
        if self.learning_rate_multiplier != "auto" and "learning_rate" not in spec.optimizer.model_fields_set:
            rate = DEFAULT_LEARNING_RATE * self.learning_rate_multiplier
            update["optimizer"] = spec.optimizer.model_copy(update={"learning_rate": rate})
        return PrivtuneMethod.model_validate({**spec.model_dump(exclude_unset=True), **_dumped(update)})

    @staticmethod
    def of(spec: PrivtuneMethod) -> dict[str, Any]:
        """The OpenAI ``hyperparameters`` object that mirrors ``spec``."""
        return {
            "batch_size": spec.batch_size,
            "learning_rate_multiplier": spec.optimizer.learning_rate / DEFAULT_LEARNING_RATE,
            "n_epochs": spec.n_epochs,
        }


def _dumped(update: dict[str, Any]) -> dict[str, Any]:
    return {k: v.model_dump(exclude_unset=True) if isinstance(v, BaseModel) else v for k, v in update.items()}


@dataclass(frozen=True)
class ServerLimits:
    """What one server accepts for one model: published by the gateway on the model object."""

    max_batch_size: int
    max_tokens: int
    num_layers: int
    max_positions: int

    def to_dict(self) -> dict[str, int]:
        return {
            "max_batch_size": self.max_batch_size,
            "max_tokens": self.max_tokens,
            "num_layers": self.num_layers,
            "max_positions": self.max_positions,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerLimits:
        return cls(**{k: int(data[k]) for k in ("max_batch_size", "max_tokens", "num_layers", "max_positions")})


def check_limits(spec: PrivtuneMethod, limits: ServerLimits) -> None:
    """Raise :class:`JobSpecError` (``param`` = the field) if ``spec`` exceeds ``limits``."""
    if spec.batch_size > limits.max_batch_size:
        raise JobSpecError(f"batch_size must be <= {limits.max_batch_size}, got {spec.batch_size}.", f"{P}.batch_size")
    top = min(limits.max_tokens, limits.max_positions)
    if spec.max_tokens > top:
        raise JobSpecError(f"max_tokens must be <= {top}, got {spec.max_tokens}.", f"{P}.max_tokens")
    if not 1 <= spec.split_layer < limits.num_layers:
        raise JobSpecError(
            f"split_layer must satisfy 1 <= split_layer <= {limits.num_layers - 1} ({limits.num_layers} layers), "
            f"got {spec.split_layer}.",
            f"{P}.split_layer",
            code="invalid_split_layer",
        )


def step_shape(spec: PrivtuneMethod, hidden_size: int) -> StepShape:
    """What a job accepts per step (gateway, worker and evaluation build it here, nowhere else): the
    model's hidden size, the task and labels, at most ``batch_size`` rows of at most ``max_tokens``."""
    return StepShape(
        hidden_size=int(hidden_size),
        task=spec.task,
        num_labels=spec.num_labels,
        max_batch_size=spec.batch_size,
        max_tokens=spec.max_tokens,
    )
