"""The Celery tasks' fault handling: SIGTERM drains the running job, a job is sent again through the
shared queue helper (with a countdown), and a failed bottom export leaves an error for the gateway."""

from __future__ import annotations

import json

import pytest
from celery.signals import worker_shutting_down

from service.queue import GPU_QUEUE, RUN_JOB_TASK
from service.settings import Settings
from worker import tasks


class FakeRedis:
    def __init__(self):
        self.data, self.ttl = {}, {}

    def set(self, key, value, ex=None, nx=False):
        self.data[key], self.ttl[key] = value, ex
        return True

    def delete(self, *keys):
        return sum(self.data.pop(k, None) is not None for k in keys)


@pytest.fixture
def drain():
    tasks.DRAIN.clear()
    yield tasks.DRAIN
    tasks.DRAIN.clear()


def test_a_warm_shutdown_sets_the_drain(drain):
    from worker.celery_app import create_app

    create_app(Settings(redis_url="redis://127.0.0.1:1/0"))
    assert not drain.is_set()
    worker_shutting_down.send(sender="celery@test", sig="SIGTERM", how="Warm", exitcode=0)
    assert drain.is_set()


def test_run_job_gives_the_runner_the_drain_and_an_enqueuer(monkeypatch, drain):
    seen = {}

    class Runner:
        def __init__(self, job_id, settings, sessions, redis, worker, device=None, enqueue=None, drain=None):
            seen.update(job_id=job_id, enqueue=enqueue, drain=drain)

        def run(self):
            return "released"

    monkeypatch.setattr(tasks, "_resources", lambda: (Settings(), None, None))
    monkeypatch.setattr("worker.runner.JobRunner", Runner)
    assert tasks.run_job("ftjob-1") == "released"
    assert seen["job_id"] == "ftjob-1" and seen["drain"] is tasks.DRAIN and callable(seen["enqueue"])


def test_the_enqueuer_sends_run_job_to_the_gpu_queue_with_a_countdown():
    sent = []

    class App:
        def send_task(self, name, args, queue, countdown=None):
            sent.append((name, args, queue, countdown))
            return type("Result", (), {"id": "task-1"})()

    tasks._enqueuer(App())("ftjob-1", 10.0)
    assert sent == [(RUN_JOB_TASK, ["ftjob-1"], GPU_QUEUE, 10.0)]


def test_a_failed_bottom_export_leaves_a_safe_error_and_drops_its_guard(monkeypatch, tmp_path, caplog):
    from client_sdk.models.artifact import artifact_name

    redis, settings = FakeRedis(), Settings(data_dir=tmp_path, export_guard_ttl_s=321)
    name = artifact_name(2, 0)
    guard, error_key = f"pt:export:tiny:{name}", f"pt:export:error:tiny:{name}"
    redis.data[guard] = "1"

    def missing_package(*_args, **_kwargs):
        raise ModuleNotFoundError("No module named 'secret_provider_pkg'")

    monkeypatch.setattr(tasks, "_resources", lambda: (settings, None, redis))
    monkeypatch.setattr("worker.models.export_bottom", missing_package)
    with pytest.raises(ModuleNotFoundError):
        tasks.export_bottom("tiny", 2, 0)
    assert guard not in redis.data and redis.ttl[error_key] == 321
    error = json.loads(redis.data[error_key])
    assert error == {
        "code": "bottom_export_failed",
        "message": "the provider's model package for tiny is not installed on the worker",
    }
    assert any(r.exc_info and "secret_provider_pkg" in str(r.exc_info[1]) for r in caplog.records)  # logged


def test_an_unexpected_export_error_is_not_shown_to_the_tenant():
    message = tasks.export_failure_message("tiny", RuntimeError("CUDA error at /opt/secret/kernel.cu:12"))
    assert "secret" not in message and "CUDA" not in message and "tiny" in message
