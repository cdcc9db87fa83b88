"""The device's checkpoints of its own end of the model, in a local, job-scoped directory.

The worker checkpoints its adapter every few steps; the device must be able to return to exactly
the same step after a pause, a worker crash or its own restart, so it saves its end (trainable
tensors, optimiser and schedule) after every step it trains, atomically (temporary file + rename),
and prunes the steps older than the worker's latest checkpoint (which every reply names). Layout::

    <root>/<job_id>/step-<t>/end.safetensors   the end's trainable tensors after step t
                            /optimizer.pt      optimiser + scheduler state (written and read here only)
                   /final/...                  the trained end, for inference after the job
                   /meta.json                  what the end is (task, labels, sizes), for FineTunedModel
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from client_sdk._constants import DEFAULT_STATE_DIR, STATE_DIR_ENV

__all__ = ["EndStore", "MissingEndState", "default_root"]

END_FILE, OPTIMIZER_FILE, META_FILE = "end.safetensors", "optimizer.pt", "meta.json"


class MissingEndState(RuntimeError):
    """The device has no saved end for the step the worker resumed from."""


def default_root() -> Path:
    """``$PRIVTUNE_STATE_DIR``, else ``~/.cache/privtune/jobs``."""
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR).expanduser()


class EndStore:
    """Saved states of one job's device end: ``save(step, ...)``, ``load(step)``, ``prune(keep_from)``."""

    def __init__(self, job_id: str, root: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(root).expanduser() if root else default_root()
        self.directory = self.directory / job_id

    def _write_dir(self, name: str, end: dict[str, torch.Tensor], optimizer: dict[str, Any] | None) -> Path:
        final = self.directory / name
        tmp = self.directory / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        save_file(end, str(tmp / END_FILE))
        if optimizer is not None:
            torch.save(optimizer, tmp / OPTIMIZER_FILE)
        if final.exists():  # a step trained again after a rewind: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final

    def save(self, step: int, end: dict[str, torch.Tensor], optimizer: dict[str, Any]) -> Path:
        """Write the end's state after ``step`` (0: before training) atomically."""
        return self._write_dir(f"step-{step}", end, optimizer)

    def has(self, step: int) -> bool:
        return (self.directory / f"step-{step}" / END_FILE).is_file()

    def load(self, step: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The end's tensors and optimiser state after ``step``; ``MissingEndState`` if not saved."""
        path = self.directory / f"step-{step}"
        if not (path / END_FILE).is_file():
            raise MissingEndState(
                f"the worker resumed this job from step {step}, but the device has no saved end for that step in "
                f"{self.directory} (steps saved: {self.steps()}); the device's half cannot be restored"
            )
        optimizer = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)  # written by us
        return load_file(str(path / END_FILE)), optimizer

    def steps(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name[5:]) for p in self.directory.glob("step-*") if p.name[5:].isdigit())

    def prune(self, keep_from: int) -> None:
        """Delete the states of steps before ``keep_from`` (the worker's latest checkpoint)."""
        for step in self.steps():
            if step < keep_from:
                shutil.rmtree(self.directory / f"step-{step}", ignore_errors=True)

    # ---- the trained end, for inference ---------------------------------------------------------
    def save_final(self, end: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
        """Write the trained end and its description (``FineTunedModel`` reads them)."""
        path = self._write_dir("final", end, None)
        self.save_meta(meta)
        return path

    def save_meta(self, meta: dict[str, Any]) -> None:
        """Write what the end is (task, labels, sizes) atomically."""
        tmp = self.directory / f".tmp-meta-{uuid.uuid4().hex[:8]}"
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
        os.replace(tmp, self.directory / META_FILE)

    def meta(self) -> dict[str, Any]:
        path = self.directory / META_FILE
        if not path.is_file():
            raise MissingEndState(f"no device end for this job in {self.directory}")
        return json.loads(path.read_text())

    def load_final(self) -> dict[str, torch.Tensor]:
        path = self.directory / "final" / END_FILE
        if not path.is_file():
            raise MissingEndState(
                f"the trained end of this job is not on this device ({path} is missing): the model can only be "
                "used from the device that trained it"
            )
        return load_file(str(path))
