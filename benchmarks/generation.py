"""Generation benchmark (issue 9): what the U-shaped split costs the device and the wire.

    python -m benchmarks.generation [--json out.json] [--skip-speed]

``smollm2-135m`` (SmolLM2-135M-Instruct, 30 blocks, d=576, |V|=49,152) split after block 3 with a
device tail of ``DEFAULT_TAIL_LAYERS`` blocks, on this machine's CPU:

* **wire**: bytes of one training step (request: perturbed states + the previous gradient; reply:
  the middle's hidden state), against the bytes of returning full logits instead (what a split
  without a device tail would have to send for the device to compute its loss), for a batch of 4
  sequences of 48 tokens; both fp16 on the wire, measured from real encoded payloads.
* **memory**: peak resident memory of one training step on the device (bottom at l=3 + the tail
  with its LoRA: forward, loss, backward) against the same step on the full model (with LoRA on the
  same projections), each in a fresh subprocess, minus that process's memory before loading.
* **speed**: private greedy generation through the embedded stack (gateway, Redis, inference worker
  on loopback) against local generation with the full model, both with KV caches, tokens/s and the
  per-token latency p50 / p99 (``benchmarks.generation_speed``).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

MODEL, SPLIT, BATCH, TOKENS = "smollm2-135m", 3, 4, 48


def bench_wire(tail_layers: int) -> dict:
    import torch

    from client_sdk import protocol, wire
    from client_sdk.models.catalog import describe_model

    info = describe_model(MODEL)
    d, vocab = info.hidden_size, info.vocab_size
    hidden = torch.randn(BATCH, TOKENS, d)
    mask = torch.ones(BATCH, TOKENS, dtype=torch.uint8)
    request = wire.encode(
        {protocol.HIDDEN: hidden, protocol.ATTENTION_MASK: mask, protocol.GRAD_OUTPUT: torch.randn(BATCH, TOKENS, d)},
        wire.WireHeader("ftjob-bench", 2, "step"),
    )
    reply = wire.encode({protocol.OUTPUT: hidden}, wire.WireHeader("ftjob-bench", 2, "step_reply"))
    logits = wire.encode(
        {protocol.OUTPUT: torch.randn(BATCH, TOKENS, vocab)}, wire.WireHeader("ftjob-bench", 2, "step_reply")
    )
    grad_logits = wire.encode(
        {
            protocol.HIDDEN: hidden,
            protocol.ATTENTION_MASK: mask,
            protocol.GRAD_OUTPUT: torch.randn(BATCH, TOKENS, vocab),
        },
        wire.WireHeader("ftjob-bench", 2, "step"),
    )
    ours, theirs = len(request) + len(reply), len(grad_logits) + len(logits)
    return {
        "batch": BATCH,
        "tokens": TOKENS,
        "tail_layers": tail_layers,
        "step_bytes_hidden": ours,
        "step_bytes_logits": theirs,
        "ratio_logits_over_hidden": round(theirs / ours, 1),
    }


_MEMORY_CHILD = r"""
import json, resource, sys, torch
torch.set_num_threads(2)
which, artifact, cache = sys.argv[1], sys.argv[2], sys.argv[3]
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
import torch.nn.functional as F, transformers  # imports before the baseline
base = rss()
ids = torch.randint(10, 40000, (4, 48)); mask = torch.ones_like(ids)
if which == "device":
    from client_sdk.models import load_bottom, load_tail
    bottom, _, manifest = load_bottom(artifact)
    tail = load_tail(artifact, bottom, manifest, lora_r=8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sent = bottom(ids, mask).hidden
    received = sent.clone().requires_grad_(True)  # stands for the server's reply
    logits = tail(received, mask)
else:
    from peft import LoraConfig, inject_adapter_in_model
    from worker.models.full_model import load_full_model
    model, _, _ = load_full_model("smollm2-135m", cache)
    model.requires_grad_(False)
    model = inject_adapter_in_model(LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]), model)
    logits = model(input_ids=ids, attention_mask=mask).logits
loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
loss.backward()
print(json.dumps({"peak_bytes": rss() - base}))
"""


def bench_memory(tail_layers: int, cache_dir: Path) -> dict:
    from worker.models import export_bottom

    with tempfile.TemporaryDirectory() as tmp:
        artifact = export_bottom(MODEL, SPLIT, Path(tmp) / "artifact", cache_dir=cache_dir, tail_layers=tail_layers)
        peaks = {}
        for which in ("device", "full"):
            cmd = [sys.executable, "-c", _MEMORY_CHILD, which, str(artifact.path), str(cache_dir)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            peaks[which] = json.loads(out)["peak_bytes"]
    return {
        "split_layer": SPLIT,
        "tail_layers": tail_layers,
        "device_peak_mib": round(peaks["device"] / 2**20, 1),
        "full_peak_mib": round(peaks["full"] / 2**20, 1),
        "ratio_device_over_full": round(peaks["device"] / peaks["full"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    from client_sdk.jobspec.method import DEFAULT_TAIL_LAYERS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None, help="write the results to this file (default: print only)")
    parser.add_argument("--cache-dir", default=".privtune/models", help="where the full model is cached")
    parser.add_argument("--tail-layers", type=int, default=DEFAULT_TAIL_LAYERS, help="blocks of the device tail")
    parser.add_argument("--skip-speed", action="store_true", help="skip the generation speed benchmark (slow)")
    args = parser.parse_args(argv)
    cache = Path(args.cache_dir).resolve()
    results = {
        "machine": f"{platform.machine()} {platform.processor() or ''} ({platform.system()})".strip(),
        "date": date.today().isoformat(),
        "wire": bench_wire(args.tail_layers),
        "memory": bench_memory(args.tail_layers, cache),
    }
    if not args.skip_speed:
        from benchmarks.generation_speed import bench_speed

        results["speed"] = bench_speed(args.tail_layers, cache)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
