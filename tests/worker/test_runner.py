"""The job runner on a real SQLite database and a scripted in-memory step channel (no Redis): a job
runs to succeeded (its replies carry the latest checkpoint step, the device's metrics extra becomes the
training loss of the metrics events), cancel and pause are seen at the next step, a resumed job asks
for checkpoint + 1, a rejected request (a malformed metrics extra included) is answered through the
channel and changes nothing, an unclaimable job is skipped. Faults (issue 11): database and Redis
errors injected N times are retried to success with each step applied once; longer outages release
the job to the queue with its checkpoint; a full disk keeps the previous checkpoint; the lease is
renewed during setup; attempts are capped; tenants see an error reference, not exception text;
checkpoints are checksummed, pruned and skipped when corrupt; SIGTERM drains; a device that never
starts and an organization at its running cap release the worker."""

from __future__ import annotations

import errno
import hashlib
import json
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from redis.exceptions import ConnectionError as RedisConnectionError
from safetensors.torch import load_file
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from client_sdk import protocol, wire
from client_sdk.jobspec import PrivtuneMethod
from service.db import repo
from service.db.migrate import upgrade_to_head
from service.db.models import Job as JobRow
from service.db.session import make_engine, make_session_factory
from service.errors import StepRejected
from service.relay import StepMessage
from service.settings import Settings
from tests.helpers import make_tiny_bert
from tests.worker.test_upload_source import write_privatized
from worker.infra import Backoff
from worker.runner import JobRunner
from worker.trainer import TopTrainer

MODEL, HIDDEN, LABELS, BATCH, TOKENS, TOTAL = "tiny-bert", 32, 2, 2, 5, 4
G = (BATCH, HIDDEN)  # interactive classification: the pooled representation and its gradient (the head is the device's)


class FakeChannel:
    """Duck-types ``service.relay.WorkerChannel``: serves a script of request payloads (bytes) and hooks
    (callables run when reached, then "nothing arrived this second"; a ``(hook, payload)`` pair runs
    the hook after the runner's control check and then delivers the payload); records every answer."""

    def __init__(self, script: list[bytes | Callable[[], None] | tuple[Callable[[], None], bytes]]):
        self.script = deque(script)
        self.answers: dict[str, bytes | StepRejected] = {}
        self.discarded = 0
        self._sent = 0

    def receive(self, timeout_s: float = 1.0) -> StepMessage | None:
        if not self.script:
            raise AssertionError("the runner asked for more requests than the test scripted")
        item = self.script.popleft()
        if callable(item):
            item()
            return None
        if isinstance(item, tuple):  # (hook, payload): the hook runs while the request is in flight
            hook, item = item
            hook()
        self._sent += 1
        return StepMessage(f"req-{self._sent}", item)

    def reply(self, request_id: str, payload: bytes) -> None:
        self.answers[request_id] = payload

    def reject(self, request_id: str, rejection: StepRejected) -> None:
        assert isinstance(rejection, StepRejected)
        self.answers[request_id] = rejection

    def discard_pending(self) -> None:
        self.discarded += 1
        self.script.clear()

    def rejections(self) -> list[tuple[int, str, int | None]]:
        return [(r.status_code, r.code, r.expected_step) for r in self.answers.values() if isinstance(r, StepRejected)]


@dataclass(frozen=True)
class Job:
    """A job of the test database and the requests its device sends."""

    id: str

    def step(
        self,
        n: int,
        grad: bool = False,
        activations: bool = True,
        loss: float | None = None,
        metrics: str | None = None,
    ) -> bytes:
        """Step ``n``: random activations (b, t, d), the previous step's gradient if asked, and the device's
        running training loss as the ``metrics`` extra if given (``metrics``: the extra's raw text)."""
        g = torch.Generator().manual_seed(n)
        tensors: dict[str, torch.Tensor] = {}
        if activations:
            tensors[protocol.HIDDEN] = torch.randn(BATCH, TOKENS, HIDDEN, generator=g)
            tensors[protocol.ATTENTION_MASK] = torch.ones(BATCH, TOKENS, dtype=torch.uint8)
        if grad:
            tensors[protocol.GRAD_OUTPUT] = torch.randn(*G, generator=g)
        if loss is not None:
            metrics = json.dumps({"train_loss": loss})
        extra = {} if metrics is None else {protocol.METRICS: metrics}
        return wire.encode(tensors, wire.WireHeader(self.id, n, "step", extra=extra), float_dtype="float32")

    def final(self, metrics: dict[str, float] | None = None, last_step: int = TOTAL + 1) -> bytes:
        """The completion after the flush request ``last_step`` (default: that of a TOTAL-step job)."""
        metrics_extra = {protocol.METRICS: json.dumps(metrics)} if metrics else {}
        extra = {**protocol.completion_extra(last_step), **metrics_extra}
        return wire.encode({}, wire.WireHeader(self.id, 0, "step", extra=extra))


