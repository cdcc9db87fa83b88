"""The official OpenAI Python client, unmodified, against the gateway (Starlette's TestClient is the
httpx.Client it sends through)."""

from __future__ import annotations

import numpy as np
import openai
import pytest

from client_sdk import wire
from service.db import repo
from tests.api.conftest import job_body


@pytest.fixture
def sdk(env):
    requests: list[str] = []
    env.client.event_hooks["request"].append(lambda request: requests.append(f"{request.method} {request.url.path}"))
    client = openai.OpenAI(base_url="http://testserver/v1", api_key=env.key, http_client=env.client, max_retries=2)
    client.requests = requests  # type: ignore[attr-defined]
    return client


def _privatized_file(n: int = 4) -> bytes:
    tensors = {
        "hidden": np.random.default_rng(0).normal(size=(n, 6, 384)).astype(np.float32),
        "attention_mask": np.ones((n, 6), dtype=np.uint8),
        "labels": np.arange(n, dtype=np.int64) % 2,
    }
    extra = {"model": "minilm-l6", "split_layer": "2", "num_labels": "2", "mechanism": "privtune"}
    return wire.encode(tensors, wire.WireHeader(job_id="upload", step=0, kind="privatized_batch", extra=extra))


def test_jobs_lifecycle_with_official_client(env, sdk):
    created = [env.create_job(total_steps=5)["id"] for _ in range(3)]
    listed = sdk.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in listed.data] == [created[-1]] and listed.has_more
    assert [j.id for j in sdk.fine_tuning.jobs.list(limit=1)] == created[::-1]  # auto-paging, newest first
    job = sdk.fine_tuning.jobs.retrieve(created[0])
    assert job.status == "queued" and job.method.type == "privtune"
    assert job.model_extra["total_steps"] == 5 and job.model_extra["steps_completed"] == 0

    env.run_job(created[0])
    paused = sdk.fine_tuning.jobs.pause(created[0])
    assert paused.status == "paused"
    with env.session() as s:
        repo.release_job(s, created[0], "worker-1", "paused")
    assert sdk.fine_tuning.jobs.resume(created[0]).status == "queued"
    cancelled = sdk.fine_tuning.jobs.cancel(created[0])
    assert cancelled.status == "cancelled"

    sdk.requests.clear()
    with pytest.raises(openai.ConflictError) as excinfo:
        sdk.fine_tuning.jobs.cancel(created[0])
    assert sdk.requests == [f"POST /v1/fine_tuning/jobs/{created[0]}/cancel"]  # no retry
    assert excinfo.value.response.headers["x-should-retry"] == "false"
    assert excinfo.value.body["code"] == "invalid_job_status"

    events = list(sdk.fine_tuning.jobs.list_events(created[0], limit=2))
    assert events[0].message == "Job cancelled" and events[-1].message == "Job created"
    with env.session() as s:
        repo.add_checkpoint(s, created[1], 3, {"train_loss": 0.25}, "/tmp/ckpt")
    ckpts = sdk.fine_tuning.jobs.checkpoints.list(created[1])
    assert [c.step_number for c in ckpts.data] == [3] and ckpts.data[0].metrics.train_loss == 0.25


def test_metadata_filter_with_official_client(env, sdk):
    body = job_body()
    body["metadata"] = {"project": "x"}
    tagged = env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.headers()).json()["id"]
    env.create_job()
    assert [j.id for j in sdk.fine_tuning.jobs.list(metadata={"project": "x"})] == [tagged]


def test_errors_with_official_client(env, sdk):
    with pytest.raises(openai.NotFoundError):
        sdk.fine_tuning.jobs.retrieve("ftjob-missing")
    with pytest.raises(openai.BadRequestError) as excinfo:
        sdk.fine_tuning.jobs.create(model="nope", training_file="file-x")
    assert excinfo.value.param == "model"
    bad_key = openai.OpenAI(base_url="http://testserver/v1", api_key="sk-pt-wrong", http_client=env.client)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()


def test_files_models_and_upload_mode_with_official_client(env, sdk):
    with pytest.raises(openai.BadRequestError) as excinfo:
        sdk.files.create(file=("train.jsonl", b'{"text": "my secret"}\n', "application/jsonl"), purpose="fine-tune")
    assert "privatized" in excinfo.value.message and excinfo.value.param == "file"

    data = _privatized_file()
    uploaded = sdk.files.create(file=("train.safetensors", data), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(data) and uploaded.purpose == "fine-tune"
    assert [f.id for f in sdk.files.list()] == [uploaded.id]
    assert sdk.files.retrieve(uploaded.id).filename == "train.safetensors"
    assert sdk.files.content(uploaded.id).content == data

    job = sdk.fine_tuning.jobs.create(
        model="minilm-l6",
        training_file=uploaded.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 2}}},
        suffix="demo",
        seed=7,
    )
    assert job.training_file == uploaded.id and job.seed == 7 and job.status == "queued"
    assert job.method.type == "supervised"
    privtune = job.method.model_extra["privtune"]
    assert privtune["split_layer"] == 2 and privtune["privacy"]["mechanism"] == "privtune"
    assert privtune["num_labels"] == 2 and privtune["batch_size"] == 2 and privtune["n_epochs"] == 2
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 2

    base = [m.id for m in sdk.models.list()]
    assert base[:2] == ["minilm-l6", "smollm2-135m"] or set(base) >= {"minilm-l6", "smollm2-135m"}
    assert sdk.models.retrieve("minilm-l6").owned_by == "privtune"
    env.run_job(job.id)
    with env.session() as s:
        assert repo.finish_job(s, job.id, "worker-1", "succeeded", trained_tokens=100)
    finished = sdk.fine_tuning.jobs.retrieve(job.id)
    assert finished.fine_tuned_model == f"ft:minilm-l6:acme:demo:{job.id}" and finished.trained_tokens == 100
    assert finished.fine_tuned_model in [m.id for m in sdk.models.list()]
    assert sdk.models.retrieve(finished.fine_tuned_model).owned_by == env.org_id
    sdk.requests.clear()
    with pytest.raises(openai.ConflictError):  # cancelling a finished job: 409, not retried
        sdk.fine_tuning.jobs.cancel(job.id)
    assert sdk.requests == [f"POST /v1/fine_tuning/jobs/{job.id}/cancel"]
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("ft:minilm-l6:acme:demo:ftjob-other")

    deleted = sdk.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(uploaded.id)
