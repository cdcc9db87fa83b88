"""Split-training endpoints: bottom-model downloads (with a generation tail), steps and completion (fake
relay). An interactive classification job's gradient is dL/d(representation), (b, d) with d = 384 for
minilm-l6: the head is the device's."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct

import numpy as np
import pytest
from prometheus_client import REGISTRY

from client_sdk import protocol, wire
from service.db import repo
from tests.api.conftest import StepRejected, StepTimeout, step_payload

BINARY = {"content-type": "application/octet-stream"}
D = 384  # minilm-l6's hidden size: the width of the server's output and of its gradient


def _post_step(env, job_id, body, key=None):
    return env.client.post(f"/v1/fine_tuning/jobs/{job_id}/steps", content=body, headers={**env.headers(key), **BINARY})


@pytest.fixture
def running(env):
    job = env.create_job()
    env.run_job(job["id"])
    return job["id"]


def _sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_step_is_relayed_and_reply_returned(env, running):
    body = step_payload(running, step=2, grad=(2, D))
    steps, bytes_in = (
        _sample("privtune_step_seconds_count", kind="step"),
        _sample("privtune_relay_bytes_total", direction="in"),
    )
    bytes_out = _sample("privtune_relay_bytes_total", direction="out")
    r = _post_step(env, running, body)
    assert r.status_code == 200 and r.content == b"reply-bytes"
    assert _sample("privtune_step_seconds_count", kind="step") == steps + 1
    assert _sample("privtune_relay_bytes_total", direction="in") == bytes_in + len(body)
    assert _sample("privtune_relay_bytes_total", direction="out") == bytes_out + len(b"reply-bytes")
    assert r.headers["content-type"] == "application/octet-stream"
    assert env.relay.calls == [(running, 2, body, env.settings.step_timeout_s)]
    metrics = {"metrics": json.dumps({"train_loss": 0.5, "valid_accuracy": 0.75})}  # the device's aggregates
    with_metrics = step_payload(running, step=3, grad=(2, D), extra=metrics)
    assert _post_step(env, running, with_metrics).status_code == 200
    assert env.relay.calls[-1][2] == with_metrics


def test_a_generation_steps_gradient_is_shaped_like_the_hidden_state(env):
    job = env.create_job("smollm2-135m", task="generation", num_labels=None, split_layer=3, tail_layers=2)
    env.run_job(job["id"])
    body = step_payload(job["id"], step=2, hidden=576, grad=(2, 5, 576))
    assert _post_step(env, job["id"], body).status_code == 200 and env.relay.calls[-1][2] == body
    for grad in ((2, 576), (2, 5, 384)):
        r = _post_step(env, job["id"], step_payload(job["id"], step=2, hidden=576, grad=grad))
        assert r.status_code == 422 and r.json()["error"]["param"] == "grad_output"
    assert len(env.relay.calls) == 1


def _unchanged(env, job_id):
    with env.session() as s:
        job = repo.get_job(s, job_id)
    return job["status"] == "running" and job["steps_completed"] == 0


def _raw(entries: dict, data: bytes = b"") -> bytes:
    head = json.dumps(entries).encode()
    return struct.pack("<Q", len(head)) + head + data


META = {"schema": "privtune.wire", "schema_version": "1", "step": "1", "kind": "step"}


def _only(job_id, step=1, extra=None, **tensors):
    return wire.encode(tensors, wire.WireHeader(job_id=job_id, step=step, kind="step", extra=extra or {}))


def test_flush_infer_and_final_payloads_are_relayed(env, running):
    flush = _only(running, step=11, grad_output=np.zeros((2, D), np.float32))
    infer = step_payload(running, step=0, kind="infer")
    final = _only(running, step=0, extra={"final": "1", "last_step": "11"})
    validated = _only(
        running, step=0, extra={"final": "1", "last_step": "11", "metrics": json.dumps({"valid_loss": 0.3})}
    )
    for body in (flush, infer, final, validated):
        r = _post_step(env, running, body)
        assert r.status_code == 200, r.text
    assert [call[2] for call in env.relay.calls] == [flush, infer, final, validated]


@pytest.mark.parametrize(
    ("make", "status", "param"),
    [
        (lambda j: b"not a payload", 400, None),
        (lambda j: pickle.dumps({"hidden": [1.0]}), 400, None),
        (lambda j: b"PK\x03\x04" + b"\0" * 20, 400, None),
        (
            lambda j: _raw(
                {
                    "__metadata__": {**META, "job_id": j},
                    "hidden": {"dtype": "F16", "shape": [10**6, 10**6, 384], "data_offsets": [0, 8]},
                },
                b"\0" * 8,
            ),
            413,
            "hidden",
        ),
        (lambda j: step_payload(j, hidden_dtype=np.int32), 422, "hidden"),
        (lambda j: step_payload(j, hidden=100), 422, "hidden"),
        (lambda j: step_payload(j, batch=9), 422, "hidden"),
        (lambda j: step_payload(j, tokens=17), 422, "hidden"),
        (lambda j: step_payload(j, mask_shape=(2, 4)), 422, "attention_mask"),
        (lambda j: step_payload(j, grad=(2, 3)), 422, "grad_output"),
        (lambda j: step_payload(j, step=2, grad=(2, 2)), 422, "grad_output"),  # dL/d(logits): the head is the device's
        (lambda j: step_payload(j, step=2, grad=(2, 5, D)), 422, "grad_output"),
        (lambda j: step_payload(j, step=2, grad=(2, D), extra={"metrics": "{"}), 400, "metrics"),
        (lambda j: step_payload(j, step=2, grad=(2, D), extra={"metrics": '{"loss": 0.5}'}), 400, "metrics"),
        (lambda j: step_payload(j, extra={"metrics": '{"train_loss": NaN}'}), 400, "metrics"),
        (lambda j: step_payload(j, kind="infer", extra={"metrics": '["valid_loss"]'}), 400, "metrics"),
        (lambda j: _only(j, step=0, extra={"final": "1", "metrics": '{"valid_loss": "0.3"}'}), 400, "metrics"),
        (lambda j: step_payload(j, kind="step_reply"), 400, "kind"),
        (lambda j: step_payload(j, kind="infer", grad=(2, 2)), 422, "grad_output"),
        (lambda j: _only(j, hidden=np.zeros((2, 5, 384), np.float32)), 422, "attention_mask"),
        (lambda j: _only(j, grad_output=np.zeros((2, 3), np.float32)), 422, "grad_output"),
        (lambda j: _only(j, grad_output=np.zeros((2, 2), np.float32)), 422, "grad_output"),  # a flush of logits' grad
        (lambda j: _only(j, extra={"final": "1"}, grad_output=np.zeros((2, D), np.float32)), 422, "grad_output"),
        (lambda j: _only(j, step=0), 400, "step"),
        (lambda j: step_payload("ftjob-someoneelse"), 400, "job_id"),
        (lambda j: step_payload(j, step=0), 400, "step"),
        (
            lambda j: _raw(
                {
                    "__metadata__": {**META, "job_id": j},
                    "hidden": {"dtype": "F16", "shape": [2, 5, 384], "data_offsets": [0, 3840]},
                },
                b"\0" * 100,
            ),
            422,
            "hidden",
        ),
    ],
)
def test_bad_step_payloads_are_rejected_before_the_relay(env, running, make, status, param):
    r = _post_step(env, running, make(running))
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"]
    assert env.relay.calls == [] and _unchanged(env, running)


def test_oversized_step_is_413_before_reading(env, running):
    r = _post_step(env, running, b"\0" * (env.settings.max_step_bytes + 1))
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert env.relay.calls == []


def test_step_for_job_not_running_is_409_without_retry(env):
    job = env.create_job()  # queued: no worker yet
    r = _post_step(env, job["id"], step_payload(job["id"]))
    assert r.status_code == 409 and r.headers["x-should-retry"] == "false"
    assert r.json()["error"]["code"] == "job_not_running" and "queued" in r.json()["error"]["message"]
    assert _post_step(env, job["id"], step_payload(job["id"]), key=env.other_key).status_code == 404
    assert _post_step(env, "ftjob-nope", step_payload("ftjob-nope")).status_code == 404
    assert env.relay.calls == []


def test_worker_rejection_and_timeout_are_mapped(env, running):
    env.relay.error = StepRejected(409, "step_out_of_order", "expected step 4", expected_step=4)
    r = _post_step(env, running, step_payload(running, step=7))
    assert r.status_code == 409 and r.headers["x-should-retry"] == "false"
    assert r.json()["error"]["code"] == "step_out_of_order" and r.json()["error"]["expected_step"] == 4
    env.relay.error = StepTimeout("no reply")
    r = _post_step(env, running, step_payload(running))
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "step_timeout"


def test_complete_relays_the_completion_and_returns_job(env, running):
    final = _only(running, step=0, extra={"final": "1", "last_step": "11"})
    r = env.client.post(f"/v1/fine_tuning/jobs/{running}/complete", content=final, headers={**env.headers(), **BINARY})
    assert r.status_code == 200 and r.json()["id"] == running
    assert env.relay.calls[-1][1:3] == (0, final)
    r = env.client.post(f"/v1/fine_tuning/jobs/{running}/complete", headers=env.headers())  # no body
    assert r.status_code == 200
    header, infos = wire.inspect(env.relay.calls[-1][2])
    total = env.client.get(f"/v1/fine_tuning/jobs/{running}", headers=env.headers()).json()["total_steps"]
    assert total and header.extra == protocol.completion_extra(total + 1)  # every step applied, or refused
    assert infos == {} and header.job_id == running
    for bad in (
        step_payload(running, step=11),
        _only(running, extra={"final": "1"}, grad_output=np.zeros((2, D), np.float32)),
        _only(running, step=0, extra={"final": "1", "metrics": "not json"}),
    ):
        r = env.client.post(f"/v1/fine_tuning/jobs/{running}/complete", content=bad, headers=env.headers())
        assert r.status_code in (400, 422) and len(env.relay.calls) == 2
    with env.session() as s:
        repo.finish_job(s, running, "worker-1", "succeeded")
    r = env.client.post(f"/v1/fine_tuning/jobs/{running}/complete", headers=env.headers())  # a retry after success
    assert r.status_code == 200 and r.json()["status"] == "succeeded" and len(env.relay.calls) == 2


def _export(env, model="minilm-l6", layer=3, tail=0):
    directory = env.settings.bottoms_dir / model / (f"l{layer}-t{tail}" if tail else f"l{layer}")
    directory.mkdir(parents=True)
    weights = b"weights" * 100
    (directory / "model.safetensors").write_bytes(weights)
    (directory / "secret.txt").write_bytes(b"not listed")
    files = {"model.safetensors": hashlib.sha256(weights).hexdigest()}
    if tail:
        (directory / "tail.safetensors").write_bytes(b"tail" * 50)
        files["tail.safetensors"] = hashlib.sha256(b"tail" * 50).hexdigest()
    manifest = {"model": model, "split_layer": layer, "tail_layers": tail, "files": files}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return manifest, weights


def test_bottom_manifest_is_prepared_once_then_served(env):
    url = "/v1/privtune/bottoms/minilm-l6/3"
    for _ in range(2):
        r = env.client.get(url, headers=env.headers())
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert r.json()["error"]["code"] == "bottom_model_preparing"
    assert env.enqueuer.exports == [("minilm-l6", 3, 0)]
    manifest, weights = _export(env)
    r = env.client.get(url, headers=env.headers())
    assert r.status_code == 200 and r.json() == manifest

    file_url = f"{url}/files/model.safetensors"
    r = env.client.get(file_url, headers=env.headers())
    etag = f'"{manifest["files"]["model.safetensors"]}"'
    assert r.status_code == 200 and r.content == weights and r.headers["etag"] == etag
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    r = env.client.get(file_url, headers={**env.headers(), "If-None-Match": etag})
    assert r.status_code == 304 and r.content == b""
    assert env.client.get(f"{url}/files/secret.txt", headers=env.headers()).status_code == 404
    assert env.client.get(f"{url}/files/..%2Fmanifest.json", headers=env.headers()).status_code == 404


def test_a_tail_artifact_is_exported_once_under_its_own_name_then_served(env):
    url, tail = "/v1/privtune/bottoms/smollm2-135m/3", {"tail_layers": 2}
    for _ in range(2):
        r = env.client.get(url, params=tail, headers=env.headers())
        assert r.status_code == 503 and r.json()["error"]["code"] == "bottom_model_preparing"
    assert env.enqueuer.exports == [("smollm2-135m", 3, 2)]
    assert set(env.redis.data) == {"pt:export:smollm2-135m:l3-t2"}
    assert env.client.get(url, params={"tail_layers": 0}, headers=env.headers()).status_code == 503  # the plain l3
    assert env.enqueuer.exports == [("smollm2-135m", 3, 2), ("smollm2-135m", 3, 0)]

    manifest, weights = _export(env, "smollm2-135m", 3, tail=2)
    assert (env.settings.bottoms_dir / "smollm2-135m" / "l3-t2" / "manifest.json").is_file()
    r = env.client.get(url, params=tail, headers=env.headers())
    assert r.status_code == 200 and r.json() == manifest
    assert env.client.get(url, headers=env.headers()).status_code == 503  # l3 is another artifact, still pending
    r = env.client.get(f"{url}/files/tail.safetensors", params=tail, headers=env.headers())
    assert r.status_code == 200 and r.content == b"tail" * 50
    assert r.headers["etag"] == f'"{manifest["files"]["tail.safetensors"]}"'
    r = env.client.get(f"{url}/files/model.safetensors", params=tail, headers=env.headers())
    assert r.status_code == 200 and r.content == weights
    assert env.client.get(f"{url}/files/tail.safetensors", headers=env.headers()).status_code == 404  # not in l3
    assert len(env.enqueuer.exports) == 2


@pytest.mark.parametrize(
    ("model", "layer", "tail"),
    [
        ("minilm-l6", 3, 1),  # an encoder has no generation tail
        ("smollm2-135m", 3, 27),  # 3 + 27 = 30 blocks: none left for the server
        ("smollm2-135m", 29, 1),
        ("smollm2-135m", 3, 1000),
    ],
)
def test_a_tail_must_be_a_causal_lms_and_leave_the_server_a_block(env, model, layer, tail):
    for path in ("", "/files/model.safetensors"):
        r = env.client.get(
            f"/v1/privtune/bottoms/{model}/{layer}{path}", params={"tail_layers": tail}, headers=env.headers()
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "tail_layers" and r.json()["error"]["message"]
    assert env.enqueuer.exports == [] and env.redis.data == {}


def test_a_tail_outside_the_query_bounds_is_400(env):
    for tail in (-1, 5000, "two"):
        r = env.client.get("/v1/privtune/bottoms/smollm2-135m/3", params={"tail_layers": tail}, headers=env.headers())
        assert r.status_code == 400 and r.json()["error"]["param"] == "tail_layers", r.text
    assert env.enqueuer.exports == []
    r = env.client.get("/v1/privtune/bottoms/smollm2-135m/3", params={"tail_layers": 26}, headers=env.headers())
    assert r.status_code == 503 and env.enqueuer.exports == [("smollm2-135m", 3, 26)]  # one block left: fine


def test_bottom_rejects_unknown_model_and_layer(env):
    r = env.client.get("/v1/privtune/bottoms/gpt-4/3", headers=env.headers())
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = env.client.get("/v1/privtune/bottoms/minilm-l6/99", headers=env.headers())
    assert r.status_code == 400 and r.json()["error"]["param"] == "split_layer"
    assert env.client.get("/v1/privtune/bottoms/minilm-l6/3").status_code == 401
    assert env.enqueuer.exports == []


def test_a_failed_export_is_an_error_the_sdk_shows_until_its_error_expires(env):
    url = "/v1/privtune/bottoms/minilm-l6/3"
    assert env.client.get(url, headers=env.headers()).status_code == 503
    # the worker's export failed: it leaves the error and deletes the request guard (worker.tasks)
    error = {"code": "bottom_export_failed", "message": "The provider has no model package for minilm-l6."}
    env.redis.data["pt:export:error:minilm-l6:l3"] = json.dumps(error)
    env.redis.delete("pt:export:minilm-l6:l3")
    for _ in range(2):
        r = env.client.get(url, headers=env.headers())
        assert r.status_code == 500 and r.headers["x-should-retry"] == "false"
        assert r.json()["error"]["code"] == "bottom_export_failed"
        assert r.json()["error"]["message"] == error["message"]
    assert env.enqueuer.exports == [("minilm-l6", 3, 0)] and "pt:export:minilm-l6:l3" not in env.redis.data
    del env.redis.data["pt:export:error:minilm-l6:l3"]  # expired: a new request tries again
    r = env.client.get(url, headers=env.headers())
    assert r.status_code == 503 and env.enqueuer.exports == [("minilm-l6", 3, 0)] * 2
