"""Private generation speed (issue 9): tokens/s and per-token latency of ``FineTunedModel.generate``
through the embedded stack on loopback (gateway, Redis, inference worker; the device's bottom,
mechanism and tail in this process) against local greedy generation with the full model, both with
KV caches, same prompts, same machine, one run (``python -m benchmarks.generation``).

A short generation job (one epoch over 16 chatterbot pairs) makes the fine-tuned model; the figure
is about the serving path, not the model's quality. The mechanism is the demo's (privtune at
``DEMO_ETA``): each new token is perturbed after the device re-runs its 3 bottom blocks over the
sequence so far (the importance the mechanism gives it there).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPTS = ("Tell me a joke.", "How are you today?", "What is your favourite food?", "Do you like sports?")
NEW_TOKENS = 32


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _summary(latencies: list[float], tokens: int, seconds: float) -> dict[str, float]:
    return {
        "tokens": tokens,
        "tokens_per_second": round(tokens / seconds, 2),
        "latency_p50_ms": round(1000 * statistics.median(latencies), 1),
        "latency_p99_ms": round(1000 * _percentile(latencies, 0.99), 1),
    }


def _local(cache_dir: Path) -> dict[str, float]:
    """Greedy generation with the full model in this process (HF KV cache), timed per token."""
    import torch
    from transformers import DynamicCache

    from client_sdk.generation_data import encode_prompt
    from worker.models.full_model import load_full_model

    model, tokenizer, _ = load_full_model("smollm2-135m", cache_dir)
    latencies, tokens, started = [], 0, time.perf_counter()
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = torch.tensor([encode_prompt([{"role": "user", "content": prompt}], tokenizer, 256)])
            cache, step_ids = DynamicCache(), ids
            for _ in range(NEW_TOKENS):
                t0 = time.perf_counter()
                out = model(input_ids=step_ids, cache=cache, use_cache=True)
                step_ids = out.logits[:, -1:].argmax(-1)
                latencies.append(time.perf_counter() - t0)
                tokens += 1
    return _summary(latencies, tokens, time.perf_counter() - started)


def _private(model: Any) -> dict[str, float]:
    latencies, tokens, started = [], 0, time.perf_counter()
    for prompt in PROMPTS:
        last = time.perf_counter()
        for _ in model.generate(
            [{"role": "user", "content": prompt}], max_new_tokens=NEW_TOKENS, temperature=0, stream=True
        ):
            now = time.perf_counter()
            latencies.append(now - last)
            last = now
        tokens += model.last_usage["completion_tokens"]
    return _summary(latencies, tokens, time.perf_counter() - started)


def bench_speed(tail_layers: int, cache_dir: Path) -> dict[str, Any]:
    from privtune.corpus import chatterbot_pairs
    from privtune.demo_generation import DEMO_ETA
    from privtune.embedded import EmbeddedStack

    pairs = chatterbot_pairs(("greetings",), seed=0)[:16]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "models").symlink_to(cache_dir)  # the stack's workers reuse the cached full model
        stack = EmbeddedStack(tmp, port=0).start()
        try:
            private = _private_job(stack, pairs, tail_layers, DEMO_ETA, Path(tmp) / "device")
        finally:
            stack.stop()
    local = _local(cache_dir)
    return {
        "prompts": len(PROMPTS),
        "max_new_tokens": NEW_TOKENS,
        "private": private,
        "local_full_model": local,
        "ratio_private_over_local": round(private["tokens_per_second"] / local["tokens_per_second"], 3),
    }


def _private_job(stack: Any, pairs: list, tail_layers: int, eta: float, state_dir: Path) -> dict[str, float]:
    from client_sdk import Client, FineTuneJob, PrivacyConfig

    job = FineTuneJob.create(
        pairs,
        model="smollm2-135m",
        task="generation",
        tail_layers=tail_layers,
        privacy=PrivacyConfig(mechanism="privtune", eta=eta, seed=0),
        client=Client(base_url=stack.base_url, api_key=stack.api_key),
        hyperparameters={"batch_size": 8, "n_epochs": 1},
        validation_split=0.0,
        progress=False,
        state_dir=str(state_dir),
    )
    model = job.load_model(seed=0, state_dir=str(state_dir))
    model.generate("warm-up", max_new_tokens=2, temperature=0)
    return _private(model)
