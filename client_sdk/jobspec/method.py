"""``method.privtune``: the typed job contract (task, labels, split, LoRA, optimiser, declared privacy,
step bounds). Strict: an unknown key is refused with the list of valid keys."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from client_sdk.privacy.config import MechanismConfig
from client_sdk.privacy.table import NOISE_MECHANISMS, config_from_dict, mechanism_info

from .errors import FieldError, JobSpecError, UnknownKeyError

__all__ = [
    "DEFAULT_LEARNING_RATE",
    "DEFAULT_TAIL_LAYERS",
    "P",
    "DeclaredPrivacy",
    "LoraSpec",
    "OptimizerSpec",
    "PrivtuneMethod",
    "StrictModel",
]

DEFAULT_LEARNING_RATE = 5e-4
#: generation: blocks at the end of the model that the device keeps (its private tail). Measured
#: (docs/RESULTS.md, "Generation: answer tokens in the returned gradient"): a tail of 0, 1 or 2 blocks
#: does NOT hide the answer tokens from a server that simulates the public base tail (100% recovered);
#: 2 is kept for utility under gradient noise (the tail trains on the exact gradient), not as privacy.
DEFAULT_TAIL_LAYERS = 2
Task = Literal["classification", "generation"]  # client_sdk.protocol.TASKS
P = "method.privtune"


class StrictModel(BaseModel):
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


class LoraSpec(StrictModel):
    """LoRA on the server's part of the model."""

    r: int = Field(8, ge=1, le=256, description="LoRA rank.")
    alpha: int = Field(16, ge=1, le=4096, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, le=0.5, description="Dropout on the LoRA path.")
    target_modules: list[str] | None = Field(
        None, min_length=1, max_length=64, description="Module names to adapt (default: the family's q/v)."
    )


class OptimizerSpec(StrictModel):
    """AdamW with a linear schedule (and optional warm-up), on the server's LoRA weights."""

    learning_rate: float = Field(DEFAULT_LEARNING_RATE, ge=1e-6, le=1.0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay.")
    warmup_steps: int = Field(0, ge=0, le=10_000_000, description="Linear warm-up steps.")
    max_grad_norm: float = Field(1.0, gt=0.0, le=1e4, description="Gradient clipping norm.")

    def lr_factor(self, step: int, total_steps: int) -> float:
        """The schedule's multiplier of ``learning_rate`` at optimizer step ``step`` (0-based): linear
        warm-up over ``warmup_steps``, then linear decay to 0 at ``total_steps`` (server and device alike)."""
        warm, total = self.warmup_steps, max(total_steps, 1)
        if warm and step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(total - warm, 1))


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
        """The declaration of a config object (every field, so the server records all of it, except the
        user's ``sensitive_terms``: naming them would tell the server what they are; they stay on the device)."""
        declared = config.to_dict()
        if declared.get("sensitive_terms"):
            declared["sensitive_terms"] = []
        return cls.model_validate({**declared, "record": record, "audit": audit})


class PrivtuneMethod(StrictModel):
    """``method.privtune``: task, labels, split, LoRA, optimiser, declared privacy and step bounds."""

    task: Task = "classification"
    num_labels: int | None = Field(None, ge=2, le=100_000, description="Classes (classification only).")
    split_layer: int = Field(3, ge=1, le=1024, description="Blocks that stay on the device.")
    tail_layers: int | None = Field(
        None,
        ge=0,
        le=1024,
        description="Generation: the last blocks, kept on the device with the final norm and LM head (its "
        f"private tail). None: {DEFAULT_TAIL_LAYERS}.",
    )
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
        if self.tail_layers is not None and self.task != "generation":
            raise FieldError("tail_layers", "tail_layers applies to task='generation' only")
        return self

    @property
    def device_tail(self) -> int:
        """Blocks the device runs after the server's (0 for classification, whose end is a head)."""
        if self.task != "generation":
            return 0
        return DEFAULT_TAIL_LAYERS if self.tail_layers is None else self.tail_layers

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
        """The same spec with the defaults decided: ``noise_aware`` (on for noisy classification) and,
        for generation, ``tail_layers``."""
        update: dict[str, Any] = {}
        if self.noise_aware is None:
            update["noise_aware"] = self.task == "classification" and self.privacy.mechanism in NOISE_MECHANISMS
        if self.task == "generation" and self.tail_layers is None:
            update["tail_layers"] = DEFAULT_TAIL_LAYERS
        return self.model_copy(update=update) if update else self

    @classmethod
    def from_job(cls, job: dict[str, Any]) -> PrivtuneMethod:
        """The spec stored in a job row (``job["method"]["privtune"]``)."""
        return cls.model_validate((job.get("method") or {}).get("privtune") or {})
