"""The step state machine on a tiny random BERT: ordering, retries, one update per gradient, flush,
inference, completion, the checkpoint step in every reply, the device's metrics extra, and every
rejection path (each one leaves the trainer exactly as it was). Interactive classification returns the
pooled representation (b, d) (the head is the device's); upload mode keeps a server-side head and
returns logits (b, C); generation returns the hidden state (b, t, d) before the device's tail."""

from __future__ import annotations

import copy
import json
import pickle

import httpx
import pytest
import torch

from client_sdk import protocol, wire
from client_sdk.jobspec import PrivtuneMethod, step_shape
from service.errors import StepRejected
from tests.helpers import WORDS, make_tiny_bert, make_tiny_llama
from worker.step_server import StepServer
from worker.trainer import TopTrainer, TrainSpec

JOB = "ftjob-steps"
HIDDEN, LABELS, BATCH, TOKENS = 32, 2, 2, 5
G = (BATCH, HIDDEN)  # a step's output (the pooled representation) and its gradient dL/d(representation)
LOGITS = (BATCH, LABELS)  # upload mode's output and gradient (the server-side head's logits)
METRICS = {protocol.METRICS: json.dumps({"train_loss": 0.7})}
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
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.log: list[tuple[str, int]] = []  # the order of the hooks: ("metrics" | "update" | "finish", step)
        self.checkpoint = 0  # what checkpoint_step() answers (the runner's latest checkpoint step)

    def on_update(self, header: wire.WireHeader, norm: float, batch: int) -> None:
        self.updates.append((header.step, norm, batch))
        self.log.append(("update", header.step))

    def on_finish(self) -> None:
        self.finishes += 1
        self.log.append(("finish", 0))

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.metrics.append((step, metrics))
        self.log.append(("metrics", step))

    def checkpoint_step(self) -> int:
        return self.checkpoint


def _trainer(tiny) -> TopTrainer:
    path, top = tiny
    return TopTrainer(TrainSpec(path, METHOD), top=copy.deepcopy(top))


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def _server(trainer: TopTrainer, rec: Recorder, server_head: bool = False, method=METHOD) -> StepServer:
    return StepServer(
        trainer,
        step_shape(method, HIDDEN, server_head=server_head),
        JOB,
        on_update=rec.on_update,
        on_finish=rec.on_finish,
        checkpoint_step=rec.checkpoint_step,
        on_metrics=rec.on_metrics,
    )


@pytest.fixture
def server(tiny, rec) -> StepServer:
    return _server(_trainer(tiny), rec)


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


def final(last_step: int = 2) -> bytes:
    """The completion request of a device whose last step request (the flush) was ``last_step``."""
    return wire.encode({}, wire.WireHeader(JOB, 0, "step", extra=protocol.completion_extra(last_step)))


def output(reply: bytes, kind: str = "step_reply") -> torch.Tensor:
    header, tensors = wire.decode(reply)
    assert header.job_id == JOB and header.kind == kind
    return tensors[protocol.OUTPUT]


def checkpoint_of(reply: bytes) -> int:
    """The checkpoint step the reply carries (``protocol.CHECKPOINT``)."""
    return int(wire.decode(reply)[0].extra[protocol.CHECKPOINT])


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
    assert first.shape == G and first.dtype == torch.float32  # the representation (b, d), not logits
    assert server.trainer.steps_applied == 0 and server.trainer.pending_shape() == G
    assert same_params(params(server), before) and rec.updates == []
    second = output(server.handle(payload(2, grad=G, extra=METRICS)))
    assert second.shape == G
    assert server.trainer.steps_applied == 1 and server.trainer.pending_shape() == G
    assert not same_params(params(server), before)
    assert [(step, batch) for step, _, batch in rec.updates] == [(2, BATCH)] and rec.updates[0][1] > 0
    assert all("lora_" in name for name in params(server))  # the head is the device's: adapters only


