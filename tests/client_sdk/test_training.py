"""``client_sdk.training.DeviceTrainer`` against a fake worker (a ``post`` function, bytes -> bytes): what
leaves the device is exactly ``Privatizer.privatize``, labels and text never do, each gradient travels with
the next step, a step out of order rewinds, evaluation is private inference. A real Privatizer over a
tiny random BERT (mechanism ``none``)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest
import torch
import torch.nn.functional as F

from client_sdk import protocol, wire
from client_sdk.data import Example, LabelMap, batch_indices
from client_sdk.errors import StepOutOfOrderError
from client_sdk.privatizer import Privatizer
from client_sdk.training import DeviceTrainer
from tests.helpers import WORDS, make_tiny_bert

JOB, BATCH, SEED, MAX_LENGTH = "ftjob-train", 4, 3, 16
LABELS = ("label-negative", "label-positive")  # distinctive: searched for in every payload
EXAMPLES = [Example(" ".join(WORDS[i : i + 3 + i % 4]), LABELS[i % 2]) for i in range(10)]
TOTAL = 2 * -(-len(EXAMPLES) // BATCH)  # two epochs
SHAPE = protocol.StepShape(32, "classification", 2, BATCH, MAX_LENGTH)


@pytest.fixture(scope="module")
def privatizer(tmp_path_factory):
    from worker.models import build_bottom

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors gain nothing from threads on a shared CPU
    bottom, tokenizer = build_bottom(str(make_tiny_bert(tmp_path_factory.mktemp("train") / "bert")), 2)
    yield Privatizer(bottom, tokenizer, "none", max_length=MAX_LENGTH)
    torch.set_num_threads(threads)


@dataclass
class Exchange:
    payload: bytes
    header: wire.WireHeader
    tensors: dict[str, torch.Tensor]  # as sent (wire dtypes)
    reply: bytes | None = None

    def logits(self) -> torch.Tensor:
        return wire.decode(self.reply)[1][protocol.OUTPUT]


class FakeWorker:
    """The worker's side of the step channel: logits = mean real hidden state @ a fixed (d, c) map.
    ``fail`` maps a step to the ``expected_step`` it answers once with a 409; ``constant`` fixes the logits."""

    def __init__(self, fail: dict[int, int | None] | None = None, constant: list[float] | None = None):
        self.fail, self.constant = dict(fail or {}), constant
        self.weight = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
        self.seen: list[Exchange] = []

    def __call__(self, payload: bytes) -> bytes:
        header, tensors = wire.decode(payload, float_dtype=None)
        exchange = Exchange(payload, header, tensors)
        self.seen.append(exchange)
        if header.kind == "step" and header.step in self.fail:
            request = httpx.Request("POST", f"http://gateway.test/v1/fine_tuning/jobs/{JOB}/steps")
            response = httpx.Response(409, request=request)
            expected = self.fail.pop(header.step)
            raise StepOutOfOrderError("resend", expected_step=expected, response=response, body=None)
        out = {}
        if protocol.HIDDEN in tensors:
            hidden, mask = tensors[protocol.HIDDEN].float(), tensors[protocol.ATTENTION_MASK].float()
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (b, d)
            out[protocol.OUTPUT] = pooled @ self.weight  # (b, c)
            if self.constant is not None:
                out[protocol.OUTPUT] = torch.tensor([self.constant] * hidden.shape[0])
        kind = "infer_reply" if header.kind == "infer" else "step_reply"
        exchange.reply = wire.encode(out, wire.WireHeader(header.job_id, header.step, kind))
        return exchange.reply

    def answered(self) -> list[Exchange]:
        return [e for e in self.seen if e.reply is not None]


def trainer(privatizer: Privatizer, worker: FakeWorker) -> DeviceTrainer:
    return DeviceTrainer(JOB, worker, privatizer, LabelMap.fit(LABELS), EXAMPLES, BATCH, seed=SEED)


def batch(step: int) -> list[Example]:
    return [EXAMPLES[i] for i in batch_indices(len(EXAMPLES), BATCH, step, SEED)]


def expected_gradient(exchange: Exchange, step: int) -> tuple[torch.Tensor, float]:
    logits = exchange.logits().float().requires_grad_(True)
    targets = torch.tensor([LABELS.index(ex.label) for ex in batch(step)])
    loss = F.cross_entropy(logits, targets)
    loss.backward()
    return logits.grad, loss.item()


def test_each_step_sends_exactly_what_the_privatizer_gives(privatizer):
    worker = FakeWorker()
    trainer(privatizer, worker).train(TOTAL)
    steps = [e for e in worker.seen if protocol.HIDDEN in e.tensors]
    assert [e.header.step for e in steps] == list(range(1, TOTAL + 1))
    for exchange in steps:
        out = privatizer.privatize([ex.text for ex in batch(exchange.header.step)])
        assert torch.equal(exchange.tensors[protocol.HIDDEN], out["hidden"].half())  # float16 on the wire
        assert torch.equal(exchange.tensors[protocol.ATTENTION_MASK], out["attention_mask"].to(torch.uint8))


def test_labels_and_text_never_leave_the_device(privatizer):
    worker = FakeWorker()
    job = trainer(privatizer, worker)
    job.train(TOTAL)
    job.evaluate(EXAMPLES)
    assert worker.seen
    for exchange in worker.seen:
        assert set(exchange.tensors) <= {protocol.HIDDEN, protocol.ATTENTION_MASK, protocol.GRAD_OUTPUT}
        assert set(exchange.header.extra) <= {protocol.LOSS}
        for secret in (*LABELS, *(ex.text for ex in EXAMPLES)):
            assert secret.encode() not in exchange.payload
        protocol.check_request(exchange.header, wire.inspect(exchange.payload)[1], SHAPE, JOB)  # a valid request


def test_the_gradient_of_step_t_travels_with_step_t_plus_one(privatizer):
    worker = FakeWorker()
    report = trainer(privatizer, worker).train(TOTAL)
    sent = worker.answered()
    assert len(sent) == TOTAL + 1  # every step, then the flush
    first = sent[0]
    assert protocol.GRAD_OUTPUT not in first.tensors and protocol.LOSS not in first.header.extra
    for step, (before, after) in enumerate(zip(sent[:-1], sent[1:], strict=True), start=1):
        grad, loss = expected_gradient(before, step)
        assert after.header.step == step + 1
        torch.testing.assert_close(after.tensors[protocol.GRAD_OUTPUT].float(), grad, atol=1e-3, rtol=0)
        assert after.header.extra[protocol.LOSS] == f"{report.losses[step - 1]:.6f}"
        assert report.losses[step - 1] == pytest.approx(loss, abs=1e-5)


def test_the_final_flush_carries_only_the_last_gradient(privatizer):
    worker = FakeWorker()
    report = trainer(privatizer, worker).train(TOTAL)
    flush = worker.seen[-1]
    assert (flush.header.kind, flush.header.step) == ("step", TOTAL + 1)
    assert set(flush.tensors) == {protocol.GRAD_OUTPUT}
    assert flush.header.extra == {protocol.LOSS: f"{report.losses[-1]:.6f}"}
    assert protocol.check_request(flush.header, wire.inspect(flush.payload)[1], SHAPE, JOB).kind == "flush"


def test_a_step_out_of_order_rewinds_without_a_gradient(privatizer):
    worker = FakeWorker(fail={3: 2})  # the worker restarted from its checkpoint after step 1
    report = trainer(privatizer, worker).train(TOTAL)
    assert [e.header.step for e in worker.seen] == [1, 2, 3, 2, *range(3, TOTAL + 2)]
    first_two, refused, resent = worker.seen[1], worker.seen[2], worker.seen[3]
    assert protocol.GRAD_OUTPUT in refused.tensors
    assert protocol.GRAD_OUTPUT not in resent.tensors and protocol.LOSS not in resent.header.extra
    assert torch.equal(resent.tensors[protocol.HIDDEN], first_two.tensors[protocol.HIDDEN])  # rebuilt batch
    grad, _ = expected_gradient(resent, 2)
    torch.testing.assert_close(worker.seen[4].tensors[protocol.GRAD_OUTPUT].float(), grad, atol=1e-3, rtol=0)
    assert report.steps == TOTAL


@pytest.mark.parametrize("expected", [None, 3])
def test_a_step_out_of_order_without_another_step_to_send_is_raised(privatizer, expected):
    with pytest.raises(StepOutOfOrderError):
        trainer(privatizer, FakeWorker(fail={3: expected})).train(TOTAL)


def test_training_can_start_from_a_later_step(privatizer):
    worker = FakeWorker()
    report = trainer(privatizer, worker).train(TOTAL, start_step=4)
    assert [e.header.step for e in worker.seen] == list(range(4, TOTAL + 2))
    assert protocol.GRAD_OUTPUT not in worker.seen[0].tensors
    assert len(report.losses) == TOTAL - 3


def test_evaluate_is_private_inference_and_scores_the_replies(privatizer):
    worker = FakeWorker()
    job = trainer(privatizer, worker)
    accuracy = job.evaluate(EXAMPLES, batch_size=3)
    assert [(e.header.kind, e.header.step) for e in worker.seen] == [("infer", 0)] * 4  # 3 + 3 + 3 + 1
    assert all(set(e.tensors) == {protocol.HIDDEN, protocol.ATTENTION_MASK} for e in worker.seen)
    predicted = torch.cat([e.logits().argmax(-1) for e in worker.seen])
    truth = torch.tensor([LABELS.index(ex.label) for ex in EXAMPLES])
    assert accuracy == pytest.approx(float((predicted == truth).float().mean()))


def test_evaluate_counts_correct_predictions(privatizer):
    always_positive = FakeWorker(constant=[0.0, 1.0])
    assert trainer(privatizer, always_positive).evaluate(EXAMPLES[:7]) == pytest.approx(3 / 7)
    assert torch.isnan(torch.tensor(trainer(privatizer, FakeWorker()).evaluate([])))


def test_the_finish_payload_is_final_and_carries_no_tensors(privatizer):
    payload = trainer(privatizer, FakeWorker()).finish_payload()
    header, tensors = wire.decode(payload)
    assert (header.job_id, header.kind, header.step) == (JOB, "step", 0)
    assert dict(header.extra) == {protocol.FINAL: "1"} and tensors == {}
    request = protocol.check_request(header, wire.inspect(payload)[1], SHAPE, JOB, require_final=True)
    assert request.kind == "final"


def test_the_report_adds_up(privatizer):
    worker, calls = FakeWorker(), []
    job = trainer(privatizer, worker)
    report = job.train(TOTAL, progress=lambda step, loss, sps: calls.append((step, loss, sps)))
    job.evaluate(EXAMPLES)
    assert report is job.report and report.steps == TOTAL and len(report.losses) == TOTAL
    assert report.bytes_sent == sum(len(e.payload) for e in worker.seen)
    assert report.bytes_received == sum(len(e.reply) for e in worker.seen)
    steps = [e for e in worker.seen if e.header.kind == "step" and protocol.HIDDEN in e.tensors]
    assert report.samples == sum(len(batch(e.header.step)) for e in steps) == 2 * len(EXAMPLES)  # two epochs
    d = 32
    assert report.activation_elements == sum(int(e.tensors[protocol.ATTENTION_MASK].sum()) * d for e in steps)
    assert [c[0] for c in calls] == list(range(1, TOTAL + 1)) and [c[1] for c in calls] == report.losses
    assert report.seconds > 0 and report.samples_per_second > 0