def checkpoint_of(answer: bytes) -> int:
    """The worker's latest checkpoint step, as a reply carries it."""
    return int(wire.decode(answer)[0].extra[protocol.CHECKPOINT])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("m") / MODEL, hidden=HIDDEN)


@pytest.fixture(scope="module")
def template_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.sqlite3"
    upgrade_to_head(f"sqlite:///{path}")
    return path


class Env:
    """A migrated SQLite database with one organization, and settings that make a run short."""

    def __init__(self, tmp_path: Path, template_db: Path):
        db = tmp_path / "privtune.sqlite3"
        shutil.copy(template_db, db)
        url = f"sqlite:///{db}"
        self.settings = Settings(
            data_dir=tmp_path,
            database_url=url,
            heartbeat_seconds=1,
            checkpoint_every=2,
            log_every_steps=1,
            lease_seconds=60,
            device_idle_timeout_s=60,
        )
        self.engine = make_engine(url)
        self.factory = make_session_factory(self.engine)
        self.enqueued: list[tuple[str, float | None]] = []
        with self.factory.begin() as s:
            _, self.org = repo.create_api_key(s, "acme")

    def job(self, method: str = "privtune", training_file: str | None = None, **privtune) -> Job:
        spec = dict(
            split_layer=2,
            task="classification",
            num_labels=LABELS,
            total_steps=TOTAL,
            batch_size=4,
            max_tokens=8,
            optimizer={"learning_rate": 1e-2},
        )
        spec.update(privtune)
        body = {"type": method, "privtune": PrivtuneMethod(**spec).model_dump(mode="json")}
        with self.factory.begin() as s:
            job = repo.create_job(
                s,
                organization_id=self.org,
                model=MODEL,
                method=body,
                hyperparameters={},
                seed=0,
                total_steps=spec["total_steps"],
                training_file=training_file,
            )
        return Job(job["id"])

    def run(
        self,
        job_id: str,
        script: list,
        worker: str = "worker-1",
        channel: FakeChannel | None = None,
        sessions=None,
        drain: threading.Event | None = None,
        **settings,
    ) -> tuple[str, FakeChannel]:
        """Run ``job_id`` to its end over ``script`` (or ``channel``); re-sends land in ``self.enqueued``."""
        runner = JobRunner(
            job_id,
            self.settings.model_copy(update=settings),
            sessions or self.factory,
            None,
            worker,
            "cpu",
            enqueue=lambda job, countdown=None: self.enqueued.append((job, countdown)),
            drain=drain,
            backoff=Backoff(base_s=0.001, cap_s=0.01),
        )
        runner.channel = channel = channel or FakeChannel(script)
        return runner.run(), channel

    def do(self, fn, *args, **kwargs):
        with self.factory.begin() as s:
            return fn(s, *args, **kwargs)

    def get(self, job_id: str) -> dict:
        return self.do(repo.get_job, job_id)

    def events(self, job_id: str) -> list[dict]:
        return list(reversed(self.do(repo.list_events, job_id, limit=100)[0]))  # oldest first

    def of_kind(self, job_id: str, kind: str) -> list[dict]:
        """The events of the worker's ``kind`` (``data.kind``), oldest first."""
        return [e for e in self.events(job_id) if (e["data"] or {}).get("kind") == kind]

    def kinds(self, job_id: str) -> list[str]:
        return [(e["data"] or {}).get("kind") for e in self.events(job_id) if (e["data"] or {}).get("kind")]

    def checkpoints(self, job_id: str) -> list[dict]:
        return sorted(self.do(repo.list_checkpoints, job_id, limit=100)[0], key=lambda c: c["step_number"])


