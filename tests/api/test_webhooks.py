"""``/v1/privtune/webhooks``: register (the secret shown once), list (redacted), delete; scoped to the
organization; http(s) URLs only; and a job cancelled through the API reaches a registered endpoint
as a signed ``fine_tuning.job.cancelled`` event."""

from __future__ import annotations

import http.server
import json
import threading

import httpx
import pytest

from service import webhooks


@pytest.fixture
def settings(settings):
    """The gateway's own dispatcher off: the tests run the passes themselves."""
    return settings.model_copy(update={"webhook_interval_s": 0, "webhook_allow_private_networks": True})


def _create(env, url="https://hooks.example.com/privtune", key=None):
    return env.client.post("/v1/privtune/webhooks", json={"url": url}, headers=env.headers(key))


def test_create_shows_the_secret_once_and_list_redacts_it(env):
    r = _create(env)
    assert r.status_code == 200, r.text
    created = r.json()
    assert created["object"] == "webhook_endpoint" and created["url"] == "https://hooks.example.com/privtune"
    assert created["id"].startswith("whep_") and isinstance(created["created_at"], int)
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 40
    listed = env.client.get("/v1/privtune/webhooks", headers=env.headers()).json()
    assert listed["object"] == "list" and [e["id"] for e in listed["data"]] == [created["id"]]
    shown = listed["data"][0]["secret"]
    assert shown != created["secret"] and shown.startswith("whsec_****") and shown.endswith(created["secret"][-4:])
    assert created["secret"] not in json.dumps(listed)


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/x", "javascript:alert(1)", "/relative", "http://", "https://u:p@example.com/", "x" * 3000],
)
def test_only_absolute_http_urls_are_accepted(env, url):
    r = _create(env, url)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "url"
    assert env.client.get("/v1/privtune/webhooks", headers=env.headers()).json()["data"] == []


def test_endpoints_are_scoped_to_the_organization(env):
    mine = _create(env).json()
    assert env.client.get("/v1/privtune/webhooks", headers=env.headers(env.other_key)).json()["data"] == []
    r = env.client.delete(f"/v1/privtune/webhooks/{mine['id']}", headers=env.headers(env.other_key))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = env.client.delete(f"/v1/privtune/webhooks/{mine['id']}", headers=env.headers())
    assert r.json() == {"id": mine["id"], "object": "webhook_endpoint.deleted", "deleted": True}
    assert env.client.get("/v1/privtune/webhooks", headers=env.headers()).json()["data"] == []
    assert env.client.delete(f"/v1/privtune/webhooks/{mine['id']}", headers=env.headers()).status_code == 404


def test_webhook_routes_need_a_key(env):
    assert env.client.get("/v1/privtune/webhooks").status_code == 401
    assert env.client.post("/v1/privtune/webhooks", json={"url": "https://a.example"}).status_code == 401


def test_a_cancelled_job_reaches_the_endpoint_signed(env):
    received: list[tuple[dict[str, str], bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            received.append((dict(self.headers.items()), self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = _create(env, f"http://127.0.0.1:{server.server_address[1]}/hook").json()
        other_org = _create(env, f"http://127.0.0.1:{server.server_address[1]}/other", key=env.other_key).json()
        job_id = env.create_job()["id"]
        assert env.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=env.headers()).status_code == 200
        with httpx.Client() as client:
            counts = webhooks.dispatch_once(env.app.state.session_factory, env.settings, client)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert counts["delivered"] == 1 and other_org["id"]
    [(headers, body)] = received
    event = webhooks.verify(endpoint["secret"], headers, body)
    assert event["type"] == "fine_tuning.job.cancelled" and event["data"] == {"id": job_id}
    assert event["object"] == "event" and event["id"] == headers["webhook-id"]


def test_the_gateway_runs_the_dispatcher_in_the_background(settings):
    from fastapi.testclient import TestClient

    from api.main import create_app
    from service.db import repo
    from service.db.session import session_scope

    received: list[bytes] = []
    got = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            received.append(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(200)
            self.end_headers()
            got.set()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    app = create_app(settings.model_copy(update={"webhook_interval_s": 0.1}))
    try:
        with TestClient(app):
            with session_scope(app.state.session_factory) as s:
                _key, org = repo.create_api_key(s, "acme")
                job = repo.create_job(s, organization_id=org, model="minilm-l6", method={}, hyperparameters={}, seed=0)
            from service.db.repo import webhooks as hooks

            with session_scope(app.state.session_factory) as s:
                hooks.create_endpoint(s, org, f"http://127.0.0.1:{server.server_address[1]}/h", webhooks.new_secret())
            with session_scope(app.state.session_factory) as s:
                repo.cancel_job(s, org, job["id"])
            assert got.wait(10), "the dispatcher never delivered"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert json.loads(received[0])["data"] == {"id": job["id"]}
