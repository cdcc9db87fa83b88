"""Wire encoding benchmark (issue 9): 8-bit blockwise (``q8``) against float16 for what the device sends.

    python -m benchmarks.wire [--data-dir ../shared/data] [--train 1024] [--epochs 2] [--json out.json]

``minilm-l6`` at l=3 with the default mechanism (``privtune``) fitted on the training texts, trained in
one process through the worker's ``StepServer`` (the head-on-device protocol, as a job) once with the
perturbed states and gradients sent as float16 and once as q8 (int8 codes + one float16 scale per 64
values), same data, seeds and noise; bytes sent per sample and their ratio to the fp16 activations
(T x d x 2), and held-out accuracy on the VADER movie test split (the SST-2 stand-in).
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date
from pathlib import Path

import torch

from benchmarks.core import DEFAULT_DATA, movie_texts

MODEL, SPLIT, BATCH, TOKENS = "minilm-l6", 3, 32, 64


def train_once(wire_dtype: str, privatizer, labels, train, test, epochs: int) -> dict:
    from client_sdk.end_tasks import HeadTask
    from client_sdk.jobspec import PrivtuneMethod, step_shape
    from client_sdk.models.ends import ClassifierHead
    from client_sdk.training import DeviceTrainer
    from worker.step_server import StepServer
    from worker.trainer import TopTrainer, TrainSpec

    steps = -(-len(train) // BATCH) * epochs
    method = PrivtuneMethod(
        task="classification", num_labels=2, split_layer=SPLIT, max_tokens=TOKENS, batch_size=BATCH,
        n_epochs=epochs, total_steps=steps, optimizer={"learning_rate": 2e-3},
        privacy={"mechanism": privatizer.mechanism.name},
    ).resolved()  # fmt: skip
    top = TopTrainer(TrainSpec(MODEL, method, seed=0))
    server = StepServer(top, step_shape(method, privatizer.bottom.hidden_size), "ftjob-wire")
    head = ClassifierHead(privatizer.bottom.hidden_size, 2, torch.Generator().manual_seed(0))
    device = DeviceTrainer(
        "ftjob-wire", server.handle, HeadTask(head, privatizer, labels), train, BATCH, optimizer=method.optimizer,
        total_steps=steps, seed=0, generator=torch.Generator().manual_seed(1), report_metrics=False,
        float_dtype=wire_dtype,
    )  # fmt: skip
    report = device.train()
    accuracy = device.evaluate(test)["valid_accuracy"]
    top.close()
    fp16 = report.activation_elements * 2
    return {
        "wire_dtype": wire_dtype,
        "steps": steps,
        "bytes_per_sample": round(report.bytes_sent / report.samples),
        "ratio_vs_fp16_activations": round(report.bytes_sent / fp16, 3),
        "test_accuracy": round(accuracy, 4),
    }


def _sample(texts: list[str], labels: list[int], n: int) -> list:
    """``n`` examples drawn with a fixed seed (the VADER file lists positive snippets first)."""
    import random

    from client_sdk.data import Example

    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    return [Example(texts[i], labels[i]) for i in order[:n]]


def main(argv: list[str] | None = None) -> int:
    from client_sdk.data import LabelMap
    from client_sdk.privatizer import Privatizer
    from worker.models import build_bottom

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="the shared evaluation data")
    parser.add_argument("--train", type=int, default=1024, help="training texts")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (default: print only)")
    args = parser.parse_args(argv)
    train = _sample(*movie_texts(args.data_dir), args.train)  # the file is sorted by label: sample it
    test = _sample(*movie_texts(args.data_dir, "test"), 500)
    labels = LabelMap.fit(ex.label for ex in train)
    bottom, tokenizer = build_bottom(MODEL, SPLIT)
    privatizer = Privatizer(bottom, tokenizer, "privtune", max_length=TOKENS)
    privatizer.fit([ex.text for ex in train], [labels.encode(ex.label) for ex in train])
    runs = [train_once(dtype, privatizer, labels, train, test, args.epochs) for dtype in ("float16", "q8")]
    majority = max(sum(ex.label == y for ex in test) for y in (0, 1)) / len(test)
    out = {
        "majority_class_accuracy": round(majority, 4),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "date": date.today().isoformat(),
        "mechanism": "privtune (defaults)",
        "runs": runs,
        "bytes_q8_over_float16": round(runs[1]["bytes_per_sample"] / runs[0]["bytes_per_sample"], 3),
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
