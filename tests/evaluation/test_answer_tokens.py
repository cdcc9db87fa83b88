"""The answer-token attack on the returned gradient (``evaluation.answer_tokens``), on a tiny random
Llama through the product path (DeviceTrainer + TailTask -> StepServer): its closed-form direct path
and its one-position exact columns equal autograd's; it recovers every answer token without a device
tail; with a tail of 2 blocks at step 1 (public base) it is at least as strong as the prior; gradient
noise lowers it."""

from __future__ import annotations

import random

import pytest
import torch

from client_sdk.generation_data import GenerationExample
from client_sdk.models import load_bottom, load_tail
from client_sdk.models.attention import KVCache
from evaluation.answer_tokens import AnswerTokenAttack
from evaluation.answer_tokens_run import run_job, score
from tests.model_fixtures import (
    WORDS,
    tiny_llama,  # noqa: F401  (fixture)
)
from worker.models import export_bottom


def _examples(n: int) -> list[GenerationExample]:
    rng = random.Random(0)
    return [
        GenerationExample(prompt=" ".join(rng.sample(WORDS, 4)), completion=" ".join(rng.sample(WORDS, 3)))
        for _ in range(n)
    ]


def _setup(path, tmp_path, tail: int):
    artifact = export_bottom(path, 1, tmp_path / f"art-{tail}", tail_layers=tail).path
    public, tokenizer, manifest = load_bottom(artifact)
    return artifact, AnswerTokenAttack(load_tail(artifact, public, manifest, lora_r=0), top_m=8, sketch=32), tokenizer


def _asr(path, artifact, attack, tokenizer, noise: float, frozen: bool = True) -> dict:
    views, _ = run_job(artifact, str(path), _examples(16), 4, 4, lr=1e-3, noise=noise, frozen=frozen, max_tokens=16)
    return score(attack, views, set(tokenizer.all_special_ids))["all"]


def test_the_direct_path_and_the_exact_columns_equal_autograds(tiny_llama, tmp_path):  # noqa: F811  (the fixture)
    _, attack, _ = _setup(tiny_llama, tmp_path, 2)
    gen = torch.Generator().manual_seed(0)
    h, mask, pos = torch.randn(1, 6, 32, generator=gen), torch.ones(1, 6, dtype=torch.long), 4
    x = attack.pre_norm(h, mask)[0, pos].detach()  # (d,)
    r = torch.randn(32, generator=gen)
    columns = []  # J^T W_v for every v, by autograd: (|V|, d)
    for v in range(attack.head.shape[0]):
        xv = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(attack.tail.bottom.norm(xv) @ attack.head[v], xv)
        columns.append(grad)
    cos = torch.nn.functional.cosine_similarity(torch.stack(columns), r[None], dim=-1)  # (|V|,)
    assert attack.direct(x[None], r[None])[0].tolist() == cos.topk(8).indices.tolist()

    cache = KVCache()
    with torch.no_grad():
        attack.tail.blocks(h, mask, cache=cache)
    items = torch.tensor([3, 10, 20])
    own = attack._own_columns(cache, h[0, pos], mask[0], pos, items)  # (3, d)
    full = h.clone().requires_grad_(True)
    out = attack.tail.bottom.norm(attack.pre_norm(full, mask))[0, pos]  # (d,)
    for i, v in enumerate(items.tolist()):
        (grad,) = torch.autograd.grad(out @ attack.head[v], full, retain_graph=True)
        torch.testing.assert_close(own[i], grad[0, pos], atol=1e-5, rtol=1e-4)


def test_without_a_device_tail_every_answer_token_is_recovered(tiny_llama, tmp_path):  # noqa: F811  (the fixture)
    artifact, attack, tokenizer = _setup(tiny_llama, tmp_path, 0)
    result = _asr(tiny_llama, artifact, attack, tokenizer, noise=0.0, frozen=False)
    assert result["asr"] >= 0.98
    assert result["asr"] > result["prior"]


def test_with_a_public_tail_at_step_1_the_attack_beats_the_prior_and_noise_lowers_it(tiny_llama, tmp_path):  # noqa: F811  (the fixture)
    artifact, attack, tokenizer = _setup(tiny_llama, tmp_path, 2)
    clean = _asr(tiny_llama, artifact, attack, tokenizer, noise=0.0)
    assert clean["asr"] >= clean["prior"]
    assert clean["asr"] >= 0.9  # the base tail is public at step 1: the residual is exact
    noisy = _asr(tiny_llama, artifact, attack, tokenizer, noise=4.0)
    assert noisy["asr"] < clean["asr"]


@pytest.mark.parametrize("tail", [0, 2])
def test_the_attack_never_reads_the_labels(tiny_llama, tmp_path, tail):  # noqa: F811  (the fixture)
    artifact, attack, _ = _setup(tiny_llama, tmp_path, tail)
    views, _ = run_job(artifact, str(tiny_llama), _examples(4), 1, 1, lr=1e-3, noise=0.0, frozen=True, max_tokens=16)
    view = views[0]
    scrambled = type(view)(view.hidden, view.attention_mask, view.grad, view.targets, torch.zeros_like(view.labels))
    a, b = attack.run(view), attack.run(scrambled)
    for key in ("prior", "residual_direct", "residual_exact", "raw_direct"):
        assert torch.equal(a[key], b[key])
