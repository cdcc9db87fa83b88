"""The U-shaped split is the full model: bottom (device) -> middle (server) -> end (device) gives the
full model's logits and gradients, for generation (a tail of k blocks + norm + LM head) and for
classification (a head on the server's pooled representation); incremental decoding with KV caches
on the three parts gives the same tokens as recomputing everything. Tiny random models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from client_sdk.models import load_bottom, load_tail
from client_sdk.models.attention import KVCache
from client_sdk.models.ends import ClassifierHead
from tests.model_fixtures import TEXTS, padded_batch
from worker.models import build_top, export_bottom
from worker.models.full_model import load_full_model


def _parts(path, tmp_path, split: int, tail: int, lora_r: int = 0):
    artifact = export_bottom(path, split, tmp_path / f"art-{split}-{tail}", tail_layers=tail)
    bottom, tokenizer, manifest = load_bottom(artifact.path)
    end = load_tail(artifact.path, bottom, manifest, lora_r=lora_r, generator=torch.Generator().manual_seed(0))
    top = build_top(path, split, "generation", tail_layers=tail)
    return bottom, top, end, tokenizer


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_llama_untied"])
@pytest.mark.parametrize(("split", "tail"), [(1, 0), (1, 2), (2, 1)])
def test_generation_logits_and_gradients_equal_the_full_models(request, tmp_path, fixture, split, tail):
    path = request.getfixturevalue(fixture)
    bottom, top, end, tokenizer = _parts(path, tmp_path, split, tail, lora_r=4)  # LoRA B = 0: the base tail
    full, _, _ = load_full_model(path)
    ids, mask = padded_batch(tokenizer, TEXTS)
    labels = ids.masked_fill(mask == 0, -100)
    reference = full(input_ids=ids, attention_mask=mask).logits  # (b, t, |V|)
    expected_loss = F.cross_entropy(reference[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    expected_loss.backward()
    middle = full.model.layers[split]  # a block the server holds
    expected_grad = middle.self_attn.q_proj.weight.grad.clone()

    top.zero_grad()
    with torch.no_grad():
        sent = bottom(ids, mask).hidden  # device -> server
    out = top(sent, mask)  # server
    received = out.detach().requires_grad_(True)  # server -> device
    logits = end(received, mask)  # device
    torch.testing.assert_close(logits[mask.bool()], reference[mask.bool()], atol=1e-5, rtol=1e-4)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    loss.backward()
    out.backward(received.grad)  # device -> server: dL/d(hidden)
    grad = top.blocks.layers[0].self_attn.q_proj.weight.grad
    torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_llama"])
def test_classification_gradients_through_the_device_head_equal_the_joint_models(request, fixture):
    from worker.models import build_bottom

    path = request.getfixturevalue(fixture)
    bottom, tokenizer = build_bottom(path, 2)
    top = build_top(path, 2, "classification")
    head = ClassifierHead(top.hidden_size, 3, torch.Generator().manual_seed(1))
    assert top.classifier is None
    ids, mask = padded_batch(tokenizer, TEXTS)
    targets = torch.tensor([0, 2, 1, 2])
    with torch.no_grad():
        sent = bottom(ids, mask).hidden
    F.cross_entropy(head(top(sent, mask)), targets).backward()  # one process, the joint model
    joint = {n: p.grad.clone() for n, p in [*top.named_parameters(), *head.named_parameters()] if p.grad is not None}
    top.zero_grad(), head.zero_grad()

    out = top(sent, mask)  # server: the pooled representation (b, d)
    assert out.shape == (len(TEXTS), top.hidden_size)
    received = out.detach().requires_grad_(True)
    F.cross_entropy(head(received), targets).backward()  # device
    out.backward(received.grad)  # server
    split = {n: p.grad for n, p in [*top.named_parameters(), *head.named_parameters()] if p.grad is not None}
    assert split.keys() == joint.keys()
    for name, grad in joint.items():
        torch.testing.assert_close(split[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_the_head_is_drawn_from_the_devices_generator():
    a = ClassifierHead(8, 2, torch.Generator().manual_seed(5)).state()
    b = ClassifierHead(8, 2, torch.Generator().manual_seed(5)).state()
    c = ClassifierHead(8, 2, torch.Generator().manual_seed(6)).state()
    assert torch.equal(a["classifier.weight"], b["classifier.weight"])
    assert not torch.equal(a["classifier.weight"], c["classifier.weight"])


def test_the_tail_trains_only_its_adapters_and_restores_them(tiny_llama, tmp_path):
    _, _, end, _ = _parts(tiny_llama, tmp_path, 1, 2, lora_r=4)
    names = set(end.trainable())
    assert names and all("lora_" in n for n in names)
    assert len(names) == 2 * 2 * 2  # 2 blocks x (q, v) x (A, B)
    saved = {n: t + 1.0 for n, t in end.state().items()}
    end.load_state(saved)
    assert all(torch.equal(end.state()[n], saved[n]) for n in names)
    with pytest.raises(ValueError, match="does not fit"):
        end.load_state({"x": torch.zeros(1)})


@torch.no_grad()
def _greedy(bottom, top, end, ids: torch.Tensor, new_tokens: int, cached: bool) -> list[int]:
    ids = ids.clone()
    caches = (KVCache(), KVCache(), KVCache()) if cached else (None, None, None)
    step_ids = ids
    for _ in range(new_tokens):
        mask = torch.ones(1, ids.shape[1], dtype=torch.long)
        if cached:
            hidden = bottom(step_ids, mask, cache=caches[0]).hidden
            logits = end(top(hidden, mask, cache=caches[1]), mask, cache=caches[2])
        else:
            logits = end(top(bottom(ids, mask).hidden, mask), mask)
        token = logits[0, -1].argmax()[None, None]
        ids = torch.cat([ids, token], dim=1)
        step_ids = token
    return ids[0].tolist()


@pytest.mark.parametrize("tail", [0, 2])
def test_greedy_generation_with_kv_caches_equals_recomputing(tiny_llama, tmp_path, tail):
    bottom, top, end, tokenizer = _parts(tiny_llama, tmp_path, 1, tail)
    prompt = padded_batch(tokenizer, ["w3 w4 w5"])[0]
    assert _greedy(bottom, top, end, prompt, 8, cached=True) == _greedy(bottom, top, end, prompt, 8, cached=False)
