"""``FineTuneJob.create(dataset, ...)``: private split fine-tuning from the data owner's side.

What happens on the device: the bottom model is downloaded (cached by digest) and run locally, the
privacy mechanism is prepared from the user's own data (neighbours, importance, centroids), every
batch is perturbed before it leaves, the loss is computed with the local labels, and only dL/d(logits)
is returned. What the server receives is exactly ``Privatizer.privatize(texts)``.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from client_sdk.client import Client
from client_sdk.data import LabelMap, load_examples, train_validation_split
from client_sdk.training import DeviceTrainer, TrainingReport

ETA_MECHANISMS = ("dchi", "dchi_importance", "privtune")


class PrivacyTargetError(ValueError):
    """No eta on the search grid met ``PrivacyConfig.target_asr`` on the user's data."""


@dataclass(frozen=True)
class PrivacyConfig:
    """The mechanism the device applies and its parameters (see ``client_sdk.privacy``).

    ``seed=None`` (production) seeds the noise generator from the operating system's entropy;
    a fixed seed makes runs reproducible for experiments. ``target_asr`` (e.g. 0.10) makes the SDK
    search eta on the user's own data before training: the largest eta (least noise) whose on-device
    audit (nearest-prototype and learned inversion attacks, ``client_sdk.audit``) stays at or below the
    target; the chosen eta and the measured ASR are recorded in the job's metadata and privacy record.
    """

    mechanism: str = "privtune"
    eta: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    target_asr: float | None = None

    def __post_init__(self) -> None:
        if self.target_asr is not None:
            if not 0 < self.target_asr < 1:
                raise ValueError(f"target_asr must be in (0, 1), got {self.target_asr}")
            if self.mechanism not in ETA_MECHANISMS:
                raise ValueError(
                    f"target_asr searches eta, so the mechanism must be one of {ETA_MECHANISMS}, got {self.mechanism!r}"
                )

    def build(self) -> Any:
        from client_sdk.privacy import get_mechanism

        params = dict(self.params)
        if self.eta is not None:
            params["eta"] = self.eta
        return get_mechanism(self.mechanism, **params)

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed if self.seed is not None else secrets.randbits(63))

    def declared(self) -> dict[str, Any]:
        """What the device declares to the server: the mechanism's full, validated configuration."""
        return {"mechanism": self.mechanism, **self.build().config.to_dict()}


@dataclass(frozen=True)
class Hyperparameters:
    batch_size: int = 32
    n_epochs: int = 3
    learning_rate: float = 5e-4
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.0


class FineTuneJob:
    """A fine-tuning job seen from the device: its server record plus what the device measured."""

    def __init__(
        self, client: Client, record: Any, report: TrainingReport | None = None, metrics: dict[str, Any] | None = None
    ):
        self.client, self.record, self.report = client, record, report
        self.metrics = metrics or {}

    def __getattr__(self, name: str) -> Any:  # id, status, fine_tuned_model, ... from the record
        return getattr(self.record, name)

    def __repr__(self) -> str:
        return f"FineTuneJob(id={self.record.id!r}, status={self.record.status!r}, metrics={self.metrics})"

    # ---- following a job ----------------------------------------------------------------------
    def refresh(self) -> FineTuneJob:
        self.record = self.client.retrieve_job(self.record.id)
        return self

    def events(self, limit: int | None = None) -> list[Any]:
        return list(self.client.iter_events(self.record.id))[:limit]

    def checkpoints(self) -> list[Any]:
        return list(self.client.list_checkpoints(self.record.id).data)

    def cancel(self) -> FineTuneJob:
        self.record = self.client.cancel_job(self.record.id)
        return self

    def pause(self) -> FineTuneJob:
        self.record = self.client.pause_job(self.record.id)
        return self

    # ---- training ---------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        dataset: Any,
        model: str = "minilm-l6",
        task: str = "classification",
        privacy: PrivacyConfig | None = None,
        hyperparameters: Hyperparameters | dict | None = None,
        *,
        split_layer: int = 3,
        max_length: int = 64,
        validation_split: float = 0.1,
        seed: int = 0,
        suffix: str | None = None,
        metadata: dict[str, str] | None = None,
        client: Client | None = None,
        progress: bool = True,
        cache_dir: str | None = None,
    ) -> FineTuneJob:
        """Train privately on ``dataset`` and return the finished job (``metrics`` has the accuracies)."""
        if task != "classification":
            raise ValueError(f"task {task!r} is not supported by FineTuneJob.create yet; use 'classification'")
        session = _DeviceSession.prepare(
            dataset, model=model, privacy=privacy, hyperparameters=hyperparameters, split_layer=split_layer,
            max_length=max_length, validation_split=validation_split, seed=seed, client=client, cache_dir=cache_dir,
        )  # fmt: skip
        record = session.client.create_job(**session.job_body(suffix, metadata))
        return session.run(record, start_step=1, progress=progress)

    @classmethod
    def resume(cls, job_id: str, dataset: Any, *, progress: bool = True, **options: Any) -> FineTuneJob:
        """Continue an interrupted or paused job. Pass the dataset and the keyword arguments of
        :meth:`create` (model, privacy, hyperparameters, split_layer, seed, ...) that created it."""
        for create_only in ("suffix", "metadata", "task"):
            options.pop(create_only, None)
        session = _DeviceSession.prepare(dataset, **options)
        record = session.client.retrieve_job(job_id)
        if record.status == "paused":
            record = session.client.resume_job(job_id)
        # Start from step 1; the worker answers with the step it expects (its last checkpoint + 1).
        return session.run(record, start_step=1, progress=progress)


