"""The device's model runtime: the catalog of base models (torch-free), the bottom model and its
artifact loading. The provider's side (full models, the top, the export) is ``worker.models``.

Only the torch-free ``catalog`` is imported eagerly (the gateway imports this package); the torch
modules load on first access to one of their names.
"""

from __future__ import annotations

import importlib
from typing import Any

from .catalog import (
    BASE_MODELS,
    ModelError,
    ModelInfo,
    SplitLayerError,
    UnknownModelError,
    UnsupportedArchitectureError,
    describe_model,
    validate_split_layer,
)

# public name -> module that defines it (imported on first access)
_LAZY = {
    "ArtifactError": "client_sdk.models.artifact",
    "artifact_digest": "client_sdk.models.artifact",
    "verify_artifact": "client_sdk.models.artifact",
    "BottomModel": "client_sdk.models.bottom",
    "BottomOutput": "client_sdk.models.bottom",
    "load_bottom": "client_sdk.models.load",
    "load_tail": "client_sdk.models.load",
    "ClassifierHead": "client_sdk.models.ends",
    "DeviceTail": "client_sdk.models.ends",
    "load_tokenizer": "client_sdk.models.load",
    "prototype_context": "client_sdk.models.load",
}

__all__ = [
    "BASE_MODELS",
    "ModelError",
    "ModelInfo",
    "SplitLayerError",
    "UnknownModelError",
    "UnsupportedArchitectureError",
    "describe_model",
    "validate_split_layer",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'client_sdk.models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
