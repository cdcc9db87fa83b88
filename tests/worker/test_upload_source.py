"""Upload mode's device stand-in: a privatized file trains through the same step server with a
server-side head (logits, every step applied, one completion, losses reported as the metrics extra,
resumable from a checkpoint, stoppable), and the file loader refuses what is not a privatized batch
for this model."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from client_sdk import privatized_file, protocol, wire
from client_sdk.jobspec import PrivtuneMethod, step_shape
from tests.helpers import make_tiny_bert
from worker.step_server import StepServer
from worker.trainer import TopTrainer, TrainSpec
from worker.upload_source import UploadSource

JOB, HIDDEN, N, BATCH, EPOCHS = "ftjob-upload", 32, 10, 4, 2
STEPS = -(-N // BATCH) * EPOCHS  # 3 per epoch
MAX_BYTES = 1 << 20
METHOD = PrivtuneMethod(
    split_layer=2,
    task="classification",
    num_labels=2,
    total_steps=STEPS,
    batch_size=BATCH,
    max_tokens=8,
    n_epochs=EPOCHS,
    optimizer={"learning_rate": 1e-2},
)


def write_privatized(path: Path, *, n=N, t=6, d=HIDDEN, labels=None, extra=None, model="tiny-bert") -> Path:
    """A privatized file as ``client_sdk.upload`` writes it: random states, ragged masks, labels 0/1."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    tensors = {
        privatized_file.HIDDEN: torch.randn(n, t, d, generator=g),  # (n, t, d)
        privatized_file.MASK: (torch.arange(t)[None, :] < lengths[:, None]).to(torch.uint8),  # (n, t)
        privatized_file.LABELS: torch.arange(n) % 2 if labels is None else labels,  # (n,)
        **(extra or {}),
    }
    manifest = privatized_file.Manifest(model, 2, 2, ("neg", "pos"), "none", {})
    header = wire.WireHeader("upload", 0, privatized_file.KIND, extra=manifest.to_metadata())
    path.write_bytes(wire.encode(tensors, header, float_dtype="float32"))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from worker.models import build_top

    path = str(make_tiny_bert(tmp_path_factory.mktemp("m") / "tiny", hidden=HIDDEN))
    return path, build_top(path, METHOD.split_layer, METHOD.task, num_labels=2, server_head=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> privatized_file.PrivatizedData:
    return privatized_file.load(write_privatized(tmp_path_factory.mktemp("f") / "train.safetensors"), MAX_BYTES, HIDDEN)


class Recorder:
    def __init__(self) -> None:
        self.updates: list[tuple[int, int, float | None]] = []  # (request step, batch, reported train_loss)
        self.finishes = 0
        self.requests: list[wire.WireHeader] = []
        self.outputs: list[tuple[int, ...]] = []  # the shape of each reply's output
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self._loss: float | None = None

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.metrics.append((step, metrics))
        self._loss = metrics.get("train_loss", self._loss)

    def on_update(self, header: wire.WireHeader, norm: float, batch: int) -> None:
        self.updates.append((header.step, batch, self._loss))  # the metrics of a request come before its update

    def on_finish(self) -> None:
        self.finishes += 1


def _server(tiny, rec: Recorder) -> StepServer:
    path, top = tiny
    trainer = TopTrainer(TrainSpec(path, METHOD, server_head=True), top=copy.deepcopy(top))
    server = StepServer(
        trainer,
        step_shape(METHOD, HIDDEN, server_head=True),
        JOB,
        on_update=rec.on_update,
        on_finish=rec.on_finish,
        on_metrics=rec.on_metrics,
    )
    handle = server.handle

    def spy(body: bytes) -> bytes:
        rec.requests.append(wire.inspect(body)[0])
        reply = handle(body)
        infos = wire.inspect(reply)[1]
        if protocol.OUTPUT in infos:
            rec.outputs.append(tuple(infos[protocol.OUTPUT].shape))
        return reply

    server.handle = spy  # type: ignore[method-assign]
    return server


def _source(data) -> UploadSource:
    return UploadSource(data, BATCH, seed=0, job_id=JOB)


def _weights(server: StepServer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in server.trainer.trainable.items()}


def test_the_file_loads_as_written(data):
    assert len(data) == N and data.hidden.shape == (N, 6, HIDDEN) and data.hidden.dtype == torch.float32
    assert data.attention_mask.dtype == torch.int64 and data.labels.tolist() == [i % 2 for i in range(N)]
    assert (data.manifest.model, data.manifest.num_labels, data.manifest.label_names) == (
        "tiny-bert",
        2,
        ("neg", "pos"),
    )


def test_every_step_is_applied_and_the_job_completes_once(tiny, data):
    rec = Recorder()
    server = _server(tiny, rec)
    assert _source(data).run(server, STEPS, should_stop=lambda: False) is True
    assert server.trainer.steps_applied == STEPS and not server.trainer.has_pending
    assert server.finished and rec.finishes == 1
    assert [h.step for h in rec.requests] == [*range(1, STEPS + 2), 0]  # steps, the flush, the completion
    assert rec.requests[-1].extra == protocol.completion_extra(STEPS + 1)  # names its last step, the flush
    assert [(step, batch) for step, batch, _ in rec.updates] == [(2, 4), (3, 4), (4, 2), (5, 4), (6, 4), (7, 2)]
    assert rec.outputs == [(4, 2), (4, 2), (2, 2), (4, 2), (4, 2), (2, 2)]  # the server-side head's logits (b, C)
    # the loss of step t travels with step t + 1 as the metrics extra, and is the training loss of its update
    losses = [loss for _, _, loss in rec.updates]
    assert len(losses) == STEPS and all(loss is not None and loss > 0 for loss in losses)
    assert [step for step, _ in rec.metrics] == list(range(2, STEPS + 2))
    assert [m for _, m in rec.metrics] == [{"train_loss": loss} for loss in losses]
    sent = [json.loads(h.extra[protocol.METRICS]) for h in rec.requests[1:-1]]
    assert sent == [{"train_loss": loss} for loss in losses]
    assert protocol.METRICS not in rec.requests[0].extra and "loss" not in rec.requests[1].extra


def test_a_resume_continues_at_checkpoint_plus_one_and_ends_where_an_unbroken_run_ends(tiny, data, tmp_path):
    rec = Recorder()
    server = _server(tiny, rec)
    saved: list[Path] = []

    def checkpoint_at_3(header: wire.WireHeader, norm: float, batch: int) -> None:
        if server.trainer.steps_applied == 3:
            saved.append(server.trainer.save(tmp_path / "step-3"))
            torch.manual_seed(123)  # the same dropout draws from here on in both runs

    server.on_update = checkpoint_at_3
    assert _source(data).run(server, STEPS, lambda: False)
    assert [p.name for p in saved] == ["step-3"]

    resumed_rec = Recorder()
    resumed = _server(tiny, resumed_rec)
    assert resumed.trainer.load(saved[0]) == 3
    torch.manual_seed(123)
    assert _source(data).run(resumed, STEPS, lambda: False) is True
    first = resumed_rec.requests[0]
    assert first.step == 4 and first.extra == {}  # checkpoint + 1, no gradient, no loss
    assert [h.step for h in resumed_rec.requests] == [4, 5, 6, 7, 0]
    assert resumed.trainer.steps_applied == server.trainer.steps_applied == STEPS and resumed_rec.finishes == 1
    a, b = _weights(server), _weights(resumed)
    assert all(torch.allclose(a[n], b[n], atol=1e-5) for n in a)


def test_a_resume_from_a_checkpoint_of_the_last_step_only_completes(tiny, data, tmp_path):
    """All steps applied and checkpointed, the completion not yet recorded (the worker died in between,
    e.g. while finishing; the runner checkpoints the last step when total_steps % checkpoint_every == 0):
    the resumed job has nothing left to train and must complete, not fail."""
    first = _server(tiny, Recorder())
    assert _source(data).run(first, STEPS, lambda: False)
    checkpoint = first.trainer.save(tmp_path / f"step-{STEPS}")
    rec = Recorder()
    resumed = _server(tiny, rec)
    assert resumed.trainer.load(checkpoint) == STEPS
    assert _source(data).run(resumed, STEPS, lambda: False) is True
    assert resumed.trainer.steps_applied == STEPS and rec.finishes == 1 and resumed.finished


def test_should_stop_ends_early_without_completing(tiny, data):
    rec = Recorder()
    server = _server(tiny, rec)
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(server.trainer.steps_applied)
        return server.trainer.steps_applied >= 2

    assert _source(data).run(server, STEPS, should_stop) is False
    assert server.trainer.steps_applied == 2 and rec.finishes == 0 and not server.finished
    assert asked == [0, 0, 1, 2]  # asked before every step
    assert [h.step for h in rec.requests] == [1, 2, 3]


@pytest.mark.parametrize(
    ("kwargs", "hidden_size", "param"),
    [
        ({}, 16, privatized_file.HIDDEN),  # another model's hidden size
        ({"labels": torch.tensor([0, 1, 2, 0, 1, 0, 1, 0, 1, 0])}, HIDDEN, privatized_file.LABELS),
        ({"labels": torch.tensor([0, 1, -1, 0, 1, 0, 1, 0, 1, 0])}, HIDDEN, privatized_file.LABELS),
        ({"extra": {"input_ids": torch.zeros(N, 6, dtype=torch.int64)}}, HIDDEN, "input_ids"),
        ({"labels": torch.zeros(N, 2, dtype=torch.int64)}, HIDDEN, privatized_file.LABELS),
    ],
    ids=["hidden_size", "label_too_large", "label_negative", "input_ids", "labels_shape"],
)
def test_load_refuses_what_is_not_a_privatized_batch_for_this_model(tmp_path, kwargs, hidden_size, param):
    path = write_privatized(tmp_path / "bad.safetensors", **kwargs)
    with pytest.raises(wire.ShapeRejected) as info:
        privatized_file.load(path, MAX_BYTES, hidden_size)
    assert info.value.param == param and param in info.value.message


def test_load_refuses_another_kind_and_non_finite_states(tmp_path):
    step = wire.encode({"hidden": torch.zeros(2, 3, HIDDEN)}, wire.WireHeader(JOB, 1, "step"))
    (tmp_path / "step.bin").write_bytes(step)
    with pytest.raises(wire.SchemaError) as info:
        privatized_file.load(tmp_path / "step.bin", MAX_BYTES, HIDDEN)
    assert info.value.param == "kind"
    path = write_privatized(tmp_path / "nan.safetensors")
    header, tensors = wire.decode(path.read_bytes())
    tensors[privatized_file.HIDDEN][0, 0, 0] = float("nan")
    path.write_bytes(wire.encode(tensors, header, float_dtype="float32"))
    with pytest.raises(wire.NonFiniteTensor) as info:
        privatized_file.load(path, MAX_BYTES, HIDDEN)
    assert info.value.param == privatized_file.HIDDEN