def test_every_reply_carries_the_latest_checkpoint_step(tiny):
    rec = Recorder()
    server = _server(_trainer(tiny), rec)
    first = server.handle(payload(1))
    assert checkpoint_of(first) == 0
    rec.checkpoint = 1  # as if the runner had checkpointed after the update of step 2
    second = server.handle(payload(2, grad=G))
    assert checkpoint_of(second) == 1
    rec.checkpoint = 2
    assert server.handle(payload(2, grad=G)) == second  # a retry gets the reply as it was computed
    assert checkpoint_of(server.handle(payload(0, kind="infer"))) == 2
    assert checkpoint_of(server.handle(payload(3, grad=G, activations=False))) == 2  # the flush's empty reply
    plain = StepServer(_trainer(tiny), step_shape(METHOD, HIDDEN), JOB)  # no hook: nothing checkpointed yet
    assert checkpoint_of(plain.handle(payload(1))) == 0


def test_the_metrics_extra_is_reported_once_before_the_update_it_travels_with(server, rec):
    server.handle(payload(1, extra={protocol.METRICS: json.dumps({"train_loss": 0.9})}))
    server.handle(payload(2, grad=G, extra={protocol.METRICS: json.dumps({"train_loss": 0.8, "valid_loss": 1})}))
    server.handle(payload(2, grad=G, extra={protocol.METRICS: json.dumps({"train_loss": 0.8, "valid_loss": 1})}))
    server.handle(payload(3, grad=G))  # no extra: nothing to report
    assert rec.metrics == [(1, {"train_loss": 0.9}), (2, {"train_loss": 0.8, "valid_loss": 1.0})]
    assert rec.log == [("metrics", 1), ("metrics", 2), ("update", 2), ("update", 3)]  # a retry reports nothing
    infer = payload(0, kind="infer", extra={protocol.METRICS: json.dumps({"valid_accuracy": 0.5})})
    server.handle(infer)
    assert rec.metrics[-1] == (0, {"valid_accuracy": 0.5}) and server.trainer.steps_applied == 2
    done = wire.encode(
        {}, wire.WireHeader(JOB, 0, "step", extra={**protocol.completion_extra(4), **METRICS})
    )  # the final validation travels with the completion, reported before it is recorded
    server.handle(payload(4, grad=G, activations=False))
    server.handle(done)
    server.handle(done)
    assert rec.log[-2:] == [("metrics", 0), ("finish", 0)] and rec.finishes == 1
    assert rec.metrics[-1] == (0, {"train_loss": 0.7}) and len(rec.metrics) == 4


@pytest.mark.parametrize(
    "metrics",
    ["[" * 10_000 + "]" * 10_000, '{"train_loss": ' + "9" * 10_000 + "}", '{"train_loss": {"a": 1}}'],
    ids=["nested", "huge-integer", "object-value"],
)
def test_a_hostile_metrics_extra_is_refused_and_changes_nothing(server, rec, metrics):
    before = state(server)
    error = _rejected(server, payload(1, extra={protocol.METRICS: metrics}))
    assert (error.status_code, error.param) == (400, protocol.METRICS)
    assert_unchanged(server, before)
    assert rec.metrics == []


def test_upload_mode_returns_logits_and_takes_their_gradient(tiny, rec):
    path, _ = tiny
    from worker.models import build_top

    top = build_top(path, METHOD.split_layer, METHOD.task, num_labels=LABELS, server_head=True)
    trainer = TopTrainer(TrainSpec(path, METHOD, server_head=True), top=top)
    server = _server(trainer, rec, server_head=True)
    assert {"classifier.weight", "classifier.bias"} <= set(params(server))
    reply = server.handle(payload(1))
    assert output(reply).shape == LOGITS and wire.inspect(reply)[1][protocol.OUTPUT].dtype == "F32"
    before = state(server)
    error = _rejected(server, payload(2, grad=G))  # a representation's gradient does not fit logits
    assert (error.status_code, error.code, error.param) == (422, "shape_rejected", protocol.GRAD_OUTPUT)
    assert_unchanged(server, before)
    assert output(server.handle(payload(2, grad=LOGITS))).shape == LOGITS
    assert server.trainer.steps_applied == 1 and len(rec.updates) == 1
    assert not torch.equal(params(server)["classifier.weight"], before[4]["classifier.weight"])


