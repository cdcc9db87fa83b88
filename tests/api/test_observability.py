"""Observability: JSON log lines carrying the request id, the access line, HTTP metrics by route
template, and ``/metrics`` with the scrape-time gauges (jobs, heartbeats, queue depth) that survive a
database or Redis outage."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from service import metrics
from service.db.models import Job
from service.db.session import make_engine, make_session_factory
from service.logging import configure_logging
from service.settings import Settings

REDIS_TEST_URL = "redis://127.0.0.1:6379/6"


@pytest.fixture
def log_lines():
    """Capture the root handler that configure_logging installs; restore the root logger after."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()

    def lines() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]

    yield stream, lines
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    logging.getLogger("uvicorn.access").disabled = False


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_json_log_lines_carry_the_request_id_and_the_access_line(env, log_lines):
    stream, lines = log_lines
    configure_logging(Settings(log_format="json"), stream=stream)
    job = env.create_job()
    r = env.client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers={**env.headers(), "x-request-id": "req-abc.1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-abc.1"
    access = [line for line in lines() if line["logger"] == "api.access" and line["request_id"] == "req-abc.1"]
    assert len(access) == 1, lines()
    line = access[0]
    assert line["method"] == "GET" and line["status"] == 200 and line["level"] == "INFO"
    assert line["route"] == "/v1/fine_tuning/jobs/{fine_tuning_job_id}"
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert {"time", "message"} <= line.keys()


def test_a_log_line_inside_a_request_carries_its_id_and_exc_info_is_a_string(log_lines):
    from service.logging import request_id_var

    stream, lines = log_lines
    configure_logging(Settings(log_format="json"), stream=stream)
    token = request_id_var.set("req_inside")
    try:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            logging.getLogger("api.test").exception("failed %s", "here")
    finally:
        request_id_var.reset(token)
    logging.getLogger("api.test").info("outside")
    inside, outside = lines()[-2:]
    assert inside["request_id"] == "req_inside" and inside["level"] == "ERROR" and inside["message"] == "failed here"
    assert isinstance(inside["exc_info"], str) and "ValueError: boom" in inside["exc_info"]
    assert outside["request_id"] is None and "exc_info" not in outside


def test_text_format_and_reconfiguring_replaces_the_handler(log_lines):
    stream, _ = log_lines
    configure_logging(Settings(log_format="json"), stream=stream)
    configure_logging(Settings(log_format="text"), stream=stream)
    logging.getLogger("api.test").warning("plain")
    assert stream.getvalue().splitlines()[-1].endswith("WARNING api.test [None] plain")
    assert sum(h.get_name() == "privtune" for h in logging.getLogger().handlers) == 1


def test_http_metrics_use_the_route_template_never_the_raw_path(env):
    job_id = env.create_job()["id"]
    route = "/v1/fine_tuning/jobs/{fine_tuning_job_id}"
    counter = metrics.HTTP_REQUESTS.labels("GET", route, "200")
    before, missing_before = counter._value.get(), metrics.HTTP_REQUESTS.labels("GET", route, "404")._value.get()
    hist_before = metrics.HTTP_SECONDS.labels("GET", route)._sum.get()
    env.client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=env.headers())
    env.client.get("/v1/fine_tuning/jobs/ftjob-nope", headers=env.headers())
    unmatched = metrics.HTTP_REQUESTS.labels("GET", "unmatched", "404")._value.get()
    env.client.get("/no/such/path/123")
    assert counter._value.get() == before + 1
    assert metrics.HTTP_REQUESTS.labels("GET", route, "404")._value.get() == missing_before + 1
    assert metrics.HTTP_SECONDS.labels("GET", route)._sum.get() > hist_before
    assert metrics.HTTP_REQUESTS.labels("GET", "unmatched", "404")._value.get() == unmatched + 1
    text = env.client.get("/metrics").text
    assert f'route="/v1/fine_tuning/jobs/{job_id}"' not in text and "/no/such/path" not in text


