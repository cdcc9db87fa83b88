"""End to end through SDK, gateway, Redis, a real Celery worker process and PostgreSQL."""

from __future__ import annotations

import time

import pytest
import torch

from client_sdk import protocol, wire
from client_sdk.errors import ConflictError, NotFoundError
from tests.helpers import toy_dataset
from tests.integration.conftest import TINY_MODEL

pytestmark = pytest.mark.integration

D = 32  # hidden size of the tiny model


def _job_body(total_steps: int, **privtune) -> dict:
    cfg = {
        "task": "classification",
        "num_labels": 2,
        "split_layer": 2,
        "max_tokens": 16,
        "batch_size": 4,
        "n_epochs": 1,
        "total_steps": total_steps,
        "privacy": {"mechanism": "none"},
        **privtune,
    }
    return {"model": TINY_MODEL, "method": {"type": "privtune", "privtune": cfg}}


def _wait_status(client, job_id: str, statuses: set[str], timeout: float = 90) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached {statuses}; last status {job.status}")


def _step(job_id: str, step: int, grad: torch.Tensor | None = None, seed: int = 0, **extra) -> bytes:
    g = torch.Generator().manual_seed(seed)
    tensors = {
        protocol.HIDDEN: torch.randn(4, 6, D, generator=g),
        protocol.ATTENTION_MASK: torch.ones(4, 6, dtype=torch.uint8),
    }
    if grad is not None:
        tensors[protocol.GRAD_OUTPUT] = grad
    return wire.encode(tensors, wire.WireHeader(job_id, step, "step", extra=extra))


def test_sdk_trains_through_the_service(service):
    from client_sdk import FineTuneJob, PrivacyConfig
    from client_sdk.jobs import Hyperparameters

    job = FineTuneJob.create(
        toy_dataset(96),
        model=TINY_MODEL,
        split_layer=2,
        max_length=16,
        privacy=PrivacyConfig(mechanism="privtune", seed=0),
        client=service.client(),
        hyperparameters=Hyperparameters(batch_size=8, n_epochs=2, learning_rate=5e-3),
        metadata={"team": "e2e"},
        progress=False,
    )
    assert job.status == "succeeded", service.worker_log()
    assert job.steps_completed == job.total_steps == job.report.steps
    assert job.fine_tuned_model.startswith(f"ft:{TINY_MODEL}:")
    events = job.events()
    metrics = [e for e in events if e.type == "metrics" and "train_loss" in e.data]
    # the device reports the mean of each 10 steps with the request that carries step 10's gradient
    assert metrics and all(e.data["train_loss"] is not None for e in metrics if e.data["step"] >= 10)
    assert all(e.data["train_loss"] is None for e in metrics if e.data["step"] < 10)
    validation = [e for e in events if e.type == "metrics" and "valid_loss" in e.data]
    assert validation and all(0 <= e.data["valid_accuracy"] <= 1 for e in validation)  # per epoch, then final
    checkpoints = job.checkpoints()
    assert checkpoints and max(c.step_number for c in checkpoints) == job.report.steps
    assert job.metrics["bytes_sent"] > 0 and 0 <= job.metrics["accuracy_after"] <= 1
    listed = service.client().fine_tuning.jobs.list(metadata={"team": "e2e"}).data
    assert [j.id for j in listed] == [job.id]


def test_retried_step_is_not_applied_twice(service):
    client = service.client()
    job = client.fine_tuning.jobs.create(**_job_body(total_steps=2))
    _wait_status(client, job.id, {"running"})
    first = client.fine_tuning.jobs.post_step(job.id, _step(job.id, 1))
    # a retry: the stored reply, no new forward
    again = client.fine_tuning.jobs.post_step(job.id, _step(job.id, 1, seed=99))
    assert first == again
    output = wire.decode(first)[1][protocol.OUTPUT]  # the pooled representation: the head is the device's
    assert output.shape == (4, D)
    second = client.fine_tuning.jobs.post_step(job.id, _step(job.id, 2, grad=torch.ones_like(output)))
    assert client.fine_tuning.jobs.post_step(job.id, _step(job.id, 2, grad=torch.ones_like(output))) == second
    with pytest.raises(ConflictError) as info:  # going back is refused, and says where to go on
        client.fine_tuning.jobs.post_step(job.id, _step(job.id, 1))
    assert info.value.expected_step == 2  # no gradient for the forward it holds (step 2): replay that one
    flush = wire.encode({protocol.GRAD_OUTPUT: torch.ones(4, D)}, wire.WireHeader(job.id, 3, "step"))
    client.fine_tuning.jobs.post_step(job.id, flush)
    done = client.fine_tuning.jobs.complete(
        job.id, wire.encode({}, wire.WireHeader(job.id, 0, "step", extra=protocol.completion_extra(3)))
    )
    assert done.status == "succeeded"
    steps = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data]
    assert max(steps) == 2, "two gradients were sent; a retry must not add a third optimizer step"


