"""Client resources: fine-tuning jobs, cursor pages, files, models and the split step exchange."""

from __future__ import annotations

import json

import httpx
import pytest

from client_sdk import errors
from client_sdk._constants import IDEMPOTENCY_HEADER
from client_sdk.client import Client, SyncCursorPage, SyncPage
from client_sdk.types import FileObject, FineTuningJob, FineTuningJobEvent, JobHyperparameters, Model
from tests.client_sdk.test_client import BASE, Recorder, error, job, make_client, paged


def event(i: int) -> dict:
    data = {"step": i, "train_loss": 1.0 / i}
    return {
        "id": f"ft-event-{i}",
        "created_at": i,
        "level": "info",
        "message": f"step {i}",
        "type": "metrics",
        "data": data,
    }


def file_obj(file_id: str = "file-1", **kw) -> dict:
    return {
        "id": file_id,
        "object": "file",
        "bytes": 3,
        "created_at": 1,
        "filename": "d.jsonl",
        "purpose": "fine-tune",
        **kw,
    }


# ---- cursor pages -------------------------------------------------------------------------------


def test_iterating_a_page_walks_all_pages_lazily():
    items = [job(f"ftjob-{i}") for i in range(7, 0, -1)]
    rec = Recorder(paged(items))
    client, _ = make_client(rec)
    page = client.fine_tuning.jobs.list(limit=3)
    assert isinstance(page, SyncCursorPage) and len(rec.requests) == 1
    walker = iter(page)
    assert [next(walker).id for _ in range(3)] == ["ftjob-7", "ftjob-6", "ftjob-5"]
    assert len(rec.requests) == 1  # the first page's items cost nothing more
    assert next(walker).id == "ftjob-4"
    assert len(rec.requests) == 2  # the second page is fetched only when its first item is asked for
    assert [j.id for j in walker] == ["ftjob-3", "ftjob-2", "ftjob-1"]
    assert [r.url.params.get("after") for r in rec.requests] == [None, "ftjob-5", "ftjob-2"]
    assert all(r.url.params["limit"] == "3" for r in rec.requests)
    assert all(isinstance(j, FineTuningJob) for j in page)  # a page can be walked again


def test_next_page_fetches_after_the_last_item():
    items = [job(f"ftjob-{i}") for i in range(5, 0, -1)]
    rec = Recorder(paged(items))
    client, _ = make_client(rec)
    first = client.fine_tuning.jobs.list(limit=2)
    assert (first.has_more, first.first_id, first.last_id, first.next_after) == (True, "ftjob-5", "ftjob-4", "ftjob-4")
    assert first.has_next_page()
    second = first.next_page()
    assert [j.id for j in second.data] == ["ftjob-3", "ftjob-2"]
    assert rec.requests[-1].url.params["after"] == "ftjob-4"
    last = second.next_page()
    assert [j.id for j in last.data] == ["ftjob-1"] and not last.has_more
    assert not last.has_next_page() and last.next_after is None
    with pytest.raises(RuntimeError, match="has_next_page"):
        last.next_page()
    assert len(rec.requests) == 3
    assert [p.data[0].id for p in first.iter_pages()] == ["ftjob-5", "ftjob-3", "ftjob-1"]


def test_an_empty_page_ends_the_walk_even_if_it_claims_more():
    rec = Recorder(httpx.Response(200, json={"object": "list", "data": [], "has_more": True}))
    client, _ = make_client(rec)
    page = client.fine_tuning.jobs.list()
    assert list(page) == [] and not page.has_next_page()
    assert len(rec.requests) == 1


def test_list_jobs_keeps_the_metadata_filter_on_every_page():
    rec = Recorder(paged([job("ftjob-2"), job("ftjob-1")]))
    client, _ = make_client(rec)
    page = client.fine_tuning.jobs.list(limit=1, metadata={"team": "nlp", "run": "a b"})
    assert isinstance(page.data[0], FineTuningJob)
    assert [j.id for j in page] == ["ftjob-2", "ftjob-1"]
    for request in rec.requests:
        assert request.url.params["metadata[team]"] == "nlp" and request.url.params["metadata[run]"] == "a b"
    assert rec.requests[1].url.params["after"] == "ftjob-2"


