"""Auth, the error envelope everywhere, x-request-id on every response, outages -> 503."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from api import deps
from api.main import create_app
from service.db import repo
from service.db.session import session_scope
from tests.api.conftest import job_body

ENVELOPE_KEYS = {"message", "type", "param", "code"}


def _assert_envelope(r, status):
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) >= ENVELOPE_KEYS
    assert r.headers["x-request-id"]


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer sk-pt-000000000000-" + "x" * 43}, {"Authorization": "Basic abc"}]
)
def test_missing_or_invalid_key_is_401(env, headers):
    r = env.client.get("/v1/fine_tuning/jobs", headers=headers)
    _assert_envelope(r, 401)
    assert r.json()["error"]["code"] in ("missing_api_key", "invalid_api_key")


def test_revoked_key_is_401_and_keys_are_stored_hashed(env):
    with env.session() as s:
        key, _ = repo.create_api_key(s, "acme", key_name="ci")
    assert env.client.get("/v1/models", headers=env.headers(key)).status_code == 200
    with env.session() as s:
        from service.db.models import ApiKey

        stored = [row.key_hash for row in s.query(ApiKey)]
        assert key not in stored and all(len(h) == 64 for h in stored)
        assert repo.revoke_api_key(s, key)
    _assert_envelope(env.client.get("/v1/models", headers=env.headers(key)), 401)


def test_request_id_on_every_response(env):
    ok = env.client.get("/v1/models", headers=env.headers())
    assert ok.headers["x-request-id"].startswith("req_")
    echoed = env.client.get("/v1/models", headers={**env.headers(), "x-request-id": "trace-123"})
    assert echoed.headers["x-request-id"] == "trace-123"
    _assert_envelope(env.client.get("/v1/nothing-here", headers=env.headers()), 404)
    _assert_envelope(env.client.delete("/v1/fine_tuning/jobs", headers=env.headers()), 405)
    assert env.client.get("/healthz").headers["x-request-id"]


def test_validation_errors_use_the_envelope(env):
    r = env.client.post(
        "/v1/fine_tuning/jobs", content=b"{not json", headers={**env.headers(), "content-type": "application/json"}
    )
    _assert_envelope(r, 400)
    r = env.client.post("/v1/fine_tuning/jobs", json={"model": "minilm-l6", "bogus": 1}, headers=env.headers())
    _assert_envelope(r, 400)
    assert r.json()["error"]["param"] == "bogus"


def test_json_body_limit_is_413(env):
    body = job_body()
    body["metadata"] = {"k": "v" * (env.settings.request_body_limit + 10)}
    _assert_envelope(env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.headers()), 413)


def test_database_outage_is_503(env):
    def broken_db():
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    env.app.dependency_overrides[deps.get_db] = broken_db
    r = env.client.get("/v1/fine_tuning/jobs", headers=env.headers())
    _assert_envelope(r, 503)
    assert r.headers["retry-after"] == "2" and r.json()["error"]["code"] == "database_unavailable"


def test_redis_outage_is_503(env):
    from redis.exceptions import ConnectionError as RedisConnectionError

    class DownRedis:
        def set(self, *args, **kwargs):
            raise RedisConnectionError("Connection refused")

    env.app.dependency_overrides[deps.get_redis] = lambda: DownRedis()
    r = env.client.get("/v1/privtune/bottoms/minilm-l6/3", headers=env.headers())
    _assert_envelope(r, 503)
    assert r.json()["error"]["code"] == "redis_unavailable" and r.headers["retry-after"]


def test_unexpected_error_is_500_envelope_with_request_id(settings):
    app = create_app(settings)

    def boom():
        raise RuntimeError("kaboom")

    app.dependency_overrides[deps.get_principal] = boom
    with session_scope(app.state.session_factory) as session:  # past the auth middleware: a real key
        key, _ = repo.create_api_key(session, "org-500")
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/v1/models", headers={"x-request-id": "req-500", "Authorization": f"Bearer {key}"})
    _assert_envelope(r, 500)
    assert r.headers["x-request-id"] == "req-500" and "kaboom" not in r.text


def test_openapi_document_has_tags(env):
    spec = env.client.get("/openapi.json").json()
    assert {"fine-tuning", "files", "models", "privtune"} <= {t["name"] for t in spec["tags"]}
    assert spec["paths"]["/v1/fine_tuning/jobs"]["post"]["tags"] == ["fine-tuning"]
    assert (
        "application/octet-stream"
        in spec["paths"]["/v1/fine_tuning/jobs/{fine_tuning_job_id}/steps"]["post"]["requestBody"]["content"]
    )


def test_expired_key_is_401_and_last_use_is_recorded_once_a_minute(env):
    import time

    from service.db.models import ApiKey
    from service.db.repo.keys import LAST_USED_RESOLUTION_S

    with env.session() as s:
        expired, _ = repo.create_api_key(s, "acme", expires_at=int(time.time()) - 1)
        valid, _ = repo.create_api_key(s, "acme", expires_at=int(time.time()) + 3600)
    _assert_envelope(env.client.get("/v1/models", headers=env.headers(expired)), 401)
    assert env.client.get("/v1/models", headers=env.headers(valid)).status_code == 200

    def last_used() -> int | None:
        with env.session() as s:
            return s.query(ApiKey).filter(ApiKey.prefix == valid.split("-")[2]).one().last_used_at

    first = last_used()
    assert first is not None and abs(first - time.time()) < 5
    with env.session() as s:  # within the resolution: no write
        assert repo.authenticate(s, valid, now=first + LAST_USED_RESOLUTION_S - 1) is not None
    assert last_used() == first
    with env.session() as s:  # a minute later: recorded again
        assert repo.authenticate(s, valid, now=first + LAST_USED_RESOLUTION_S) is not None
    assert last_used() == first + LAST_USED_RESOLUTION_S
    with env.session() as s:  # the expiry is exclusive
        assert repo.authenticate(s, valid, now=int(time.time()) + 3600) is None


@pytest.mark.parametrize(
    "body",
    [
        [job_body()],  # an array where an object is expected
        {**job_body(), "method": ["privtune"]},
        {**job_body(), "metadata": ["a", "b"]},
        {**job_body(), "seed": 10**30},
        {**job_body(), "suffix": {"a": 1}},
        {**job_body(), "hyperparameters": {"n_epochs": 10**30}},
    ],
    ids=["array body", "array method", "array metadata", "huge seed", "object suffix", "huge epochs"],
)
def test_wrong_json_types_are_400(env, body):
    r = env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.headers())
    _assert_envelope(r, 400)
    assert env.enqueuer.jobs == []


@pytest.mark.parametrize(
    "raw",
    [
        '{"model": "minilm-l6", "seed": ' + "9" * 5000 + "}",  # beyond Python's integer digit limit
        '{"model": "minilm-l6", "metadata": {"a": ' + "[" * 5000 + "]" * 5000 + "}}",  # beyond the recursion limit
        '{"model": "minilm-l6", "metadata": {"a": ' + "[" * 50 + "]" * 50 + "}}",
    ],
    ids=["huge integer", "deeply nested", "nested metadata value"],
)
def test_hostile_json_bodies_are_400_without_internals(env, raw):
    headers = {**env.headers(), "content-type": "application/json"}
    r = env.client.post("/v1/fine_tuning/jobs", content=raw, headers=headers)
    _assert_envelope(r, 400)
    assert r.json()["error"]["code"] in ("invalid_request", "invalid_value")
    text = r.text.lower()
    assert "traceback" not in text and "recursion" not in text and "sys.set_int_max_str_digits" not in text


def test_a_nested_wire_header_on_a_step_is_400(env):
    import struct

    job = env.create_job()
    env.run_job(job["id"])
    head = ("[" * 5000 + "]" * 5000).encode()
    r = env.client.post(
        f"/v1/fine_tuning/jobs/{job['id']}/steps",
        content=struct.pack("<Q", len(head)) + head,
        headers={**env.headers(), "content-type": "application/octet-stream"},
    )
    _assert_envelope(r, 400)
    assert r.json()["error"]["code"] == "not_safetensors" and env.relay.calls == []


def test_huge_integer_query_parameters_are_400(env):
    r = env.client.get("/v1/fine_tuning/jobs?limit=" + "9" * 5000, headers=env.headers())
    _assert_envelope(r, 400)
    assert r.json()["error"]["param"] == "limit"
