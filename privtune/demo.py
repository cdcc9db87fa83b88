"""The README's main job: private split fine-tuning of ``minilm-l6`` on a small real dataset.

Data: the conversation categories of ``chatterbot-corpus`` (BSD, installs from the package registry):
each utterance is a text, its file's category the label. The job runs through the embedded stack
(gateway, Redis, Celery worker) exactly as a production job would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from privtune.corpus import DEMO_CATEGORIES, chatterbot_dataset


def run_demo(
    mechanism: str = "privtune",
    eta: float | None = None,
    epochs: int = 3,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    data_dir: str = ".privtune",
    progress: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Bring up the embedded stack, fine-tune privately, and return what a user wants to know."""
    from client_sdk import Client, FineTuneJob, PrivacyConfig
    from client_sdk.jobs import Hyperparameters
    from privtune.embedded import EmbeddedStack

    data = chatterbot_dataset(seed=seed)
    with EmbeddedStack(data_dir, port=0, worker_log=str(Path(data_dir) / "worker.log")) as stack:
        client = Client(base_url=stack.base_url, api_key=stack.api_key)
        privacy = PrivacyConfig(mechanism=mechanism, eta=eta, seed=seed)
        job = FineTuneJob.create(
            data,
            model="minilm-l6",
            privacy=privacy,
            client=client,
            split_layer=3,
            hyperparameters=Hyperparameters(batch_size=batch_size, n_epochs=epochs, learning_rate=learning_rate),
            validation_split=0.2,
            seed=seed,
            suffix="demo",
            progress=progress,
        )
        events = len(job.events())
        checkpoints = len(job.checkpoints())
    m = job.metrics
    return {
        "job_id": job.id,
        "status": job.status,
        "fine_tuned_model": job.fine_tuned_model,
        "model": "minilm-l6",
        "split_layer": 3,
        "mechanism": mechanism,
        "eta": m["privacy"].get("eta"),
        "metric": m["privacy"].get("metric"),
        "dataset": f"chatterbot-corpus {list(DEMO_CATEGORIES)}",
        "train_examples": len(data) - m["validation_examples"],
        "validation_examples": m["validation_examples"],
        "accuracy_before": round(m["accuracy_before"], 4),
        "accuracy_after": round(m["accuracy_after"], 4),
        "bytes_sent": m["bytes_sent"],
        "bytes_received": m["bytes_received"],
        "samples_per_second": m["samples_per_second"],
        "events": events,
        "checkpoints": checkpoints,
    }
