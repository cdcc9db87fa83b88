"""Cut a model at split layer l on the provider's side: the device's parts, exported as a
self-contained, verifiable artifact (``export_bottom``), or built in memory (``build_bottom``, for the
evaluation and tests). Only the device's weights are ever written: the bottom, and for a generation
job the base weights of its tail (the last ``tail_layers`` blocks; the final norm and LM head are
the bottom's), never the server's middle.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from client_sdk.models.artifact import MANIFEST, TAIL_WEIGHTS, WEIGHTS, ArtifactError, verify_artifact, write_manifest
from client_sdk.models.bottom import BottomModel, family_module
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


def _reusable(out: Path, model: str, split_layer: int, tail_layers: int) -> dict[str, Any] | None:
    try:
        manifest = verify_artifact(out)
    except ArtifactError:
        return None
    same = (manifest["model"], manifest["split_layer"], manifest.get("tail_layers", 0))
    return manifest if same == (model, split_layer, tail_layers) else None


def export_bottom(
    name_or_path: str | Path,
    split_layer: int,
    out_dir: str | Path,
    cache_dir: str | Path | None = None,
    tail_layers: int = 0,
) -> BottomArtifact:
    """Write the device artifact of a model cut at ``split_layer`` (and, for a generation tail, before
    its last ``tail_layers`` blocks) to ``out_dir`` and return it.

    Idempotent: an existing artifact in ``out_dir`` for the same model and cut whose files match
    their hashes is reused as is; a stale or damaged artifact is replaced. Only the device's weights
    are written. The directory appears atomically (built in a temporary sibling and renamed). Refuses
    (``ArtifactError``) to overwrite a non-empty directory that is not an artifact.
    """
    info = describe_model(name_or_path)
    validate_split_layer(info, split_layer)
    if tail_layers and (info.family != "llama" or split_layer + tail_layers >= info.num_layers):
        raise ArtifactError(
            f"a tail of {tail_layers} blocks needs a causal LM with more than {split_layer + tail_layers} blocks"
        )
    out = Path(out_dir)
    manifest = _reusable(out, info.name, split_layer, tail_layers)
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
        if tail_layers:
            blocks = nn.ModuleList(list(family_module(model.config.model_type).parts_of(model)["layers"])[-tail_layers:])
            tail = {name: t.detach().contiguous() for name, t in blocks.state_dict().items()}  # "<i>.<param>"
            save_file(tail, str(staging / TAIL_WEIGHTS), metadata={"format": "pt"})
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
            "tail_layers": tail_layers,
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