def test_events_and_checkpoints_are_pages():
    rec = Recorder(paged([event(i) for i in range(5, 0, -1)]))
    client, _ = make_client(rec)
    events = client.fine_tuning.jobs.list_events("ftjob-1", limit=2)
    assert isinstance(events.data[0], FineTuningJobEvent)
    assert [e.data["step"] for e in events] == [5, 4, 3, 2, 1]
    assert {r.url.path for r in rec.requests} == {"/v1/fine_tuning/jobs/ftjob-1/events"}
    assert len(rec.requests) == 3
    ckpt = {
        "id": "ftckpt_1",
        "created_at": 1,
        "fine_tuned_model_checkpoint": "ft:m:org::ftjob-1:ckpt-step-10",
        "fine_tuning_job_id": "ftjob-1",
        "step_number": 10,
        "metrics": {"step": 10, "train_loss": 0.5},
    }
    rec = Recorder(paged([ckpt]))
    client, _ = make_client(rec)
    page = client.fine_tuning.jobs.checkpoints.list("ftjob-1", limit=5)
    assert page.data[0].step_number == 10 and [c.id for c in page] == ["ftckpt_1"]
    assert rec.requests[0].url.path == "/v1/fine_tuning/jobs/ftjob-1/checkpoints"
    assert rec.requests[0].url.params["limit"] == "5"


# ---- jobs ---------------------------------------------------------------------------------------


def test_create_sends_only_given_fields_and_keeps_extra_response_fields():
    hp = {"batch_size": 8, "learning_rate_multiplier": "auto", "n_epochs": 2}
    reply = job(status="queued", total_steps=100, queue_position=2, hyperparameters=hp)
    rec = Recorder(httpx.Response(200, json=reply))
    client, _ = make_client(rec)
    method = {"type": "privtune", "privtune": {"split_layer": 2}}
    created = client.fine_tuning.jobs.create(model="smollm2-135m", method=method, seed=7, metadata={"k": "v"})
    request = rec.requests[0]
    assert request.method == "POST" and request.url.path == "/v1/fine_tuning/jobs"
    assert json.loads(request.content) == {"model": "smollm2-135m", "method": method, "seed": 7, "metadata": {"k": "v"}}
    assert created.total_steps == 100 and created.queue_position == 2 and not created.is_terminal
    assert isinstance(created.hyperparameters, JobHyperparameters) and created.hyperparameters.n_epochs == 2
    assert created.hyperparameters.learning_rate_multiplier == "auto"


def test_create_sends_extra_keys_as_they_are():
    rec = Recorder(httpx.Response(200, json=job()))
    client, _ = make_client(rec)
    client.fine_tuning.jobs.create(model="m", training_file="file-1", suffix="s", integrations=[])
    assert json.loads(rec.requests[0].content) == {
        "model": "m",
        "training_file": "file-1",
        "suffix": "s",
        "integrations": [],
    }


@pytest.mark.parametrize(("action", "status"), [("cancel", "cancelled"), ("pause", "paused"), ("resume", "queued")])
def test_job_actions_post_and_return_the_job(action, status):
    rec = Recorder(httpx.Response(200, json=job(status=status)))
    client, _ = make_client(rec)
    assert getattr(client.fine_tuning.jobs, action)("ftjob/1").status == status
    request = rec.requests[0]
    assert request.method == "POST" and request.content == b""
    assert request.url.raw_path.decode() == f"/v1/fine_tuning/jobs/ftjob%2F1/{action}"  # ids are one segment


# ---- files and models ---------------------------------------------------------------------------


def test_files_create_is_multipart_with_purpose(tmp_path):
    rec = Recorder(httpx.Response(200, json=file_obj()))
    client, _ = make_client(rec)
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"{}\n")
    assert client.files.create(path).id == "file-1"
    request = rec.requests[0]
    assert request.method == "POST" and request.url.path == "/v1/files"
    assert request.headers["Content-Type"].startswith("multipart/form-data")
    assert b'filename="d.jsonl"' in request.content and b"fine-tune" in request.content
    client.files.create(b"raw", filename="x.safetensors", purpose="batch")
    assert b'filename="x.safetensors"' in rec.requests[1].content and b"batch" in rec.requests[1].content
    with pytest.raises(ValueError, match="filename"):
        client.files.create(b"raw")


