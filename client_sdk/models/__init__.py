"""Model registry and split runtime.

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
    "ModelSpec": "client_sdk.models.registry",
    "resolve_model": "client_sdk.models.registry",
    "load_full_model": "client_sdk.models.registry",
    "BottomArtifact": "client_sdk.models.split",
    "BottomModel": "client_sdk.models.split",
    "BottomOutput": "client_sdk.models.split",
    "TopModel": "client_sdk.models.split",
    "DEFAULT_LORA_TARGETS": "client_sdk.models.split",
    "TASKS": "client_sdk.models.split",
    "build_bottom": "client_sdk.models.split",
    "build_top": "client_sdk.models.split",
    "export_bottom": "client_sdk.models.split",
    "load_bottom": "client_sdk.models.split",
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
