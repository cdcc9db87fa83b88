"""``client_sdk.training.DeviceTrainer`` against a fake worker (a ``post`` function, bytes -> bytes): what
leaves the device is exactly ``Privatizer.privatize`` and dL/d(representation); labels, text, logits and
per-step losses never do; each gradient travels with the next step and is the one through the device's
head as it was; a step out of order rewinds and restores the head; evaluation is private inference. A
real Privatizer over a tiny random BERT (mechanism ``none``)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest
import torch
import torch.nn.functional as F

from client_sdk import protocol, wire
from client_sdk.data import Example, LabelMap, batch_indices
from client_sdk.end_state import EndStore, MissingEndState
from client_sdk.end_tasks import HeadTask
from client_sdk.errors import APIConnectionError, JobNotRunningError, StepOutOfOrderError, status_error_from_response
from client_sdk.jobspec import OptimizerSpec
from client_sdk.models.ends import ClassifierHead
from client_sdk.privatizer import Privatizer
from client_sdk.training import DeviceTrainer, JobInterruptedError, WorkerWait
from tests.helpers import WORDS, make_tiny_bert

JOB, BATCH, SEED, MAX_LENGTH, D = "ftjob-train", 4, 3, 16, 32
LABELS = ("label-negative", "label-positive")  # distinctive: searched for in every payload
EXAMPLES = [Example(" ".join(WORDS[i : i + 3 + i % 4]), LABELS[i % 2]) for i in range(10)]
PER_EPOCH = -(-len(EXAMPLES) // BATCH)
TOTAL = 2 * PER_EPOCH  # two epochs
SHAPE = protocol.StepShape(D, "classification", 2, BATCH, MAX_LENGTH)
OPTIMIZER = OptimizerSpec(learning_rate=0.05)


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

    def output(self) -> torch.Tensor:
        return wire.decode(self.reply)[1][protocol.OUTPUT]


class FakeWorker:
    """The worker's side of the step channel: the representation = tanh(mean real hidden state @ a fixed
    (d, d) map). ``fail`` maps a step to the ``expected_step`` it answers once with a 409;
    ``checkpoint`` is the step its replies name as its latest checkpoint."""

    def __init__(self, fail: dict[int, int | None] | None = None, checkpoint: int = 0):
        self.fail, self.checkpoint = dict(fail or {}), checkpoint
        self.weight = torch.randn(D, D, generator=torch.Generator().manual_seed(0))
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
            out[protocol.OUTPUT] = torch.tanh(pooled @ self.weight)  # (b, d)
        kind = "infer_reply" if header.kind == "infer" else "step_reply"
        extra = {protocol.CHECKPOINT: str(self.checkpoint)}
        exchange.reply = wire.encode(out, wire.WireHeader(header.job_id, header.step, kind, extra=extra))
        return exchange.reply

    def answered(self) -> list[Exchange]:
        return [e for e in self.seen if e.reply is not None]


def trainer(privatizer: Privatizer, worker: FakeWorker, store=None, **options) -> DeviceTrainer:
    head = ClassifierHead(D, len(LABELS), torch.Generator().manual_seed(7))
    task = HeadTask(head, privatizer, LabelMap.fit(LABELS))
    return DeviceTrainer(
        JOB, worker, task, EXAMPLES, BATCH, optimizer=OPTIMIZER, total_steps=TOTAL, seed=SEED, store=store, **options
    )


def batch(step: int) -> list[Example]:
    return [EXAMPLES[i] for i in batch_indices(len(EXAMPLES), BATCH, step, SEED)]


def expected_gradient(head_state: dict, exchange: Exchange, step: int) -> tuple[torch.Tensor, float]:
    """dL/d(representation) of step ``step`` through the head as it was before the step."""
    head = ClassifierHead(D, len(LABELS), torch.Generator().manual_seed(0))
    head.load_state(head_state)
    rep = exchange.output().float().requires_grad_(True)
    targets = torch.tensor([LABELS.index(ex.label) for ex in batch(step)])
    loss = F.cross_entropy(head(rep), targets)
    loss.backward()
    return rep.grad, loss.item()


def test_each_step_sends_exactly_what_the_privatizer_gives(privatizer):
    worker = FakeWorker()
    trainer(privatizer, worker).train()
    steps = [e for e in worker.seen if protocol.HIDDEN in e.tensors]
    assert [e.header.step for e in steps] == list(range(1, TOTAL + 1))
    for exchange in steps:
        out = privatizer.privatize([ex.text for ex in batch(exchange.header.step)])
        assert torch.equal(exchange.tensors[protocol.HIDDEN], out["hidden"].half())  # float16 on the wire
        assert torch.equal(exchange.tensors[protocol.ATTENTION_MASK], out["attention_mask"].to(torch.uint8))


@pytest.mark.parametrize("report_metrics", [True, False])
def test_no_label_text_logit_or_loss_leaves_the_device(privatizer, tmp_path, report_metrics):
    worker = FakeWorker()
    job = trainer(privatizer, worker, EndStore(JOB, tmp_path), validation=EXAMPLES[:4], report_metrics=report_metrics)
    report = job.train()
    job.evaluate(EXAMPLES)
    assert worker.seen
    for exchange in worker.seen:
        assert set(exchange.tensors) <= {protocol.HIDDEN, protocol.ATTENTION_MASK, protocol.GRAD_OUTPUT}
        if protocol.GRAD_OUTPUT in exchange.tensors:
            assert exchange.tensors[protocol.GRAD_OUTPUT].shape[-1] == D  # dL/d(representation), not logits
        assert set(exchange.header.extra) <= ({protocol.METRICS} if report_metrics else set())
        for secret in (*LABELS, *(ex.text for ex in EXAMPLES), *(f"{loss:.6f}" for loss in report.losses)):
            assert secret.encode() not in exchange.payload
        protocol.check_request(exchange.header, wire.inspect(exchange.payload)[1], SHAPE, JOB)  # a valid request
    reported = [protocol.parse_metrics(e.header.extra[protocol.METRICS]) for e in worker.seen if e.header.extra]
    if report_metrics:  # the validation at the end of the first epoch, sent with the next request; no step loss
        assert [sorted(m) for m in reported] == [["valid_accuracy", "valid_loss"]]
        assert reported[0] == {k: pytest.approx(v, abs=1e-6) for k, v in report.validation[0].items() if k != "step"}
        assert report.validation[0]["step"] == PER_EPOCH
    else:
        assert reported == []


def test_the_training_loss_is_reported_only_as_a_mean_over_windows(privatizer, monkeypatch):
    import client_sdk.training as training

    monkeypatch.setattr(training, "REPORT_EVERY", 3)
    worker = FakeWorker()
    report = trainer(privatizer, worker).train()
    sent = [
        (e.header.step, protocol.parse_metrics(e.header.extra[protocol.METRICS])) for e in worker.seen if e.header.extra
    ]
    windows = [report.losses[i : i + 3] for i in range(0, TOTAL, 3)]
    assert [step for step, _ in sent] == [4, 7]  # after steps 3 and 6 (the flush)
    for (_, metrics), window in zip(sent, windows, strict=True):
        assert metrics == {"train_loss": pytest.approx(sum(window) / 3, abs=1e-6)}


def test_the_gradient_of_step_t_travels_with_step_t_plus_one(privatizer, tmp_path):
    worker, store = FakeWorker(), EndStore(JOB, tmp_path)
    report = trainer(privatizer, worker, store).train()
    sent = worker.answered()
    assert len(sent) == TOTAL + 1  # every step, then the flush
    assert protocol.GRAD_OUTPUT not in sent[0].tensors
    for step, (before, after) in enumerate(zip(sent[:-1], sent[1:], strict=True), start=1):
        grad, loss = expected_gradient(store.load(step - 1)[0], before, step)
        assert after.header.step == step + 1
        torch.testing.assert_close(after.tensors[protocol.GRAD_OUTPUT].float(), grad, atol=1e-3, rtol=0)
        assert report.losses[step - 1] == pytest.approx(loss, abs=1e-5)
    assert store.steps() == list(range(0, TOTAL + 1))  # the end after every step (no worker checkpoint yet)


def test_the_final_flush_carries_only_the_last_gradient(privatizer):
    worker = FakeWorker()
    trainer(privatizer, worker).train()
    flush = worker.seen[-1]
    assert (flush.header.kind, flush.header.step) == ("step", TOTAL + 1)
    assert set(flush.tensors) == {protocol.GRAD_OUTPUT}
    assert protocol.check_request(flush.header, wire.inspect(flush.payload)[1], SHAPE, JOB).kind == "flush"


def test_a_rewind_restores_the_end_and_ends_where_an_unbroken_run_ends(privatizer, tmp_path):
    unbroken = trainer(privatizer, FakeWorker(), EndStore(JOB, tmp_path / "a"))
    unbroken.train()
    worker = FakeWorker(fail={4: 2})  # the worker restarted from its checkpoint after step 1
    job = trainer(privatizer, worker, EndStore(JOB, tmp_path / "b"))
    report = job.train()
    assert [e.header.step for e in worker.seen] == [1, 2, 3, 4, 2, *range(3, TOTAL + 2)]
    first_two, refused, resent = worker.seen[1], worker.seen[3], worker.seen[4]
    assert protocol.GRAD_OUTPUT in refused.tensors
    assert protocol.GRAD_OUTPUT not in resent.tensors
    assert torch.equal(resent.tensors[protocol.HIDDEN], first_two.tensors[protocol.HIDDEN])  # rebuilt batch
    grad, _ = expected_gradient(job.store.load(1)[0], resent, 2)  # through the head restored at step 1
    torch.testing.assert_close(worker.seen[5].tensors[protocol.GRAD_OUTPUT].float(), grad, atol=1e-3, rtol=0)
    assert report.steps == TOTAL and len(report.losses) == TOTAL  # re-sent steps are not counted twice
    for name, tensor in unbroken.task.end.state().items():
        torch.testing.assert_close(job.task.end.state()[name], tensor, atol=1e-5, rtol=0)


def test_a_rewind_without_the_saved_end_is_a_clear_error(privatizer, tmp_path):
    store = EndStore(JOB, tmp_path)
    trainer(privatizer, FakeWorker(checkpoint=3), store).train()  # replies name checkpoint 3: older ends go
    assert store.steps() == list(range(3, TOTAL + 1))
    trainer(privatizer, FakeWorker(fail={1: 4}), store).train()  # resuming from checkpoint 3 works
    with pytest.raises(MissingEndState, match="no saved end for that step"):
        trainer(privatizer, FakeWorker(fail={1: 3}), store).train()  # from step 2 it cannot


def test_a_step_out_of_order_without_another_step_to_send_is_raised(privatizer):
    with pytest.raises(StepOutOfOrderError):
        trainer(privatizer, FakeWorker(fail={3: None})).train()


def test_a_gradient_the_new_worker_never_saw_is_sent_again_without_it(privatizer, tmp_path):
    unbroken = trainer(privatizer, FakeWorker(), EndStore(JOB, tmp_path / "a"))
    unbroken.train()
    worker = FakeWorker(fail={3: 3})  # resumed from its checkpoint at step 2: step 3's gradient answers nothing
    job = trainer(privatizer, worker, EndStore(JOB, tmp_path / "b"))
    report = job.train()
    assert [e.header.step for e in worker.seen] == [1, 2, 3, *range(3, TOTAL + 2)]
    refused, resent = worker.seen[2], worker.seen[3]
    assert protocol.GRAD_OUTPUT in refused.tensors and protocol.GRAD_OUTPUT not in resent.tensors
    assert torch.equal(resent.tensors[protocol.HIDDEN], refused.tensors[protocol.HIDDEN])
    assert report.steps == TOTAL and len(report.losses) == TOTAL
    for name, tensor in unbroken.task.end.state().items():
        torch.testing.assert_close(job.task.end.state()[name], tensor, atol=1e-5, rtol=0)


def test_a_flush_the_resumed_worker_already_applied_ends_training(privatizer, tmp_path):
    worker = FakeWorker(fail={TOTAL + 1: TOTAL + 1})  # the worker checkpointed the flush, then crashed
    report = trainer(privatizer, worker, EndStore(JOB, tmp_path)).train()
    assert [e.header.step for e in worker.seen][-2:] == [TOTAL, TOTAL + 1] and report.steps == TOTAL


class StubbornWorker(FakeWorker):
    """Answers every request for ``step`` with step_out_of_order naming that step."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def __call__(self, payload: bytes) -> bytes:
        if wire.decode(payload)[0].step == self.step:
            self.fail[self.step] = self.step
        return super().__call__(payload)