@pytest.fixture
def env(tmp_path, tiny, template_db, monkeypatch):
    monkeypatch.setenv("PRIVTUNE_EXTRA_MODELS", json.dumps({MODEL: str(tiny)}))
    env = Env(tmp_path, template_db)
    yield env
    env.engine.dispose()


def test_a_job_runs_to_succeeded(env):
    job = env.job()
    updates = [job.step(n, grad=True, loss=n / 10) for n in (2, 3, 4)]
    validation = {"valid_loss": 0.25, "valid_accuracy": 0.75}  # the device's final evaluation
    script = [job.step(1), *updates, job.step(5, True, False, loss=0.5), job.final(validation)]
    result, channel = env.run(job.id, script)
    assert result == "succeeded" and channel.rejections() == [] and len(channel.answers) == 6
    # every step reply carries the latest checkpoint step (checkpoint_every=2 applied steps), so the
    # device may drop its own saved ends before it
    assert [checkpoint_of(channel.answers[f"req-{i}"]) for i in range(1, 6)] == [0, 0, 2, 2, 4]
    row = env.get(job.id)
    assert (row["status"], row["steps_completed"], row["lease_owner"]) == ("succeeded", TOTAL, None)
    assert row["fine_tuned_model"] == f"ft:{MODEL}:{env.org}:privtune:{job.id}"
    checkpoints = env.checkpoints(job.id)
    assert [c["step_number"] for c in checkpoints] == [2, 4]  # every checkpoint_every applied steps
    assert all(Path(c["path"]).is_dir() for c in checkpoints)
    assert checkpoints[0]["fine_tuned_model_checkpoint"] == f"{row['fine_tuned_model']}:ckpt-step-2"
    final = load_file(env.settings.artifact_dir / "jobs" / job.id / "final" / "adapter.safetensors")
    assert final and all("lora_" in name for name in final)  # the head is the device's: adapters only
    kinds = env.kinds(job.id)
    assert kinds[:2] == ["job_started", "privacy"] and kinds[-1] == "job_succeeded"
    assert kinds.count("checkpoint_saved") == 2
    metrics = [e for e in env.events(job.id) if e["type"] == "metrics"]
    train = [e["data"] for e in metrics if "train_loss" in e["data"]]
    # the device's running mean, reported with step t + 1, is the training loss of update t
    assert [(m["step"], m["train_loss"]) for m in train] == [(1, 0.2), (2, 0.3), (3, 0.4), (4, 0.5)]
    assert all(m["total_steps"] == TOTAL and m["grad_norm"] > 0 for m in train)
    assert "0.2000 (device running mean)" in metrics[0]["message"]
    assert [c["metrics"] for c in checkpoints] == [{"step": 2, "train_loss": 0.3}, {"step": 4, "train_loss": 0.5}]
    valid = [e for e in metrics if "train_loss" not in e["data"]]  # the validation sent with the completion
    assert [e["data"] for e in valid] == [{"step": TOTAL, **validation}] and "valid_accuracy=0.7500" in valid[0][
        "message"
    ]
    assert env.events(job.id).index(valid[0]) < env.events(job.id).index(env.of_kind(job.id, "job_succeeded")[0])


def test_cancel_is_seen_at_the_next_step(env):
    job = env.job()
    cancel = lambda: env.do(repo.cancel_job, env.org, job.id)
    result, channel = env.run(job.id, [job.step(1), job.step(2, grad=True), cancel, job.step(3, grad=True)])
    assert result == "cancelled" and channel.discarded == 1
    assert list(channel.answers) == ["req-1", "req-2"]  # step 3 was never served
    assert env.get(job.id)["status"] == "cancelled" and env.checkpoints(job.id) == []
    assert env.kinds(job.id)[-1] == "job_cancelled"


def test_a_cancel_that_lands_while_the_completion_is_served_is_not_reported_as_success(env):
    job = env.job()
    cancel = lambda: env.do(repo.cancel_job, env.org, job.id)
    script = [job.step(1), job.step(2, True, False), (cancel, job.final())]
    result, _ = env.run(job.id, script)
    row = env.get(job.id)
    assert (row["status"], row["fine_tuned_model"]) == ("cancelled", None)
    assert "job_succeeded" not in env.kinds(job.id)  # the log must not contradict the status
    assert result != "succeeded"


