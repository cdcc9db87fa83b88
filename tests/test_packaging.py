"""The SDK installs alone: its wheel carries every subpackage and none of the server's dependencies."""

from __future__ import annotations

import shutil
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
    # Build from a clean copy: setuptools reuses a stale build/ folder beside the sources.
    source = tmp_path / "src"
    shutil.copytree(ROOT / "client_sdk", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
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
            str(source),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("privtune_client-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in (
        "client_sdk/__init__.py",
        "client_sdk/wire/codec.py",
        "client_sdk/jobspec/method.py",
        "client_sdk/models/load.py",
        "client_sdk/privacy/mechanisms.py",
        "client_sdk/privacy/table.py",
        "client_sdk/audit/__init__.py",
        "client_sdk/resources/fine_tuning.py",
        "client_sdk/privatizer.py",
        "client_sdk/jobs.py",
    ):
        assert module in names, module
    assert not any(n.startswith(("api/", "service/", "worker/", "evaluation/", "tests/")) for n in names)
    # provider code stays on the provider's side: the server's top, the bottom export, GGUF conversion
    py = [n for n in names if n.endswith(".py")]
    assert not any(n.endswith(("models/top.py", "models/export.py", "models/registry.py")) for n in py), py
    sources = "".join(zipfile.ZipFile(wheel).read(n).decode() for n in py)
    for provider_only in ("def export_bottom", "def build_top", "def convert_gguf", "class TopModel"):
        assert provider_only not in sources, provider_only
    metadata = next(n for n in names if n.endswith("METADATA"))
    requires = [
        line
        for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist") and "extra ==" not in line
    ]
    assert not any(dep in line.lower() for line in requires for dep in SERVER_ONLY), requires
