"""The one error tree: each wire error has one status everywhere (the gateway's header check and the
worker's step server agree on status, code and param), rejections cross Redis losslessly, and the
repository's errors and unexpected exceptions render as they should."""

from __future__ import annotations

import copy
import json
import pickle
import struct

import pytest
import torch

from api.errors import render, to_service_error
from api.routes.split import check_step
from client_sdk import protocol, wire
from client_sdk.jobspec import PrivtuneMethod, step_shape
from service.db.errors import InvalidCursor, InvalidTransition, ObjectNotFound
from service.errors import WIRE_STATUS, BadRequest, PayloadTooLarge, StepRejected, Unprocessable, from_wire_error
from tests.helpers import make_tiny_bert

JOB, MODEL, HIDDEN, MAX_BYTES = "ftjob-errors", "tiny-bert-errors", 32, 64 * 1024
METHOD = PrivtuneMethod(split_layer=2, task="classification", num_labels=2, total_steps=4, batch_size=4, max_tokens=8)


def test_wire_status_is_pinned():
    pinned = {
        wire.TruncatedPayload: 400,
        wire.NotSafetensors: 400,
        wire.SchemaError: 400,
        wire.SizeLimitExceeded: 413,
        wire.DtypeRejected: 422,
        wire.ShapeRejected: 422,
        wire.NonFiniteTensor: 422,
    }
    assert pinned == WIRE_STATUS
    assert set(WIRE_STATUS) == set(wire.WireError.__subclasses__())  # every wire error has its status


@pytest.mark.parametrize(("cls", "status"), list(WIRE_STATUS.items()), ids=lambda v: getattr(v, "__name__", str(v)))
def test_a_wire_error_maps_to_one_service_error(cls, status):
    exc = cls("what went wrong", param="hidden")
    mapped, rejected = from_wire_error(exc), StepRejected.from_wire(exc)
    assert isinstance(mapped, {400: BadRequest, 413: PayloadTooLarge, 422: Unprocessable}[status])
    assert to_service_error(exc).body() == mapped.body()
    for error in (mapped, rejected):
        assert (error.status_code, error.code, error.param, error.message) == (status, cls.code, "hidden", exc.message)
    assert rejected.body() == mapped.body() and rejected.headers == mapped.headers == {}


# ---- one status everywhere: the gateway's header check vs the worker's step server ----------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_bert(tmp_path_factory.mktemp("m") / "tiny", hidden=HIDDEN))


@pytest.fixture(scope="module")
def server(tiny):
    from worker.models import build_top
    from worker.step_server import StepServer
    from worker.trainer import TopTrainer, TrainSpec

    top = build_top(tiny, METHOD.split_layer, METHOD.task, num_labels=METHOD.num_labels)
    trainer = TopTrainer(TrainSpec(tiny, METHOD), top=copy.deepcopy(top))
    return StepServer(trainer, step_shape(METHOD, HIDDEN), JOB, wire.WireLimits(max_payload_bytes=MAX_BYTES))


@pytest.fixture
def job(tiny, monkeypatch):
    from api import catalog

    monkeypatch.setenv("PRIVTUNE_EXTRA_MODELS", json.dumps({MODEL: tiny}))
    catalog.describe.cache_clear()
    yield {
        "id": JOB,
        "model": MODEL,
        "status": "running",
        "method": {"type": "privtune", "privtune": METHOD.model_dump(mode="json")},
    }
    catalog.describe.cache_clear()


def _step(step=1, *, batch=2, tokens=5, d=HIDDEN, kind="step", job=JOB, extra=None, **overrides) -> bytes:
    tensors = {"hidden": torch.zeros(batch, tokens, d), "attention_mask": torch.ones(batch, tokens, dtype=torch.uint8)}
    tensors.update(overrides)
    return wire.encode(tensors, wire.WireHeader(job, step, kind, extra=extra or {}), float_dtype="float32")


def _metrics(text: str) -> dict[str, str]:
    return {protocol.METRICS: text}