def test_a_silent_device_pauses_the_job_with_a_checkpoint(env):
    job = env.job()
    silence = lambda: time.sleep(0.3)
    result, _ = env.run(job.id, [job.step(1), job.step(2, grad=True), silence], device_idle_timeout_s=0.2)
    assert result == "paused"
    row = env.get(job.id)
    assert (row["status"], row["lease_owner"]) == ("paused", None)
    assert [c["step_number"] for c in env.checkpoints(job.id)] == [1]
    assert [(e["level"], e["data"]["step"]) for e in env.of_kind(job.id, "job_paused")] == [("warn", 1)]
    metrics = [e for e in env.events(job.id) if e["type"] == "metrics"]  # a device that reports no metrics
    assert [(e["data"]["step"], e["data"]["train_loss"]) for e in metrics] == [(1, None)]
    assert "not reported by the device" in metrics[0]["message"]


def test_pause_checkpoints_releases_the_lease_and_a_resume_asks_for_checkpoint_plus_one(env):
    job = env.job()
    pause = lambda: env.do(repo.pause_job, env.org, job.id)
    script = [job.step(1), *(job.step(n, grad=True) for n in (2, 3, 4)), pause]
    assert env.run(job.id, script, checkpoint_every=100)[0] == "paused"
    row = env.get(job.id)
    assert (row["status"], row["lease_owner"], row["lease_expires_at"]) == ("paused", None, None)
    assert [c["step_number"] for c in env.checkpoints(job.id)] == [3]
    assert [(e["level"], e["data"]["step"]) for e in env.of_kind(job.id, "job_paused")] == [("info", 3)]

    env.do(repo.resume_job, env.org, job.id)
    script = [job.step(1), job.step(9, grad=True), job.step(4, grad=True), job.step(4), job.step(5, True, False)]
    result, channel = env.run(job.id, [*script, job.final()], worker="worker-2", checkpoint_every=100)
    assert result == "succeeded"
    assert channel.rejections() == [
        (409, "step_out_of_order", 4),
        (409, "step_out_of_order", 4),
        (409, "step_out_of_order", 4),  # a gradient with no forward to answer: go back to step 4
    ]
    assert channel.answers["req-1"].headers["x-expected-step"] == "4"
    # the resumed worker's replies name the checkpoint it resumed from (the device restores its end there)
    assert [checkpoint_of(channel.answers[r]) for r in ("req-4", "req-5")] == [3, 3]
    assert [e["data"]["step"] for e in env.of_kind(job.id, "job_restarted")] == [3]
    assert env.get(job.id)["steps_completed"] == TOTAL
    assert [c["step_number"] for c in env.checkpoints(job.id)] == [3, 4]


def test_a_rejected_request_is_answered_through_the_channel_and_changes_nothing(env):
    job = env.job()
    activations = wire.decode(job.step(2))[1]
    bad_grad = wire.encode({**activations, "grad_output": torch.zeros(3, HIDDEN)}, wire.WireHeader(job.id, 2, "step"))
    logits_grad = wire.encode(
        {**activations, "grad_output": torch.zeros(BATCH, LABELS)}, wire.WireHeader(job.id, 2, "step")
    )
    bad_metrics = job.step(2, grad=True, metrics='{"train_loss": "low"}')  # a valid step but for its metrics extra
    old_loss = job.step(2, grad=True, metrics='{"loss": 0.5}')  # the old protocol's per-step loss
    cancel = lambda: env.do(repo.cancel_job, env.org, job.id)  # the job ends with nothing applied
    script = [job.step(1), b"garbage bytes", bad_grad, logits_grad, bad_metrics, old_loss, job.step(1), cancel]
    result, channel = env.run(job.id, script)
    assert result == "cancelled"
    rejected = {
        rid: (a.status_code, a.code, a.param) for rid, a in channel.answers.items() if isinstance(a, StepRejected)
    }
    assert rejected == {
        "req-2": (400, "truncated_payload", None),
        "req-3": (422, "shape_rejected", "grad_output"),
        "req-4": (422, "shape_rejected", "grad_output"),
        "req-5": (400, "invalid_header", "metrics"),
        "req-6": (400, "invalid_header", "metrics"),
    }
    assert channel.answers["req-7"] == channel.answers["req-1"]  # the retry still gets the stored reply
    assert env.get(job.id)["steps_completed"] == 0 and env.checkpoints(job.id) == []
    assert [e for e in env.events(job.id) if e["type"] == "metrics"] == []  # nothing reported, nothing applied


