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

from client_sdk.protocol import TASKS

from .errors import FieldError, JobSpecError, UnknownKeyError, error_param, unknown_key_message
from .legacy import LegacyHyperparameters
from .limits import ServerLimits, check_limits, step_shape
from .method import DEFAULT_LEARNING_RATE, DeclaredPrivacy, LoraSpec, OptimizerSpec, PrivtuneMethod

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
