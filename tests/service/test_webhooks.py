"""Standard Webhooks signing and the delivery outbox: signatures a receiver can verify, retries with
backoff against a real local HTTP server, giving up after the last attempt, one send per row even with
two dispatchers, and only jobs that ended after the endpoint was registered."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from sqlalchemy import update

from service import metrics, webhooks
from service.db import repo
from service.db.migrate import upgrade_to_head
from service.db.models import Job
from service.db.repo import webhooks as hooks
from service.db.session import make_engine, make_session_factory, session_scope
from service.settings import Settings

# ---- signing ---------------------------------------------------------------------------------------


def test_the_secret_is_whsec_and_24_plus_random_bytes():
    a, b = webhooks.new_secret(), webhooks.new_secret()
    assert a.startswith("whsec_") and a != b
    assert len(base64.b64decode(a[len("whsec_") :])) >= 24


def test_the_signature_is_hmac_sha256_of_id_timestamp_body_with_the_decoded_secret():
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    body = b'{"a":1}'
    expected = base64.b64encode(hmac.new(b"k" * 24, b"msg_1.1700000000." + body, hashlib.sha256).digest()).decode()
    assert webhooks.sign(secret, "msg_1", 1700000000, body) == "v1," + expected


def test_verify_accepts_ours_and_rejects_a_tampered_body_an_old_timestamp_and_another_secret():
    secret, body, now = webhooks.new_secret(), b'{"id":"msg_x","type":"fine_tuning.job.succeeded"}', time.time()
    headers = webhooks.headers_for(secret, "msg_x", int(now), body)
    assert webhooks.verify(secret, headers, body, now=now)["id"] == "msg_x"
    with pytest.raises(webhooks.WebhookVerificationError):
        webhooks.verify(secret, headers, body.replace(b"succeeded", b"failed"), now=now)
    with pytest.raises(webhooks.WebhookVerificationError):
        webhooks.verify(secret, headers, body, now=now + webhooks.TOLERANCE_S + 1)
    old = webhooks.headers_for(secret, "msg_x", int(now) - 3600, body)
    with pytest.raises(webhooks.WebhookVerificationError):
        webhooks.verify(secret, old, body, now=now)
    with pytest.raises(webhooks.WebhookVerificationError):
        webhooks.verify(webhooks.new_secret(), headers, body, now=now)
    with pytest.raises(webhooks.WebhookVerificationError):
        webhooks.verify(secret, {k: v for k, v in headers.items() if k != "webhook-id"}, body, now=now)


def test_backoff_doubles_and_is_capped():
    assert [webhooks.backoff_s(n) for n in (1, 2, 3)] == [5.0, 10.0, 20.0]
    assert webhooks.backoff_s(100) == webhooks.BACKOFF_MAX_S


# ---- delivery against a real HTTP server ------------------------------------------------------------


@dataclass
class Receiver:
    """A thread running http.server: answers ``statuses`` in turn (then 200), records what it got."""

    statuses: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["content-length"]))
            state.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            time.sleep(state.delay_s)
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


PG_BASE = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """A migrated database: a SQLite file, or a fresh schema in the local PostgreSQL (skipped without it)."""
    schema = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hooks.sqlite3'}"
    else:
        admin = make_engine(PG_BASE, connect_args={"connect_timeout": 2})
        schema = "hooks_" + uuid.uuid4().hex[:12]
        try:
            with admin.begin() as conn:
                conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        except Exception as exc:
            admin.dispose()
            pytest.skip(f"no PostgreSQL at {PG_BASE}: {exc}")
        url = f"{PG_BASE}?options=-csearch_path%3D{schema}"
    upgrade_to_head(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()
    if schema is not None:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture
def http_client():
    with httpx.Client() as client:
        yield client


SETTINGS = Settings(webhook_max_attempts=4, webhook_timeout_s=1.0, webhook_allow_private_networks=True)  # 127.0.0.1


def _org_job(factory, org_name: str = "acme") -> tuple[str, str]:
    with session_scope(factory) as s:
        _key, org = repo.create_api_key(s, org_name)
        job = repo.create_job(s, organization_id=org, model="minilm-l6", method={}, hyperparameters={}, seed=0)
    return org, job["id"]


def _end(factory, job_id: str, status: str, finished_at: int | None = None) -> None:
    with session_scope(factory) as s:
        s.execute(
            update(Job).where(Job.id == job_id).values(status=status, finished_at=finished_at or int(time.time()))
        )


def _endpoint(factory, org: str, url: str) -> dict:
    with session_scope(factory) as s:
        return hooks.create_endpoint(s, org, url, webhooks.new_secret())


def _deliveries(factory, endpoint_id: str) -> list[dict]:
    with session_scope(factory) as s:
        return hooks.list_deliveries(s, endpoint_id)


def test_a_failing_endpoint_is_retried_with_backoff_until_it_answers_2xx(db, receiver, http_client):
    org, job_id = _org_job(db)
    endpoint = _endpoint(db, org, receiver.url)
    _end(db, job_id, "succeeded")
    receiver.statuses = [500, 503]
    delivered_before = metrics.WEBHOOK_DELIVERIES.labels("delivered")._value.get()
    t0 = time.time()

    first = webhooks.dispatch_once(db, SETTINGS, http_client, now=t0)
    assert first == {"enqueued": 1, "delivered": 0, "retry": 1, "failed": 0}
    [row] = _deliveries(db, endpoint["id"])
    assert row["attempts"] == 1 and row["next_attempt_at"] == pytest.approx(t0 + 5) and row["last_error"] == "HTTP 500"
    assert webhooks.dispatch_once(db, SETTINGS, http_client, now=t0 + 4)["retry"] == 0  # not due yet
    assert webhooks.dispatch_once(db, SETTINGS, http_client, now=t0 + 5)["retry"] == 1
    assert _deliveries(db, endpoint["id"])[0]["next_attempt_at"] == pytest.approx(t0 + 5 + 10)
    third = webhooks.dispatch_once(db, SETTINGS, http_client, now=t0 + 15)
    assert third == {"enqueued": 0, "delivered": 1, "retry": 0, "failed": 0}
    assert webhooks.dispatch_once(db, SETTINGS, http_client, now=t0 + 1000)["delivered"] == 0  # sent once

    [row] = _deliveries(db, endpoint["id"])
    assert row["delivered_at"] is not None and row["attempts"] == 3
    assert metrics.WEBHOOK_DELIVERIES.labels("delivered")._value.get() == delivered_before + 1
    assert len(receiver.received) == 3
    ids = {headers["webhook-id"] for headers, _ in receiver.received}
    assert ids == {row["id"]}  # the same message id on every retry
    for headers, body in receiver.received:
        event = webhooks.verify(endpoint["secret"], headers, body, now=int(headers["webhook-timestamp"]))
        assert event == {
            "id": row["id"],
            "object": "event",
            "type": "fine_tuning.job.succeeded",
            "created_at": int(t0),
            "data": {"id": job_id},
        }
    assert [int(h["webhook-timestamp"]) for h, _ in receiver.received] == [int(t0), int(t0 + 5), int(t0 + 15)]


def test_gives_up_after_max_attempts_and_a_timeout_counts_as_a_failure(db, receiver, http_client):
    org, job_id = _org_job(db)
    endpoint = _endpoint(db, org, receiver.url)
    _end(db, job_id, "cancelled")
    receiver.delay_s = 1.5  # longer than webhook_timeout_s
    settings = Settings(webhook_max_attempts=2, webhook_timeout_s=0.5, webhook_allow_private_networks=True)
    t0 = time.time()
    assert webhooks.dispatch_once(db, settings, http_client, now=t0)["retry"] == 1
    assert "Timeout" in _deliveries(db, endpoint["id"])[0]["last_error"]
    receiver.delay_s, receiver.statuses = 0.0, [410]
    assert webhooks.dispatch_once(db, settings, http_client, now=t0 + 60)["failed"] == 1
    [row] = _deliveries(db, endpoint["id"])
    assert row["failed_at"] is not None and row["delivered_at"] is None and row["attempts"] == 2
    assert webhooks.dispatch_once(db, settings, http_client, now=t0 + 10**6) == {
        "enqueued": 0,
        "delivered": 0,
        "retry": 0,
        "failed": 0,
    }
    assert json.loads(receiver.received[-1][1])["type"] == "fine_tuning.job.cancelled"


def test_only_jobs_that_ended_after_the_endpoint_was_registered_and_only_of_its_org(db, receiver, http_client):
    org, old_job = _org_job(db)
    _end(db, old_job, "failed", finished_at=int(time.time()) - 3600)
    _other_org, foreign_job = _org_job(db, "globex")
    _end(db, foreign_job, "succeeded")
    with session_scope(db) as s:
        running = repo.create_job(s, organization_id=org, model="minilm-l6", method={}, hyperparameters={}, seed=0)[
            "id"
        ]
    endpoint = _endpoint(db, org, receiver.url)
    assert webhooks.dispatch_once(db, SETTINGS, http_client)["enqueued"] == 0
    _end(db, running, "failed")
    assert webhooks.dispatch_once(db, SETTINGS, http_client) == {"enqueued": 1, "delivered": 1, "retry": 0, "failed": 0}
    [(_headers, body)] = receiver.received
    assert json.loads(body)["data"] == {"id": running} and json.loads(body)["type"] == "fine_tuning.job.failed"
    assert [d["job_id"] for d in _deliveries(db, endpoint["id"])] == [running]


def test_a_claimed_row_is_not_claimed_again_until_its_lease_passes(db):
    org, job_id = _org_job(db)
    _endpoint(db, org, "http://127.0.0.1:9/none")
    _end(db, job_id, "succeeded")
    now = time.time()
    with session_scope(db) as s:
        assert hooks.enqueue_job_end_deliveries(s, now) == 1
        assert hooks.enqueue_job_end_deliveries(s, now) == 0  # unique per (endpoint, job, event)
    with session_scope(db) as s:
        first = hooks.claim_delivery(s, now, lease_s=40)
    with session_scope(db) as s:
        assert hooks.claim_delivery(s, now + 1, lease_s=40) is None  # another dispatcher: nothing due
    with session_scope(db) as s:
        again = hooks.claim_delivery(s, now + 41, lease_s=40)  # the first one died mid-send
    assert first is not None and again is not None and again["id"] == first["id"]
    assert first["url"] == "http://127.0.0.1:9/none" and first["secret"].startswith("whsec_")


def test_two_dispatchers_at_once_send_each_event_once(db, receiver):
    org, _ = _org_job(db)
    endpoint = _endpoint(db, org, receiver.url)
    with session_scope(db) as s:
        jobs = [repo.create_job(s, organization_id=org, model="minilm-l6", method={}, hyperparameters={}, seed=0)["id"]]
        jobs += [
            repo.create_job(s, organization_id=org, model="minilm-l6", method={}, hyperparameters={}, seed=0)["id"]
        ]
    for job_id in jobs:
        _end(db, job_id, "succeeded")
    receiver.delay_s = 0.2
    results: list[dict] = []

    def run() -> None:
        with httpx.Client() as client:
            results.append(webhooks.dispatch_once(db, SETTINGS, client))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r["delivered"] for r in results) == 2
    assert sorted(json.loads(body)["data"]["id"] for _, body in receiver.received) == sorted(jobs)
    assert all(d["delivered_at"] for d in _deliveries(db, endpoint["id"]))


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/hook", "http://10.1.2.3/hook", "http://169.254.169.254/latest/meta-data", "http://[::1]/h"],
)
def test_a_non_public_endpoint_is_never_contacted_unless_the_operator_allows_it(url):
    class Recorder:
        def __init__(self):
            self.calls = []

        def post(self, *args, **kwargs):
            self.calls.append(args)
            raise AssertionError("must not be contacted")

    client = Recorder()
    delivery = {"url": url, "payload": {"id": "msg_1"}, "secret": webhooks.new_secret(), "id": "msg_1"}
    error = webhooks._send(client, delivery, 1.0, time.time())
    assert error is not None and "non-public address" in error and client.calls == []
    assert webhooks.non_public_address("https://93.184.216.34/hook") is None  # a public address passes
