"""A real PrivTune stack in separate processes that a drill or a load run can signal one by one.

    with Stack(Path(tmp), database="postgres", redis_persistence=False, workers=2) as stack:
        device = stack.start_device(DeviceSpec(examples=160))
        device.wait_for_step(10)
        stack.worker_of(device.job_id()).kill()          # SIGKILL, no cleanup
        report = device.wait()                          # the device's own record (see ``device_main``)

Processes: a dedicated ``redis-server`` on a free TCP port (its own ``--dir``; AOF or no persistence),
the gateway (``uvicorn --factory api.main:app_factory``), an ``artifacts`` worker and ``workers`` GPU-queue
workers (``privtune worker``), each with its own log, on a fresh PostgreSQL database (``drill_<id>`` on
127.0.0.1:5432) or a SQLite file; the base model is the tests' tiny BERT (``tiny-bert``). A device is
a subprocess (``python -m benchmarks.stack device SPEC``) running ``FineTuneJob.create`` (or
``.resume``) through an HTTP transport that appends every request it sends to a JSON-lines log:
method, path, step number, whether it carried a gradient, status, ``x-expected-step`` and timing.
Everything started is stopped on exit (``stop``, also registered with ``atexit``).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TINY_MODEL = "tiny-bert"
PG_SERVER = os.environ.get("PRIVTUNE_DRILL_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

#: Short leases and sweeps, so a drill sees a dead worker's job taken over within seconds.
DRILL_SETTINGS = {
    "PRIVTUNE_LEASE_SECONDS": "6",
    "PRIVTUNE_HEARTBEAT_SECONDS": "2",
    "PRIVTUNE_REAPER_INTERVAL_S": "1",
    "PRIVTUNE_SWEEP_INTERVAL_S": "2",
    "PRIVTUNE_QUEUED_REQUEUE_S": "8",
    "PRIVTUNE_CHECKPOINT_EVERY": "4",
    "PRIVTUNE_LOG_EVERY_STEPS": "1",  # one metrics event per applied step: the drills check every step
    "PRIVTUNE_STEP_TIMEOUT_S": "30",
    "PRIVTUNE_INFRA_RETRY_S": "30",
    "PRIVTUNE_FIRST_STEP_TIMEOUT_S": "120",
    "PRIVTUNE_DEVICE_IDLE_TIMEOUT_S": "120",
    "PRIVTUNE_TORCH_THREADS": "1",
    "PRIVTUNE_LOG_FORMAT": "text",
}


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """One child process with its command, environment and log; it can be signalled, waited and restarted."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path):
        self.name, self.cmd, self.env, self.log = name, cmd, env, log
        self.popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        with open(self.log, "ab") as out:  # the child keeps its own descriptor
            # its own session: a Ctrl-C to the harness reaches the children only through stop()
            self.popen = subprocess.Popen(
                self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive:
            os.kill(self.popen.pid, signum)

    def kill(self) -> None:
        """SIGKILL and reap: no cleanup, no goodbye."""
        self.signal(signal.SIGKILL)
        if self.popen:
            self.popen.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        if not self.popen:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.popen.returncode

    def restart(self, hard: bool = True) -> Proc:
        """Stop (SIGKILL when ``hard``, else SIGTERM) and start the same command again."""
        self.kill() if hard else self.terminate()
        return self.start()

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@dataclass(frozen=True)
class DeviceSpec:
    """What the device trains: ``examples`` toy rows (``tests.helpers.toy_dataset``) of the tiny BERT."""

    examples: int = 160
    batch_size: int = 8
    n_epochs: int = 1
    seed: int = 0
    mechanism: str = "privtune"
    resume_job: str | None = None  # FineTuneJob.resume(job_id) instead of create
    validation_split: float = 0.1


class Device:
    """A device process training one job; its request log is ``log`` (JSON lines, see ``device_main``)."""

    def __init__(self, stack: Stack, spec: DeviceSpec, name: str):
        self.spec, self.name = spec, name
        self.log = stack.root / f"{name}.jsonl"
        spec_file = stack.root / f"{name}.spec.json"
        spec_file.write_text(json.dumps(asdict(spec)))
        cmd = [sys.executable, "-m", "benchmarks.stack", "device", str(spec_file), str(self.log)]
        self.proc = Proc(name, cmd, stack.device_env(), stack.root / f"{name}.log")

    def start(self) -> Device:
        self.proc.start()
        return self

    def records(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]  # a killed writer's last line may be cut

    def job_id(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rec in self.records():
                if rec.get("job_id"):
                    return rec["job_id"]
            if not self.proc.alive:
                raise RuntimeError(f"device {self.name} exited before creating its job:\n{self.proc.tail()}")
            time.sleep(0.1)
        raise TimeoutError(f"device {self.name} created no job within {timeout} s")

    def last_step(self) -> int:
        """The highest step number the worker answered (200) so far."""
        ok = [r["step"] for r in self.records() if r.get("step") and r.get("status") == 200]
        return max(ok, default=0)

    def wait_for_step(self, step: int, timeout: float = 180.0, strict: bool = True) -> int:
        """The device's last answered step once it is at least ``step``; if the device exits first:
        an error (``strict``) or the step it reached."""
        deadline = time.monotonic() + timeout
        while (last := self.last_step()) < step:
            if not self.proc.alive:
                if not strict:
                    return last
                raise RuntimeError(f"device {self.name} exited at step {last}:\n{self.proc.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"device {self.name} at step {last} after {timeout} s (waiting for {step})")
            time.sleep(0.05)
        return last

    def wait(self, timeout: float = 300.0) -> dict[str, Any]:
        """The device's final record (``done`` or ``error``) once its process exits."""
        try:
            self.proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for rec in reversed(self.records()):
            if rec.get("event") in ("done", "error"):
                return rec
        return {"event": "error", "type": "exited", "message": f"exit status {self.proc.popen.returncode}"}


class Stack:
    """Redis, a database, the gateway and workers, each a separate process (see the module doc)."""

    def __init__(
        self,
        root: Path,
        *,
        database: str = "postgres",
        redis_persistence: bool = False,
        workers: int = 2,
        settings: dict[str, str] | None = None,
        artifact_dir: Path | None = None,
    ):
        if database not in ("postgres", "sqlite"):
            raise ValueError(f"database must be postgres or sqlite, got {database!r}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.database, self.redis_persistence, self.n_workers = database, redis_persistence, workers
        self.settings = {**DRILL_SETTINGS, **(settings or {})}
        self.artifact_dir = artifact_dir
        self.run_id = f"drill_{uuid.uuid4().hex[:10]}"
        self.redis_port, self.port = free_port(), free_port()
        self.redis: Proc | None = None
        self.gateway: Proc | None = None
        self.artifacts: Proc | None = None
        self.workers: list[Proc] = []
        self.devices: list[Device] = []
        self.db_url = ""
        self.api_key = ""
        self._db_created = False
        self._engine = None
        atexit.register(self.stop)

    # ---- start and stop -------------------------------------------------------------------------
    def start(self) -> Stack:
        from service.db.migrate import upgrade_to_head
        from tests.helpers import make_tiny_bert

        model_dir = make_tiny_bert(self.root / "models" / TINY_MODEL)
        self.db_url = self._create_database()
        upgrade_to_head(self.db_url)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PRIVTUNE_")},
            **self.settings,
            "PRIVTUNE_DATABASE_URL": self.db_url,
            "PRIVTUNE_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "PRIVTUNE_DATA_DIR": str(self.root / "data"),
            "PRIVTUNE_EXTRA_MODELS": json.dumps({TINY_MODEL: str(model_dir)}),
            "PYTHONUNBUFFERED": "1",
        }
        if self.artifact_dir is not None:
            self.env["PRIVTUNE_ARTIFACT_DIR"] = str(self.artifact_dir)
        self.api_key = self.new_key("drills")
        self.redis = self._redis_proc().start()
        self.wait_redis()
        self.gateway = self._gateway_proc().start()
        self.artifacts = self._worker_proc("artifacts", "artifacts").start()
        self.workers = [self._worker_proc(f"worker-{i + 1}", "gpu").start() for i in range(self.n_workers)]
        self.wait_gateway()
        for proc in [self.artifacts, *self.workers]:
            self.wait_worker(proc)
        return self

    def stop(self) -> None:
        """Stop every process this stack started and drop its database; safe to call twice."""
        for device in self.devices:
            device.proc.kill()
        for proc in [*self.workers, self.artifacts, self.gateway]:
            if proc is not None:
                proc.terminate(timeout=15)
        if self.redis is not None:
            self.redis.terminate(timeout=10)
        self.workers, self.artifacts, self.gateway, self.redis, self.devices = [], None, None, None, []
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        self._drop_database()

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the processes --------------------------------------------------------------------------
    def _redis_proc(self) -> Proc:
        data = self.root / "redis"
        data.mkdir(exist_ok=True)
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.redis_persistence else []
        cmd = ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(data)]
        cmd += ["--save", "", "--daemonize", "no", *persistence]
        return Proc("redis", cmd, self.env, self.root / "redis.log")

    def _gateway_proc(self) -> Proc:
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "api.main:app_factory", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--log-level", "warning"]
        return Proc("gateway", cmd, self.env, self.root / "gateway.log")

    def _worker_proc(self, name: str, queues: str) -> Proc:
        cmd = [sys.executable, "-m", "privtune.cli", "worker", "--queues", queues, "--loglevel", "INFO"]
        return Proc(name, cmd, self.env, self.root / f"{name}.log")

    def add_worker(self) -> Proc:
        proc = self._worker_proc(f"worker-{len(self.workers) + 1}", "gpu").start()
        self.workers.append(proc)
        self.wait_worker(proc)
        return proc

    def device_env(self) -> dict[str, str]:
        return {
            **self.env,
            "PRIVTUNE_BASE_URL": self.base_url,
            "PRIVTUNE_API_KEY": self.api_key,
            "PRIVTUNE_STATE_DIR": str(self.root / "device-state"),
            "PRIVTUNE_CACHE_DIR": str(self.root / "device-cache"),
        }

    def start_device(self, spec: DeviceSpec, name: str | None = None) -> Device:
        device = Device(self, spec, name or f"device-{len(self.devices) + 1}")
        self.devices.append(device)
        return device.start()

    # ---- waiting ------------------------------------------------------------------------------
    def wait_redis(self, timeout: float = 20.0) -> None:
        import redis

        client = redis.Redis(port=self.redis_port, socket_connect_timeout=1)
        _until(lambda: _quiet(client.ping), timeout, "redis-server did not answer", self.redis)
        client.close()

    def wait_gateway(self, timeout: float = 90.0) -> None:
        import httpx

        def up() -> bool:
            return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200

        _until(lambda: _quiet(up), timeout, "the gateway did not answer /healthz", self.gateway)

    def wait_worker(self, proc: Proc, timeout: float = 120.0) -> None:
        _until(lambda: "ready." in proc.tail(20000), timeout, f"{proc.name} did not log 'ready.'", proc)

    def wait_status(self, job_id: str, statuses: set[str] | frozenset[str], timeout: float = 180.0) -> dict[str, Any]:
        """The job's database row once its status is one of ``statuses``."""
        found: dict[str, Any] = {}

        def reached() -> bool:
            found.update(_quiet(lambda: self.job_row(job_id)) or {})
            return found.get("status") in statuses

        _until(reached, timeout, f"job {job_id} never reached {sorted(statuses)} (last: {found.get('status')})")
        return found

    # ---- reading the service ------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def client(self, **options: Any):
        from client_sdk import Client

        return Client(base_url=self.base_url, api_key=self.api_key, **options)

    def engine(self):
        from service.db.session import make_engine

        if self._engine is None:
            self._engine = make_engine(self.db_url)
        return self._engine

    def job_row(self, job_id: str) -> dict[str, Any]:
        """Status, lease owner, steps and attempts straight from the database (what the API does not show)."""
        from sqlalchemy import text

        query = "select status, lease_owner, steps_completed, total_steps, attempt, error from jobs where id = :id"
        with self.engine().connect() as conn:
            row = conn.execute(text(query), {"id": job_id}).mappings().one()
        return dict(row)

    def worker_of(self, job_id: str, timeout: float = 60.0) -> Proc:
        """The worker process that holds the job's lease (``worker_id`` is ``host:pid``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            owner = self.job_row(job_id)["lease_owner"] or ""
            for proc in self.workers:
                if proc.alive and owner.endswith(f":{proc.pid}"):
                    return proc
            time.sleep(0.2)
        raise TimeoutError(f"no worker of this stack holds job {job_id}'s lease")

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """The job's events, oldest first, through the API."""
        with self.client() as client:
            events = [e.model_dump() for e in client.fine_tuning.jobs.list_events(job_id)]
        return events[::-1]

    def checkpoint_steps(self, job_id: str) -> list[int]:
        with self.client() as client:
            return [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job_id)]

    def new_key(self, org: str) -> str:
        from sqlalchemy.orm import sessionmaker

        from service.db.keys import create_api_key

        with sessionmaker(self.engine()).begin() as session:
            return create_api_key(session, org)[0]

    def logs(self, chars: int = 2500) -> str:
        procs = [p for p in [self.gateway, *self.workers, self.redis] if p is not None]
        return "\n".join(f"--- {p.name} ---\n{p.tail(chars)}" for p in procs)

    # ---- databases ----------------------------------------------------------------------------
    def _create_database(self) -> str:
        if self.database == "sqlite":
            return f"sqlite:///{self.root / 'privtune.sqlite3'}"
        import sqlalchemy

        engine = sqlalchemy.create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{self.run_id}"')
        engine.dispose()
        self._db_created = True
        return str(sqlalchemy.engine.make_url(PG_SERVER).set(database=self.run_id).render_as_string(False))

    def _drop_database(self) -> None:
        if not self._db_created:
            return
        import sqlalchemy

        engine = sqlalchemy.create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.run_id}" WITH (FORCE)')
            self._db_created = False
        finally:
            engine.dispose()


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP unwind the harness like Ctrl-C (``atexit`` alone does not run on a signal), so
    every stack's ``finally`` / ``__exit__`` stops what it started."""

    def unwind(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, unwind)