def _raw(dtype: str, shape: list[int], declared: int, present: int = 8) -> bytes:
    """A step whose header declares one ``hidden`` tensor (``declared`` data bytes; ``present`` follow)."""
    meta = {"schema": "privtune.wire", "schema_version": "1", "job_id": JOB, "step": "1", "kind": "step"}
    entry = {"dtype": dtype, "shape": shape, "data_offsets": [0, declared]}
    head = json.dumps({"__metadata__": meta, "hidden": entry}).encode()
    return struct.pack("<Q", len(head)) + head + b"\0" * present


WIRE_CASES = [  # (id, payload, wire error class, param)
    ("truncated", b"not a payload", wire.TruncatedPayload, None),
    ("truncated_data", _raw("F32", [2, 5, 32], 1280), wire.TruncatedPayload, "hidden"),
    ("pickle", pickle.dumps({"hidden": [1.0]}), wire.NotSafetensors, None),
    ("zip", b"PK\x03\x04" + b"\0" * 20, wire.NotSafetensors, None),
    ("wrong_kind", _step(kind="step_reply"), wire.SchemaError, "kind"),
    ("other_job", _step(job="ftjob-other"), wire.SchemaError, "job_id"),
    ("step_zero", _step(0), wire.SchemaError, "step"),
    ("int_hidden", _step(hidden=torch.zeros(2, 5, HIDDEN, dtype=torch.int32)), wire.DtypeRejected, "hidden"),
    ("f64_hidden", _raw("F64", [1], 8), wire.DtypeRejected, "hidden"),
    ("hidden_size", _step(d=16), wire.ShapeRejected, "hidden"),
    ("batch_over_limit", _step(batch=5), wire.ShapeRejected, "hidden"),
    ("mask_shape", _step(attention_mask=torch.ones(2, 4, dtype=torch.uint8)), wire.ShapeRejected, "attention_mask"),
    ("grad_shape", _step(2, grad_output=torch.zeros(2, 3)), wire.ShapeRejected, "grad_output"),
    # interactive classification: the gradient is dL/d(representation) (b, d), no longer dL/d(logits) (b, C)
    ("grad_logits_shape", _step(2, grad_output=torch.zeros(2, 2)), wire.ShapeRejected, "grad_output"),
    ("grad_token_shape", _step(2, grad_output=torch.zeros(2, 5, HIDDEN)), wire.ShapeRejected, "grad_output"),
    ("metrics_not_json", _step(extra=_metrics("{")), wire.SchemaError, "metrics"),
    ("metrics_unknown_key", _step(extra=_metrics('{"loss": 0.5}')), wire.SchemaError, "metrics"),
    ("metrics_non_finite", _step(extra=_metrics('{"train_loss": Infinity}')), wire.SchemaError, "metrics"),
    ("metrics_on_infer", _step(0, kind="infer", extra=_metrics('{"valid_loss": null}')), wire.SchemaError, "metrics"),
    ("huge_shape", _raw("F16", [10**6, 10**6, 32], 8), wire.SizeLimitExceeded, "hidden"),
    ("payload_too_large", _step(batch=64, tokens=8), wire.SizeLimitExceeded, None),  # 64 KiB of hidden alone
]


@pytest.mark.parametrize(("body", "cls", "param"), [c[1:] for c in WIRE_CASES], ids=[c[0] for c in WIRE_CASES])
def test_gateway_and_worker_give_one_status_code_and_param(job, server, body, cls, param):
    with pytest.raises(wire.WireError) as info:
        check_step(body, job, MAX_BYTES)
    assert type(info.value) is cls
    gateway = to_service_error(info.value)
    with pytest.raises(StepRejected) as rejected:
        server.handle(body)
    worker = rejected.value
    expected = (WIRE_STATUS[cls], cls.code, param)
    assert (gateway.status_code, gateway.code, gateway.param) == expected
    assert (worker.status_code, worker.code, worker.param) == expected
    assert worker.body() == gateway.body() and worker.headers == gateway.headers
    assert json.loads(render(gateway).body)["error"] == gateway.body()["error"]


