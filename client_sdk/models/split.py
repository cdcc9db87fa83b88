"""Cut a model at split layer l: export/load the device bottom, build the server top.

The provider exports only the bottom (embeddings + blocks 1..l, plus the final norm and LM head of
a causal LM) as a self-contained artifact directory (see ``artifact``); the device loads it from that
directory alone. The server builds the top (blocks l+1..L + task head) from the full model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .artifact import MANIFEST, WEIGHTS, ArtifactError, verify_artifact, write_manifest
from .bottom import BottomModel, BottomOutput, family_module
from .catalog import SUPPORTED_MODEL_TYPES, describe_model, validate_split_layer
from .registry import load_full_model, load_tokenizer
from .top import DEFAULT_LORA_TARGETS, TASKS, TopModel, check_task

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "TASKS",
    "BottomArtifact",
    "BottomModel",
    "BottomOutput",
    "TopModel",
    "build_bottom",
    "build_top",
    "export_bottom",
    "load_bottom",
]


@dataclass(frozen=True)
class BottomArtifact:
    """An exported bottom: its directory, the manifest digest and the manifest itself."""

    path: Path
    digest: str
    manifest: dict[str, Any]


def prototype_context(tokenizer: Any, config: Any) -> tuple[list[int], list[int]]:
    """Return the special-token ids placed before / after a lone token when computing its prototype.

    BERT family: ``[CLS] v [SEP]`` (``<s> v </s>`` for RoBERTa); Llama: ``[BOS] v`` (BOS from the config).
    """
    if family_module(config.model_type).IS_CAUSAL:
        bos = getattr(config, "bos_token_id", None)
        bos = bos if bos is not None else getattr(tokenizer, "bos_token_id", None)
        return ([int(bos)] if bos is not None else []), []
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return [int(i) for i in (first,) if i is not None], [int(i) for i in (last,) if i is not None]


def _frozen(bottom: BottomModel) -> BottomModel:
    bottom.requires_grad_(False)
    return bottom.eval()


def build_bottom(
    name_or_path: str | Path, split_layer: int, cache_dir: str | Path | None = None
) -> tuple[BottomModel, Any]:
    """Return ``(bottom, tokenizer)`` cut from the full model in memory (frozen, eval mode), without export."""
    validate_split_layer(describe_model(name_or_path), split_layer)
    model, tokenizer, _ = load_full_model(name_or_path, cache_dir)
    bottom = BottomModel.from_full_model(model, split_layer, *prototype_context(tokenizer, model.config))
    return _frozen(bottom), tokenizer


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


def load_bottom(artifact_dir: str | Path) -> tuple[BottomModel, Any, dict[str, Any]]:
    """Load a bottom artifact from its directory alone: ``(bottom, tokenizer, manifest)``.

    Every file is checked against the manifest's sha256 first (``ArtifactError`` names the file that
    differs). The bottom comes back frozen and in eval mode.
    """
    from transformers import AutoConfig

    directory = Path(artifact_dir)
    manifest = verify_artifact(directory)
    config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    split_layer = int(manifest["split_layer"])
    if SUPPORTED_MODEL_TYPES.get(config.model_type) != manifest["family"]:
        raise ArtifactError(
            f"artifact config model_type {config.model_type!r} does not match family {manifest['family']!r}"
        )
    if config.num_hidden_layers != split_layer:
        raise ArtifactError(
            f"artifact config has {config.num_hidden_layers} blocks, manifest says split_layer={split_layer}"
        )
    for key, value in (("hidden_size", config.hidden_size), ("vocab_size", config.vocab_size)):
        if manifest[key] != value:
            raise ArtifactError(f"artifact manifest {key}={manifest[key]!r} does not match its config ({value!r})")
    tokenizer = load_tokenizer(directory)
    prefix, suffix = prototype_context(tokenizer, config)  # the manifest's values win where present
    prefix, suffix = manifest.get("prototype_prefix", prefix), manifest.get("prototype_suffix", suffix)
    bottom = BottomModel.from_config(config, split_layer, prefix, suffix)
    try:
        bottom.load_state_dict(load_file(str(directory / WEIGHTS)), strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"artifact weights do not fit the bottom model: {exc}") from None
    return _frozen(bottom), tokenizer, manifest


def build_top(
    name_or_path: str | Path,
    split_layer: int,
    task: str,
    num_labels: int | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    noise_aware: bool = False,
) -> TopModel:
    """Build the server's top (blocks l+1..L + head) for ``task`` from the full model, in eval mode.

    Only the top blocks (and the final norm, where the task needs it) are kept; the classifier head
    of ``task="classification"`` is initialised from ``torch.Generator().manual_seed(seed)``, so the
    same arguments give the same top. ``noise_aware``: see :class:`TopModel`.
    """
    info = describe_model(name_or_path)
    validate_split_layer(info, split_layer)
    check_task(task, info.family, num_labels)
    model, _, _ = load_full_model(name_or_path, cache_dir)
    generator = torch.Generator().manual_seed(seed)
    return TopModel.from_full_model(model, split_layer, task, num_labels, generator, noise_aware).eval()
