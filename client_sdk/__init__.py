"""PrivTune device SDK.

Runs the provider's bottom model and the PrivTune perturbation on the device and sends only
perturbed representations and loss gradients. Heavy modules (torch, transformers) load lazily, so
``import client_sdk.wire`` stays light enough for the gateway.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_LAZY = {
    "Client": "client_sdk.client",
    "FineTuneJob": "client_sdk.jobs",
    "FineTunedModel": "client_sdk.inference",
    "Hyperparameters": "client_sdk.options",
    "JobSpecError": "client_sdk.jobspec",
    "PrivacyConfig": "client_sdk.options",
    "Privatizer": "client_sdk.privatizer",
    "SyncCursorPage": "client_sdk.pagination",
    "SyncPage": "client_sdk.pagination",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'client_sdk' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
