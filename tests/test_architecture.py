"""The dependency rules of docs/ARCHITECTURE.md, checked mechanically: the import-linter contracts in
pyproject.toml (static, every import including lazy ones) and what a torch-free process really loads."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: install the dev extra (import-linter)")
    result = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and "KEPT" in result.stdout


@pytest.mark.parametrize(
    ("modules", "banned"),
    [
        # the gateway, with the app built: no torch, no worker
        (
            ["api.main", "api.routes.split", "api.routes.files", "api.job_spec"],
            ["torch", "transformers", "peft", "worker"],
        ),
        # the shared service layer: no FastAPI, no torch
        (["service.db.repo", "service.relay", "service.queue", "service.errors"], ["fastapi", "starlette", "torch"]),
        # the device's contract modules the server imports: no torch
        (
            [
                "client_sdk.jobspec",
                "client_sdk.privatized_file",
                "client_sdk.protocol",
                "client_sdk.privacy.table",
                "client_sdk.models.catalog",
                "client_sdk.client",
            ],
            ["torch", "transformers"],
        ),
    ],
)
def test_torch_free_layers_load_no_torch(modules, banned):
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {banned!r})\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