def test_the_same_refusal_twice_in_a_row_is_raised_not_looped(privatizer, tmp_path):
    worker = StubbornWorker(3)
    with pytest.raises(StepOutOfOrderError):
        trainer(privatizer, worker, EndStore(JOB, tmp_path)).train()
    assert [e.header.step for e in worker.seen] == [1, 2, 3, 3]


# ---- waiting through job_not_running ----------------------------------------------------------------
def not_running(job_status: str) -> JobNotRunningError:
    request = httpx.Request("POST", f"http://gateway.test/v1/fine_tuning/jobs/{JOB}/steps")
    body = {"error": {"message": "not running", "code": "job_not_running", "job_status": job_status}}
    error = status_error_from_response(httpx.Response(409, json=body, request=request))
    assert isinstance(error, JobNotRunningError) and error.job_status == job_status
    return error


class CrashingWorker(FakeWorker):
    """A worker that is gone while ``down`` says so: the gateway answers job_not_running (job queued)."""

    def __init__(self, down_at: int, outages: int = 1):
        super().__init__()
        self.down_at, self.outages = down_at, outages

    def __call__(self, payload: bytes) -> bytes:
        header = wire.decode(payload)[0]
        if header.kind == "step" and header.step == self.down_at and self.outages:
            self.outages -= 1
            self.seen.append(Exchange(payload, header, {}))
            raise not_running("queued")
        return super().__call__(payload)


