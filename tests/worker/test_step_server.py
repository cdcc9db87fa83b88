"""The step state machine on a tiny random BERT: ordering, retries, one update per gradient, flush,
inference, completion, and every rejection path (each one leaves the trainer exactly as it was)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from client_sdk import protocol, wire
from client_sdk.jobspec import PrivtuneMethod, step_shape
from service.errors import StepRejected
from tests.helpers import make_tiny_bert
from worker.step_server import StepServer
from worker.trainer import TopTrainer, TrainSpec

JOB = "ftjob-steps"
HIDDEN, LABELS, BATCH, TOKENS = 32, 2, 2, 5
G = (BATCH, LABELS)  # the shape of a step's output and of its gradient
METHOD = PrivtuneMethod(
    split_layer=2,
    task="classification",
    num_labels=LABELS,
    total_steps=10,
    batch_size=4,
    max_tokens=8,
    optimizer={"learning_rate": 1e-2},
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from worker.models import build_top

    path = str(make_tiny_bert(tmp_path_factory.mktemp("m") / "tiny", hidden=HIDDEN))
    return path, build_top(path, METHOD.split_layer, METHOD.task, num_labels=LABELS)


class Recorder:
    def __init__(self) -> None:
        self.updates: list[tuple[int, float, int]] = []
        self.finishes = 0

    def on_update(self, header: wire.WireHeader, norm: float, batch: int) -> None:
        self.updates.append((header.step, norm, batch))

    def on_finish(self) -> None:
        self.finishes += 1


def _trainer(tiny) -> TopTrainer:
    path, top = tiny
    return TopTrainer(TrainSpec(path, METHOD), top=copy.deepcopy(top))


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def server(tiny, rec) -> StepServer:
    return StepServer(_trainer(tiny), step_shape(METHOD, HIDDEN), JOB, on_update=rec.on_update, on_finish=rec.on_finish)


def payload(
    step: int,
    *,
    batch=BATCH,
    tokens=TOKENS,
    d=HIDDEN,
    grad=None,
    kind="step",
    job=JOB,
    mask_shape=None,
    activations=True,
    extra=None,
    seed=None,
    **overrides,
) -> bytes:
    """A request as the device sends it: random activations (b, t, d) unless ``activations=False``, a
    random ``grad_output`` of shape ``grad`` if given; ``overrides`` replace tensors by name."""
    g = torch.Generator().manual_seed(step if seed is None else seed)
    tensors: dict[str, torch.Tensor] = {}
    if activations:
        tensors[protocol.HIDDEN] = torch.randn(batch, tokens, d, generator=g)
        tensors[protocol.ATTENTION_MASK] = torch.ones(mask_shape or (batch, tokens), dtype=torch.uint8)
    if grad is not None:
        tensors[protocol.GRAD_OUTPUT] = torch.randn(*grad, generator=g)
    tensors.update(overrides)
    header = wire.WireHeader(job, step, kind, extra=extra or {})
    return wire.encode(tensors, header, float_dtype="float32")


def final() -> bytes:
    return wire.encode({}, wire.WireHeader(JOB, 0, "step", extra={protocol.FINAL: "1"}))


def output(reply: bytes, kind: str = "step_reply") -> torch.Tensor:
    header, tensors = wire.decode(reply)
    assert header.job_id == JOB and header.kind == kind
    return tensors[protocol.OUTPUT]


def params(server: StepServer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in server.trainer.trainable.items()}


def same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def state(server: StepServer):
    return server.trainer.steps_applied, server.trainer.pending_shape(), server.last, server.finished, params(server)


def assert_unchanged(server: StepServer, before) -> None:
    steps, pending, last, finished, weights = state(server)
    assert (steps, pending, last, finished) == before[:4]
    assert same_params(weights, before[4])


# ---- the happy path -------------------------------------------------------------------------------
def test_step_one_forwards_and_step_two_applies_exactly_one_update(server, rec):
    before = params(server)
    first = output(server.handle(payload(1)))
    assert first.shape == (BATCH, LABELS) and first.dtype == torch.float32
    assert server.trainer.steps_applied == 0 and server.trainer.pending_shape() == (BATCH, LABELS)
    assert same_params(params(server), before) and rec.updates == []
    second = output(server.handle(payload(2, grad=G, extra={protocol.LOSS: "0.7"})))
    assert second.shape == (BATCH, LABELS)
    assert server.trainer.steps_applied == 1 and server.trainer.pending_shape() == (BATCH, LABELS)
    assert not same_params(params(server), before)
    assert [(step, batch) for step, _, batch in rec.updates] == [(2, BATCH)] and rec.updates[0][1] > 0


def test_a_retried_step_returns_the_stored_reply_and_applies_nothing(server, rec):
    server.handle(payload(1))
    reply = server.handle(payload(2, grad=G))
    before = state(server)
    assert server.handle(payload(2, grad=G)) == reply
    assert server.handle(payload(2, grad=G, seed=99)) == reply  # same number: same reply
    assert_unchanged(server, before)
    assert len(rec.updates) == 1


def test_flush_applies_the_last_gradient_and_answers_empty(server, rec):
    server.handle(payload(1))
    reply = server.handle(payload(2, grad=G, activations=False))
    header, tensors = wire.decode(reply)
    assert (header.kind, header.step, tensors) == ("step_reply", 2, {})
    assert server.trainer.steps_applied == 1 and not server.trainer.has_pending
    assert [step for step, _, _ in rec.updates] == [2]
    assert server.handle(payload(2, grad=G, activations=False)) == reply  # retried flush
    assert server.trainer.steps_applied == 1


def test_infer_changes_no_state(server, rec):
    server.handle(payload(1))
    before = state(server)
    a = output(server.handle(payload(0, kind="infer", batch=3)), "infer_reply")
    b = output(server.handle(payload(0, kind="infer", batch=3)), "infer_reply")
    assert a.shape == (3, LABELS) and torch.equal(a, b)
    assert_unchanged(server, before)
    server.handle(payload(2, grad=G))  # the pending forward survived the inference
    assert server.trainer.steps_applied == 1 and len(rec.updates) == 1


def test_completion_calls_on_finish_once_and_is_idempotent(server, rec):
    server.handle(payload(1))
    server.handle(payload(2, grad=G, activations=False))
    reply = server.handle(final())
    header, tensors = wire.decode(reply)
    assert (header.kind, tensors) == ("step_reply", {}) and server.finished and rec.finishes == 1
    assert server.handle(final()) == reply and rec.finishes == 1
    assert server.trainer.steps_applied == 1


# ---- every rejection path -------------------------------------------------------------------------
NAN = torch.full((BATCH, TOKENS, HIDDEN), float("nan"))
INF_GRAD = torch.tensor([[float("inf"), 0.0], [0.0, 0.0]])
INT_HIDDEN = torch.zeros(BATCH, TOKENS, HIDDEN, dtype=torch.int32)
FINAL_WITH_GRAD = wire.encode(
    {"grad_output": torch.zeros(G)}, wire.WireHeader(JOB, 0, "step", extra={protocol.FINAL: "1"})
)

REJECTIONS = [  # (id, payload, status, code, param); the server has served step 1 (a forward is pending)
    ("undecodable", b"not a payload", 400, "truncated_payload", None),
    ("pickle", pickle.dumps({"hidden": [1.0]}), 400, "not_safetensors", None),
    ("wrong_kind", payload(2, grad=G, kind="step_reply"), 400, "invalid_header", "kind"),
    ("other_job", payload(2, grad=G, job="ftjob-someone-else"), 400, "invalid_header", "job_id"),
    ("step_zero", payload(0, grad=G), 400, "invalid_header", "step"),
    ("missing_gradient", payload(2), 400, "missing_gradient", protocol.GRAD_OUTPUT),
    ("grad_batch", payload(2, grad=(3, LABELS)), 422, "shape_rejected", protocol.GRAD_OUTPUT),
    ("grad_labels", payload(2, grad=(BATCH, 3)), 422, "shape_rejected", protocol.GRAD_OUTPUT),
    ("hidden_size", payload(2, grad=G, d=16), 422, "shape_rejected", protocol.HIDDEN),
    ("hidden_dtype", payload(2, grad=G, hidden=INT_HIDDEN), 422, "dtype_rejected", protocol.HIDDEN),
    ("batch_over_limit", payload(2, grad=G, batch=5), 422, "shape_rejected", protocol.HIDDEN),
    ("tokens_over_limit", payload(2, grad=G, tokens=9), 422, "shape_rejected", protocol.HIDDEN),
    ("mask_shape", payload(2, grad=G, mask_shape=(BATCH, 4)), 422, "shape_rejected", protocol.ATTENTION_MASK),
    ("nan_hidden", payload(2, grad=G, hidden=NAN), 422, "non_finite_tensor", protocol.HIDDEN),
    ("inf_grad", payload(2, grad=G, grad_output=INF_GRAD), 422, "non_finite_tensor", protocol.GRAD_OUTPUT),
    ("infer_with_grad", payload(0, kind="infer", grad=G), 422, "shape_rejected", protocol.GRAD_OUTPUT),
    ("final_with_tensors", FINAL_WITH_GRAD, 422, "shape_rejected", protocol.GRAD_OUTPUT),
]


def _rejected(server: StepServer, body: bytes) -> StepRejected:
    with pytest.raises(StepRejected) as info:
        server.handle(body)
    return info.value


@pytest.mark.parametrize(
    ("body", "status", "code", "param"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS]
)
def test_a_rejected_request_changes_nothing(server, rec, body, status, code, param):
    server.handle(payload(1))
    before = state(server)
    error = _rejected(server, body)
    assert (error.status_code, error.code, error.param, error.expected_step) == (status, code, param, None)
    assert error.message
    assert_unchanged(server, before)
    assert rec.updates == [] and rec.finishes == 0


def test_out_of_order_step_is_409_with_expected_step(server, rec):
    server.handle(payload(1))
    before = state(server)
    for step in (3, 7):
        error = _rejected(server, payload(step, grad=G))
        got = (error.status_code, error.code, error.param, error.expected_step)
        assert got == (409, "step_out_of_order", "step", 2)
        assert error.headers["x-should-retry"] == "false" and error.headers["x-expected-step"] == "2"
    assert_unchanged(server, before)
    server.handle(payload(2, grad=G))
    error = _rejected(server, payload(1))  # an earlier step is not the last one served: no stored reply
    assert (error.status_code, error.expected_step) == (409, 3)


def test_a_gradient_without_a_pending_forward_is_unexpected(server, rec):
    before = state(server)
    for body in (payload(1, grad=G), payload(1, grad=G, activations=False)):
        error = _rejected(server, body)
        assert (error.status_code, error.code, error.param) == (400, "unexpected_gradient", protocol.GRAD_OUTPUT)
    assert_unchanged(server, before)


def test_after_a_resume_the_expected_step_is_checkpoint_plus_one(tiny, server, tmp_path):
    server.handle(payload(1))
    for step in (2, 3, 4):
        server.handle(payload(step, grad=G))
    path = server.trainer.save(tmp_path / "step-3")
    resumed = StepServer(_trainer(tiny), step_shape(METHOD, HIDDEN), JOB)
    assert resumed.trainer.load(path) == 3
    before = state(resumed)
    for body in (payload(1), payload(5, grad=G)):
        error = _rejected(resumed, body)
        assert (error.status_code, error.code, error.expected_step) == (409, "step_out_of_order", 4)
    error = _rejected(resumed, payload(4, grad=G))  # the right step, but no forward is pending after a resume
    assert (error.status_code, error.code, error.param) == (400, "unexpected_gradient", protocol.GRAD_OUTPUT)
    assert_unchanged(resumed, before)
    assert output(resumed.handle(payload(4))).shape == G
    assert resumed.trainer.steps_applied == 3 and resumed.trainer.has_pending
