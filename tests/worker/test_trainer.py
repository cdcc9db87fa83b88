"""The cloud half: LoRA top model (no head unless in upload mode; generation stops before the device's
tail), one gradient per step, atomic checkpoints that restore exactly."""

from __future__ import annotations

import json

import pytest
import torch

from client_sdk.jobspec import PrivtuneMethod
from client_sdk.jobspec.method import DEFAULT_TAIL_LAYERS
from tests.helpers import make_tiny_bert, make_tiny_llama
from worker.trainer import TopTrainer, TrainSpec


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_bert(tmp_path_factory.mktemp("m") / "tiny"))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return str(make_tiny_llama(tmp_path_factory.mktemp("m") / "tiny-llama"))


HIDDEN, LABELS = 32, 3
R = (4, HIDDEN)  # an interactive classification step's output (the pooled representation) and its gradient
LOGITS = (4, LABELS)  # upload mode's output: the server-side head's logits


def _spec(model: str, learning_rate: float = 1e-2, server_head: bool = False, **kw) -> TrainSpec:
    base = dict(split_layer=2, task="classification", num_labels=LABELS, total_steps=10)
    base.update(kw)
    method = PrivtuneMethod(optimizer={"learning_rate": learning_rate}, **base)
    return TrainSpec(model, method, server_head=server_head)


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(4, 5, dtype=torch.int64)
    mask[0, 3:] = 0
    return torch.randn(4, 5, 32, generator=g), mask


def _exactly_one_update(trainer: TopTrainer, shape: tuple[int, ...]) -> None:
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainer.trainable.items()}
    hidden, mask = _batch()
    out = trainer.forward(hidden, mask)
    assert out.shape == shape and trainer.pending_shape() == shape
    trainer.apply_gradient(torch.randn(*shape))
    assert trainer.steps_applied == 1 and not trainer.has_pending
    assert all(torch.equal(p, frozen[n]) for n, p in trainer.model.named_parameters() if n in frozen)
    assert any(not torch.equal(p, before[n]) for n, p in trainer.trainable.items())
    with pytest.raises(RuntimeError, match="no pending"):
        trainer.apply_gradient(torch.randn(*shape))
    assert trainer.steps_applied == 1


def test_only_adapters_train_and_the_output_is_the_representation(tiny):
    """Interactive classification: the head is the device's, so the server trains LoRA only."""
    trainer = TopTrainer(_spec(tiny))
    names = set(trainer.trainable)
    assert names and all("lora_" in n for n in names)
    assert trainer.model.classifier is None
    assert not any("classifier" in n for n, _ in trainer.model.named_parameters())
    _exactly_one_update(trainer, R)


def test_upload_mode_trains_adapters_and_its_head_and_returns_logits(tiny):
    trainer = TopTrainer(_spec(tiny, server_head=True))
    names = set(trainer.trainable)
    assert all("lora_" in n or n.startswith("classifier.") for n in names)
    assert {"classifier.weight", "classifier.bias"} <= names and any("lora_" in n for n in names)
    _exactly_one_update(trainer, LOGITS)


def test_a_generation_top_runs_the_blocks_between_the_device_bottom_and_tail(tiny_llama):
    """L=4, l=1 and the default tail of 2 (``PrivtuneMethod.device_tail``): the server keeps 1 block."""
    spec = _spec(tiny_llama, task="generation", num_labels=None, split_layer=1)
    assert spec.method.device_tail == DEFAULT_TAIL_LAYERS == 2
    trainer = TopTrainer(spec)
    assert len(trainer.model.blocks.layers) == 4 - 1 - 2 and trainer.model.tail_layers == 2
    assert trainer.model.norm is None and trainer.model.classifier is None
    assert all("lora_" in n and n.startswith("blocks.layers.0.") for n in trainer.trainable)
    _exactly_one_update(trainer, (4, 5, HIDDEN))  # the hidden state (b, t, d) the device's tail continues
    one = TopTrainer(_spec(tiny_llama, task="generation", num_labels=None, split_layer=1, tail_layers=1))
    assert len(one.model.blocks.layers) == 2


