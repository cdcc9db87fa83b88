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
import uuid
from pathlib import Path

import pytest

from tests.helpers import make_tiny_bert, make_tiny_llama

PG_BASE = os.environ.get("PRIVTUNE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_BASE = os.environ.get("PRIVTUNE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_DBS = range(8, 16)  # one per concurrent test run, claimed with a lock key
TINY_MODEL = "tiny-bert"
TINY_LM = "tiny-llama"  # generation jobs (a 4-block causal LM with a chat template)


def _require_services() -> None:
    import redis
    import sqlalchemy

    try:
        redis.Redis.from_url(REDIS_BASE, socket_connect_timeout=2).ping()
    except Exception as exc:
        pytest.skip(f"Redis is not reachable at {REDIS_BASE}: {exc}")
    try:
        with sqlalchemy.create_engine(PG_BASE).connect() as conn:
            conn.exec_driver_sql("select 1")
    except Exception as exc:
        pytest.skip(f"PostgreSQL is not reachable at {PG_BASE}: {exc}")


def _claim_redis_db(run_id: str) -> str:
    """A Redis database of our own (Celery queues are per database), so concurrent runs never share."""
    import redis

    for db in REDIS_DBS:
        client = redis.Redis.from_url(f"{REDIS_BASE}/{db}")
        if client.set("privtune-test-lock", run_id, nx=True, ex=3600):
            for key in client.scan_iter():  # leftovers of an earlier, killed run
                if key != b"privtune-test-lock":
                    client.delete(key)
            return f"{REDIS_BASE}/{db}"
    pytest.skip(f"all Redis databases {list(REDIS_DBS)} are in use by other test runs")


def _create_schema(schema: str) -> str:
    """A fresh PostgreSQL schema for this run; the URL makes it the search path of every connection."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(PG_BASE)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    engine.dispose()
    return f"{PG_BASE}?options=-csearch_path%3D{schema}"


def _drop_schema(schema: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(PG_BASE)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    engine.dispose()


class Service:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.run_id = f"pt_it_{uuid.uuid4().hex[:10]}"
        self.pg_url = _create_schema(self.run_id)
        self.redis_url = _claim_redis_db(self.run_id)
        self.model_dir = make_tiny_bert(tmp / "models" / TINY_MODEL)
        self.lm_dir = make_tiny_llama(tmp / "models" / TINY_LM)
        self.env = {
            "PRIVTUNE_DATABASE_URL": self.pg_url,
            "PRIVTUNE_REDIS_URL": self.redis_url,
            "PRIVTUNE_DATA_DIR": str(tmp / "data"),
            "PRIVTUNE_EXTRA_MODELS": json.dumps({TINY_MODEL: str(self.model_dir), TINY_LM: str(self.lm_dir)}),
            "PRIVTUNE_INFERENCE_IDLE_TIMEOUT_S": "60",
            "PRIVTUNE_INFERENCE_TIMEOUT_S": "5",
            "PRIVTUNE_CHECKPOINT_EVERY": "4",
            "PRIVTUNE_LOG_EVERY_STEPS": "2",
            "PRIVTUNE_STEP_TIMEOUT_S": "30",
            "PRIVTUNE_REAPER_INTERVAL_S": "1",
            "PRIVTUNE_LEASE_SECONDS": "4",
            "PRIVTUNE_HEARTBEAT_SECONDS": "1",
        }
        self.worker: subprocess.Popen | None = None
        self.inference_worker: subprocess.Popen | None = None
        self.server = None

    def start(self) -> Service:
        import uvicorn

        os.environ.update(self.env)
        from service.db.migrate import upgrade_to_head
        from service.settings import get_settings

        get_settings.cache_clear()
        self.settings = get_settings()
        upgrade_to_head(self.pg_url)
        self.api_key = self.new_key("integration")
        self.other_key = self.new_key("someone-else")
        log = open(self.tmp / "worker.log", "wb")  # noqa: SIM115
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "privtune.cli", "worker", "--queues", "gpu,artifacts"],
            env={**os.environ, **self.env},
            stdout=log,
            stderr=log,
        )
        self.start_inference_worker()
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

    def start_inference_worker(self) -> None:
        log = open(self.tmp / "inference.log", "ab")  # noqa: SIM115
        cmd = [sys.executable, "-m", "worker.inference"]
        self.inference_worker = subprocess.Popen(cmd, env={**os.environ, **self.env}, stdout=log, stderr=log)

    def kill_inference_worker(self) -> None:
        self.inference_worker.kill()
        self.inference_worker.wait(timeout=10)

    def kill_worker(self) -> None:
        """SIGKILL: no cleanup, no ack, no event; the lease simply stops being renewed."""
        self.worker.kill()
        self.worker.wait(timeout=10)

    def new_key(self, org: str) -> str:
        from sqlalchemy.orm import sessionmaker

        from service.db.keys import create_api_key
        from service.db.session import make_engine

        with sessionmaker(make_engine(self.pg_url)).begin() as session:
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
        for proc in (self.worker, self.inference_worker):
            if proc is None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for key in self.env:
            os.environ.pop(key, None)
        import redis

        client = redis.Redis.from_url(self.redis_url)
        client.flushdb()  # also releases the lock key
        _drop_schema(self.run_id)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    _require_services()
    svc = Service(tmp_path_factory.mktemp("service")).start()
    yield svc
    svc.stop()
