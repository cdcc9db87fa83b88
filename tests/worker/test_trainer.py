"""The cloud half: LoRA top model, one gradient per step, atomic checkpoints that restore exactly."""

from __future__ import annotations

import pytest
import torch

from client_sdk.jobspec import PrivtuneMethod
from tests.helpers import make_tiny_bert
from worker.trainer import TopTrainer, TrainSpec


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_bert(tmp_path_factory.mktemp("m") / "tiny"))


def _spec(model: str, learning_rate: float = 1e-2, **kw) -> TrainSpec:
    base = dict(split_layer=2, task="classification", num_labels=3, total_steps=10)
    base.update(kw)
    return TrainSpec(model, PrivtuneMethod(optimizer={"learning_rate": learning_rate}, **base))


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(4, 5, dtype=torch.int64)
    mask[0, 3:] = 0
    return torch.randn(4, 5, 32, generator=g), mask


def test_only_adapters_and_head_train(tiny):
    trainer = TopTrainer(_spec(tiny))
    names = set(trainer.trainable)
    assert names and all("lora_" in n or n.startswith("classifier.") for n in names)
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    hidden, mask = _batch()
    out = trainer.forward(hidden, mask)
    assert out.shape == (4, 3)
    trainer.apply_gradient(torch.randn(4, 3))
    assert trainer.steps_applied == 1
    assert all(torch.equal(p, frozen[n]) for n, p in trainer.model.named_parameters() if n in frozen)
    with pytest.raises(RuntimeError, match="no pending"):
        trainer.apply_gradient(torch.randn(4, 3))


def test_gradient_descent_lowers_the_device_loss(tiny):
    trainer = TopTrainer(_spec(tiny, total_steps=30))
    hidden, mask = _batch()
    labels = torch.tensor([0, 1, 2, 1])
    losses = []
    for _ in range(30):
        logits = trainer.forward(hidden, mask).requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(logits, labels)  # computed "on the device"
        loss.backward()
        losses.append(loss.item())
        trainer.apply_gradient(logits.grad)
    assert losses[-1] < 0.5 * losses[0]


def test_infer_changes_nothing(tiny):
    trainer = TopTrainer(_spec(tiny))
    hidden, mask = _batch()
    trainer.forward(hidden, mask)
    a = trainer.infer(hidden, mask)
    b = trainer.infer(hidden, mask)
    assert torch.equal(a, b) and trainer.has_pending and trainer.steps_applied == 0


def test_checkpoint_round_trip_is_exact_and_atomic(tiny, tmp_path):
    trainer = TopTrainer(_spec(tiny))
    hidden, mask = _batch()
    for seed in range(3):
        trainer.forward(*_batch(seed))
        trainer.apply_gradient(torch.randn(4, 3, generator=torch.Generator().manual_seed(seed)))
    path = trainer.save(tmp_path / "step-3", {"train_loss": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-3"]  # no temp dirs left behind
    expected = trainer.infer(hidden, mask)
    restored = TopTrainer(_spec(tiny))
    assert not torch.allclose(restored.infer(hidden, mask), expected)
    assert restored.load(path) == 3
    assert torch.allclose(restored.infer(hidden, mask), expected, atol=1e-6)
    # the optimizer state came back too: the next update is identical (same dropout draws)
    g = torch.randn(4, 3)
    for t in (trainer, restored):
        torch.manual_seed(7)
        t.forward(hidden, mask)
        t.apply_gradient(g)
    assert torch.allclose(trainer.infer(hidden, mask), restored.infer(hidden, mask), atol=1e-6)


@pytest.mark.gpu
def test_trains_and_checkpoints_on_cuda(tiny, tmp_path):
    trainer = TopTrainer(_spec(tiny), device="cuda")
    hidden, mask = _batch()
    logits = trainer.forward(hidden, mask)
    assert logits.device.type == "cuda"
    trainer.apply_gradient(torch.randn(4, 3))
    path = trainer.save(tmp_path / "step-1")
    restored = TopTrainer(_spec(tiny), device="cuda")
    assert restored.load(path) == 1
    assert torch.allclose(restored.infer(hidden, mask), trainer.infer(hidden, mask), atol=1e-5)
    trainer.close()
    restored.close()
