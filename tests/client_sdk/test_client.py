"""HTTP client core: configuration, headers, error mapping, retries and the hints a wrong base URL gets.

Every test talks to an ``httpx.MockTransport`` with an injected sleep; nothing touches the network.
The helpers here (``Recorder``, ``make_client``, ``error``, ``job``, ``paged``) serve the other
``test_client_*.py`` files too.
"""

from __future__ import annotations

import email.utils
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import pytest

from client_sdk import errors
from client_sdk._constants import IDEMPOTENCY_HEADER, INITIAL_RETRY_DELAY, MAX_RETRY_AFTER
from client_sdk._http import parse_retry_after
from client_sdk.client import Client

BASE = "http://gateway.test/v1"
Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that records requests and answers from a script (one entry per call,
    the last one repeated) or from a function."""

    def __init__(self, *replies: httpx.Response | Exception | Handler):
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        reply = self.replies[min(len(self.requests), len(self.replies)) - 1]
        if isinstance(reply, Exception):
            raise reply
        if callable(reply):
            return reply(request)
        return reply


def make_client(handler: Handler, base_url: str = BASE, **kw) -> tuple[Client, list[float]]:
    sleeps: list[float] = []
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return Client(base_url, "sk-test", http_client=http, sleep=sleeps.append, **kw), sleeps


def error(status: int, message: str = "boom", code: str | None = None, param: str | None = None, headers=None, **extra):
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code, **extra}}
    return httpx.Response(status, json=body, headers={"x-request-id": "req_123", **(headers or {})})


def job(job_id: str = "ftjob-1", **kw) -> dict:
    return {
        "id": job_id,
        "object": "fine_tuning.job",
        "created_at": 1,
        "model": "smollm2-135m",
        "status": "running",
        **kw,
    }


def paged(items: list[dict]) -> Handler:
    """A list endpoint over ``items`` (newest first) honouring after/limit like the gateway."""

    def handler(request: httpx.Request) -> httpx.Response:
        after, limit = request.url.params.get("after"), int(request.url.params.get("limit", 20))
        start = next(i + 1 for i, item in enumerate(items) if item["id"] == after) if after else 0
        page = items[start : start + limit]
        body = {"object": "list", "data": page, "has_more": start + limit < len(items)}
        body |= {"first_id": page[0]["id"], "last_id": page[-1]["id"]} if page else {}
        return httpx.Response(200, json=body)

    return handler


# ---- configuration and headers ------------------------------------------------------------------


def test_every_request_is_authenticated_and_posts_carry_an_idempotency_key():
    rec = Recorder(httpx.Response(200, json=job()))
    client, _ = make_client(rec)
    client.fine_tuning.jobs.retrieve("ftjob-1")
    client.fine_tuning.jobs.cancel("ftjob-1")
    get, post = rec.requests
    for request in (get, post):
        assert request.headers["Authorization"] == "Bearer sk-test"
        assert request.headers["User-Agent"].startswith("privtune-python/")
    assert IDEMPOTENCY_HEADER not in get.headers
    assert post.headers[IDEMPOTENCY_HEADER]
    assert str(post.url) == f"{BASE}/fine_tuning/jobs/ftjob-1/cancel"


def test_missing_api_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("PRIVTUNE_API_KEY", raising=False)
    with pytest.raises(errors.PrivTuneError, match="PRIVTUNE_API_KEY"):
        Client(BASE)


def test_base_url_and_key_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("PRIVTUNE_BASE_URL", "http://env.test/v1/")
    monkeypatch.setenv("PRIVTUNE_API_KEY", "sk-env")
    rec = Recorder(httpx.Response(200, json={"object": "list", "data": []}))
    with Client(http_client=httpx.Client(transport=httpx.MockTransport(rec))) as client:
        assert client.models.list().data == []
    assert str(rec.requests[0].url) == "http://env.test/v1/models"
    assert rec.requests[0].headers["Authorization"] == "Bearer sk-env"


def test_importing_the_client_does_not_import_torch():
    code = "import sys, client_sdk.client; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_resources_are_reached_as_in_the_openai_client():
    client, _ = make_client(Recorder(httpx.Response(200, json=job())))
    jobs = client.fine_tuning.jobs
    assert jobs is client.fine_tuning.jobs  # built once
    assert hasattr(jobs.checkpoints, "list") and hasattr(client.files, "content")
    assert hasattr(client.models, "retrieve") and hasattr(client.bottoms, "download")
    assert not hasattr(client, "create_job") and not hasattr(client, "download_bottom")


# ---- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.BadRequestError),
        (401, errors.AuthenticationError),
        (403, errors.PermissionDeniedError),
        (404, errors.NotFoundError),
        (409, errors.ConflictError),
        (413, errors.PayloadTooLargeError),
        (422, errors.UnprocessableEntityError),
        (429, errors.RateLimitError),
        (500, errors.InternalServerError),
        (502, errors.InternalServerError),
        (503, errors.ServiceUnavailableError),
        (418, errors.APIStatusError),
    ],
)
def test_status_codes_map_to_the_error_tree(status, cls):
    client, _ = make_client(Recorder(error(status, "no such thing", code="some_code", param="model")), max_retries=0)
    with pytest.raises(cls) as info:
        client.fine_tuning.jobs.retrieve("ftjob-1")
    err = info.value
    assert type(err) is cls
    assert isinstance(err, errors.APIStatusError) and isinstance(err, errors.PrivTuneError)
    assert (err.status_code, err.message, err.code, err.param) == (status, "no such thing", "some_code", "model")
    assert err.request_id == "req_123"
    assert err.body["error"]["message"] == "no such thing"
    assert "no such thing" in str(err) and "req_123" in str(err)


def test_error_without_envelope_still_has_a_message():
    client, _ = make_client(Recorder(httpx.Response(422, json={"detail": [{"loc": ["body", "model"]}]})))
    with pytest.raises(errors.UnprocessableEntityError, match="invalid request"):
        client.fine_tuning.jobs.create(model="x")
    client, _ = make_client(Recorder(httpx.Response(404, text="not here")))
    with pytest.raises(errors.NotFoundError, match="not here"):
        client.fine_tuning.jobs.retrieve("x")


def test_malformed_success_body_raises_response_validation_error():
    client, _ = make_client(Recorder(httpx.Response(200, text="<html>")))
    with pytest.raises(errors.APIResponseValidationError):
        client.fine_tuning.jobs.retrieve("ftjob-1")
    client, _ = make_client(Recorder(httpx.Response(200, json={"id": "ftjob-1"})))
    with pytest.raises(errors.APIResponseValidationError, match="FineTuningJob"):
        client.fine_tuning.jobs.retrieve("ftjob-1")
    client, _ = make_client(Recorder(httpx.Response(200, json={"object": "list", "data": [{"id": "x"}]})))
    with pytest.raises(errors.APIResponseValidationError, match="SyncCursorPage"):
        client.files.list()


@pytest.mark.parametrize(
    ("extra", "headers", "message", "expected"),
    [
        ({"expected_step": 5}, {}, "step 9 is out of order", 5),  # the envelope's error object
        ({}, {"x-expected-step": "7"}, "step 9 is out of order", 7),  # the header
        ({"expected_step": 5}, {"x-expected-step": "7"}, "out of order", 5),  # the envelope wins
        ({}, {}, "step 9 is out of order; expected step 7", None),  # message text is never parsed
        ({"expected_step": "soon"}, {}, "out of order", None),
    ],
)
def test_step_out_of_order_carries_expected_step(extra, headers, message, expected):
    reply = error(409, message, code="step_out_of_order", headers={"x-should-retry": "false", **headers}, **extra)
    rec = Recorder(reply)
    client, sleeps = make_client(rec)
    with pytest.raises(errors.StepOutOfOrderError) as info:
        client.fine_tuning.jobs.post_step("ftjob-1", b"payload")
    assert isinstance(info.value, errors.ConflictError)
    assert info.value.expected_step == expected
    assert info.value.message == message
    assert len(rec.requests) == 1 and sleeps == []


def test_expected_step_needs_the_step_out_of_order_code():
    client, _ = make_client(Recorder(error(409, "conflict", code="invalid_job_status", expected_step=3)))
    with pytest.raises(errors.ConflictError) as info:
        client.fine_tuning.jobs.post_step("ftjob-1", b"p")
    assert type(info.value) is errors.ConflictError


# ---- a wrong base URL ---------------------------------------------------------------------------


def test_connection_error_names_the_url_and_hints_at_v1():
    client, _ = make_client(Recorder(httpx.ConnectError("refused")), base_url="http://127.0.0.1:8000", max_retries=0)
    with pytest.raises(errors.APIConnectionError) as info:
        client.fine_tuning.jobs.retrieve("ftjob-1")
    text = str(info.value)
    assert "GET http://127.0.0.1:8000/fine_tuning/jobs/ftjob-1" in text and "refused" in text
    assert "base_url usually ends with /v1" in text and "http://127.0.0.1:8000/v1" in text
    assert info.value.request.url == "http://127.0.0.1:8000/fine_tuning/jobs/ftjob-1"


def test_connection_error_with_v1_names_the_url_without_the_hint():
    client, _ = make_client(Recorder(httpx.ConnectError("refused")), max_retries=0)
    with pytest.raises(errors.APIConnectionError) as info:
        client.files.list(limit=2)
    text = str(info.value)
    assert f"GET {BASE}/files?limit=2" in text and f"gateway running at {BASE}?" in text
    assert "/v1:" not in text and "usually" not in text


def test_timeout_names_the_url_and_hints_at_v1():
    client, _ = make_client(Recorder(httpx.ReadTimeout("slow")), base_url="http://gw.test/api", max_retries=0)
    with pytest.raises(errors.APITimeoutError) as info:
        client.fine_tuning.jobs.cancel("ftjob-1")
    text = str(info.value)
    assert "timed out" in text and "POST http://gw.test/api/fine_tuning/jobs/ftjob-1/cancel" in text
    assert "usually ends with /v1: try http://gw.test/api/v1" in text


def test_unknown_url_404_hints_at_v1_when_base_url_lacks_it():
    reply = error(404, "Unknown request URL: GET /models.", code="unknown_url")
    client, _ = make_client(Recorder(reply), base_url="http://127.0.0.1:8000/")
    with pytest.raises(errors.NotFoundError) as info:
        client.models.list()
    assert info.value.message.startswith("Unknown request URL: GET /models.")
    assert "usually ends with /v1: try http://127.0.0.1:8000/v1" in info.value.message
    assert info.value.code == "unknown_url"


@pytest.mark.parametrize(("base_url", "code"), [(BASE, "unknown_url"), ("http://127.0.0.1:8000", "model_not_found")])
def test_other_404s_get_no_hint(base_url, code):
    client, _ = make_client(Recorder(error(404, "nothing here", code=code)), base_url=base_url)
    with pytest.raises(errors.NotFoundError) as info:
        client.models.retrieve("nope")
    assert info.value.message == "nothing here"


# ---- retries ------------------------------------------------------------------------------------


def test_503_with_retry_after_is_retried_after_that_wait():
    rec = Recorder(error(503, headers={"Retry-After": "2"}), httpx.Response(200, json=job()))
    client, sleeps = make_client(rec)
    assert client.fine_tuning.jobs.cancel("ftjob-1").id == "ftjob-1"
    assert sleeps == [2.0]
    assert len(rec.requests) == 2
    first, second = (r.headers[IDEMPOTENCY_HEADER] for r in rec.requests)
    assert first == second  # one logical call, one key


def test_each_call_gets_its_own_idempotency_key():
    rec = Recorder(httpx.Response(200, json=job()))
    client, _ = make_client(rec)
    client.fine_tuning.jobs.pause("ftjob-1")
    client.fine_tuning.jobs.pause("ftjob-1")
    assert len({r.headers[IDEMPOTENCY_HEADER] for r in rec.requests}) == 2


def test_retry_after_ms_takes_precedence():
    rec = Recorder(error(429, headers={"retry-after-ms": "250", "Retry-After": "9"}), httpx.Response(200, json=job()))
    client, sleeps = make_client(rec)
    client.fine_tuning.jobs.retrieve("ftjob-1")
    assert sleeps == [0.25]


def test_retry_after_http_date_and_cap():
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 27 <= parse_retry_after({"retry-after": date}) <= 30
    assert parse_retry_after({"retry-after": "3600"}) == MAX_RETRY_AFTER
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_server_errors_back_off_exponentially_then_raise():
    rec = Recorder(error(500))
    client, sleeps = make_client(rec)
    with pytest.raises(errors.InternalServerError):
        client.fine_tuning.jobs.retrieve("ftjob-1")
    assert len(rec.requests) == 3
    assert 0.75 * INITIAL_RETRY_DELAY <= sleeps[0] <= INITIAL_RETRY_DELAY
    assert 1.5 * INITIAL_RETRY_DELAY <= sleeps[1] <= 2 * INITIAL_RETRY_DELAY


@pytest.mark.parametrize(
    ("reply", "cls"),
    [
        (error(409, headers={"x-should-retry": "false"}), errors.ConflictError),
        (error(409), errors.ConflictError),
        (error(400), errors.BadRequestError),
        (error(503, headers={"x-should-retry": "false"}), errors.ServiceUnavailableError),
    ],
)
def test_not_retried(reply, cls):
    rec = Recorder(reply)
    client, sleeps = make_client(rec)
    with pytest.raises(cls):
        client.fine_tuning.jobs.cancel("ftjob-1")
    assert len(rec.requests) == 1 and sleeps == []


def test_409_retried_when_server_says_so():
    rec = Recorder(error(409, headers={"x-should-retry": "true"}), httpx.Response(200, json=job()))
    client, sleeps = make_client(rec)
    client.fine_tuning.jobs.pause("ftjob-1")
    assert len(rec.requests) == 2 and len(sleeps) == 1


def test_connection_errors_are_retried_then_raised():
    rec = Recorder(httpx.ConnectError("refused"))
    client, sleeps = make_client(rec)
    with pytest.raises(errors.APIConnectionError) as info:
        client.fine_tuning.jobs.retrieve("ftjob-1")
    assert not isinstance(info.value, errors.APITimeoutError)
    assert len(rec.requests) == 3 and len(sleeps) == 2


def test_connection_error_then_success():
    rec = Recorder(httpx.ConnectError("refused"), httpx.Response(200, json=job()))
    client, sleeps = make_client(rec)
    assert client.fine_tuning.jobs.retrieve("ftjob-1").status == "running"
    assert len(sleeps) == 1


def test_timeout_raises_api_timeout_error():
    rec = Recorder(httpx.ReadTimeout("slow"))
    client, _ = make_client(rec, max_retries=1)
    with pytest.raises(errors.APITimeoutError) as info:
        client.fine_tuning.jobs.retrieve("ftjob-1")
    assert isinstance(info.value, errors.APIConnectionError)
    assert len(rec.requests) == 2


def test_with_options_changes_retries_and_shares_the_connection():
    rec = Recorder(error(500))
    client, sleeps = make_client(rec)
    with pytest.raises(errors.InternalServerError):
        client.with_options(max_retries=0).fine_tuning.jobs.retrieve("ftjob-1")
    assert len(rec.requests) == 1 and sleeps == []
    assert client.max_retries == 2  # the original is unchanged