def test_cancel_stops_the_worker_within_one_step(service):
    client = service.client()
    job = client.fine_tuning.jobs.create(**_job_body(total_steps=50))
    _wait_status(client, job.id, {"running"})
    client.fine_tuning.jobs.post_step(job.id, _step(job.id, 1))
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(ConflictError):
        client.fine_tuning.jobs.post_step(job.id, _step(job.id, 2, grad=torch.zeros(4, D)))
    deadline = time.monotonic() + 10
    while not any(
        "cancelled" in e.message.lower() and "worker" in e.message for e in client.fine_tuning.jobs.list_events(job.id)
    ):
        assert time.monotonic() < deadline, "the worker did not acknowledge the cancel"
        time.sleep(0.2)
    with pytest.raises(ConflictError):  # a finished job cannot be cancelled again
        client.fine_tuning.jobs.cancel(job.id)
    # the worker is free: the next job starts right away
    nxt = client.fine_tuning.jobs.create(**_job_body(total_steps=1))
    _wait_status(client, nxt.id, {"running"}, timeout=30)
    client.fine_tuning.jobs.cancel(nxt.id)


def test_bad_steps_change_nothing(service):
    client = service.client()
    job = client.fine_tuning.jobs.create(**_job_body(total_steps=5))
    _wait_status(client, job.id, {"running"})
    nan = torch.randn(4, 6, D)
    nan[0, 0, 0] = float("nan")
    bad_payloads = [
        wire.encode(
            {protocol.HIDDEN: torch.randn(4, 6, D + 1), protocol.ATTENTION_MASK: torch.ones(4, 6, dtype=torch.uint8)},
            wire.WireHeader(job.id, 1, "step"),
        ),  # wrong hidden size
        wire.encode(
            {protocol.HIDDEN: nan, protocol.ATTENTION_MASK: torch.ones(4, 6, dtype=torch.uint8)},
            wire.WireHeader(job.id, 1, "step"),
            float_dtype="float32",
        ),  # NaN
        wire.encode({protocol.HIDDEN: torch.randn(4, 6, D)}, wire.WireHeader(job.id, 1, "step")),  # no mask
        b"\x80\x04garbage",  # a pickle
    ]
    for payload in bad_payloads:
        with pytest.raises(Exception) as info:
            client.fine_tuning.jobs.post_step(job.id, payload)
        assert 400 <= info.value.status_code < 500
    # the job is untouched: step 1 is still the next step
    assert wire.decode(client.fine_tuning.jobs.post_step(job.id, _step(job.id, 1)))[0].step == 1
    with pytest.raises(NotFoundError):  # another organization sees nothing
        service.client(service.other_key).fine_tuning.jobs.retrieve(job.id)
    client.fine_tuning.jobs.cancel(job.id)


def _events_text(client, job_id: str) -> str:
    return "\n".join(e.message for e in client.fine_tuning.jobs.list_events(job_id))


