"""Durable checkpoint directories: written beside the previous one, checksummed, switched atomically;
a failed write leaves the others untouched; a corrupt or missing checkpoint is skipped at load."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import pytest

from worker import checkpoints
from worker.checkpoints import CheckpointCorrupt, load_valid, verify, write_checkpoint


class FakeTrainer:
    """Writes two files whose content is its step; ``load`` records what it restored."""

    def __init__(self, step: int = 0, fail_with: OSError | None = None):
        self.step, self.fail_with, self.loaded = step, fail_with, []

    def write_files(self, directory, metrics=None):
        (Path(directory) / "weights.bin").write_bytes(bytes([self.step % 256]) * 64)
        if self.fail_with is not None:
            raise self.fail_with
        (Path(directory) / "meta.json").write_text(json.dumps({"step": self.step, "metrics": metrics or {}}))
        return ["weights.bin", "meta.json"]

    def load(self, directory):
        self.loaded.append(Path(directory).name)
        return json.loads((Path(directory) / "meta.json").read_text())["step"]


def row(written: checkpoints.Written, step: int) -> dict:
    return {"path": str(written.path), "sha256": written.sha256, "step_number": step}


def test_a_checkpoint_has_a_manifest_of_checksums_and_its_own_checksum(tmp_path):
    written = write_checkpoint(FakeTrainer(3), tmp_path, 3, {"train_loss": 0.5})
    assert written.path == tmp_path / "step-3" and written.path.is_dir()
    raw = (written.path / "manifest.json").read_bytes()
    manifest = json.loads(raw)
    assert manifest["step"] == 3
    assert manifest["files"]["weights.bin"] == hashlib.sha256((written.path / "weights.bin").read_bytes()).hexdigest()
    assert written.sha256 == hashlib.sha256(raw).hexdigest()
    verify(written.path, written.sha256)
    assert [p.name for p in tmp_path.iterdir()] == ["step-3"]  # no temporary directory left


def test_a_full_disk_leaves_the_previous_checkpoint_intact_and_no_temporary_directory(tmp_path):
    previous = write_checkpoint(FakeTrainer(2), tmp_path, 2)
    with pytest.raises(OSError) as raised:
        write_checkpoint(FakeTrainer(4, fail_with=OSError(errno.ENOSPC, "No space left on device")), tmp_path, 4)
    assert raised.value.errno == errno.ENOSPC
    assert [p.name for p in tmp_path.iterdir()] == ["step-2"]
    verify(previous.path, previous.sha256)


def test_a_failed_rewrite_of_the_same_step_keeps_the_old_copy(tmp_path):
    first = write_checkpoint(FakeTrainer(2), tmp_path, 2)
    with pytest.raises(OSError):
        write_checkpoint(FakeTrainer(2, fail_with=OSError(errno.EIO, "I/O error")), tmp_path, 2)
    verify(first.path, first.sha256)
    second = write_checkpoint(FakeTrainer(2), tmp_path, 2, {"again": 1})  # a complete rewrite replaces it
    assert [p.name for p in tmp_path.iterdir()] == ["step-2"] and second.sha256 != first.sha256


def test_the_lease_is_checked_before_anything_is_written(tmp_path):
    class Lost(Exception):
        pass

    def lost():
        raise Lost

    with pytest.raises(Lost):
        write_checkpoint(FakeTrainer(2), tmp_path / "ckpt", 2, check_lease=lost)
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("damage", ["file", "manifest", "missing", "recorded"])
def test_damage_is_detected(tmp_path, damage):
    written = write_checkpoint(FakeTrainer(2), tmp_path, 2)
    sha = written.sha256
    if damage == "file":
        (written.path / "weights.bin").write_bytes(b"torn")
    elif damage == "manifest":
        (written.path / "manifest.json").write_text('{"files": {}}')
    elif damage == "missing":
        (written.path / "meta.json").unlink()
    else:
        sha = "0" * 64
    with pytest.raises(CheckpointCorrupt):
        verify(written.path, sha)


def test_load_falls_back_to_the_newest_valid_checkpoint(tmp_path):
    w2, w4, w6 = (write_checkpoint(FakeTrainer(s), tmp_path, s) for s in (2, 4, 6))
    (w6.path / "weights.bin").write_bytes(b"torn")
    checkpoints.remove_directories([str(w4.path)])
    trainer = FakeTrainer()
    loaded = load_valid(trainer, [row(w6, 6), row(w4, 4), row(w2, 2)])
    assert (loaded.row["step_number"], loaded.step, trainer.loaded) == (2, 2, ["step-2"])
    assert [r["step_number"] for r, _ in loaded.skipped] == [6, 4]
    nothing = load_valid(FakeTrainer(), [row(w6, 6)])
    assert nothing.row is None and nothing.step == 0 and len(nothing.skipped) == 1


def test_a_checkpoint_written_before_manifests_still_loads_when_no_checksum_was_recorded(tmp_path):
    legacy = tmp_path / "step-5"
    legacy.mkdir()
    FakeTrainer(5).write_files(legacy)
    verify(legacy, None)
    with pytest.raises(CheckpointCorrupt):
        verify(legacy, "ab" * 32)


def test_a_switch_that_fails_halfway_puts_the_old_copy_back(tmp_path, monkeypatch):
    first = write_checkpoint(FakeTrainer(2), tmp_path, 2)
    real, calls = checkpoints.os.replace, []

    def replace(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # the new directory into place
            raise OSError(errno.EIO, "I/O error")
        return real(src, dst)

    monkeypatch.setattr(checkpoints.os, "replace", replace)
    with pytest.raises(OSError):
        write_checkpoint(FakeTrainer(2), tmp_path, 2, {"again": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["step-2"]
    verify(first.path, first.sha256)


def test_a_full_disk_in_the_safetensors_writer_is_an_oserror_the_runner_retries(tmp_path):
    """safetensors reports ENOSPC as SafetensorError; the writer re-raises it as OSError(ENOSPC), which
    worker.infra classifies as a disk fault (the job is released, not failed). On a real 1 MiB tmpfs."""
    import errno
    import os
    import subprocess

    import torch

    from worker.infra import is_disk_fault
    from worker.trainer import _save_safetensors

    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)]).returncode:
        pytest.skip("needs root to mount a 1 MiB tmpfs")
    try:
        with pytest.raises(OSError) as info:
            _save_safetensors({"w": torch.zeros(1024, 1024)}, mount / "adapter.safetensors")  # 4 MiB
        assert info.value.errno == errno.ENOSPC and is_disk_fault(info.value)
    finally:
        subprocess.run(["umount", str(mount)], check=False)
