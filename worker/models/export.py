"""Cut a model at split layer l on the provider's side: the bottom, exported as a self-contained,
verifiable artifact for the device (``export_bottom``), or built in memory (``build_bottom``, for the
evaluation and tests). Only bottom weights are ever written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from client_sdk.models.artifact import MANIFEST, WEIGHTS, ArtifactError, verify_artifact, write_manifest
from client_sdk.models.bottom import BottomModel
from client_sdk.models.catalog import describe_model, validate_split_layer
from client_sdk.models.load import frozen, prototype_context

from .full_model import load_full_model

__all__ = ["BottomArtifact", "build_bottom", "export_bottom"]


@dataclass(frozen=True)
class BottomArtifact:
    """An exported bottom: its directory, the manifest digest and the manifest itself."""

    path: Path
    digest: str
    manifest: dict[str, Any]


def build_bottom(
    name_or_path: str | Path, split_layer: int, cache_dir: str | Path | None = None
) -> tuple[BottomModel, Any]:
    """Return ``(bottom, tokenizer)`` cut from the full model in memory (frozen, eval mode), without export."""
    validate_split_layer(describe_model(name_or_path), split_layer)
    model, tokenizer, _ = load_full_model(name_or_path, cache_dir)
    bottom = BottomModel.from_full_model(model, split_layer, *prototype_context(tokenizer, model.config))
    return frozen(bottom), tokenizer


def _reusable(out: Path, model: str, split_layer: int) -> dict[str, Any] | None:
    try:
        manifest = verify_artifact(out)
    except ArtifactError:
        return None
    return manifest if manifest["model"] == model and manifest["split_layer"] == split_layer else None


def export_bottom(
    name_or_path: str | Path, split_layer: int, out_dir: str | Path, cache_dir: str | Path | None = None
) -> BottomArtifact:
    """Write the bottom artifact of a model cut at ``split_layer`` to ``out_dir`` and return it.

    Idempotent: an existing artifact in ``out_dir`` for the same model and split whose files match
    their hashes is reused as is; a stale or damaged artifact is replaced. Only bottom weights are
    written. The directory appears atomically (built in a temporary sibling and renamed). Refuses
    (``ArtifactError``) to overwrite a non-empty directory that is not an artifact.
    """
    info = describe_model(name_or_path)
    validate_split_layer(info, split_layer)
    out = Path(out_dir)
    manifest = _reusable(out, info.name, split_layer)
    if manifest is not None:
        return BottomArtifact(out, manifest["digest"], manifest)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise ArtifactError(f"out_dir {str(out)!r} exists, is not empty and is not a bottom artifact")

    model, tokenizer, spec = load_full_model(name_or_path, cache_dir)
    prefix, suffix = prototype_context(tokenizer, model.config)
    bottom = BottomModel.from_full_model(model, split_layer, prefix, suffix)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        weights = {name: t.detach().contiguous() for name, t in bottom.state_dict().items()}
        save_file(weights, str(staging / WEIGHTS), metadata={"format": "pt"})
        bottom.config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        fields = {
            "model": spec.name,
            "family": spec.family,
            "model_type": model.config.model_type,
            "split_layer": split_layer,
            "hidden_size": bottom.hidden_size,
            "vocab_size": bottom.vocab_size,
            "num_layers": model.config.num_hidden_layers,
            "prototype_prefix": prefix,
            "prototype_suffix": suffix,
        }
        manifest = write_manifest(staging, fields)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BottomArtifact(out, manifest["digest"], manifest)
