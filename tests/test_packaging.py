"""The SDK installs alone: its wheel carries every subpackage and none of the server's dependencies."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
SERVER_ONLY = ("fastapi", "uvicorn", "celery", "sqlalchemy", "alembic", "redis", "psycopg", "peft")


def test_sdk_declares_no_server_dependencies():
    deps = tomllib.loads((ROOT / "client_sdk" / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower() for d in deps}
    assert not names & set(SERVER_ONLY), names & set(SERVER_ONLY)


def test_sdk_wheel_contains_its_packages(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT / "client_sdk"),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("privtune_client-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in (
        "client_sdk/__init__.py",
        "client_sdk/wire.py",
        "client_sdk/models/split.py",
        "client_sdk/privacy/mechanisms.py",
        "client_sdk/privatizer.py",
        "client_sdk/jobs.py",
    ):
        assert module in names, module
    assert not any(n.startswith(("api/", "worker/", "tests/")) for n in names)
    metadata = next(n for n in names if n.endswith("METADATA"))
    requires = [
        line
        for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist") and "extra ==" not in line
    ]
    assert not any(dep in line.lower() for line in requires for dep in SERVER_ONLY), requires