def test_file_endpoints():
    rec = Recorder(paged([file_obj("file-2"), file_obj("file-1")]))
    client, _ = make_client(rec)
    page = client.files.list(limit=1)
    assert isinstance(page.data[0], FileObject) and [f.id for f in page] == ["file-2", "file-1"]
    assert rec.requests[-1].url.params["after"] == "file-2"

    rec = Recorder(httpx.Response(200, json=file_obj()))
    client, _ = make_client(rec)
    assert client.files.retrieve("file-1").filename == "d.jsonl"
    rec = Recorder(httpx.Response(200, json={"id": "file-1", "object": "file", "deleted": True}))
    client, _ = make_client(rec)
    assert client.files.delete("file-1").deleted
    assert rec.requests[0].method == "DELETE" and rec.requests[0].url.path == "/v1/files/file-1"
    rec = Recorder(httpx.Response(200, content=b"\x00raw bytes"))
    client, _ = make_client(rec)
    assert client.files.content("file-1") == b"\x00raw bytes"
    assert rec.requests[0].url.path == "/v1/files/file-1/content"


def test_models_list_is_one_iterable_page_with_privtune_limits():
    limits = {"split_layers": [1, 2, 3], "max_tokens": 512}
    models = [
        {"id": "smollm2-135m", "object": "model", "created": 0, "owned_by": "privtune", "privtune": limits},
        {"id": "ft:smollm2-135m:org:x:ftjob-1", "object": "model", "created": 5, "owned_by": "org"},
    ]
    rec = Recorder(httpx.Response(200, json={"object": "list", "data": models}))
    client, _ = make_client(rec)
    page = client.models.list()
    assert isinstance(page, SyncPage) and not page.has_next_page()
    assert [m.id for m in page] == [m["id"] for m in models] and len(page.data) == 2
    assert isinstance(page.data[0], Model) and page.data[0].privtune == limits and page.data[1].privtune is None
    assert len(rec.requests) == 1 and "after" not in rec.requests[0].url.params


def test_models_retrieve():
    model = {"id": "ft:smollm2-135m:org:x:ftjob-1", "object": "model", "created": 1, "owned_by": "org"}
    rec = Recorder(httpx.Response(200, json=model))
    client, _ = make_client(rec)
    assert client.models.retrieve(model["id"]).owned_by == "org"
    assert rec.requests[0].url.path == "/v1/models/ft:smollm2-135m:org:x:ftjob-1"
    client, _ = make_client(Recorder(error(404, "no model", code="model_not_found")))
    with pytest.raises(errors.NotFoundError):
        client.models.retrieve("nope")


# ---- split steps --------------------------------------------------------------------------------


def test_post_step_sends_and_returns_octet_stream():
    rec = Recorder(httpx.Response(200, content=b"\x01reply", headers={"Content-Type": "application/octet-stream"}))
    client, _ = make_client(rec)
    assert client.fine_tuning.jobs.post_step("ftjob-1", b"\x00payload") == b"\x01reply"
    request = rec.requests[0]
    assert request.method == "POST" and str(request.url) == f"{BASE}/fine_tuning/jobs/ftjob-1/steps"
    assert request.headers["Content-Type"] == "application/octet-stream"
    assert request.headers["Accept"] == "application/octet-stream"
    assert request.content == b"\x00payload"


def test_post_step_retries_transient_failures_with_the_same_key():
    rec = Recorder(error(504), httpx.ReadTimeout("worker busy"), httpx.Response(200, content=b"ok"))
    client, sleeps = make_client(rec)
    assert client.fine_tuning.jobs.post_step("ftjob-1", b"p") == b"ok"
    assert len(rec.requests) == 3 and len(sleeps) == 2
    assert len({r.headers[IDEMPOTENCY_HEADER] for r in rec.requests}) == 1
    assert all(r.content == b"p" for r in rec.requests)


def test_complete_with_and_without_payload():
    rec = Recorder(httpx.Response(200, json=job(status="succeeded")))
    client, _ = make_client(rec)
    assert client.fine_tuning.jobs.complete("ftjob-1", b"final").is_terminal
    assert client.fine_tuning.jobs.complete("ftjob-1").status == "succeeded"
    with_body, without = rec.requests
    assert with_body.content == b"final" and with_body.headers["Content-Type"] == "application/octet-stream"
    assert without.content == b"" and without.url.path == "/v1/fine_tuning/jobs/ftjob-1/complete"


def test_a_client_is_a_context_manager_that_closes_only_its_own_pool():
    http = httpx.Client(transport=httpx.MockTransport(Recorder(httpx.Response(200, json=job()))))
    with Client(BASE, "sk-test", http_client=http) as client:
        client.fine_tuning.jobs.retrieve("ftjob-1")
    assert not http.is_closed
    http.close()
