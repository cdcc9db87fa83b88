"""/v1/files (privatized uploads only) and /v1/models over raw HTTP."""

from __future__ import annotations

import numpy as np
import pytest

from client_sdk import privatized_file, wire
from tests.api.conftest import job_body


def _upload(env, content: bytes, name="train.safetensors", purpose="fine-tune", key=None):
    return env.client.post(
        "/v1/files", files={"file": (name, content)}, data={"purpose": purpose}, headers=env.headers(key)
    )


MANIFEST = privatized_file.Manifest("minilm-l6", 3, 2, ("neg", "pos"), "dchi", {"mechanism": "dchi", "eta": 20.0})


def _batch(kind="privatized_batch", manifest=None, **tensors) -> bytes:
    base = {"hidden": np.zeros((3, 4, 384), np.float32), "labels": np.array([0, 1, 1], np.int64)}
    base.update(tensors)
    base = {k: v for k, v in base.items() if v is not None}
    extra = MANIFEST.to_metadata() if manifest is None else manifest
    return wire.encode(base, wire.WireHeader(job_id="upload", step=0, kind=kind, extra=extra))


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b'{"text": "I love my bank", "label": 1}\n{"text": "secret", "label": 0}\n', 400, "invalid_file_format"),
        (b"plain text that is not a payload at all", 400, "truncated_payload"),
        (b"", 400, "invalid_file_format"),
        (_batch(kind="step"), 400, "invalid_header"),
        (_batch(input_ids=np.zeros((3, 4), np.int64)), 422, "shape_rejected"),  # token ids are refused
        (_batch(labels=None), 422, "shape_rejected"),
        (_batch(hidden=np.zeros((3, 4), np.float32)), 422, "shape_rejected"),
        (_batch(manifest={"model": "minilm-l6"}), 400, "invalid_header"),  # no split layer, labels or mechanism
    ],
)
def test_upload_rejects_anything_but_privatized_batches(env, content, status, code):
    """A refused file gets its wire error's one status (service.errors.WIRE_STATUS) and keeps nothing."""
    r = _upload(env, content)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == "file" and r.json()["error"]["code"] == code
    assert env.client.get("/v1/files", headers=env.headers()).json()["data"] == []
    assert [p.name for p in env.settings.file_dir.iterdir()] == []  # nothing kept on disk


def test_upload_list_retrieve_content_delete(env):
    data = _batch(attention_mask=np.ones((3, 4), np.uint8))
    created = _upload(env, data).json()
    assert created["object"] == "file" and created["bytes"] == len(data) and created["status"] == "processed"
    second = _upload(env, data, name="b.safetensors").json()
    listed = env.client.get("/v1/files?limit=1", headers=env.headers()).json()
    assert [f["id"] for f in listed["data"]] == [second["id"]] and listed["has_more"]
    assert env.client.get(f"/v1/files/{created['id']}", headers=env.headers()).json() == created
    content = env.client.get(f"/v1/files/{created['id']}/content", headers=env.headers())
    assert content.status_code == 200 and content.content == data
    assert env.client.get(f"/v1/files/{created['id']}", headers=env.headers(env.other_key)).status_code == 404
    assert env.client.get(f"/v1/files/{created['id']}/content", headers=env.headers(env.other_key)).status_code == 404
    deleted = env.client.delete(f"/v1/files/{created['id']}", headers=env.headers()).json()
    assert deleted == {"id": created["id"], "object": "file", "deleted": True}
    assert env.client.get(f"/v1/files/{created['id']}", headers=env.headers()).status_code == 404
    assert not (env.settings.file_dir / created["id"]).exists()


def test_upload_rejects_wrong_purpose(env):
    r = _upload(env, _batch(), purpose="assistants")
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"


def test_supervised_job_rejects_generation_and_model_mismatch(env):
    file_id = _upload(env, _batch()).json()["id"]
    body = {"model": "smollm2-135m", "training_file": file_id}
    r = env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.headers())
    assert r.status_code == 400 and r.json()["error"]["param"] == "training_file"
    body = {
        "model": "minilm-l6",
        "training_file": file_id,
        "method": {"type": "supervised", "privtune": {"task": "generation"}},
    }
    r = env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.headers())
    assert r.status_code == 400 and r.json()["error"]["param"] == "method.privtune.task"
    other = env.client.post(
        "/v1/fine_tuning/jobs",
        json={"model": "minilm-l6", "training_file": file_id},
        headers=env.headers(env.other_key),
    )
    assert other.status_code == 400 and other.json()["error"]["param"] == "training_file"