def recording_wait(statuses: list[str], **options) -> tuple[WorkerWait, list[float], list[str]]:
    sleeps: list[float] = []
    shown: list[str] = []
    polls = iter(statuses)
    wait = WorkerWait(JOB, lambda: next(polls), sleep=sleeps.append, on_wait=shown.append, **options)
    return wait, sleeps, shown


def test_the_device_waits_for_a_worker_and_sends_the_same_step_again(privatizer, tmp_path):
    unbroken = trainer(privatizer, FakeWorker(), EndStore(JOB, tmp_path / "a"))
    unbroken.train()
    worker = CrashingWorker(down_at=4)
    wait, sleeps, shown = recording_wait(["queued"] * 6 + ["running"], max_delay=4.0)
    job = trainer(privatizer, worker, EndStore(JOB, tmp_path / "b"), wait=wait)
    job.train()
    steps = [e.header.step for e in worker.seen]
    assert steps == [1, 2, 3, 4, *range(4, TOTAL + 2)]
    assert worker.seen[3].payload == worker.seen[4].payload  # the very same request, once a worker runs the job
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0] and shown == ["queued"] * 7  # capped backoff
    for name, tensor in unbroken.task.end.state().items():
        torch.testing.assert_close(job.task.end.state()[name], tensor, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("status", "match"), [("paused", r"paused; resume it with FineTuneJob.resume\('ftjob-train'"),
                                               ("cancelled", "is cancelled"), ("failed", "is failed")])  # fmt: skip
