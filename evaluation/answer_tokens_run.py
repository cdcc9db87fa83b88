"""The answer-token measurement (``python -m evaluation.answer_tokens``): real jobs, in process, attacked.

For each device tail of k blocks, a generation job (``smollm2-135m`` cut at ``split_layer``) runs
through the product path: ``DeviceTrainer`` + ``TailTask`` (mechanism ``none``, so only the gradient
channel is measured) posting to an in-process ``StepServer`` (``TopTrainer`` with LoRA). A wrapper
around the server records what it sees (its fp16 reply h, the returned gradient g); the device's
batches give the oracle (target positions) and the truth. Settings:

* ``step1``: the view at step 1 (device LoRA B = 0: the tail is the public base), for ``attack_steps``
  batches: a job whose learning rate is ~0 (1e-6 with a 10^7-step warm-up, i.e. <= 1e-12), so every
  batch sees the untrained model, as step 1 does;
* ``trained``: a job of ``steps`` steps (both LoRAs train); the last ``attack_steps`` steps are attacked.

Each with ``gradient_noise`` in ``noises``. Utility: the device's mean training loss over the last
10 steps. The pairs are encoded as the device encodes them (``client_sdk.generation_data``: SmolLM2's
chat template, so the targets are the answer tokens and the end-of-turn token ``<|im_end|>``); ASR,
the prior and chance are reported over all targets and over the content tokens (no special token).
``--merge`` adds the rows of a further invocation (e.g. more noise levels) to an existing ``--out``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from evaluation.answer_tokens import VARIANTS, AnswerTokenAttack, view_of

MODEL, SPLIT, BATCH, MAX_TOKENS, LORA_R = "smollm2-135m", 3, 4, 48, 8


def load_pairs(data_dir: str | Path, n: int, seed: int = 0, split: str = "train") -> list[Any]:
    """``n`` (prompt, answer) pairs of ``qa_wikidata.jsonl.gz``'s ``split``, drawn with ``seed``."""
    from client_sdk.generation_data import GenerationExample

    with gzip.open(Path(data_dir) / "qa_wikidata.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    rows = [r for r in rows if r["split"] == split]
    random.Random(seed).shuffle(rows)
    return [GenerationExample(prompt=r["prompt"], completion=r["answer"]) for r in rows[:n]]


def run_job(artifact: Path, model: str, examples: list, steps: int, attack_steps: int, *, lr: float, noise: float,
            frozen: bool, cache_dir: str | None = None, seed: int = 0, max_tokens: int = MAX_TOKENS,
            ) -> tuple[list, list[float]]:  # fmt: skip
    """One in-process job of ``model`` cut as ``artifact`` (the device's export: split and tail): (the
    server's views of the last ``attack_steps`` steps, the device's training losses). ``frozen``: the
    learning rate ~0, so every step sees the untrained model (step 1)."""
    from client_sdk import protocol, wire
    from client_sdk.end_tasks import TailTask
    from client_sdk.jobspec import OptimizerSpec, PrivtuneMethod, step_shape
    from client_sdk.models import load_bottom, load_tail
    from client_sdk.privatizer import Privatizer
    from client_sdk.training import DeviceTrainer
    from worker.step_server import StepServer
    from worker.trainer import TopTrainer, TrainSpec

    bottom, tokenizer, manifest = load_bottom(artifact)
    k = int(manifest["tail_layers"])
    tail = load_tail(artifact, bottom, manifest, lora_r=LORA_R, generator=torch.Generator().manual_seed(seed + 7))
    optimizer = (
        OptimizerSpec(learning_rate=1e-6, warmup_steps=10_000_000) if frozen else OptimizerSpec(learning_rate=lr)
    )
    method = PrivtuneMethod(task="generation", split_layer=int(manifest["split_layer"]), tail_layers=k,
                            batch_size=BATCH, max_tokens=max_tokens, total_steps=steps, optimizer=optimizer)  # fmt: skip
    trainer = TopTrainer(TrainSpec(model, method, seed=seed), model_cache_dir=cache_dir)
    server = StepServer(trainer, step_shape(method, bottom.hidden_size), "ftjob-answer-tokens")
    seen: dict[int, dict[str, torch.Tensor]] = {}  # step -> what the server saw

    def post(payload: bytes) -> bytes:
        header, tensors = wire.decode(payload)
        reply = server.handle(payload)
        if protocol.GRAD_OUTPUT in tensors and header.step - 1 in seen:
            seen[header.step - 1]["grad"] = tensors[protocol.GRAD_OUTPUT]
        _, out = wire.decode(reply)
        if protocol.OUTPUT in out and header.step > steps - attack_steps:
            seen[header.step] = {"hidden": out[protocol.OUTPUT], "mask": tensors[protocol.ATTENTION_MASK]}
        return reply

    batches: list = []

    class Recording(TailTask):  # the device's batches, in step order (the oracle and the truth)
        def loss(self, output, batch):
            batches.append(batch.targets)
            return super().loss(output, batch)

    task = Recording(tail, Privatizer(bottom, tokenizer, "none", max_length=max_tokens), tokenizer, max_tokens)
    device = DeviceTrainer("ftjob-answer-tokens", post, task, examples, BATCH, optimizer=optimizer, total_steps=steps,
                           seed=seed, report_metrics=False, gradient_noise=noise)  # fmt: skip
    report = device.train()
    trainer.close()
    views = []
    for step, got in sorted(seen.items()):
        ids, loss_mask = batches[step - 1]
        views.append(view_of(got["hidden"], got["mask"], got["grad"], ids, loss_mask))
    return views, report.losses


def score(attack: AnswerTokenAttack, views: list, special: set[int]) -> dict[str, Any]:
    """ASR per variant (and the best), the prior and chance, over all targets and over content tokens."""
    outs = [attack.run(v) for v in views]
    cat = {key: torch.cat([o[key] for o in outs]) for key in outs[0]}
    truth = cat["truth"]
    content = torch.tensor([int(t) not in special for t in truth.tolist()])
    row: dict[str, Any] = {"targets": int(truth.numel()), "content_targets": int(content.sum())}
    for name, keep in (("all", None), ("content", content)):
        kept = truth if keep is None else truth[keep]
        rates = {v: _rate(cat[v], truth, keep) for v in VARIANTS}
        row[name] = {
            "asr": max(rates.values()),
            "asr_by_variant": rates,
            "prior": _rate(cat["prior"], truth, keep),
            "chance": Counter(kept.tolist()).most_common(1)[0][1] / max(kept.numel(), 1),
        }
    return row


def _rate(pred: torch.Tensor, truth: torch.Tensor, keep: torch.Tensor | None) -> float:
    hits = pred == truth
    return round(float((hits if keep is None else hits[keep]).float().mean()), 4)


def measure(data_dir: str, cache_dir: str | None, tails: list[int], noises: list[float], steps: int,
            attack_steps: int, lr: float, log=print) -> dict[str, Any]:  # fmt: skip
    """Every (k, setting, noise) row; see the module docstring."""
    from client_sdk.models import load_bottom, load_tail
    from worker.models import export_bottom

    examples = load_pairs(data_dir, steps * BATCH)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in tails:
            artifact = export_bottom(MODEL, SPLIT, Path(tmp) / f"art-{k}", cache_dir=cache_dir, tail_layers=k).path
            public, tokenizer, manifest = load_bottom(artifact)  # the server's copy of the public weights
            attack = AnswerTokenAttack(load_tail(artifact, public, manifest, lora_r=0))
            special = set(tokenizer.all_special_ids)
            for setting in ("step1", "trained"):
                for noise in noises:
                    started = time.perf_counter()
                    frozen = setting == "step1"
                    n_steps = attack_steps if frozen else steps
                    data = examples[-attack_steps * BATCH :] if frozen else examples
                    views, losses = run_job(artifact, MODEL, data, n_steps, attack_steps, lr=lr, noise=noise,
                                            frozen=frozen, cache_dir=cache_dir)  # fmt: skip
                    row = {"tail_layers": k, "setting": setting, "gradient_noise": noise, "texts": len(views) * BATCH}
                    row.update(score(attack, views, special))
                    row["device_train_loss_last10"] = round(sum(losses[-10:]) / len(losses[-10:]), 4)
                    row["seconds"] = round(time.perf_counter() - started, 1)
                    log(json.dumps(row))
                    rows.append(row)
    return {
        "model": MODEL, "split_layer": SPLIT, "batch_size": BATCH, "max_tokens": MAX_TOKENS, "lora_r": LORA_R,
        "learning_rate": lr, "steps": steps, "attack_steps": attack_steps, "mechanism": "none",
        "data": "qa_wikidata.jsonl.gz (train split)", "attack_top_m": 16, "attack_sketch": 64, "rows": rows,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Answer-token attack on the returned gradient (generation).")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--out", default="docs/results/answer_tokens.json")
    parser.add_argument("--cache-dir", default=".privtune/models", help="where the full model is cached")
    parser.add_argument("--tail-layers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.5, 1.0], help="gradient_noise values")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--attack-steps", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--merge", action="store_true", help="keep the rows of an existing --out not re-measured")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started, day = time.perf_counter(), time.strftime("%Y-%m-%d")  # the date the run started (UTC)
    result = measure(
        args.data_dir, args.cache_dir, args.tail_layers, args.noise, args.steps, args.attack_steps, args.lr
    )
    result["machine"] = f"{platform.machine()} CPU, {torch.get_num_threads()} threads, no GPU"
    result["date"] = day
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["runs"] = [{"date": day, "tail_layers": args.tail_layers, "noise": args.noise, "seconds": result["seconds"]}]
    if args.merge and Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        key = lambda r: (r["tail_layers"], r["setting"] != "step1", r["gradient_noise"])  # noqa: E731
        new = {key(r) for r in result["rows"]}
        result["rows"] = sorted([r for r in old["rows"] if key(r) not in new] + result["rows"], key=key)
        result["runs"] = old.get("runs", [{"seconds": old.get("seconds")}]) + result["runs"]
        result["date"] = old.get("date", day)
        result["seconds"] = round(sum(run["seconds"] or 0 for run in result["runs"]), 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0