@pytest.mark.parametrize("tensor", ["hidden", "grad_output"])
def test_non_finite_values_pass_the_header_check_and_get_the_same_status_at_the_worker(job, server, tensor):
    bad = torch.zeros(2, 5, HIDDEN) if tensor == "hidden" else torch.zeros(2, HIDDEN)  # grad: dL/d(representation)
    bad.view(-1)[0] = float("nan")
    body = _step(2, **{tensor: bad})
    assert check_step(body, job, MAX_BYTES).step == 2  # the gateway reads headers only
    with pytest.raises(StepRejected) as rejected:
        server.handle(body)
    worker = rejected.value
    assert (worker.status_code, worker.code, worker.param) == (422, "non_finite_tensor", tensor)
    gateway = from_wire_error(wire.NonFiniteTensor(worker.message, param=tensor))  # were it raised at the gateway
    assert worker.body() == gateway.body()


# ---- StepRejected across Redis, and its 409 headers --------------------------------------------------
@pytest.mark.parametrize(
    "error",
    [
        StepRejected(409, "step_out_of_order", "expected step 5, got 9", param="step", expected_step=5),
        StepRejected(422, "shape_rejected", "grad_output has shape [3, 2]", param=protocol.GRAD_OUTPUT),
        StepRejected(400, "missing_gradient", "send grad_output"),
    ],
    ids=["409", "422", "400"],
)
def test_step_rejected_round_trips_through_json(error):
    back = StepRejected.from_json(error.to_json())
    fields = ("status_code", "code", "message", "param", "expected_step", "headers", "extra")
    assert {f: getattr(back, f) for f in fields} == {f: getattr(error, f) for f in fields}
    assert back.body() == error.body() and back.error_type == "invalid_request_error"


def test_a_409_rejection_says_do_not_retry_and_where_to_resume():
    error = StepRejected(409, "step_out_of_order", "expected step 5, got 9", param="step", expected_step=5)
    assert error.headers == {"x-should-retry": "false", "x-expected-step": "5"}
    assert error.body()["error"] == {
        "message": "expected step 5, got 9",
        "type": "invalid_request_error",
        "param": "step",
        "code": "step_out_of_order",
        "expected_step": 5,
    }
    response = render(error)
    assert response.status_code == 409 and response.headers["x-should-retry"] == "false"
    assert response.headers["x-expected-step"] == "5" and json.loads(response.body)["error"]["expected_step"] == 5
    assert "x-should-retry" not in StepRejected(422, "shape_rejected", "bad").headers


# ---- repository errors and the unexpected ----------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "status", "code", "param", "headers"),
    [
        (
            ObjectNotFound("fine-tuning job", "ftjob-x", param="fine_tuning_job_id"),
            404,
            "not_found",
            "fine_tuning_job_id",
            {},
        ),
        (InvalidCursor("ftjob-gone"), 400, "invalid_cursor", "after", {}),
        (
            InvalidTransition("ftjob-x", "cancelled", "succeeded"),
            409,
            "invalid_job_status",
            None,
            {"x-should-retry": "false"},
        ),
        (
            InvalidTransition("ftjob-x", "resumed yet", "paused", retryable=True),
            409,
            "invalid_job_status",
            None,
            {"retry-after": "1"},
        ),
    ],
    ids=["not_found", "cursor", "transition", "retryable_transition"],
)
def test_repository_errors_render_with_their_status_code_and_param(exc, status, code, param, headers):
    mapped = to_service_error(exc)
    assert (mapped.status_code, mapped.code, mapped.param, mapped.headers) == (status, code, param, headers)
    response = render(mapped)
    body = json.loads(response.body)["error"]
    assert response.status_code == status and (body["code"], body["param"]) == (code, param)
    assert body["type"] == "invalid_request_error" and body["message"] == str(exc)
    assert all(response.headers[k] == v for k, v in headers.items())


def test_an_unknown_exception_is_500_internal_error_with_no_detail():
    exc = RuntimeError("secret: postgresql://admin:hunter2@db/prod")
    mapped = to_service_error(exc)
    assert (mapped.status_code, mapped.code, mapped.param, mapped.error_type) == (
        500,
        "internal_error",
        None,
        "server_error",
    )
    response = render(mapped)
    body = json.loads(response.body)["error"]
    assert response.status_code == 500 and body["code"] == "internal_error" and body["type"] == "server_error"
    assert "hunter2" not in response.body.decode() and "RuntimeError" not in body["message"] and body["message"]
