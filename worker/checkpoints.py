"""Durable checkpoint directories: written beside the previous one, fsync'd, checksummed, switched atomically.

A checkpoint is a directory ``<root>/step-<n>/`` holding the trainer's files and ``manifest.json``
(the step and the sha256 of every file). :func:`write_checkpoint` writes it to a temporary directory
in ``root``, fsyncs every file and the directory, renames it into place and fsyncs ``root``; only
then may the caller register it (``repo.add_checkpoint(..., sha256=<manifest sha256>, lease_owner=...)``)
and only after the registration may older directories be removed (:func:`remove_directories`). A
failure at any point (a full disk: ``OSError`` ENOSPC) removes the temporary directory and leaves
every earlier checkpoint as it was.

:func:`load_valid` restores the newest registered checkpoint whose manifest and files match their
checksums, skipping (and reporting) corrupt or missing ones, so a damaged latest checkpoint falls back
to the previous one instead of crash-looping the job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
_CHUNK = 1 << 20


class CheckpointCorrupt(Exception):
    """A checkpoint directory is missing, incomplete or does not match its checksums."""


class Writable(Protocol):
    """What :func:`write_checkpoint` needs of a trainer (``worker.trainer.TopTrainer``)."""

    def write_files(self, directory: str | os.PathLike, metrics: dict[str, Any] | None = None) -> list[str]: ...

    def load(self, directory: str | os.PathLike) -> int: ...


@dataclass(frozen=True)
class Written:
    """A checkpoint in place on disk: its directory and the sha256 of its manifest."""

    path: Path
    sha256: str


def sha256_file(path: Path) -> str:
    """The hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (its entries); errors propagate (a checkpoint not on disk is not one)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(
    trainer: Writable,
    root: Path,
    step: int,
    metrics: dict[str, Any] | None = None,
    check_lease: Callable[[], None] | None = None,
) -> Written:
    """Write ``trainer``'s state as ``root/step-<step>`` durably and atomically; returns it and its
    manifest's sha256. ``check_lease`` runs before anything is written (it raises ``LeaseLost`` when
    the caller no longer owns the job: then nothing is written). A directory of the same step (a
    re-run after a crash) is replaced only once the new one is complete. Raises ``OSError`` (e.g.
    ENOSPC) with the temporary directory removed and every other checkpoint untouched."""
    if check_lease is not None:
        check_lease()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    old = None
    try:
        names = trainer.write_files(tmp, metrics)
        files = {}
        for name in names:
            fsync_path(tmp / name)
            files[name] = sha256_file(tmp / name)
        manifest = json.dumps({"step": step, "files": files}, indent=2, sort_keys=True).encode()
        with open(tmp / MANIFEST_FILE, "wb") as f:
            f.write(manifest)
            f.flush()
            os.fsync(f.fileno())
        fsync_path(tmp)
        if final.exists():
            old = root / f".old-step-{step}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_path(root)
    except BaseException:
        if old is not None and not final.exists():  # the switch failed halfway: put the old copy back
            os.replace(old, final)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return Written(final, hashlib.sha256(manifest).hexdigest())


def verify(path: Path, sha256: str | None) -> None:
    """Check a checkpoint directory against its manifest (and the manifest against ``sha256`` when
    given); raises :class:`CheckpointCorrupt`. A directory without a manifest (written before
    manifests existed) passes only when no ``sha256`` was recorded and its files exist."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointCorrupt(f"{path} is missing")
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.exists():
        if sha256 is not None:
            raise CheckpointCorrupt(f"{path} has no manifest")
        return
    raw = manifest_path.read_bytes()
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise CheckpointCorrupt(f"{path}: the manifest does not match its recorded checksum")
    try:
        files = json.loads(raw)["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointCorrupt(f"{path}: unreadable manifest") from exc
    for name, digest in files.items():
        file = path / name
        if not file.is_file() or sha256_file(file) != digest:
            raise CheckpointCorrupt(f"{path}: {name} is missing or does not match its checksum")


@dataclass(frozen=True)
class Loaded:
    """What :func:`load_valid` restored (``row`` None: none was valid) and the rows it skipped."""

    row: dict[str, Any] | None
    step: int
    skipped: list[tuple[dict[str, Any], str]]


def load_valid(trainer: Writable, rows: Iterable[dict[str, Any]]) -> Loaded:
    """Restore into ``trainer`` the first of ``rows`` (checkpoint rows, best first) that verifies;
    the rows before it are returned in ``skipped`` with the reason. Files are verified before anything
    is loaded, so a skipped checkpoint leaves the trainer untouched."""
    skipped: list[tuple[dict[str, Any], str]] = []
    for row in rows:
        try:
            verify(Path(row["path"]), row.get("sha256"))
        except (CheckpointCorrupt, OSError) as exc:
            log.warning("checkpoint %s of step %s is unusable: %s", row["path"], row["step_number"], exc)
            skipped.append((row, str(exc)))
            continue
        return Loaded(row, trainer.load(row["path"]), skipped)
    return Loaded(None, 0, skipped)


def remove_directories(paths: Iterable[str]) -> None:
    """Delete pruned checkpoint directories (after their rows are gone); a missing one is no error."""
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