def test_an_unclaimable_job_is_skipped(env):
    paused, taken = env.job(), env.job()
    env.do(repo.pause_job, env.org, paused.id)
    env.do(repo.claim_job, taken.id, "other-worker", 60)
    for job in (paused, taken):
        before = env.events(job.id)
        assert env.run(job.id, [])[0] == "skipped"
        assert env.events(job.id) == before
    assert env.get(taken.id)["lease_owner"] == "other-worker" and env.get(paused.id)["status"] == "paused"


def test_a_lost_lease_stops_without_writing(env):
    job = env.job()
    reap = lambda: env.do(repo.reap_expired, time.time() + 3600)  # as if the lease had expired
    script = [job.step(1), job.step(2, grad=True), job.step(3, grad=True), reap, job.step(4, grad=True)]
    assert env.run(job.id, script, checkpoint_every=100)[0] == "lease_lost"
    assert env.get(job.id)["status"] == "queued" and env.checkpoints(job.id) == []
    last = env.events(job.id)[-1]  # the reaper's; nothing after it, no failure
    assert last["data"]["reason"] == "lease_expired" and all(e["level"] != "error" for e in env.events(job.id))


def test_an_upload_job_trains_from_its_file_to_succeeded(env, tmp_path):
    path = write_privatized(tmp_path / "train.safetensors", model=MODEL)  # 10 examples: 3 steps of 4
    file_id, size = repo.new_file_id(), path.stat().st_size
    env.do(
        repo.create_file,
        file_id=file_id,
        organization_id=env.org,
        filename="train.safetensors",
        purpose="fine-tune",
        size=size,
        path=str(path),
    )
    job = env.job(method="supervised", training_file=file_id, total_steps=None)
    assert env.run(job.id, [])[0] == "succeeded"  # no device in the loop: the channel is never read
    row = env.get(job.id)
    assert (row["status"], row["steps_completed"]) == ("succeeded", 3)
    assert [c["step_number"] for c in env.checkpoints(job.id)] == [2, 3]
    assert "server_head" in env.kinds(job.id)  # the job says that its head and labels are the server's
    metrics = [e["data"] for e in env.events(job.id) if e["type"] == "metrics"]
    # labels are the server's in upload mode: its own loss, sent as the metrics extra, shows in the events
    assert [m["step"] for m in metrics] == [1, 2, 3] and all(m["train_loss"] > 0 for m in metrics)
    assert all(m["total_steps"] == 3 for m in metrics)
    checkpoints = env.checkpoints(job.id)
    assert checkpoints[0]["metrics"]["train_loss"] == metrics[1]["train_loss"]
    meta = json.loads((Path(checkpoints[-1]["path"]) / "meta.json").read_text())
    assert meta["spec"]["server_head"] is True  # the server-side head: logits, its weights checkpointed
    adapter = load_file(Path(checkpoints[-1]["path"]) / "adapter.safetensors")
    assert adapter["classifier.weight"].shape == (LABELS, HIDDEN) and "classifier.bias" in adapter


# ---- faults, durability, drain, limits (issue 11) -------------------------------------------------


class FlakySessions:
    """A sessionmaker whose next ``fail`` transactions raise ``OperationalError`` (the database away)."""

    def __init__(self, factory):
        self.factory, self.fail, self.failed = factory, 0, 0

    def begin(self):
        if self.fail:
            self.fail -= 1
            self.failed += 1
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
        return self.factory.begin()


class FlakyChannel(FakeChannel):
    """A FakeChannel whose next ``fail_receive`` receives and ``fail_reply`` replies raise a Redis
    ``ConnectionError`` (``fail_receive`` < 0: every receive from now on)."""

    def __init__(self, script):
        super().__init__(script)
        self.fail_receive = self.fail_reply = 0

    def receive(self, timeout_s: float = 1.0):
        if self.fail_receive:
            self.fail_receive -= 1 if self.fail_receive > 0 else 0
            raise RedisConnectionError("Connection reset by peer")
        return super().receive(timeout_s)

    def reply(self, request_id: str, payload: bytes) -> None:
        if self.fail_reply:
            self.fail_reply -= 1
            raise RedisConnectionError("Connection reset by peer")
        super().reply(request_id, payload)


