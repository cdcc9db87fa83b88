"""The real service for integration tests: PostgreSQL, Redis, a Celery worker process and the gateway.

Skips with a clear reason when PostgreSQL (127.0.0.1:5432, database ``test``) or Redis
(127.0.0.1:6379) is not reachable; ``.ci/run`` starts both on CI machines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import make_tiny_bert

PG_URL = os.environ.get("PRIVTUNE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("PRIVTUNE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TINY_MODEL = "tiny-bert"


def _require_services() -> None:
    import redis
    import sqlalchemy

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {exc}")
    try:
        with sqlalchemy.create_engine(PG_URL).connect() as conn:
            conn.exec_driver_sql("select 1")
    except Exception as exc:
        pytest.skip(f"PostgreSQL is not reachable at {PG_URL}: {exc}")


def _reset_database(url: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()


class Service:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.model_dir = make_tiny_bert(tmp / "models" / TINY_MODEL)
        self.env = {
            "PRIVTUNE_DATABASE_URL": PG_URL,
            "PRIVTUNE_REDIS_URL": REDIS_URL,
            "PRIVTUNE_DATA_DIR": str(tmp / "data"),
            "PRIVTUNE_EXTRA_MODELS": json.dumps({TINY_MODEL: str(self.model_dir)}),
            "PRIVTUNE_CHECKPOINT_EVERY": "4",
            "PRIVTUNE_LOG_EVERY_STEPS": "2",
            "PRIVTUNE_STEP_TIMEOUT_S": "30",
            "PRIVTUNE_REAPER_INTERVAL_S": "1",
            "PRIVTUNE_LEASE_SECONDS": "4",
            "PRIVTUNE_HEARTBEAT_SECONDS": "1",
        }
        self.worker: subprocess.Popen | None = None
        self.server = None

    def start(self) -> Service:
        import redis
        import uvicorn

        redis.Redis.from_url(REDIS_URL).flushdb()
        _reset_database(PG_URL)
        os.environ.update(self.env)
        from api.db.migrate import upgrade_to_head
        from api.settings import get_settings

        get_settings.cache_clear()
        self.settings = get_settings()
        upgrade_to_head(PG_URL)
        self.api_key = self.new_key("integration")
        self.other_key = self.new_key("someone-else")
        log = open(self.tmp / "worker.log", "wb")  # noqa: SIM115
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "privtune.cli", "worker", "--queues", "gpu,artifacts"],
            env={**os.environ, **self.env},
            stdout=log,
            stderr=log,
        )
        from api.main import create_app
        from privtune.embedded import free_port

        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(create_app(self.settings), host="127.0.0.1", port=self.port, log_level="warning")
        )
        threading.Thread(target=self.server.run, daemon=True).start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.05)
        return self

    def start_worker(self) -> None:
        log = open(self.tmp / "worker.log", "ab")  # noqa: SIM115
        cmd = [sys.executable, "-m", "privtune.cli", "worker", "--queues", "gpu,artifacts"]
        self.worker = subprocess.Popen(cmd, env={**os.environ, **self.env}, stdout=log, stderr=log)

    def kill_worker(self) -> None:
        """SIGKILL: no cleanup, no ack, no event; the lease simply stops being renewed."""
        self.worker.kill()
        self.worker.wait(timeout=10)

    def new_key(self, org: str) -> str:
        from sqlalchemy.orm import sessionmaker

        from api.db.keys import create_api_key
        from api.db.session import make_engine

        with sessionmaker(make_engine(PG_URL)).begin() as session:
            return create_api_key(session, org)[0]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def client(self, key: str | None = None):
        from client_sdk import Client

        return Client(base_url=self.base_url, api_key=key or self.api_key)

    def worker_log(self) -> str:
        return (self.tmp / "worker.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.worker is not None:
            self.worker.terminate()
            try:
                self.worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.worker.kill()
        for key in self.env:
            os.environ.pop(key, None)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    _require_services()
    svc = Service(tmp_path_factory.mktemp("service")).start()
    yield svc
    svc.stop()
