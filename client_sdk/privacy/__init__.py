"""Privacy mechanisms of the PrivTune method (docs: method.md sections 2-6).

Mechanisms are registered by name (``MECHANISMS``) with frozen, validated config dataclasses;
every ``perturb`` takes its random generator as an argument::

    from client_sdk.privacy import get_mechanism, prepare_state, PerturbContext

    mech = get_mechanism("dchi", eta=20.0, metric="l1")
    state = prepare_state(mech.config, train_hidden=sample)            # clip norm C, Delta, ...
    noisy = mech.perturb(hidden, mask, PerturbContext(state=state), generator=torch.Generator().manual_seed(0))

``client_sdk.privatizer.Privatizer`` wires these to a bottom model and tokenizer.

Torch-free parts (the gateway imports them): ``config`` (the config dataclasses), ``errors`` and
``table`` (names, flags, config classes). They are imported eagerly; the torch modules load on the
first access to one of their names.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import (
    DChiConfig,
    DChiImportanceConfig,
    GaussianConfig,
    MechanismConfig,
    NoneConfig,
    Opt3Config,
    Opt3ImportanceConfig,
    PrivTuneConfig,
)
from .errors import (
    InvalidChoiceError,
    NeighbourCacheError,
    PrivacyConfigError,
    PrivacyError,
    PrivacyStateError,
    UnknownMechanismError,
    UnknownParameterError,
)
from .table import MECHANISMS, config_from_dict, get_config

# public name -> module that defines it (imported on first access: these need torch)
_LAZY = {
    **dict.fromkeys(
        ("clip_by_norm", "dchi_privacy_statement", "sample_gaussian", "sample_l1", "sample_l2", "secure_generator"),
        "client_sdk.privacy.dchi",
    ),
    **dict.fromkeys(
        (
            "classification_importance",
            "generation_importance",
            "generation_threshold",
            "importance_to_scale",
            "top_fraction_threshold",
        ),
        "client_sdk.privacy.importance",
    ),  # fmt: skip
    "Mechanism": "client_sdk.privacy.mechanisms",
    "PerturbContext": "client_sdk.privacy.mechanisms",
    "NeighbourIndex": "client_sdk.privacy.neighbours",
    "cosine_knn": "client_sdk.privacy.neighbours",
    "exact_hop_sets": "client_sdk.privacy.neighbours",
    "opt3_delta": "client_sdk.privacy.opt3",
    "similarity": "client_sdk.privacy.opt3",
    "get_mechanism": "client_sdk.privacy.registry",
    "mechanism_class": "client_sdk.privacy.registry",
    "mechanism_from_config": "client_sdk.privacy.registry",
    "PreparedState": "client_sdk.privacy.state",
    "prepare_state": "client_sdk.privacy.state",
    "save_state": "client_sdk.privacy.state",
    "load_state": "client_sdk.privacy.state",
}

__all__ = [
    "MECHANISMS",
    "DChiConfig",
    "DChiImportanceConfig",
    "GaussianConfig",
    "InvalidChoiceError",
    "MechanismConfig",
    "NeighbourCacheError",
    "NoneConfig",
    "Opt3Config",
    "Opt3ImportanceConfig",
    "PrivTuneConfig",
    "PrivacyConfigError",
    "PrivacyError",
    "PrivacyStateError",
    "UnknownMechanismError",
    "UnknownParameterError",
    "config_from_dict",
    "get_config",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'client_sdk.privacy' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