class _DeviceSession:
    """Everything the device holds for one job: data, labels, bottom model, privatizer."""

    @classmethod
    def prepare(
        cls,
        dataset: Any,
        *,
        model: str = "minilm-l6",
        privacy: PrivacyConfig | None = None,
        hyperparameters: Hyperparameters | dict | None = None,
        split_layer: int = 3,
        max_length: int = 64,
        validation_split: float = 0.1,
        seed: int = 0,
        client: Client | None = None,
        cache_dir: str | None = None,
    ) -> _DeviceSession:
        from client_sdk.models import load_bottom
        from client_sdk.privatizer import Privatizer

        self = cls()
        self.client = client or Client()
        self.model, self.split_layer, self.seed = model, split_layer, seed
        self.privacy = privacy = privacy or PrivacyConfig()
        self.max_length = max_length
        hp = (
            hyperparameters
            if isinstance(hyperparameters, Hyperparameters)
            else Hyperparameters(**(hyperparameters or {}))
        )
        self.hp = hp
        examples = load_examples(dataset)
        self.train, self.valid = train_validation_split(examples, validation_split, seed)
        self.labels = LabelMap.fit(ex.label for ex in examples)
        path = self.client.download_bottom(model, split_layer, cache_dir=cache_dir)
        bottom, tokenizer, manifest = load_bottom(path)
        self.privatizer = Privatizer(bottom, tokenizer, privacy.build(), max_length=max_length)
        # Neighbour sets depend only on the bottom model: cache them next to it, keyed by its digest.
        self.privatizer.fit(
            [ex.text for ex in self.train],
            [self.labels.encode(ex.label) for ex in self.train],
            cache_dir=Path(path).parent / "neighbours",
            model_id=manifest["digest"],
        )
        self.audit: dict[str, Any] | None = None
        if privacy.target_asr is not None:
            self._search_eta(bottom, tokenizer)
        self.total_steps = -(-len(self.train) // hp.batch_size) * hp.n_epochs
        return self

    def _search_eta(self, bottom: Any, tokenizer: Any) -> None:
        """Pick eta for ``privacy.target_asr`` by auditing the user's own perturbed texts on the device."""
        from dataclasses import replace

        from client_sdk.audit import search_eta
        from client_sdk.privatizer import Privatizer

        state = self.privatizer.state  # independent of eta: fitted once, shared by every candidate

        def factory(eta: float) -> Any:
            return Privatizer(
                bottom, tokenizer, replace(self.privacy, eta=eta).build(), state=state, max_length=self.max_length
            )

        result = search_eta(
            factory,
            [ex.text for ex in self.train],
            self.privacy.target_asr,
            generator=torch.Generator().manual_seed(self.seed),
        )
        if result.chosen_eta is None:
            raise PrivacyTargetError(
                f"no eta on the grid keeps the audited ASR at or below {self.privacy.target_asr}; the closest "
                f"point was eta={result.closest.eta:g} with ASR {result.closest.max_asr:.3f}"
            )
        self.privacy = replace(self.privacy, eta=result.chosen_eta)
        self.privatizer = factory(result.chosen_eta)
        self.audit = {
            "target_asr": self.privacy.target_asr,
            "chosen_eta": result.chosen_eta,
            "measured_asr": round(result.measured_asr, 4),
            "audited": [{"eta": pt.eta, "max_asr": round(pt.max_asr, 4)} for pt in result.table],
        }

    def job_body(self, suffix: str | None, metadata: dict[str, str] | None) -> dict[str, Any]:
        hp = self.hp
        body = {
            "model": self.model,
            "method": {
                "type": "privtune",
                "privtune": {
                    "task": "classification",
                    "num_labels": len(self.labels.names),
                    "split_layer": self.split_layer,
                    "max_tokens": self.max_length,
                    "batch_size": hp.batch_size,
                    "n_epochs": hp.n_epochs,
                    "total_steps": self.total_steps,
                    "lora": {"r": hp.lora_r, "alpha": hp.lora_alpha, "dropout": hp.lora_dropout},
                    "optimizer": {
                        "learning_rate": hp.learning_rate,
                        "weight_decay": hp.weight_decay,
                        "warmup_steps": hp.warmup_steps,
                    },
                    "privacy": {**self.privacy.declared(), "record": self.privatizer.privacy_record()},
                },
            },
            "hyperparameters": {"batch_size": hp.batch_size, "n_epochs": hp.n_epochs, "learning_rate_multiplier": 1.0},
            "seed": self.seed,
        }
        if suffix:
            body["suffix"] = suffix
        if self.audit is not None:
            body["method"]["privtune"]["privacy"]["audit"] = self.audit
            metadata = {
                **(metadata or {}),
                "privtune_target_asr": str(self.audit["target_asr"]),
                "privtune_eta": f"{self.audit['chosen_eta']:g}",
                "privtune_audit_asr": f"{self.audit['measured_asr']:.4f}",
            }
        if metadata:
            body["metadata"] = metadata
        return body

    def _wait_running(self, job_id: str, timeout_s: float = 600.0) -> Any:
        deadline, delay = time.monotonic() + timeout_s, 0.2
        while True:
            record = self.client.retrieve_job(job_id)
            if record.status == "running":
                return record
            if record.status in ("failed", "cancelled", "succeeded"):
                raise RuntimeError(f"job {job_id} is {record.status} and cannot train: {record.error}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not start within {timeout_s:.0f} s (status {record.status})")
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def run(self, record: Any, start_step: int, progress: bool) -> FineTuneJob:
        self._wait_running(record.id)
        trainer = DeviceTrainer(
            record.id,
            lambda payload: self.client.post_step(record.id, payload),
            self.privatizer,
            self.labels,
            self.train,
            self.hp.batch_size,
            seed=self.seed,
            generator=self.privacy.generator(),
        )
        before = trainer.evaluate(self.valid)
        bar = _progress_bar(self.total_steps, start_step) if progress else None
        report = trainer.train(self.total_steps, start_step=start_step, progress=bar.update if bar else None)
        if bar:
            bar.close()
        after = trainer.evaluate(self.valid)
        record = self.client.complete_job(record.id, trainer.finish_payload())
        metrics = {
            "accuracy_before": before,
            "accuracy_after": after,
            "validation_examples": len(self.valid),
            "bytes_sent": trainer.report.bytes_sent,
            "bytes_received": trainer.report.bytes_received,
            "samples_per_second": round(report.samples_per_second, 3),
            "privacy": {**self.privacy.declared(), "record": self.privatizer.privacy_record()},
            "hyperparameters": asdict(self.hp),
        }
        return FineTuneJob(self.client, record, report, metrics)


class _progress_bar:
    """tqdm bar showing loss and samples/s (tqdm is imported only when a bar is shown)."""

    def __init__(self, total: int, start: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=start - 1, unit="step", desc="private fine-tuning")

    def update(self, step: int, loss: float, samples_per_second: float) -> None:
        self.bar.n = step
        self.bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples_per_second:.1f}")

    def close(self) -> None:
        self.bar.close()
