"""Defaults that learn (issue 9): a new user's first job, 200 trivially separable rows, default options.

    python -m benchmarks.defaults [--json out.json]

Two classes told apart by one sentiment word in otherwise shared sentences (``TEMPLATES``), 200 rows,
``minilm-l6`` through the embedded stack with ``FineTuneJob.create``'s defaults: the ``"auto"`` epochs
and learning rate of this release against the fixed defaults of the previous one (3 epochs, 5e-4),
without noise and with the default mechanism, side by side in one run; held-out accuracy on the
job's validation split (20 rows) and on 100 fresh rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
from datetime import date
from pathlib import Path

TEMPLATES = (
    "the film was {}", "i thought the service was {}", "what a {} evening", "the food tasted {}",
    "honestly the book is {}", "our stay was {}", "the ending felt {}", "that concert was {}",
)  # fmt: skip
WORDS = {
    "positive": ("wonderful", "great", "excellent", "lovely"),
    "negative": ("awful", "terrible", "horrible", "dull"),
}


def rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = "positive" if i % 2 else "negative"
        out.append((rng.choice(TEMPLATES).format(rng.choice(WORDS[label])), label))
    rng.shuffle(out)
    return out


def run(hyperparameters: dict, mechanism: str, stack, test: list[tuple[str, str]]) -> dict:
    from client_sdk import Client, FineTuneJob, PrivacyConfig

    client = Client(base_url=stack.base_url, api_key=stack.api_key)
    job = FineTuneJob.create(
        rows(200, seed=0),
        model="minilm-l6",
        privacy=PrivacyConfig(mechanism=mechanism, seed=0),
        hyperparameters=hyperparameters,
        validation_split=0.1,
        client=client,
        progress=False,
    )
    predicted = job.load_model(seed=0).predict([text for text, _ in test])
    return {
        "mechanism": mechanism,
        "hyperparameters": job.metrics["hyperparameters"],
        "steps": job.report.steps,
        "validation_accuracy": round(job.metrics["accuracy_after"], 3),
        "fresh_rows_accuracy": round(sum(p == y for p, (_, y) in zip(predicted, test, strict=True)) / len(test), 3),
    }


def main(argv: list[str] | None = None) -> int:
    from privtune.embedded import EmbeddedStack

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="write the results here (default: print only)")
    args = parser.parse_args(argv)
    test = rows(100, seed=1)
    results = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedStack(tmp, port=0) as stack:
        for mechanism in ("none", "privtune"):
            for name, hp in (("previous defaults", {"n_epochs": 3, "learning_rate": 5e-4}), ("auto", {})):
                results.append({"defaults": name, **run(hp, mechanism, stack, test)})
    out = {"machine": f"{platform.machine()} ({platform.system()})", "date": date.today().isoformat(), "runs": results}
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
