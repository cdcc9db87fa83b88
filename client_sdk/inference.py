"""Using a fine-tuned model privately (architecture.md, "Using a fine-tuned model").

A fine-tuned model is the worker's adapter (never leaves the service) plus the device's end (never
leaves the device, saved by training in its job directory, ``client_sdk.end_state``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["build_end"]


def build_end(meta: dict[str, Any], bottom: Any, artifact_dir: str | Path, generator: Any) -> Any:
    """A fresh device end described by ``meta`` (``DeviceSession.end_meta``): the classification head
    or the generation tail (base blocks from the artifact, LoRA drawn from ``generator``)."""
    from client_sdk.models.artifact import read_manifest
    from client_sdk.models.ends import ClassifierHead
    from client_sdk.models.load import load_tail

    if meta["task"] == "classification":
        return ClassifierHead(int(meta["hidden_size"]), len(meta["labels"]), generator)
    return load_tail(
        artifact_dir,
        bottom,
        read_manifest(artifact_dir),
        lora_r=int(meta["lora_r"]),
        lora_alpha=float(meta["lora_alpha"]),
        generator=generator,
    )