def test_a_generation_job_returns_the_hidden_state_before_the_device_tail(tmp_path_factory, rec):
    """Generation (tail of 2 blocks on the device, l=1 of L=4): the server runs 1 block and answers
    with the hidden state (b, t, d) in float16; its gradient has that shape, one update per gradient."""
    path = str(make_tiny_llama(tmp_path_factory.mktemp("m") / "tiny-llama", hidden=HIDDEN))
    method = METHOD.model_copy(update={"task": "generation", "num_labels": None, "split_layer": 1}).resolved()
    assert method.device_tail == 2
    trainer = TopTrainer(TrainSpec(path, method))
    assert len(trainer.model.blocks.layers) == 4 - 1 - 2
    server = _server(trainer, rec, method=method)
    reply = server.handle(payload(1))
    assert output(reply).shape == (BATCH, TOKENS, HIDDEN) and wire.inspect(reply)[1][protocol.OUTPUT].dtype == "F16"
    before = state(server)
    error = _rejected(server, payload(2, grad=G))  # a classification-shaped gradient
    assert (error.status_code, error.code, error.param) == (422, "shape_rejected", protocol.GRAD_OUTPUT)
    assert_unchanged(server, before)
    server.handle(payload(2, grad=(BATCH, TOKENS, HIDDEN)))
    assert server.trainer.steps_applied == 1 and not same_params(params(server), before[4])


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
    assert a.shape == (3, HIDDEN) and torch.equal(a, b)
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
INF_GRAD = torch.zeros(G)
INF_GRAD[0, 0] = float("inf")
INT_HIDDEN = torch.zeros(BATCH, TOKENS, HIDDEN, dtype=torch.int32)
FINAL_WITH_GRAD = wire.encode(
    {"grad_output": torch.zeros(G)}, wire.WireHeader(JOB, 0, "step", extra={protocol.FINAL: "1"})
)


def bad_metrics(text: str) -> dict[str, str]:
    return {protocol.METRICS: text}


FINAL_BAD_METRICS = wire.encode(
    {}, wire.WireHeader(JOB, 0, "step", extra={**protocol.completion_extra(2), **bad_metrics('{"train_loss": NaN}')})
)
FINAL_NO_LAST_STEP = wire.encode({}, wire.WireHeader(JOB, 0, "step", extra={protocol.FINAL: "1"}))  # an old client


def final_last_step(text: str) -> bytes:
    return wire.encode({}, wire.WireHeader(JOB, 0, "step", extra={protocol.FINAL: "1", protocol.LAST_STEP: text}))