def test_a_job_that_will_not_come_back_is_a_clear_error_naming_its_status(privatizer, status, match):
    wait, sleeps, _ = recording_wait(["queued", status])
    with pytest.raises(JobInterruptedError, match=match) as info:
        trainer(privatizer, CrashingWorker(down_at=2), wait=wait).train()
    assert info.value.status == status and info.value.job_id == JOB and len(sleeps) == 2


def test_the_wait_for_a_worker_has_a_deadline(privatizer):
    wait, sleeps, _ = recording_wait(["queued"] * 100, timeout_s=20.0, max_delay=8.0)
    with pytest.raises(JobInterruptedError, match="no worker took job ftjob-train back within 20 s"):
        trainer(privatizer, CrashingWorker(down_at=2), wait=wait).train()
    assert sum(sleeps) == pytest.approx(20.0) and max(sleeps) <= 8.0


def test_a_refusal_without_the_job_status_asks_for_it():
    wait, sleeps, _ = recording_wait(["queued", "running"])
    wait.wait(None)
    assert sleeps == [0.5]
    wait, _, _ = recording_wait(["cancelled"])
    with pytest.raises(JobInterruptedError, match="is cancelled"):
        wait.wait(None)


def test_without_a_wait_job_not_running_is_raised(privatizer):
    with pytest.raises(JobNotRunningError):
        trainer(privatizer, CrashingWorker(down_at=2)).train()