def test_a_job_rows_method_type_decides_where_the_head_is(tiny):
    method = {"privtune": PrivtuneMethod(task="classification", num_labels=2).model_dump(mode="json")}
    interactive = TrainSpec.from_job({"model": tiny, "method": {"type": "privtune", **method}})
    upload = TrainSpec.from_job({"model": tiny, "method": {"type": "supervised", **method}, "seed": 3})
    assert (interactive.server_head, upload.server_head, upload.seed) == (False, True, 3)
    assert upload.to_dict()["server_head"] is True and interactive.to_dict()["server_head"] is False


@pytest.mark.parametrize("server_head", [False, True], ids=["device_head", "upload_mode"])
def test_gradient_descent_lowers_the_device_loss(tiny, server_head):
    """The device's loss falls through the server's updates alone: in interactive mode through a fixed
    head of the device's (its gradient is dL/d(representation)), in upload mode through the logits."""
    trainer = TopTrainer(_spec(tiny, total_steps=30, server_head=server_head))
    head = torch.nn.Linear(HIDDEN, LABELS)
    with torch.no_grad():
        head.weight.copy_(torch.randn(LABELS, HIDDEN, generator=torch.Generator().manual_seed(1)))
    head.requires_grad_(False)
    hidden, mask = _batch()
    labels = torch.tensor([0, 1, 2, 1])
    losses = []
    for _ in range(30):
        out = trainer.forward(hidden, mask).requires_grad_(True)
        logits = out if server_head else head(out)
        loss = torch.nn.functional.cross_entropy(logits, labels)  # computed "on the device"
        loss.backward()
        losses.append(loss.item())
        assert out.grad.shape == (R if not server_head else LOGITS)
        trainer.apply_gradient(out.grad)
    assert trainer.steps_applied == 30
    assert losses[-1] < 0.5 * losses[0]


def test_infer_changes_nothing(tiny):
    trainer = TopTrainer(_spec(tiny))
    hidden, mask = _batch()
    trainer.forward(hidden, mask)
    a = trainer.infer(hidden, mask)
    b = trainer.infer(hidden, mask)
    assert a.shape == R and torch.equal(a, b) and trainer.has_pending and trainer.steps_applied == 0


@pytest.mark.parametrize("server_head", [False, True], ids=["device_head", "upload_mode"])
def test_checkpoint_round_trip_is_exact_and_atomic(tiny, tmp_path, server_head):
    shape = LOGITS if server_head else R
    trainer = TopTrainer(_spec(tiny, server_head=server_head))
    hidden, mask = _batch()
    for seed in range(3):
        trainer.forward(*_batch(seed))
        trainer.apply_gradient(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)))
    path = trainer.save(tmp_path / "step-3", {"train_loss": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-3"]  # no temp dirs left behind
    meta = json.loads((path / "meta.json").read_text())
    assert (meta["step"], meta["metrics"], meta["spec"]["server_head"]) == (3, {"train_loss": 0.5}, server_head)
    expected = trainer.infer(hidden, mask)
    restored = TopTrainer(_spec(tiny, server_head=server_head))
    assert not torch.allclose(restored.infer(hidden, mask), expected)
    assert restored.load(path) == 3
    assert torch.allclose(restored.infer(hidden, mask), expected, atol=1e-6)
    # the optimizer state came back too: the next update is identical (same dropout draws)
    g = torch.randn(*shape)
    for t in (trainer, restored):
        torch.manual_seed(7)
        t.forward(hidden, mask)
        t.apply_gradient(g)
    assert torch.allclose(trainer.infer(hidden, mask), restored.infer(hidden, mask), atol=1e-6)


@pytest.mark.gpu
def test_trains_and_checkpoints_on_cuda(tiny, tmp_path):
    trainer = TopTrainer(_spec(tiny), device="cuda")
    hidden, mask = _batch()
    out = trainer.forward(hidden, mask)
    assert out.device.type == "cuda" and out.shape == R
    trainer.apply_gradient(torch.randn(*R))
    path = trainer.save(tmp_path / "step-1")
    restored = TopTrainer(_spec(tiny), device="cuda")
    assert restored.load(path) == 1
    assert torch.allclose(restored.infer(hidden, mask), trainer.infer(hidden, mask), atol=1e-5)
    trainer.close()
    restored.close()
