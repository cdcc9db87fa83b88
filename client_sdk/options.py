"""What a data owner chooses for a job: the privacy mechanism (:class:`PrivacyConfig`) and the training
hyperparameters (:class:`Hyperparameters`), both checked the moment they are made, and turned into
the job contract (``client_sdk.jobspec.PrivtuneMethod``) by :func:`job_spec`, which refuses anything
the contract refuses before any local work starts.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, fields, replace
from typing import Any

from pydantic import ValidationError

from client_sdk.jobspec import DeclaredPrivacy, JobSpecError, PrivtuneMethod, error_param, unknown_key_message
from client_sdk.privacy.config import MechanismConfig
from client_sdk.privacy.table import ETA_MECHANISMS, get_config

__all__ = ["Hyperparameters", "PrivacyConfig", "PrivacyTargetError", "job_spec"]


class PrivacyTargetError(ValueError):
    """No eta on the search grid met ``PrivacyConfig.target_asr`` on the user's data."""


@dataclass(frozen=True)
class PrivacyConfig:
    """The mechanism the device applies and its parameters (see ``client_sdk.privacy``).

    ``seed=None`` (production) seeds the noise generator from the operating system's entropy;
    a fixed seed makes runs reproducible for experiments. ``target_asr`` (e.g. 0.10) makes the SDK
    search eta on the user's own data before training: the largest eta (least noise) whose on-device
    audit (nearest-prototype and learned inversion attacks, ``client_sdk.audit``) stays at or below the
    target; the chosen eta and the measured ASR are recorded in the job's metadata and privacy record.
    ``label_epsilon`` (classification): label differential privacy by randomised response
    (``client_sdk.privacy.label_dp``): each training label is randomised once on the device, with this
    epsilon, before anything is fitted or trained on it. Without it the labels are not protected: the
    returned gradients separate the texts by label. ``sensitive_terms`` (a mechanism parameter) stay on
    the device: the declaration sent to the server omits them.
    Unknown mechanisms and out-of-range parameters raise ``PrivacyConfigError`` here, at once.
    """

    mechanism: str = "privtune"
    eta: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    target_asr: float | None = None
    label_epsilon: float | None = None

    def __post_init__(self) -> None:
        if self.label_epsilon is not None:
            value = self.label_epsilon
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
                raise ValueError(f"label_epsilon must be a positive finite number or None, got {value!r}")
        if self.target_asr is not None:
            if not 0 < self.target_asr < 1:
                raise ValueError(f"target_asr must be in (0, 1), got {self.target_asr}")
            if self.mechanism not in ETA_MECHANISMS:
                raise ValueError(
                    f"target_asr searches eta, so the mechanism must be one of {ETA_MECHANISMS}, got {self.mechanism!r}"
                )
        self.config()  # validates the mechanism and its parameters now

    def config(self) -> MechanismConfig:
        """The mechanism's validated config (torch-free)."""
        params = dict(self.params)
        if self.eta is not None:
            params["eta"] = self.eta
        return get_config(self.mechanism, **params)

    def build(self) -> Any:
        """The mechanism object (imports torch)."""
        from client_sdk.privacy import mechanism_from_config

        return mechanism_from_config(self.config())

    def generator(self) -> Any:
        """The noise generator: seeded from ``seed``, else from the OS entropy source."""
        import torch

        return torch.Generator().manual_seed(self.seed if self.seed is not None else secrets.randbits(63))

    def declared(self) -> dict[str, Any]:
        """The mechanism's full, validated configuration as the device keeps it (its own records; what the
        server receives is ``jobspec.DeclaredPrivacy.from_config``, which leaves out the sensitive terms)."""
        return self.config().to_dict()


AUTO = "auto"
#: "auto" epochs give at least this many optimizer steps (a head trained from scratch needs steps, not
#: passes), between MIN_AUTO_EPOCHS and MAX_AUTO_EPOCHS passes
AUTO_TARGET_STEPS, MIN_AUTO_EPOCHS, MAX_AUTO_EPOCHS = 100, 3, 20
#: "auto" learning rate per task (LoRA on both sides; a classification head from scratch)
AUTO_LEARNING_RATE = {"classification": 2e-3, "generation": 1e-3}


