"""HTTP client: error mapping, retries, pagination, bottom downloads and the step exchange.

Every test talks to an ``httpx.MockTransport``; nothing touches the network.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
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
from client_sdk.types import FineTuningJob

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


def make_client(handler: Handler, **kw) -> tuple[Client, list[float]]:
    sleeps: list[float] = []
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return Client(BASE, "sk-test", http_client=http, sleep=sleeps.append, **kw), sleeps


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


# ---- configuration and headers ------------------------------------------------------------------


def test_every_request_is_authenticated_and_posts_carry_an_idempotency_key():
    rec = Recorder(httpx.Response(200, json=job()))
    client, _ = make_client(rec)
    client.retrieve_job("ftjob-1")
    client.cancel_job("ftjob-1")
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
        assert client.list_models() == []
    assert str(rec.requests[0].url) == "http://env.test/v1/models"
    assert rec.requests[0].headers["Authorization"] == "Bearer sk-env"


def test_importing_the_client_does_not_import_torch():
    code = "import sys, client_sdk.client; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


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
        client.retrieve_job("ftjob-1")
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
        client.create_job(model="x")
    client, _ = make_client(Recorder(httpx.Response(404, text="not here")))
    with pytest.raises(errors.NotFoundError, match="not here"):
        client.retrieve_job("x")


def test_malformed_success_body_raises_response_validation_error():
    client, _ = make_client(Recorder(httpx.Response(200, text="<html>")))
    with pytest.raises(errors.APIResponseValidationError):
        client.retrieve_job("ftjob-1")
    client, _ = make_client(Recorder(httpx.Response(200, json={"id": "ftjob-1"})))
    with pytest.raises(errors.APIResponseValidationError, match="FineTuningJob"):
        client.retrieve_job("ftjob-1")


@pytest.mark.parametrize(
    ("extra", "message", "expected"),
    [
        ({"expected_step": 5}, "step 9 is out of order", 5),
        ({}, "step 9 is out of order; expected step 7", 7),
        ({}, "out of order", None),
    ],
)
def test_step_out_of_order_carries_expected_step(extra, message, expected):
    reply = error(409, message, code="step_out_of_order", headers={"x-should-retry": "false"}, **extra)
    rec = Recorder(reply)
    client, sleeps = make_client(rec)
    with pytest.raises(errors.StepOutOfOrderError) as info:
        client.post_step("ftjob-1", b"payload")
    assert isinstance(info.value, errors.ConflictError)
    assert info.value.expected_step == expected
    assert len(rec.requests) == 1 and sleeps == []


def test_expected_step_read_from_top_level_of_body():
    body = {"error": {"message": "m", "type": "t", "param": None, "code": "step_out_of_order"}, "expected_step": 3}
    client, _ = make_client(Recorder(httpx.Response(409, json=body)))
    with pytest.raises(errors.StepOutOfOrderError) as info:
        client.post_step("ftjob-1", b"p")
    assert info.value.expected_step == 3


# ---- retries ------------------------------------------------------------------------------------


def test_503_with_retry_after_is_retried_after_that_wait():
    rec = Recorder(error(503, headers={"Retry-After": "2"}), httpx.Response(200, json=job()))
    client, sleeps = make_client(rec)
    assert client.cancel_job("ftjob-1").id == "ftjob-1"
    assert sleeps == [2.0]
    assert len(rec.requests) == 2
    first, second = (r.headers[IDEMPOTENCY_HEADER] for r in rec.requests)
    assert first == second  # one logical call, one key


def test_retry_after_ms_takes_precedence():
    rec = Recorder(error(429, headers={"retry-after-ms": "250", "Retry-After": "9"}), httpx.Response(200, json=job()))
    client, sleeps = make_client(rec)
    client.retrieve_job("ftjob-1")
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
        client.retrieve_job("ftjob-1")
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
        client.cancel_job("ftjob-1")
    assert len(rec.requests) == 1 and sleeps == []


def test_409_retried_when_server_says_so():
    rec = Recorder(error(409, headers={"x-should-retry": "true"}), httpx.Response(200, json=job()))
    client, sleeps = make_client(rec)
    client.pause_job("ftjob-1")
    assert len(rec.requests) == 2 and len(sleeps) == 1


def test_connection_errors_are_retried_then_raised():
    rec = Recorder(httpx.ConnectError("refused"))
    client, sleeps = make_client(rec)
    with pytest.raises(errors.APIConnectionError) as info:
        client.retrieve_job("ftjob-1")
    assert not isinstance(info.value, errors.APITimeoutError)
    assert len(rec.requests) == 3 and len(sleeps) == 2


def test_connection_error_then_success():
    rec = Recorder(httpx.ConnectError("refused"), httpx.Response(200, json=job()))
    client, sleeps = make_client(rec)
    assert client.retrieve_job("ftjob-1").status == "running"
    assert len(sleeps) == 1


def test_timeout_raises_api_timeout_error():
    rec = Recorder(httpx.ReadTimeout("slow"))
    client, _ = make_client(rec, max_retries=1)
    with pytest.raises(errors.APITimeoutError) as info:
        client.retrieve_job("ftjob-1")
    assert isinstance(info.value, errors.APIConnectionError)
    assert len(rec.requests) == 2


def test_with_options_changes_retries_and_shares_the_connection():
    rec = Recorder(error(500))
    client, sleeps = make_client(rec)
    with pytest.raises(errors.InternalServerError):
        client.with_options(max_retries=0).retrieve_job("ftjob-1")
    assert len(rec.requests) == 1 and sleeps == []


# ---- jobs, pagination, files, models -------------------------------------------------------------


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


def test_iter_jobs_walks_all_pages_with_after():
    items = [job(f"ftjob-{i}") for i in range(7, 0, -1)]
    rec = Recorder(paged(items))
    client, _ = make_client(rec)
    assert [j.id for j in client.iter_jobs(limit=3)] == [item["id"] for item in items]
    assert [r.url.params.get("after") for r in rec.requests] == [None, "ftjob-5", "ftjob-2"]
    assert all(r.url.params["limit"] == "3" for r in rec.requests)


def test_list_jobs_encodes_metadata_filter():
    rec = Recorder(paged([job()]))
    client, _ = make_client(rec)
    page = client.list_jobs(limit=5, metadata={"team": "nlp", "run": "a b"})
    assert isinstance(page.data[0], FineTuningJob) and page.next_after is None
    params = rec.requests[0].url.params
    assert params["metadata[team]"] == "nlp" and params["metadata[run]"] == "a b"


def test_iter_events_and_checkpoints():
    events = [
        {"id": f"ft-event-{i}", "created_at": i, "level": "info", "message": f"step {i}", "type": "metrics",
         "data": {"step": i, "train_loss": 1.0 / i}}
        for i in range(5, 0, -1)
    ]  # fmt: skip
    rec = Recorder(paged(events))
    client, _ = make_client(rec)
    got = list(client.iter_events("ftjob-1", limit=2))
    assert [e.data["step"] for e in got] == [5, 4, 3, 2, 1]
    assert rec.requests[0].url.path == "/v1/fine_tuning/jobs/ftjob-1/events"
    ckpt = {
        "id": "ftckpt_1", "created_at": 1, "fine_tuned_model_checkpoint": "ft:m:org::ftjob-1:ckpt-step-10",
        "fine_tuning_job_id": "ftjob-1", "step_number": 10, "metrics": {"step": 10, "train_loss": 0.5},
    }  # fmt: skip
    client, _ = make_client(Recorder(paged([ckpt])))
    assert client.list_checkpoints("ftjob-1").data[0].step_number == 10


def test_create_job_sends_only_given_fields_and_keeps_extra_response_fields():
    rec = Recorder(httpx.Response(200, json=job(status="queued", total_steps=100, queue_position=2)))
    client, _ = make_client(rec)
    method = {"type": "privtune", "privtune": {"split_layer": 2}}
    created = client.create_job(model="smollm2-135m", method=method, seed=7, metadata={"k": "v"})
    sent = json.loads(rec.requests[0].content)
    assert sent == {"model": "smollm2-135m", "method": method, "seed": 7, "metadata": {"k": "v"}}
    assert created.total_steps == 100 and created.queue_position == 2 and not created.is_terminal


def test_upload_file_is_multipart_with_purpose(tmp_path):
    file_obj = {"id": "file-1", "bytes": 3, "created_at": 1, "filename": "d.jsonl", "purpose": "fine-tune"}
    rec = Recorder(httpx.Response(200, json=file_obj))
    client, _ = make_client(rec)
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"{}\n")
    assert client.upload_file(path).id == "file-1"
    request = rec.requests[0]
    assert request.headers["Content-Type"].startswith("multipart/form-data")
    assert b'filename="d.jsonl"' in request.content and b"fine-tune" in request.content
    with pytest.raises(ValueError, match="filename"):
        client.upload_file(b"raw")


def test_models_and_file_endpoints():
    model = {"id": "ft:smollm2-135m:org:x:ftjob-1", "object": "model", "created": 1, "owned_by": "org"}
    rec = Recorder(httpx.Response(200, json=model))
    client, _ = make_client(rec)
    assert client.retrieve_model(model["id"]).owned_by == "org"
    assert rec.requests[0].url.path == "/v1/models/ft:smollm2-135m:org:x:ftjob-1"
    rec = Recorder(httpx.Response(200, json={"id": "file-1", "object": "file", "deleted": True}))
    client, _ = make_client(rec)
    assert client.delete_file("file-1").deleted
    assert rec.requests[0].method == "DELETE"


# ---- split steps --------------------------------------------------------------------------------


def test_post_step_sends_and_returns_octet_stream():
    rec = Recorder(httpx.Response(200, content=b"\x01reply", headers={"Content-Type": "application/octet-stream"}))
    client, _ = make_client(rec)
    assert client.post_step("ftjob-1", b"\x00payload") == b"\x01reply"
    request = rec.requests[0]
    assert request.method == "POST" and request.url.path == "/v1/fine_tuning/jobs/ftjob-1/steps"
    assert request.headers["Content-Type"] == "application/octet-stream"
    assert request.content == b"\x00payload"


def test_post_step_retries_transient_failures_with_the_same_key():
    rec = Recorder(error(504), httpx.ReadTimeout("worker busy"), httpx.Response(200, content=b"ok"))
    client, sleeps = make_client(rec)
    assert client.post_step("ftjob-1", b"p") == b"ok"
    assert len(rec.requests) == 3 and len(sleeps) == 2
    assert len({r.headers[IDEMPOTENCY_HEADER] for r in rec.requests}) == 1
    assert all(r.content == b"p" for r in rec.requests)


def test_complete_job_with_and_without_payload():
    rec = Recorder(httpx.Response(200, json=job(status="succeeded")))
    client, _ = make_client(rec)
    assert client.complete_job("ftjob-1", b"final").is_terminal
    assert client.complete_job("ftjob-1").status == "succeeded"
    with_body, without = rec.requests
    assert with_body.content == b"final" and with_body.headers["Content-Type"] == "application/octet-stream"
    assert without.content == b"" and without.url.path == "/v1/fine_tuning/jobs/ftjob-1/complete"


# ---- bottom models ------------------------------------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


FILES = {"model.safetensors": b"weights" * 1000, "config.json": b"{}", "tokenizer.json": b'{"v": 1}'}


def manifest_for(files: dict[str, bytes], **overrides) -> dict:
    hashes = {name: sha(data) for name, data in files.items()}
    digest = sha("".join(sorted(hashes.values())).encode())
    base = {"model": "smollm2-135m", "family": "llama", "split_layer": 2, "hidden_size": 576, "vocab_size": 49152,
            "num_layers": 30, "files": hashes, "digest": digest, "format_version": 1}  # fmt: skip
    return base | overrides


def bottom_server(manifest: dict, served: dict[str, bytes]) -> Handler:
    prefix = "/v1/privtune/bottoms/smollm2-135m/2"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == prefix:
            return httpx.Response(200, json=manifest)
        name = request.url.path.removeprefix(prefix + "/files/")
        if name in served:
            return httpx.Response(200, content=served[name], headers={"ETag": f'"{sha(served[name])}"'})
        return error(404)

    return handler


def test_download_bottom_verifies_and_caches(tmp_path):
    manifest = manifest_for(FILES)
    rec = Recorder(bottom_server(manifest, FILES))
    client, _ = make_client(rec)
    path = client.download_bottom("smollm2-135m", 2, cache_dir=tmp_path)
    assert path == tmp_path / manifest["digest"]
    for name, data in FILES.items():
        assert (path / name).read_bytes() == data
    saved = json.loads((path / "manifest.json").read_text())
    assert saved["files"] == manifest["files"] and saved["format_version"] == 1
    assert sorted(p.name for p in path.iterdir()) == sorted([*FILES, "manifest.json"])  # no temp files
    assert len(rec.requests) == 1 + len(FILES)

    rec.requests.clear()
    assert client.download_bottom("smollm2-135m", 2, cache_dir=tmp_path) == path
    assert [r.url.path for r in rec.requests] == ["/v1/privtune/bottoms/smollm2-135m/2"]


def test_download_bottom_matches_the_artifact_module(tmp_path):
    artifact = pytest.importorskip("client_sdk.models.artifact")
    client, _ = make_client(Recorder(bottom_server(manifest_for(FILES), FILES)))
    path = client.download_bottom("smollm2-135m", 2, cache_dir=tmp_path)
    assert artifact.verify_artifact(path)["digest"] == path.name


def test_download_bottom_replaces_a_damaged_cached_file(tmp_path):
    manifest = manifest_for(FILES)
    rec = Recorder(bottom_server(manifest, FILES))
    client, _ = make_client(rec)
    path = client.download_bottom("smollm2-135m", 2, cache_dir=tmp_path)
    (path / "config.json").write_bytes(b"tampered")
    rec.requests.clear()
    client.download_bottom("smollm2-135m", 2, cache_dir=tmp_path)
    assert (path / "config.json").read_bytes() == FILES["config.json"]
    assert [r.url.path.rsplit("/", 1)[-1] for r in rec.requests] == ["2", "config.json"]


def test_corrupted_download_is_rejected_and_leaves_nothing(tmp_path, monkeypatch):
    served = FILES | {"tokenizer.json": b"corrupted"}
    client, _ = make_client(Recorder(bottom_server(manifest_for(FILES), served)))
    with pytest.raises(errors.BottomArtifactError, match=r"tokenizer\.json.*sha256"):
        client.download_bottom("smollm2-135m", 2, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("PRIVTUNE_CACHE_DIR", str(tmp_path / "env"))
    with pytest.raises(errors.BottomArtifactError):
        client.download_bottom("smollm2-135m", 2)
    assert list((tmp_path / "env").iterdir()) == []


@pytest.mark.parametrize("bad", ["../evil.py", "sub/model.safetensors", "..\\evil", ".hidden", "manifest.json", ""])
def test_unsafe_file_names_are_refused_before_any_download(tmp_path, bad):
    files = {**FILES, bad: b"x"}
    rec = Recorder(bottom_server(manifest_for(files), files))
    client, _ = make_client(rec)
    with pytest.raises(errors.BottomArtifactError, match="unsafe"):
        client.download_bottom("smollm2-135m", 2, cache_dir=tmp_path / "cache")
    assert len(rec.requests) == 1
    assert not (tmp_path / "cache").exists() and not (tmp_path / "evil.py").exists()


def test_unsafe_digest_and_wrong_digest_are_refused(tmp_path):
    for manifest, match in [
        (manifest_for(FILES, digest="../../etc"), "unsafe digest"),
        (manifest_for(FILES, digest="0" * 64), "digest does not match"),
    ]:
        client, _ = make_client(Recorder(bottom_server(manifest, FILES)))
        with pytest.raises(errors.BottomArtifactError, match=match):
            client.download_bottom("smollm2-135m", 2, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_manifest_polls_while_the_server_prepares_the_bottom():
    preparing = error(503, "preparing bottom", code="bottom_preparing", headers={"Retry-After": "3"})
    rec = Recorder(preparing, preparing, httpx.Response(200, json=manifest_for(FILES)))
    client, sleeps = make_client(rec)
    manifest = client.get_bottom_manifest("smollm2-135m", 2)
    assert manifest.hidden_size == 576 and manifest.files["config.json"] == sha(b"{}")
    assert sleeps == [3.0, 3.0]  # each poll waits exactly Retry-After; no extra retries inside


def test_manifest_polling_gives_up_after_wait_timeout():
    rec = Recorder(error(503, "preparing bottom", headers={"Retry-After": "4"}))
    client, sleeps = make_client(rec)
    with pytest.raises(errors.ServiceUnavailableError, match="not ready after 10 s"):
        client.get_bottom_manifest("smollm2-135m", 2, wait_timeout=10)
    assert sleeps == [4.0, 4.0, 2.0]
    assert len(rec.requests) == 4