def test_models_list_and_retrieve(env):
    data = env.client.get("/v1/models", headers=env.headers()).json()
    assert data["object"] == "list"
    ids = [m["id"] for m in data["data"]]
    assert {"minilm-l6", "smollm2-135m"} <= set(ids)
    assert all(m["object"] == "model" for m in data["data"])
    assert env.client.get("/v1/models/smollm2-135m", headers=env.headers()).json()["id"] == "smollm2-135m"
    r = env.client.get("/v1/models/gpt-9", headers=env.headers())
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_base_models_publish_this_servers_limits(env):
    """The SDK checks a job against these before any local work (client_sdk.jobspec.check_limits)."""
    listed = {m["id"]: m for m in env.client.get("/v1/models", headers=env.headers()).json()["data"]}
    limits = listed["minilm-l6"]["privtune"]
    assert limits == {
        "max_batch_size": env.settings.max_batch_size,
        "max_tokens": env.settings.max_tokens,
        "num_layers": 6,
        "max_positions": 512,
        "tasks": ["classification"],  # an encoder: no generation
    }
    assert listed["smollm2-135m"]["privtune"]["tasks"] == ["classification", "generation"]
    one = env.client.get("/v1/models/minilm-l6", headers=env.headers()).json()
    assert one["privtune"] == limits
    body = {
        "model": "minilm-l6",
        "method": {"type": "privtune", "privtune": {"num_labels": 2, "total_steps": 1, "split_layer": 6}},
    }
    r = env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.headers())
    assert r.status_code == 400 and r.json()["error"]["param"] == "method.privtune.split_layer"


def test_operator_registered_model_is_offered(env, monkeypatch, tmp_path):
    import json

    from api import catalog

    model_dir = tmp_path / "tiny-bert"
    model_dir.mkdir()
    config = {
        "model_type": "bert",
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "vocab_size": 100,
        "max_position_embeddings": 64,
    }
    (model_dir / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("PRIVTUNE_EXTRA_MODELS", json.dumps({"tiny-bert": str(model_dir)}))
    catalog.describe.cache_clear()
    try:
        ids = [m["id"] for m in env.client.get("/v1/models", headers=env.headers()).json()["data"]]
        assert "tiny-bert" in ids
        job = env.create_job(model="tiny-bert", split_layer=2, max_tokens=16)
        assert job["model"] == "tiny-bert"
        too_long = job_body(model="tiny-bert", max_tokens=100)  # the model has 64 positions
        r = env.client.post("/v1/fine_tuning/jobs", json=too_long, headers=env.headers())
        assert r.status_code == 400 and r.json()["error"]["param"] == "method.privtune.max_tokens"
    finally:
        catalog.describe.cache_clear()


def test_a_refused_upload_says_its_bytes_were_discarded(env):
    jsonl = b'{"text": "I love my bank", "label": 1}\n'
    r = _upload(env, jsonl)
    message = r.json()["error"]["message"]
    assert (
        r.status_code == 400 and f"The {len(jsonl)} bytes received were discarded: not stored and not logged" in message
    )
    assert "client_sdk" in message and "never leaves" not in message
    assert [p.name for p in env.settings.file_dir.iterdir()] == []


def test_an_upload_is_streamed_to_disk_once(env, monkeypatch):
    """No spooled copy: the form parser's spool is never used, and the file goes to one temporary file."""
    import starlette.formparsers

    def no_spool(*args, **kwargs):
        raise AssertionError("the upload was spooled")

    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", no_spool)
    data = _batch(hidden=np.zeros((3, 4, 384), np.float32) + 0.5)
    r = _upload(env, data)
    assert r.status_code == 200, r.text
    assert (env.settings.file_dir / r.json()["id"]).read_bytes() == data


def test_the_openapi_document_describes_the_multipart_upload(env):
    body = env.client.get("/openapi.json").json()["paths"]["/v1/files"]["post"]["requestBody"]
    schema = body["content"]["multipart/form-data"]["schema"]
    assert schema["properties"]["file"]["format"] == "binary" and set(schema["required"]) == {"file", "purpose"}