REJECTIONS = [  # (id, payload, status, code, param); the server has served step 1 (a forward is pending)
    ("undecodable", b"not a payload", 400, "truncated_payload", None),
    ("pickle", pickle.dumps({"hidden": [1.0]}), 400, "not_safetensors", None),
    ("wrong_kind", payload(2, grad=G, kind="step_reply"), 400, "invalid_header", "kind"),
    ("other_job", payload(2, grad=G, job="ftjob-someone-else"), 400, "invalid_header", "job_id"),
    ("step_zero", payload(0, grad=G), 400, "invalid_header", "step"),
    ("grad_batch", payload(2, grad=(3, HIDDEN)), 422, "shape_rejected", protocol.GRAD_OUTPUT),
    ("grad_logits", payload(2, grad=LOGITS, extra=METRICS), 422, "shape_rejected", protocol.GRAD_OUTPUT),
    ("grad_width", payload(2, grad=(BATCH, 16)), 422, "shape_rejected", protocol.GRAD_OUTPUT),
    ("grad_tokens", payload(2, grad=(BATCH, TOKENS, HIDDEN)), 422, "shape_rejected", protocol.GRAD_OUTPUT),
    ("hidden_size", payload(2, grad=G, d=16), 422, "shape_rejected", protocol.HIDDEN),
    ("hidden_dtype", payload(2, grad=G, hidden=INT_HIDDEN), 422, "dtype_rejected", protocol.HIDDEN),
    ("batch_over_limit", payload(2, grad=G, batch=5), 422, "shape_rejected", protocol.HIDDEN),
    ("tokens_over_limit", payload(2, grad=G, tokens=9), 422, "shape_rejected", protocol.HIDDEN),
    ("mask_shape", payload(2, grad=G, mask_shape=(BATCH, 4)), 422, "shape_rejected", protocol.ATTENTION_MASK),
    ("nan_hidden", payload(2, grad=G, hidden=NAN), 422, "non_finite_tensor", protocol.HIDDEN),
    ("inf_grad", payload(2, grad=G, grad_output=INF_GRAD), 422, "non_finite_tensor", protocol.GRAD_OUTPUT),
    ("infer_with_grad", payload(0, kind="infer", grad=G), 422, "shape_rejected", protocol.GRAD_OUTPUT),
    ("final_with_tensors", FINAL_WITH_GRAD, 422, "shape_rejected", protocol.GRAD_OUTPUT),
    ("metrics_not_json", payload(2, grad=G, extra=bad_metrics("{")), 400, "invalid_header", protocol.METRICS),
    ("metrics_not_object", payload(2, grad=G, extra=bad_metrics("[0.5]")), 400, "invalid_header", protocol.METRICS),
    ("metrics_old_loss", payload(2, grad=G, extra=bad_metrics('{"loss": 0.5}')), 400, "invalid_header", "metrics"),
    ("metrics_nan", payload(2, grad=G, extra=bad_metrics('{"train_loss": NaN}')), 400, "invalid_header", "metrics"),
    ("metrics_text", payload(2, grad=G, extra=bad_metrics('{"valid_loss": "1"}')), 400, "invalid_header", "metrics"),
    ("metrics_bool", payload(2, grad=G, extra=bad_metrics('{"valid_loss": true}')), 400, "invalid_header", "metrics"),
    ("metrics_on_infer", payload(0, kind="infer", extra=bad_metrics("{")), 400, "invalid_header", protocol.METRICS),
    ("metrics_on_final", FINAL_BAD_METRICS, 400, "invalid_header", protocol.METRICS),
    ("final_without_last_step", FINAL_NO_LAST_STEP, 400, "invalid_header", protocol.LAST_STEP),
    ("final_last_step_zero", final_last_step("0"), 400, "invalid_header", protocol.LAST_STEP),
    ("final_last_step_negative", final_last_step("-3"), 400, "invalid_header", protocol.LAST_STEP),
    ("final_last_step_text", final_last_step("2.0"), 400, "invalid_header", protocol.LAST_STEP),
    ("final_last_step_huge", final_last_step("9" * 40), 400, "invalid_header", protocol.LAST_STEP),
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
    assert rec.updates == [] and rec.finishes == 0 and rec.metrics == []


def test_a_step_without_the_pending_forwards_gradient_goes_back_to_that_forward(server, rec):
    """Not a 400 the device cannot act on: the device lost the reply (a new process, a gateway that
    died with it), so it is sent back to the forward the worker holds, whose reply is replayed."""
    first = server.handle(payload(1))
    before = state(server)
    error = _rejected(server, payload(2, extra=METRICS))
    assert (error.status_code, error.code, error.expected_step) == (409, "step_out_of_order", 1)
    assert_unchanged(server, before)
    assert rec.updates == [] and rec.metrics == []
    assert server.handle(payload(1)) == first and server.trainer.steps_applied == 0


def test_out_of_order_step_is_409_with_expected_step(server, rec):
    server.handle(payload(1))
    before = state(server)
    for step in (3, 7):
        error = _rejected(server, payload(step, grad=G, extra=METRICS))
        got = (error.status_code, error.code, error.param, error.expected_step)
        assert got == (409, "step_out_of_order", "step", 2)
        assert error.headers["x-should-retry"] == "false" and error.headers["x-expected-step"] == "2"
    assert_unchanged(server, before)
    assert rec.metrics == []  # a refused step reports nothing
    server.handle(payload(2, grad=G))
    error = _rejected(server, payload(1))
    # a device without the gradient of step 2's forward (a new process, a lost reply) is sent back to
    # step 2, whose reply is replayed; then it carries on with step 3 and its gradient
    assert (error.status_code, error.expected_step) == (409, 2)
    assert server.handle(payload(2, grad=G)) == server.last.reply and server.trainer.steps_applied == 1


def test_a_gradient_without_a_pending_forward_says_resend_this_step_without_it(server, rec):
    before = state(server)
    for body in (payload(1, grad=G), payload(1, grad=G, activations=False)):
        error = _rejected(server, body)
        got = (error.status_code, error.code, error.param, error.expected_step)
        assert got == (409, "step_out_of_order", protocol.GRAD_OUTPUT, 1)
        assert error.headers["x-expected-step"] == "1"
    assert_unchanged(server, before)


def test_after_a_resume_the_expected_step_is_checkpoint_plus_one(tiny, server, tmp_path):
    server.handle(payload(1))
    for step in (2, 3, 4):
        server.handle(payload(step, grad=G))
    path = server.trainer.save(tmp_path / "step-3")
    resumed_rec = Recorder()
    resumed_rec.checkpoint = 3  # the runner loaded the checkpoint of step 3
    resumed = _server(_trainer(tiny), resumed_rec)
    assert resumed.trainer.load(path) == 3
    before = state(resumed)
    for body in (payload(1), payload(5, grad=G)):
        error = _rejected(resumed, body)
        assert (error.status_code, error.code, error.expected_step) == (409, "step_out_of_order", 4)
    error = _rejected(resumed, payload(4, grad=G))  # the right step, but no forward is pending after a resume
    assert (error.status_code, error.code, error.expected_step) == (409, "step_out_of_order", 4)
    assert_unchanged(resumed, before)
    reply = resumed.handle(payload(4))
    assert output(reply).shape == G and checkpoint_of(reply) == 3
    assert resumed.trainer.steps_applied == 3 and resumed.trainer.has_pending
    resumed.handle(payload(5, grad=G))
    assert resumed.trainer.steps_applied == 4 and [s for s, _, _ in resumed_rec.updates] == [5]


# ---- completion names the last applied step --------------------------------------------------------
def test_completion_before_the_flush_is_refused_with_the_step_to_resend(server, rec):
    reply_1 = server.handle(payload(1))
    before = state(server)
    error = _rejected(server, final(2))  # the flush of step 1's gradient (step 2) never arrived
    assert (error.status_code, error.code, error.param, error.expected_step) == (
        409,
        "step_out_of_order",
        "last_step",
        1,
    )
    assert_unchanged(server, before)
    assert rec.finishes == 0 and not server.finished
    assert server.handle(payload(1)) == reply_1  # resending the expected step replays its reply
    server.handle(payload(2, grad=G, activations=False))
    server.handle(final(2))
    assert server.finished and rec.finishes == 1 and server.trainer.steps_applied == 1


@pytest.mark.parametrize("last_step", [2, 4])
def test_completion_naming_other_steps_than_applied_is_refused(server, rec, last_step):
    server.handle(payload(1))
    server.handle(payload(2, grad=G))
    server.handle(payload(3, grad=G, activations=False))  # 2 applied: the device's flush is step 3
    error = _rejected(server, final(last_step))
    assert (error.status_code, error.expected_step) == (409, 3)
    assert rec.finishes == 0 and not server.finished
    server.handle(final(3))
    assert server.finished and rec.finishes == 1


def test_a_resumed_worker_refuses_completion_until_the_lost_steps_are_redone(tiny, server, tmp_path):
    server.handle(payload(1))
    server.handle(payload(2, grad=G))
    path = server.trainer.save(tmp_path / "step-1")  # the last checkpoint: step 1
    server.handle(payload(3, grad=G, activations=False))  # the flush, lost with the worker
    resumed_rec = Recorder()
    resumed = _server(_trainer(tiny), resumed_rec)
    resumed.trainer.load(path)
    before = state(resumed)
    error = _rejected(resumed, final(3))
    assert (error.status_code, error.code, error.expected_step) == (409, "step_out_of_order", 2)
    assert_unchanged(resumed, before)
    resumed.handle(payload(2))
    resumed.handle(payload(3, grad=G, activations=False))
    resumed.handle(final(3))
    assert resumed.finished and resumed_rec.finishes == 1 and [s for s, _, _ in resumed_rec.updates] == [3]


# ---- a device through worker crashes ---------------------------------------------------------------
def _not_running():
    """The gateway's answer while the job is queued again (its worker died)."""
    from client_sdk.errors import status_error_from_response

    request = httpx.Request("POST", f"http://gateway.test/v1/fine_tuning/jobs/{JOB}/steps")
    body = {"error": {"message": "not running", "code": "job_not_running", "job_status": "queued"}}
    return status_error_from_response(httpx.Response(409, json=body, request=request))


def _sdk_error(exc: StepRejected):
    """What the device's client raises for a refusal the relay carried to the gateway."""
    from client_sdk.errors import status_error_from_response

    request = httpx.Request("POST", f"http://gateway.test/v1/fine_tuning/jobs/{JOB}/steps")
    return status_error_from_response(
        httpx.Response(exc.status_code, json=exc.body(), headers=exc.headers, request=request)
    )


class WorkerLineage:
    """One job's workers in turn, as the gateway shows them to the device: a ``StepServer`` that saves a
    checkpoint every ``every`` applied steps; at the request ``crash_at`` (a step number, or ``"complete"``)
    the worker applies it and dies before its reply leaves, the gateway answers ``job_not_running`` (the
    job is queued again), and the next worker (a fresh ``StepServer``) resumes from the last checkpoint
    once the device polls the job. ``applied`` lists the step of every gradient applied by any worker."""

    def __init__(self, tiny, directory, crash_at: int | str | None = None, every: int = 3):
        self.tiny, self.directory, self.crash_at, self.every = tiny, directory, crash_at, every
        self.checkpoint, self.applied, self.server, self.workers = 0, [], None, 0
        self.resumed_from: list[int] = []  # the checkpoint step each worker started from
        self.refusals: list[tuple[int, str, int | None]] = []  # (status, code, expected_step) answered
        self.start()

    def start(self) -> None:
        trainer = _trainer(self.tiny)
        for module in trainer.model.modules():  # a deterministic forward, so runs can be compared exactly
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        if self.checkpoint:
            assert trainer.load(self.directory / f"step-{self.checkpoint}") == self.checkpoint
        self.resumed_from.append(self.checkpoint)
        self.server = StepServer(
            trainer, step_shape(METHOD, HIDDEN), JOB, on_update=self.on_update, checkpoint_step=lambda: self.checkpoint
        )
        self.workers += 1

    def on_update(self, header: wire.WireHeader, norm: float, batch: int) -> None:
        self.applied.append((self.workers, header.step - 1))  # (worker, the step whose gradient it applied)
        trainer = self.server.trainer
        if trainer.steps_applied % self.every == 0:
            trainer.save(self.directory / f"step-{trainer.steps_applied}")
            self.checkpoint = trainer.steps_applied

    def status(self) -> str:
        if self.server is None:
            self.start()  # a worker claimed the job: it runs again
        return "running"

    def __call__(self, payload: bytes) -> bytes:
        if self.server is None:
            raise _not_running()
        header = wire.decode(payload)[0]
        try:
            reply = self.server.handle(payload)
        except StepRejected as exc:
            self.refusals.append((exc.status_code, exc.code, exc.expected_step))
            raise _sdk_error(exc) from None
        name = "complete" if protocol.FINAL in header.extra else header.step
        if header.kind == "step" and name == self.crash_at:
            self.crash_at, self.server = None, None  # the reply is lost with the worker
            raise _not_running()
        return reply


@pytest.fixture(scope="module")
def device_parts(tiny):
    from client_sdk.data import Example, LabelMap
    from client_sdk.privatizer import Privatizer
    from worker.models import build_bottom

    bottom, tokenizer = build_bottom(tiny[0], METHOD.split_layer)
    examples = [Example(" ".join(WORDS[i : i + 2 + i % 3]), ("neg", "pos")[i % 2]) for i in range(20)]
    return Privatizer(bottom, tokenizer, "none", max_length=8), LabelMap.fit(["neg", "pos"]), examples


def _device(device_parts, worker: WorkerLineage, directory):
    from client_sdk.end_state import EndStore
    from client_sdk.end_tasks import HeadTask
    from client_sdk.models.ends import ClassifierHead
    from client_sdk.training import DeviceTrainer, WorkerWait

    privatizer, labels, examples = device_parts
    head = ClassifierHead(HIDDEN, LABELS, torch.Generator().manual_seed(7))
    wait = WorkerWait(JOB, worker.status, sleep=lambda s: None)
    return DeviceTrainer(JOB, worker, HeadTask(head, privatizer, labels), examples, 4, optimizer=METHOD.optimizer,
                         total_steps=METHOD.total_steps, seed=1, store=EndStore(JOB, directory), wait=wait)  # fmt: skip


@pytest.mark.parametrize(("crash_at", "expected"), [(4, 4), (6, 4), (METHOD.total_steps + 1, 10), ("complete", 10)])
def test_a_device_through_a_worker_crash_ends_exactly_where_an_unbroken_run_ends(
    tiny, device_parts, tmp_path, crash_at, expected
):
    """4: the checkpoint holds the lost step's gradient (it is resent without it); 6: two updates are lost
    and redone; the flush: its gradient is lost; at completion: the worker refuses it, the device redoes
    the steps after the checkpoint and completes again."""
    total = METHOD.total_steps
    runs = {}
    for name, crash in (("unbroken", None), ("crashed", crash_at)):
        worker = WorkerLineage(tiny, tmp_path / name / "worker", crash_at=crash)
        device = _device(device_parts, worker, tmp_path / name / "device")
        device.train()
        device.finish(worker)
        assert worker.server.finished and worker.server.trainer.steps_applied == total
        runs[name] = worker, device
    (whole, whole_device), (crashed, crashed_device) = runs["unbroken"], runs["crashed"]
    assert crashed.refusals == [(409, "step_out_of_order", expected)] and whole.refusals == []
    assert crashed.workers == 2 and [s for _, s in whole.applied] == list(range(1, total + 1))
    resumed = crashed.resumed_from[1]
    kept = [s for w, s in crashed.applied if w == 1 and s <= resumed]  # in the checkpoint the second worker loaded
    assert kept + [s for w, s in crashed.applied if w == 2] == list(range(1, total + 1))  # each step once, none lost
    for name, tensor in whole.server.trainer.trainable.items():
        torch.testing.assert_close(crashed.server.trainer.trainable[name], tensor, atol=1e-6, rtol=0)
    for name, tensor in whole_device.task.end.state().items():
        torch.testing.assert_close(crashed_device.task.end.state()[name], tensor, atol=1e-6, rtol=0)
    assert len(crashed_device.report.losses) == total