def _wait_event(client, job_id: str, needle: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while needle not in _events_text(client, job_id):
        assert time.monotonic() < deadline, f"no event containing {needle!r}: {_events_text(client, job_id)}"
        time.sleep(0.2)


def _train_steps(client, job_id: str, first: int, last: int, grad_first: bool) -> None:
    for step in range(first, last + 1):
        grad = torch.zeros(4, D) if (step > first or grad_first) else None
        client.fine_tuning.jobs.post_step(job_id, _step(job_id, step, grad=grad, seed=step))


def test_pause_checkpoints_and_resume_continues_from_there(service):
    client = service.client()
    job = client.fine_tuning.jobs.create(**_job_body(total_steps=10))
    _wait_status(client, job.id, {"running"})
    _train_steps(client, job.id, 1, 3, grad_first=False)  # gradients of steps 1 and 2 applied
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    _wait_event(client, job.id, "Job paused at step 2")
    assert max(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data) == 2
    client.fine_tuning.jobs.resume(job.id)
    _wait_event(client, job.id, "resumed from checkpoint at step 2")
    _wait_status(client, job.id, {"running"})
    with pytest.raises(ConflictError) as info:  # step 3's forward was lost with the pause: redo it
        client.fine_tuning.jobs.post_step(job.id, _step(job.id, 4, grad=torch.zeros(4, D)))
    assert info.value.expected_step == 3
    client.fine_tuning.jobs.post_step(job.id, _step(job.id, 3))
    client.fine_tuning.jobs.cancel(job.id)


def test_killed_worker_job_is_requeued_and_resumes_from_checkpoint(service):
    client = service.client()
    job = client.fine_tuning.jobs.create(**_job_body(total_steps=20))
    _wait_status(client, job.id, {"running"})
    _train_steps(client, job.id, 1, 6, grad_first=False)  # 5 gradients applied; checkpoint at step 4
    service.kill_worker()
    service.start_worker()
    # the lease expires, the gateway's reaper re-queues the job, the new worker resumes it
    _wait_event(client, job.id, "resumed from checkpoint at step 4", timeout=90)
    _wait_status(client, job.id, {"running"})
    with pytest.raises(ConflictError) as info:
        client.fine_tuning.jobs.post_step(job.id, _step(job.id, 7, grad=torch.zeros(4, D)))
    assert info.value.expected_step == 5
    client.fine_tuning.jobs.post_step(job.id, _step(job.id, 5))
    client.fine_tuning.jobs.cancel(job.id)


def test_openai_client_trains_from_a_privatized_upload(service, tmp_path):
    """Upload mode with the official client, unmodified: files.create + fine_tuning.jobs.create."""
    import openai

    from client_sdk.models import load_bottom
    from client_sdk.privatizer import Privatizer
    from client_sdk.upload import write_privatized_file

    sdk = service.client()
    bottom, tokenizer, manifest = load_bottom(sdk.bottoms.download(TINY_MODEL, 2, cache_dir=tmp_path / "cache"))
    data = toy_dataset(64)
    privatizer = Privatizer(bottom, tokenizer, "dchi", max_length=16).fit([t for t, _ in data])
    path = write_privatized_file(privatizer, data, tmp_path / "train.safetensors", model=TINY_MODEL)

    client = openai.OpenAI(base_url=service.base_url, api_key=service.api_key, max_retries=0)
    file = client.files.create(file=path.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL, training_file=file.id, suffix="upload", hyperparameters={"n_epochs": 2, "batch_size": 8}
    )
    deadline = time.monotonic() + 120
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, service.worker_log()
        time.sleep(0.3)
    assert job.status == "succeeded", (job.error, service.worker_log())
    assert job.fine_tuned_model and job.fine_tuned_model.startswith(f"ft:{TINY_MODEL}:")
    events = list(client.fine_tuning.jobs.list_events(job.id))
    assert any(e.type == "metrics" for e in events)
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert max(c.step_number for c in checkpoints) == 16  # 64 examples / 8 per batch x 2 epochs
    with pytest.raises(openai.BadRequestError):  # raw text is refused
        client.files.create(file=("train.jsonl", b'{"text": "secret", "label": 1}\n'), purpose="fine-tune")


def test_sdk_resumes_a_paused_job_where_its_checkpoint_left_off(service):
    from client_sdk import FineTuneJob
    from client_sdk.session import DeviceSession

    options = dict(
        model=TINY_MODEL,
        split_layer=2,
        max_length=16,
        hyperparameters={"batch_size": 8, "n_epochs": 2},
        client=service.client(),
    )
    data = toy_dataset(64)
    session = DeviceSession.prepare(data, **options)
    client = session.client
    job = client.fine_tuning.jobs.create(**session.job_body(None, None))
    _wait_status(client, job.id, {"running"})
    first = session.trainer(job.id)

    def post(payload: bytes) -> bytes:  # the device's process dies when it would send step 6
        if wire.decode(payload)[0].step == 6:
            raise KeyboardInterrupt
        return client.fine_tuning.jobs.post_step(job.id, payload)

    first.post = post
    with pytest.raises(KeyboardInterrupt):
        first.train()
    client.fine_tuning.jobs.pause(job.id)  # 4 gradients applied (step 5's is lost with the device)
    _wait_event(client, job.id, "Job paused at step 4")
    assert first.store.has(4) and first.store.has(5)  # the device's end, saved after every step
    resumed = FineTuneJob.resume(job.id, data, progress=False, **options)
    assert resumed.status == "succeeded", service.worker_log()
    assert resumed.report.steps == session.total_steps
    assert max(c.step_number for c in resumed.checkpoints()) == session.total_steps


def test_target_asr_picks_eta_on_the_device_and_records_it(service):
    from client_sdk import FineTuneJob, PrivacyConfig

    job = FineTuneJob.create(
        toy_dataset(64),
        model=TINY_MODEL,
        split_layer=2,
        max_length=16,
        privacy=PrivacyConfig(mechanism="dchi", seed=0, target_asr=0.5),
        client=service.client(),
        hyperparameters={"batch_size": 8, "n_epochs": 1},
        progress=False,
    )
    assert job.status == "succeeded", service.worker_log()
    meta = job.metadata
    assert float(meta["privtune_audit_asr"]) <= 0.5 and float(meta["privtune_eta"]) > 0
    assert "chosen on the device for target ASR 0.5" in _events_text(service.client(), job.id)