def test_brief_database_and_redis_faults_are_retried_and_the_job_succeeds(env):
    job = env.job()
    sessions = FlakySessions(env.factory)
    channel = FlakyChannel([])

    def db_down():
        sessions.fail = 3

    def redis_down():
        channel.fail_receive, channel.fail_reply = 2, 2

    channel.script.extend(
        [job.step(1), db_down, job.step(2, grad=True), redis_down, job.step(3, grad=True)]
        + [(db_down, job.step(4, grad=True)), job.step(5, True, False), job.final()]
    )
    result, _ = env.run(job.id, [], channel=channel, sessions=sessions)
    assert result == "succeeded" and sessions.failed == 6
    row = env.get(job.id)
    assert (row["status"], row["steps_completed"], row["error"]) == ("succeeded", TOTAL, None)
    assert [c["step_number"] for c in env.checkpoints(job.id)] == [2, 4]  # each step applied once
    assert len(channel.answers) == 6 and channel.rejections() == []


def test_a_redis_outage_longer_than_the_retry_budget_releases_the_job_with_its_checkpoint(env):
    job = env.job()
    channel = FlakyChannel([])

    def redis_gone():
        channel.fail_receive = -1

    channel.script.extend([job.step(1), job.step(2, grad=True), job.step(3, grad=True), redis_gone])
    result, _ = env.run(job.id, [], channel=channel, infra_retry_s=0.3)
    assert result == "released"
    row = env.get(job.id)
    assert (row["status"], row["lease_owner"], row["error"]) == ("queued", None, None)
    assert env.enqueued == [(job.id, None)]
    assert [c["step_number"] for c in env.checkpoints(job.id)] == [2]
    released = env.of_kind(job.id, "job_released")
    assert [(e["level"], e["data"]["reason"], e["data"]["step"]) for e in released] == [("warn", "infrastructure", 2)]
    # another worker resumes from the kept checkpoint: the device is asked for step 3 again, none lost
    script = [job.step(3), job.step(4, grad=True), job.step(5, True, False), job.final()]
    result, channel = env.run(job.id, script, worker="worker-2")
    assert result == "succeeded" and env.get(job.id)["steps_completed"] == TOTAL


def test_a_redis_outage_checkpoints_the_applied_steps_before_the_release(env):
    job = env.job()
    channel = FlakyChannel([])

    def redis_gone():
        channel.fail_receive = -1

    channel.script.extend([job.step(1), job.step(2, grad=True), job.step(3, grad=True), redis_gone])
    assert env.run(job.id, [], channel=channel, infra_retry_s=0.3, checkpoint_every=100)[0] == "released"
    assert [c["step_number"] for c in env.checkpoints(job.id)] == [2]  # no applied step is redone
    assert env.of_kind(job.id, "job_released")[0]["data"]["step"] == 2


def test_with_the_database_unreachable_the_worker_just_stops_and_the_lease_expires(env):
    job = env.job()
    sessions = FlakySessions(env.factory)

    def db_gone():
        sessions.fail = 10**6

    result, _ = env.run(job.id, [job.step(1), db_gone], sessions=sessions, infra_retry_s=0.3)
    assert result == "infra_unavailable"
    row = env.get(job.id)
    assert (row["status"], row["lease_owner"], row["error"]) == ("running", "worker-1", None)  # the reaper's turn
    assert env.do(repo.reap_expired, time.time() + 3600) == [job.id]