# ---- completion names the last step -------------------------------------------------------------
class CompletingWorker(FakeWorker):
    """Refuses the first completion with ``expected_step`` (its applied steps were lost back to there)."""

    def __init__(self, expected: int | None):
        super().__init__()
        self.expected, self.refuse, self.completions = expected, True, []

    def complete(self, payload: bytes) -> str:
        header, _ = wire.decode(payload)
        self.completions.append(header)
        if self.refuse:
            request = httpx.Request("POST", f"http://gateway.test/v1/fine_tuning/jobs/{JOB}/complete")
            expected, self.refuse = self.expected, False
            self.fail_at = len(self.seen)
            raise StepOutOfOrderError(
                "resend", expected_step=expected, response=httpx.Response(409, request=request), body=None
            )
        return "done"


def test_a_refused_completion_trains_again_from_the_expected_step_and_completes(privatizer, tmp_path):
    unbroken = trainer(privatizer, FakeWorker(), EndStore(JOB, tmp_path / "a"))
    unbroken.train()
    worker = CompletingWorker(expected=TOTAL - 1)  # a crash lost the last two updates
    job = trainer(privatizer, worker, EndStore(JOB, tmp_path / "b"))
    job.train()
    result, after = job.finish(worker.complete)
    assert result == "done" and after == {}
    assert [h.extra[protocol.LAST_STEP] for h in worker.completions] == [str(TOTAL + 1)] * 2
    assert [e.header.step for e in worker.seen[worker.fail_at :]] == [TOTAL - 1, TOTAL, TOTAL + 1]
    assert protocol.GRAD_OUTPUT not in worker.seen[worker.fail_at].tensors
    assert len(job.report.losses) == TOTAL
    for name, tensor in unbroken.task.end.state().items():
        torch.testing.assert_close(job.task.end.state()[name], tensor, atol=1e-5, rtol=0)


@pytest.mark.parametrize("expected", [None, 0, TOTAL + 1])
def test_a_completion_refusal_the_device_cannot_follow_is_raised(privatizer, tmp_path, expected):
    worker = CompletingWorker(expected=expected)
    job = trainer(privatizer, worker, EndStore(JOB, tmp_path))
    job.train()
    with pytest.raises(StepOutOfOrderError):
        job.finish(worker.complete)


def test_a_new_device_process_resumes_from_its_saved_end(privatizer, tmp_path):
    whole = trainer(privatizer, FakeWorker(), EndStore(JOB, tmp_path / "whole"))
    whole.train()
    first = trainer(privatizer, FakeWorker(), EndStore(JOB, tmp_path / "resumed"))
    first.train()
    worker = FakeWorker(fail={1: 4})  # a later process: the worker resumes from its checkpoint at step 3
    second = trainer(privatizer, worker, EndStore(JOB, tmp_path / "resumed"))
    second.train()
    assert [e.header.step for e in worker.seen] == [1, *range(4, TOTAL + 2)]
    for name, tensor in whole.task.end.state().items():
        torch.testing.assert_close(second.task.end.state()[name], tensor, atol=1e-5, rtol=0)


def test_evaluate_is_private_inference_and_scores_the_replies(privatizer):
    worker = FakeWorker()
    job = trainer(privatizer, worker)
    result = job.evaluate(EXAMPLES, batch_size=3)
    assert [(e.header.kind, e.header.step) for e in worker.seen] == [("infer", 0)] * 4  # 3 + 3 + 3 + 1
    assert all(set(e.tensors) == {protocol.HIDDEN, protocol.ATTENTION_MASK} for e in worker.seen)
    with torch.no_grad():
        logits = job.task.end(torch.cat([e.output() for e in worker.seen]).float())
    truth = torch.tensor([LABELS.index(ex.label) for ex in EXAMPLES])
    assert result["valid_accuracy"] == pytest.approx(float((logits.argmax(-1) == truth).float().mean()))
    assert result["valid_loss"] == pytest.approx(float(F.cross_entropy(logits, truth)), abs=1e-4)
    with pytest.raises(ValueError, match="at least one example"):
        trainer(privatizer, FakeWorker()).evaluate([])