@dataclass(frozen=True)
class Hyperparameters:
    """Training settings of a job (the device's batch size and epochs; the optimiser and LoRA of both
    sides). Like OpenAI's, ``n_epochs`` and ``learning_rate`` default to ``"auto"``: chosen from the
    dataset's size and the task by :meth:`resolved` (see ``AUTO_*``)."""

    batch_size: int = 32
    n_epochs: int | str = AUTO
    learning_rate: float | str = AUTO
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        """Refuse values of the wrong type at once (the step count is computed from them); the
        ranges are the job contract's, checked by :func:`job_spec`."""
        for f in fields(self):
            value = getattr(self, f.name)
            auto_allowed = "str" in str(f.type)
            if value == AUTO and auto_allowed:
                continue
            integer = f.type.startswith("int")
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or (integer and not isinstance(value, int)):
                kind = "an integer" if integer else "a number"
                auto = ' or "auto"' if auto_allowed else ""
                raise JobSpecError(
                    f"hyperparameters.{f.name} must be {kind}{auto}, got {value!r}", f"hyperparameters.{f.name}"
                )
            if not integer:
                object.__setattr__(self, f.name, float(value))

    def resolved(self, n_train: int, task: str) -> Hyperparameters:
        """The same settings with every ``"auto"`` decided for ``n_train`` training examples of ``task``."""
        update: dict[str, Any] = {}
        if self.n_epochs == AUTO:
            per_epoch = max(-(-n_train // max(self.batch_size, 1)), 1)
            update["n_epochs"] = min(max(-(-AUTO_TARGET_STEPS // per_epoch), MIN_AUTO_EPOCHS), MAX_AUTO_EPOCHS)
        if self.learning_rate == AUTO:
            update["learning_rate"] = AUTO_LEARNING_RATE.get(task, AUTO_LEARNING_RATE["classification"])
        return replace(self, **update)

    @classmethod
    def coerce(cls, value: Hyperparameters | dict[str, Any] | None) -> Hyperparameters:
        """``value`` as Hyperparameters; an unknown key raises ``JobSpecError`` listing the valid ones."""
        if value is None or isinstance(value, Hyperparameters):
            return value or cls()
        if not isinstance(value, dict):
            raise JobSpecError(
                f"hyperparameters must be a Hyperparameters or a dict, got {type(value).__name__}", "hyperparameters"
            )
        known = tuple(f.name for f in fields(cls))
        for key in value:
            if key not in known:
                raise JobSpecError(unknown_key_message(str(key), known), f"hyperparameters.{key}")
        return cls(**value)


#: spec field (dotted, under method.privtune) -> the Hyperparameters field the user set
_HP_FIELDS = {
    "batch_size": "batch_size",
    "n_epochs": "n_epochs",
    "optimizer.learning_rate": "learning_rate",
    "optimizer.weight_decay": "weight_decay",
    "optimizer.warmup_steps": "warmup_steps",
    "lora.r": "lora_r",
    "lora.alpha": "lora_alpha",
    "lora.dropout": "lora_dropout",
}


def job_spec(
    hp: Hyperparameters,
    privacy: PrivacyConfig,
    *,
    num_labels: int | None,
    split_layer: int,
    max_length: int,
    total_steps: int,
    task: str = "classification",
    tail_layers: int | None = None,
    record: dict[str, Any] | None = None,
    audit: dict[str, Any] | None = None,
) -> PrivtuneMethod:
    """The job contract for these choices; raises :class:`JobSpecError` naming the user's option
    (``hyperparameters.batch_size``, ``split_layer``, ``max_length`` ...) if the contract refuses it.
    ``hp`` must be resolved (:meth:`Hyperparameters.resolved`: no ``"auto"`` left)."""
    if AUTO in (hp.n_epochs, hp.learning_rate):
        raise ValueError("resolve the 'auto' hyperparameters first: Hyperparameters.resolved(n_train, task)")
    data = {
        "task": task,
        "num_labels": num_labels,
        "split_layer": split_layer,
        "tail_layers": tail_layers,
        "max_tokens": max_length,
        "batch_size": hp.batch_size,
        "n_epochs": hp.n_epochs,
        "total_steps": total_steps,
        "lora": {"r": hp.lora_r, "alpha": hp.lora_alpha, "dropout": hp.lora_dropout},
        "optimizer": {
            "learning_rate": hp.learning_rate,
            "weight_decay": hp.weight_decay,
            "warmup_steps": hp.warmup_steps,
        },
        "privacy": DeclaredPrivacy.from_config(privacy.config(), record=record, audit=audit),
    }
    try:
        return PrivtuneMethod.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = (error_param(first) or "").removeprefix("privtune.")
        name = _HP_FIELDS.get(param)
        option = f"hyperparameters.{name}" if name else {"max_tokens": "max_length"}.get(param, param)
        got = getattr(hp, name) if name else first.get("input")
        message = str(first.get("msg")).removeprefix("Value error, ")
        raise JobSpecError(f"{option}: {message} (got {got!r})", option) from None
