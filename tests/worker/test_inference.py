"""One inference worker's sessions (``worker.inference.InferenceServer``) on tiny random models: each
fine-tuned model gets its own adapter's outputs however sessions interleave (adapters swapped into
one middle), with an LRU capacity of adapters and idle expiry; a generation session's KV cache gives
the outputs of recomputing; bad input is refused and changes nothing."""

from __future__ import annotations

import pytest
import torch

from client_sdk import protocol, wire
from client_sdk.jobspec import PrivtuneMethod
from service.errors import StepRejected
from tests.helpers import make_tiny_bert
from tests.model_fixtures import tiny_llama  # noqa: F401  (fixture)
from worker.inference import InferenceServer, ServedModel
from worker.trainer import TopTrainer, TrainSpec, adapted_top

CLS = PrivtuneMethod(split_layer=2, task="classification", num_labels=2, total_steps=4, batch_size=4, max_tokens=8)
GEN = PrivtuneMethod(split_layer=1, task="generation", tail_layers=1, total_steps=4, batch_size=2, max_tokens=16)


def _job(path, method: PrivtuneMethod, directory, seed: int) -> ServedModel:
    """A 'fine-tuned' job: its adapter set to random values and saved as the worker saves a final one."""
    spec = TrainSpec(str(path), method)
    trainer = TopTrainer(spec)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in trainer.trainable.values():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    trainer.save(directory)
    return ServedModel(f"ftjob-{seed}", spec, directory)


def _expected(model: ServedModel, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The output of ``model``'s middle alone (its own adapter, built from scratch)."""
    from safetensors.torch import load_file

    middle = adapted_top(model.spec).eval()
    weights = load_file(str(model.adapter_dir / "adapter.safetensors"))
    with torch.no_grad():
        for name, param in middle.named_parameters():
            if name in weights:
                param.copy_(weights[name])
        return middle(hidden, mask)


def _payload(session: str, hidden: torch.Tensor, mask: torch.Tensor, **extra: str) -> bytes:
    tensors = {protocol.HIDDEN: hidden, protocol.ATTENTION_MASK: mask.to(torch.uint8)}
    return wire.encode(tensors, wire.WireHeader(session, 0, "infer", extra=extra), float_dtype="float32")


def _output(reply: bytes) -> torch.Tensor:
    return wire.decode(reply)[1][protocol.OUTPUT].float()


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    path = make_tiny_bert(root / "bert", hidden=32)
    return [_job(path, CLS, root / f"job-{seed}", seed) for seed in (1, 2, 3)]


def test_interleaved_sessions_each_get_their_own_adapter(bert):
    server = InferenceServer()
    hidden, mask = torch.randn(3, 5, 32), torch.ones(3, 5, dtype=torch.long)
    for i, model in enumerate(bert[:2]):
        server.open(f"s{i}", model)
    for _ in range(2):
        for i, model in enumerate(bert[:2]):
            got = _output(server.forward(f"s{i}", _payload(f"s{i}", hidden, mask)))
            torch.testing.assert_close(got, _expected(model, hidden, mask), atol=1e-5, rtol=1e-4)
    assert len(server.middles) == 1 and server.swaps >= 4  # one middle, adapters swapped in and out
    a, b = (_expected(m, hidden, mask) for m in bert[:2])
    assert not torch.allclose(a, b)  # the adapters differ, so swapping matters


def test_the_adapter_capacity_evicts_the_least_recently_used_and_reloads_it(bert):
    server = InferenceServer(max_adapters=2)
    for i, model in enumerate(bert):
        server.open(f"s{i}", model)
    assert list(server.adapters) == [bert[1].job_id, bert[2].job_id]
    hidden, mask = torch.randn(2, 4, 32), torch.ones(2, 4, dtype=torch.long)
    got = _output(server.forward("s0", _payload("s0", hidden, mask)))  # reloaded from its directory
    torch.testing.assert_close(got, _expected(bert[0], hidden, mask), atol=1e-5, rtol=1e-4)
    assert list(server.adapters) == [bert[2].job_id, bert[0].job_id]


def test_an_idle_session_expires_and_a_closed_one_is_gone(bert):
    now = [0.0]
    server = InferenceServer(idle_timeout_s=10, clock=lambda: now[0])
    server.open("s", bert[0])
    server.open("t", bert[0])
    now[0] = 11
    with pytest.raises(StepRejected) as info:
        server.forward("s", _payload("s", torch.randn(1, 2, 32), torch.ones(1, 2)))
    assert (info.value.status_code, info.value.code) == (409, "session_expired")
    assert server.sessions == {}


@pytest.mark.parametrize(
    ("payload", "status", "param"),
    [
        (lambda: _payload("other", torch.randn(1, 2, 32), torch.ones(1, 2)), 400, "kind"),
        (lambda: _payload("s", torch.randn(1, 2, 16), torch.ones(1, 2)), 422, protocol.HIDDEN),
        (lambda: _payload("s", torch.randn(5, 2, 32), torch.ones(5, 2)), 422, protocol.HIDDEN),  # batch > 4
        (lambda: _payload("s", torch.randn(1, 9, 32), torch.ones(1, 9)), 422, protocol.HIDDEN),  # > max_tokens
        (lambda: _payload("s", torch.full((1, 2, 32), float("nan")), torch.ones(1, 2)), 422, protocol.HIDDEN),
        (lambda: b"not a payload", 400, None),
    ],
)
def test_bad_input_is_refused(bert, payload, status, param):
    server = InferenceServer()
    server.open("s", bert[0])
    with pytest.raises(StepRejected) as info:
        server.forward("s", payload())
    assert info.value.status_code == status and (param is None or info.value.param == param)
    assert "s" in server.sessions


def test_a_generation_session_caches_and_resets(tiny_llama, tmp_path):  # noqa: F811  (the fixture)
    model = _job(tiny_llama, GEN, tmp_path / "gen", 5)
    server = InferenceServer(max_context=8)
    server.open("g", model)
    hidden = torch.randn(1, 6, 32)
    whole = _expected(model, hidden, torch.ones(1, 6, dtype=torch.long))  # (1, 6, d)
    first = _output(server.forward("g", _payload("g", hidden[:, :4], torch.ones(1, 4), reset="1")))
    second = _output(server.forward("g", _payload("g", hidden[:, 4:5], torch.ones(1, 5))))
    third = _output(server.forward("g", _payload("g", hidden[:, 5:6], torch.ones(1, 6))))
    torch.testing.assert_close(torch.cat([first, second, third], 1), whole, atol=2e-3, rtol=1e-3)  # float16 reply
    with pytest.raises(StepRejected) as info:  # the mask must cover cached + new positions
        server.forward("g", _payload("g", hidden[:, :1], torch.ones(1, 1)))
    assert info.value.param == protocol.ATTENTION_MASK
    with pytest.raises(StepRejected) as info:  # past the session's context
        server.forward("g", _payload("g", torch.randn(1, 3, 32), torch.ones(1, 9)))
    assert info.value.status_code == 422
    again = _output(server.forward("g", _payload("g", hidden[:, :4], torch.ones(1, 4), reset="1")))
    torch.testing.assert_close(again, first)