def test_metrics_serves_job_gauges_heartbeats_and_queue_depth(env):
    env.app.state.settings = env.settings.model_copy(update={"redis_url": REDIS_TEST_URL})
    r = redis.Redis.from_url(REDIS_TEST_URL)
    r.delete("gpu", "artifacts")
    r.rpush("gpu", "a", "b", "c")
    r.rpush("artifacts", "x")
    try:
        queued, running = env.create_job()["id"], env.create_job()["id"]
        env.run_job(running, "worker-7")
        with env.session() as s:
            s.execute(update(Job).where(Job.id == running).values(heartbeat_at=time.time() - 42))
        resp = env.client.get("/metrics")
    finally:
        r.delete("gpu", "artifacts")
        r.close()
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    samples = _samples(resp.text)
    assert samples[("privtune_jobs", (("status", "queued"),))] == 1
    assert samples[("privtune_jobs", (("status", "running"),))] == 1
    assert samples[("privtune_jobs", (("status", "succeeded"),))] == 0
    assert samples[("privtune_running_jobs", ())] == 1
    assert 41 <= samples[("privtune_worker_heartbeat_age_seconds", (("worker", "worker-7"),))] < 60
    assert samples[("privtune_queue_depth", (("queue", "gpu"),))] == 3
    assert samples[("privtune_queue_depth", (("queue", "artifacts"),))] == 1
    assert ("privtune_step_seconds_count", (("kind", "step"),)) in samples or "privtune_step_seconds" in resp.text
    assert queued


def test_a_redis_outage_leaves_out_the_queue_depth_and_counts_it(env):
    # env's redis_url points at port 1: nothing listens there
    before = _samples(env.client.get("/metrics").text).get(("privtune_scrape_errors_total", (("source", "redis"),)), 0)
    resp = env.client.get("/metrics")
    assert resp.status_code == 200
    samples = _samples(resp.text)
    assert not any(name == "privtune_queue_depth" for name, _ in samples)
    assert samples[("privtune_jobs", (("status", "queued"),))] == 0  # the database gauges are still there
    assert samples[("privtune_scrape_errors_total", (("source", "redis"),))] == before + 1


def test_a_database_outage_leaves_out_the_job_gauges_and_counts_it(env):
    dead = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 1})
    env.app.state.session_factory = make_session_factory(dead)
    before = metrics_value("database")
    resp = env.client.get("/metrics")
    assert resp.status_code == 200
    samples = _samples(resp.text)
    assert not any(name in ("privtune_jobs", "privtune_running_jobs") for name, _ in samples)
    assert metrics_value("database") == before + 1
    assert samples[("privtune_scrape_errors_total", (("source", "database"),))] == before + 1
    dead.dispose()


def metrics_value(source: str) -> float:
    from api.routes.metrics import SCRAPE_ERRORS

    return SCRAPE_ERRORS.labels(source)._value.get()


def test_a_request_refused_before_routing_is_still_labelled_with_its_template(env):
    route = "/v1/fine_tuning/jobs/{fine_tuning_job_id}"
    counter = metrics.HTTP_REQUESTS.labels("GET", route, "401")
    before = counter._value.get()
    assert env.client.get("/v1/fine_tuning/jobs/ftjob-123").status_code == 401  # no key: the auth middleware
    assert counter._value.get() == before + 1


def test_an_unhandled_error_is_counted_and_logged_as_500_with_the_request_id(settings, log_lines):
    from fastapi.testclient import TestClient

    from api.main import create_app

    stream, lines = log_lines
    configure_logging(Settings(log_format="json"), stream=stream)
    app = create_app(settings)

    def boom() -> None:
        raise RuntimeError("kaboom")

    app.add_api_route("/boom/{thing}", boom)
    counter = metrics.HTTP_REQUESTS.labels("GET", "/boom/{thing}", "500")
    before = counter._value.get()
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom/1", headers={"x-request-id": "req-500"})
    assert r.status_code == 500 and counter._value.get() == before + 1
    [access] = [line for line in lines() if line["logger"] == "api.access" and line["request_id"] == "req-500"]
    assert access["status"] == 500 and access["level"] == "ERROR" and access["route"] == "/boom/{thing}"