def services_missing() -> str | None:
    """Why a stack cannot start here (no PostgreSQL on 127.0.0.1:5432, no redis-server), or None."""
    import shutil

    import sqlalchemy

    if shutil.which("redis-server") is None:
        return "redis-server is not on PATH"
    try:
        engine = sqlalchemy.create_engine(PG_SERVER, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.exec_driver_sql("select 1")
        engine.dispose()
    except Exception as exc:
        return f"PostgreSQL is not reachable at {PG_SERVER}: {type(exc).__name__}"
    return None


def _quiet(fn):
    try:
        return fn()
    except Exception:
        return None


def _until(done, timeout: float, message: str, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if proc is not None and not proc.alive:
            raise RuntimeError(f"{message}: {proc.name} exited\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} within {timeout} s" + (f"\n{proc.tail()}" if proc else ""))
        time.sleep(0.1)


# ---- the device process ---------------------------------------------------------------------------
@dataclass
class _Recorder:
    """Appends one JSON line per record, flushed at once (the process may be killed at any time)."""

    path: Path
    start: float = field(default_factory=time.time)

    def write(self, **record: Any) -> None:
        with open(self.path, "a") as out:
            out.write(json.dumps(record) + "\n")


def _recording_transport(recorder: _Recorder):
    import httpx

    from client_sdk import wire

    class RecordingTransport(httpx.HTTPTransport):
        """Every request's outcome and timing: the device's view of the service, below the SDK's retries."""

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            record: dict[str, Any] = {"method": request.method, "path": request.url.path, "t0": time.time()}
            if request.url.path.endswith(("/steps", "/complete")):
                header, infos = wire.inspect(request.content)
                record.update(step=header.step, kind=header.kind, grad="grad_output" in infos)
                record["final"] = header.extra.get("final") == "1"
            try:
                response = super().handle_request(request)
                response.read()
            except Exception as exc:
                recorder.write(**record, t1=time.time(), status=None, error=type(exc).__name__)
                raise
            record.update(t1=time.time(), status=response.status_code)
            if response.status_code >= 400:
                record["expected_step"] = response.headers.get("x-expected-step")
                record["code"] = _error_code(response.content)
            if response.status_code == 429 or "x-ratelimit-remaining-requests" in response.headers:
                record["ratelimit"] = {k: v for k, v in response.headers.items() if k.startswith("x-ratelimit")}
            if request.method == "POST" and request.url.path.endswith("/fine_tuning/jobs") and response.is_success:
                record["job_id"] = json.loads(response.content)["id"]
            recorder.write(**record)
            return response

    return RecordingTransport()


def _error_code(body: bytes) -> str | None:
    try:
        return json.loads(body)["error"]["code"]
    except Exception:
        return None


def device_main(spec_path: str, log_path: str) -> int:
    """Train the job of ``spec_path`` (a :class:`DeviceSpec`) through the real SDK, recording every request."""
    import httpx

    from client_sdk import Client, FineTuneJob, PrivacyConfig
    from client_sdk._constants import DEFAULT_TIMEOUT
    from client_sdk.jobs import Hyperparameters
    from tests.helpers import toy_dataset

    spec = DeviceSpec(**json.loads(Path(spec_path).read_text()))
    recorder = _Recorder(Path(log_path))
    http = httpx.Client(timeout=DEFAULT_TIMEOUT, transport=_recording_transport(recorder))
    options = dict(
        model=TINY_MODEL,
        split_layer=2,
        max_length=16,
        privacy=PrivacyConfig(mechanism=spec.mechanism, seed=spec.seed),
        hyperparameters=Hyperparameters(batch_size=spec.batch_size, n_epochs=spec.n_epochs, learning_rate=5e-3),
        validation_split=spec.validation_split,
        seed=spec.seed,
        client=Client(http_client=http),
        progress=False,
        cache_dir=os.environ.get("PRIVTUNE_CACHE_DIR"),
    )
    data = toy_dataset(spec.examples, seed=spec.seed)
    recorder.write(event="start", pid=os.getpid(), resume=spec.resume_job)
    if spec.resume_job:
        recorder.write(event="resume", job_id=spec.resume_job)
    try:
        if spec.resume_job:
            job = FineTuneJob.resume(spec.resume_job, data, **options)
        else:
            job = FineTuneJob.create(data, **options)
    except BaseException as exc:
        recorder.write(event="error", type=type(exc).__name__, message=str(exc)[:2000])
        return 1
    report = job.report
    recorder.write(
        event="done",
        job_id=job.id,
        status=job.status,
        steps_completed=job.steps_completed,
        total_steps=job.total_steps,
        report_steps=report.steps if report else None,
        losses=len(report.losses) if report else None,
        seconds=report.seconds if report else None,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 3 and args[0] == "device":
        return device_main(args[1], args[2])
    print("usage: python -m benchmarks.stack device SPEC.json LOG.jsonl", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
