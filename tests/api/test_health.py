"""``/readyz``: the database, Redis and the broker each checked with a short timeout; 503 in the OpenAI
envelope naming what failed, within a few seconds even when a dependency hangs."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from service.db.session import make_engine, make_session_factory

REDIS_URL = "redis://127.0.0.1:6379/6"


def _use_redis(env, url: str) -> None:
    env.app.state.settings = env.settings.model_copy(update={"redis_url": url})
    env.app.state.probe_redis = None


def test_ready_when_database_redis_and_broker_answer(env):
    _use_redis(env, REDIS_URL)
    r = env.client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok", "broker": "ok"}}


def test_redis_down_is_503_naming_redis_and_the_broker(env):
    # env's redis_url is port 1, where nothing listens
    r = env.client.get("/readyz")
    assert r.status_code == 503 and r.headers["retry-after"]
    error = r.json()["error"]
    assert error["code"] == "not_ready" and error["type"] == "server_error"
    assert error["checks"] == {"database": "ok", "redis": "unavailable", "broker": "unavailable"}
    assert "redis" in error["message"] and "broker" in error["message"] and "database" not in error["message"]


def test_database_down_is_503_naming_the_database(env):
    _use_redis(env, REDIS_URL)
    dead = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 1})
    env.app.state.session_factory = make_session_factory(dead)
    r = env.client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["error"]["checks"] == {"database": "unavailable", "redis": "ok", "broker": "ok"}
    dead.dispose()


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never answers (a hung Redis)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_hung_redis_answers_503_within_the_probe_timeout(env, silent_server):
    _use_redis(env, f"redis://127.0.0.1:{silent_server}/0")
    start = time.monotonic()
    r = env.client.get("/readyz")
    elapsed = time.monotonic() - start
    assert r.status_code == 503
    assert r.json()["error"]["checks"]["redis"] == "unavailable"
    assert r.json()["error"]["checks"]["database"] == "ok"
    assert elapsed < 4.0, elapsed