def test_the_finish_payload_is_final_and_carries_no_tensors(privatizer):
    payload = trainer(privatizer, FakeWorker()).finish_payload({"valid_accuracy": 0.5})
    header, tensors = wire.decode(payload)
    assert (header.job_id, header.kind, header.step) == (JOB, "step", 0)
    assert header.extra[protocol.FINAL] == "1" and tensors == {}
    assert protocol.parse_metrics(header.extra[protocol.METRICS]) == {"valid_accuracy": 0.5}
    request = protocol.check_request(header, wire.inspect(payload)[1], SHAPE, JOB, require_final=True)
    assert (request.kind, request.last_step) == ("final", TOTAL + 1)  # the flush: the last step request
    quiet = trainer(privatizer, FakeWorker(), report_metrics=False).finish_payload({"valid_accuracy": 0.5})
    assert dict(wire.decode(quiet)[0].extra) == {protocol.FINAL: "1", protocol.LAST_STEP: str(TOTAL + 1)}


def test_the_report_adds_up(privatizer):
    worker, calls = FakeWorker(), []
    job = trainer(privatizer, worker)
    report = job.train(progress=lambda step, loss, sps: calls.append((step, loss, sps)))
    job.evaluate(EXAMPLES)
    assert report is job.report and report.steps == TOTAL and len(report.losses) == TOTAL
    assert report.bytes_sent == sum(len(e.payload) for e in worker.seen)
    assert report.bytes_received == sum(len(e.reply) for e in worker.seen)
    steps = [e for e in worker.seen if e.header.kind == "step" and protocol.HIDDEN in e.tensors]
    assert report.samples == sum(len(batch(e.header.step)) for e in steps) == 2 * len(EXAMPLES)  # two epochs
    assert report.activation_elements == sum(int(e.tensors[protocol.ATTENTION_MASK].sum()) * D for e in steps)
    assert [c[0] for c in calls] == list(range(1, TOTAL + 1)) and [c[1] for c in calls] == report.losses
    assert report.seconds > 0 and report.samples_per_second > 0


class RestartingGateway(FakeWorker):
    """A gateway that is down (connection refused) for ``outages`` tries of step ``down_at``."""

    def __init__(self, down_at: int, outages: int = 3):
        super().__init__()
        self.down_at, self.outages = down_at, outages

    def __call__(self, payload: bytes) -> bytes:
        header = wire.decode(payload)[0]
        if header.kind == "step" and header.step == self.down_at and self.outages:
            self.outages -= 1
            self.seen.append(Exchange(payload, header, {}))
            request = httpx.Request("POST", "http://127.0.0.1:8000/v1/fine_tuning/jobs/x/steps")
            raise APIConnectionError(message="Connection error: [Errno 111] Connection refused", request=request)
        return super().__call__(payload)


def test_the_device_waits_for_a_restarting_gateway_and_sends_the_same_step_again(privatizer, tmp_path):
    unbroken = trainer(privatizer, FakeWorker(), EndStore(JOB, tmp_path / "a"))
    unbroken.train()
    gateway = RestartingGateway(down_at=4, outages=2)
    request = httpx.Request("GET", "http://127.0.0.1:8000/v1/fine_tuning/jobs/x")
    answers = iter([APIConnectionError(request=request), "running", "running"])

    def status() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    sleeps: list[float] = []
    wait = WorkerWait(JOB, status, sleep=sleeps.append)
    job = trainer(privatizer, gateway, EndStore(JOB, tmp_path / "b"), wait=wait)
    job.train()
    steps = [e.header.step for e in gateway.seen]
    assert steps == [1, 2, 3, 4, 4, *range(4, TOTAL + 2)]  # the same step until the gateway answers
    assert gateway.seen[3].payload == gateway.seen[5].payload
    assert sleeps == [0.5, 1.0, 0.5]  # status probes while down, once per outage after it answers
    for name, tensor in unbroken.task.end.state().items():
        torch.testing.assert_close(job.task.end.state()[name], tensor, atol=1e-5, rtol=0)


def test_an_unreachable_gateway_has_a_deadline(privatizer):
    request = httpx.Request("GET", "http://127.0.0.1:8000/v1/fine_tuning/jobs/x")

    def status() -> str:
        raise APIConnectionError(request=request)

    sleeps: list[float] = []
    wait = WorkerWait(JOB, status, sleep=sleeps.append, timeout_s=10.0, max_delay=4.0)
    with pytest.raises(JobInterruptedError, match="the gateway did not answer within 10 s"):
        trainer(privatizer, RestartingGateway(down_at=2, outages=1), wait=wait).train()
    assert sum(sleeps) == pytest.approx(10.0) and max(sleeps) <= 4.0
