"""Bottom-model artifact directories: manifest writing and integrity checks (torch-free).

An artifact is a flat directory::

    model.safetensors   bottom weights only (embeddings + blocks 1..l [+ final norm / LM head])
    config.json         Hugging Face config of the bottom (num_hidden_layers = l)
    tokenizer files     whatever ``tokenizer.save_pretrained`` wrote
    manifest.json       model, family, split_layer, hidden_size, vocab_size, num_layers (full model),
                        files {filename: sha256}, digest, plus format_version and prototype context

``digest`` is the sha256 of the concatenated, sorted (lexicographically) hex sha256 values of all
files listed in ``files`` (see :func:`artifact_digest`); the gateway can recompute it without torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
TAIL_WEIGHTS = "tail.safetensors"  # generation: the base weights of the device's tail blocks


def artifact_name(split_layer: int, tail_layers: int = 0) -> str:
    """The directory name of the device artifact of one cut: ``l3``, or ``l3-t2`` with a 2-block tail."""
    return f"l{int(split_layer)}" + (f"-t{int(tail_layers)}" if tail_layers else "")


FORMAT_VERSION = 1
REQUIRED_KEYS = ("model", "family", "split_layer", "hidden_size", "vocab_size", "num_layers", "files", "digest")


class ArtifactError(ValueError):
    """The artifact directory is missing, incomplete, or its files do not match the manifest."""


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Return the hex sha256 of a file's bytes (streamed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_digest(files: Mapping[str, str]) -> str:
    """Return the artifact digest: sha256 over the sorted hex file hashes, concatenated."""
    return hashlib.sha256("".join(sorted(files.values())).encode("ascii")).hexdigest()


def write_manifest(directory: str | Path, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Hash every file in ``directory`` (except the manifest), write ``manifest.json`` and return it.

    ``fields`` must hold the descriptive keys of ``REQUIRED_KEYS`` (all but ``files`` and ``digest``).
    """
    directory = Path(directory)
    missing = [key for key in REQUIRED_KEYS if key not in ("files", "digest") and key not in fields]
    if missing:
        raise ArtifactError(f"manifest fields missing: {missing}")
    files = {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}
    if WEIGHTS not in files:
        raise ArtifactError(f"artifact directory {str(directory)!r} has no {WEIGHTS}")
    manifest = {"format_version": FORMAT_VERSION, **fields, "files": files, "digest": artifact_digest(files)}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Return the parsed ``manifest.json`` of an artifact directory (structure checked, hashes not)."""
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{str(directory)!r} is not a bottom artifact: no {MANIFEST}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read {str(path)!r}: {exc}") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{str(path)!r} must hold a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise ArtifactError(f"{str(path)!r} lacks required keys {missing}")
    files = manifest["files"]
    if not isinstance(files, dict) or WEIGHTS not in files:
        raise ArtifactError(f"{str(path)!r}: 'files' must map filenames to sha256 and include {WEIGHTS}")
    for name in files:
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith(".") or name == MANIFEST:
            raise ArtifactError(f"{str(path)!r}: invalid file name {name!r} in 'files'")
    return manifest


def verify_artifact(directory: str | Path) -> dict[str, Any]:
    """Return the manifest after checking that the directory holds exactly the listed files, unmodified.

    Raises ``ArtifactError`` naming the first file that is missing, unlisted or whose sha256 differs,
    or if ``digest`` does not match the file hashes.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    files: dict[str, str] = manifest["files"]
    present = {p.name for p in directory.iterdir() if p.name != MANIFEST}
    unlisted = sorted(present - set(files))
    if unlisted:
        raise ArtifactError(f"artifact {str(directory)!r} holds files not listed in its manifest: {unlisted}")
    for name, expected in sorted(files.items()):
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"artifact {str(directory)!r} is missing {name!r}")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(
                f"artifact file {name!r} in {str(directory)!r} was modified: sha256 {actual} != manifest {expected}"
            )
    if artifact_digest(files) != manifest["digest"]:
        raise ArtifactError(f"artifact {str(directory)!r}: manifest digest does not match its file hashes")
    return manifest