def test_a_full_disk_at_checkpoint_time_keeps_the_previous_checkpoint_and_training_goes_on(env, monkeypatch):
    job = env.job()
    real = TopTrainer.write_files
    full = {"left": 1}

    def write_files(self, directory, metrics=None):
        if self.steps_applied == 4 and full["left"]:
            full["left"] -= 1
            (Path(directory) / "adapter.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, directory, metrics)

    monkeypatch.setattr(TopTrainer, "write_files", write_files)
    updates = [job.step(n, grad=True) for n in (2, 3, 4)]
    result, _ = env.run(job.id, [job.step(1), *updates, job.step(5, True, False), job.final()])
    assert result == "succeeded"
    failed = env.of_kind(job.id, "checkpoint_failed")
    assert [(e["level"], e["data"]["step"], e["data"]["kept_step"]) for e in failed] == [("warn", 4, 2)]
    assert [c["step_number"] for c in env.checkpoints(job.id)] == [2, 4]  # step 4 written again at the end
    root = env.settings.artifact_dir / "jobs" / job.id / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-2", "step-4"]  # no temporary directory left


def test_the_lease_is_renewed_while_the_model_is_set_up(env, monkeypatch):
    job = env.job()
    real_init = TopTrainer.__init__
    reaped: list[list[str]] = []

    def slow_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        time.sleep(3.2)  # longer than the 2 s lease
        reaped.append(env.do(repo.reap_expired))

    monkeypatch.setattr(TopTrainer, "__init__", slow_init)
    script = [job.step(1), *(job.step(n, grad=True) for n in (2, 3, 4)), job.step(5, True, False), job.final()]
    result, _ = env.run(job.id, script, lease_seconds=2, heartbeat_seconds=1)
    assert reaped == [[]] and result == "succeeded"
    assert not [t for t in threading.enumerate() if t.name == f"lease-{job.id}"]  # the renewal thread stopped


def test_a_job_claimed_more_than_max_attempts_fails_with_a_clear_error(env):
    job = env.job()
    env.do(lambda s: s.execute(update(JobRow).where(JobRow.id == job.id).values(attempt=3)))
    assert env.run(job.id, [], max_attempts=3)[0] == "failed"
    row = env.get(job.id)
    assert row["status"] == "failed" and row["error"]["code"] == "max_attempts_exceeded"
    assert "started 3 times" in row["error"]["message"] and row["lease_owner"] is None


def test_an_internal_error_shows_the_tenant_a_reference_not_the_exception(env, monkeypatch, caplog):
    job = env.job()

    def boom(*_args, **_kwargs):
        raise RuntimeError("secret /srv/models/internal detail")

    monkeypatch.setattr(TopTrainer, "apply_gradient", boom)
    result, _ = env.run(job.id, [job.step(1), job.step(2, grad=True)])
    assert result == "failed"
    error = env.get(job.id)["error"]
    ref = re.search(r"err_[0-9a-f]{16}", error["message"]).group(0)
    shown = error["message"] + " ".join(e["message"] for e in env.events(job.id))
    assert error["code"] == "worker_error" and "secret" not in shown and "RuntimeError" not in shown
    logged = [r for r in caplog.records if ref in r.getMessage()]
    assert logged and logged[0].exc_info and "secret /srv/models" in str(logged[0].exc_info[1])


def test_checkpoints_are_checksummed_pruned_and_a_corrupt_latest_falls_back_to_the_previous(env):
    job = env.job(total_steps=8)
    pause = lambda: env.do(repo.pause_job, env.org, job.id)
    script = [job.step(1), *(job.step(n, grad=True) for n in range(2, 8)), pause]
    assert env.run(job.id, script, checkpoint_every=2, checkpoint_keep=2)[0] == "paused"
    checkpoints = env.checkpoints(job.id)
    assert [c["step_number"] for c in checkpoints] == [4, 6]  # 2 pruned with its directory
    root = env.settings.artifact_dir / "jobs" / job.id / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-4", "step-6"]
    latest = Path(checkpoints[-1]["path"])
    manifest = json.loads((latest / "manifest.json").read_text())
    assert set(manifest["files"]) == {"adapter.safetensors", "trainer_state.pt", "meta.json"}
    assert checkpoints[-1]["sha256"] == hashlib.sha256((latest / "manifest.json").read_bytes()).hexdigest()

    (latest / "adapter.safetensors").write_bytes(b"torn write")
    env.do(repo.resume_job, env.org, job.id)
    script = [job.step(5), job.step(6, grad=True), job.step(7, grad=True), job.step(8, grad=True)]
    result, channel = env.run(job.id, [*script, job.step(9, True, False), job.final(last_step=9)], worker="worker-2")
    assert result == "succeeded"
    assert [e["data"]["step"] for e in env.of_kind(job.id, "checkpoint_skipped")] == [6]
    assert [e["data"]["step"] for e in env.of_kind(job.id, "job_restarted")] == [4]


def test_a_worker_that_lost_its_lease_writes_no_checkpoint(env):
    job = env.job()
    reap = lambda: env.do(repo.reap_expired, time.time() + 3600)
    # the lease is lost after the step's control check: the checkpoint of step 2 must not be written
    script = [job.step(1), job.step(2, grad=True), (reap, job.step(3, grad=True))]
    assert env.run(job.id, script, checkpoint_every=2)[0] == "lease_lost"
    assert env.checkpoints(job.id) == []
    assert not (env.settings.artifact_dir / "jobs" / job.id / "checkpoints").exists()


def test_sigterm_drains_checkpoints_releases_and_reenqueues_the_job(env):
    job = env.job()
    drain = threading.Event()
    started = []

    def sigterm():
        drain.set()
        started.append(time.monotonic())

    script = [job.step(1), job.step(2, grad=True), job.step(3, grad=True), sigterm]
    result, _ = env.run(job.id, script, drain=drain, checkpoint_every=100)
    assert result == "released" and time.monotonic() - started[0] < env.settings.drain_timeout_s
    row = env.get(job.id)
    assert (row["status"], row["lease_owner"]) == ("queued", None) and env.enqueued == [(job.id, None)]
    assert [c["step_number"] for c in env.checkpoints(job.id)] == [2]
    released = env.of_kind(job.id, "job_released")
    assert released[0]["message"].startswith("Worker shutting down; job released at step 2")
    script = [job.step(3), job.step(4, grad=True), job.step(5, True, False), job.final()]
    assert env.run(job.id, script, worker="worker-2")[0] == "succeeded"
    assert [e["data"]["step"] for e in env.of_kind(job.id, "job_restarted")] == [2]


def test_a_device_that_never_sends_a_first_step_pauses_the_job(env):
    job = env.job()
    silence = lambda: time.sleep(0.3)
    assert env.run(job.id, [silence], first_step_timeout_s=0.2)[0] == "paused"
    row = env.get(job.id)
    assert (row["status"], row["lease_owner"]) == ("paused", None) and env.checkpoints(job.id) == []
    paused = env.of_kind(job.id, "job_paused")
    assert [(e["level"], e["data"]["reason"]) for e in paused] == [("warn", "first_step_timeout")]
    assert "No first step" in paused[0]["message"]


def test_an_organization_at_its_running_cap_waits_queued_and_is_sent_again_later(env):
    running, waiting = env.job(), env.job()
    env.do(repo.claim_job, running.id, "other-worker", 60)
    assert env.run(waiting.id, [], max_running_jobs_per_org=1)[0] == "deferred"
    row = env.get(waiting.id)
    assert (row["status"], row["attempt"], row["lease_owner"]) == ("queued", 0, None)
    assert env.enqueued == [(waiting.id, 10.0)] and abs(row["enqueued_at"] - time.time()) < 5
    env.do(repo.pause_job, env.org, waiting.id)  # a job that is not queued is not sent again
    assert env.run(waiting.id, [], max_running_jobs_per_org=1)[0] == "skipped"
    assert env.enqueued == [(waiting.id, 10.0)]


def test_a_shutdown_during_setup_releases_the_job_before_serving(env):
    job = env.job()
    drain = threading.Event()
    drain.set()  # SIGTERM arrived while the model was being built
    assert env.run(job.id, [], drain=drain)[0] == "released"  # the channel is never read
    row = env.get(job.id)
    assert (row["status"], row["attempt"]) == ("queued", 0) and env.enqueued == [(job.id, None)]
    assert env.of_kind(job.id, "job_released")[0]["data"] == {
        "kind": "job_released",
        "reason": "worker_shutdown",
        "step": 0,
    }


def test_a_full_disk_at_the_end_releases_the_job_instead_of_failing_it(env, monkeypatch):
    job = env.job()
    real = TopTrainer.write_files

    def write_files(self, directory, metrics=None):
        if self.steps_applied == TOTAL:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, directory, metrics)

    monkeypatch.setattr(TopTrainer, "write_files", write_files)
    script = [job.step(1), *(job.step(n, grad=True) for n in (2, 3, 4)), job.step(5, True, False), job.final()]
    assert env.run(job.id, script, checkpoint_every=2)[0] == "released"
    row = env.get(job.id)
    assert (row["status"], row["error"]) == ("queued", None) and env.enqueued == [(job.id, None)]
    assert [c["step_number"] for c in env.checkpoints(job.id)] == [2]
    released = env.of_kind(job.id, "job_released")[0]
    assert "checkpoint disk" in released["message"] and released["data"]["step"] == 2
