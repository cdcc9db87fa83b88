"""Everything the device holds for one job: data, labels, the job contract, bottom model, privatizer.

:meth:`DeviceSession.prepare` runs in two phases so that a job the server would refuse costs
nothing: first the cheap part (read the dataset, build the job contract, check it against the limits
the gateway publishes for the model), then the local work (download the bottom, fit the mechanism on
the user's data, search eta). :meth:`DeviceSession.run` creates nothing: it trains a job that exists.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from client_sdk.client import Client
from client_sdk.data import LabelMap, load_examples, train_validation_split, warn_rare_classes
from client_sdk.jobspec import JobSpecError, LegacyHyperparameters, PrivtuneMethod, ServerLimits, check_limits
from client_sdk.options import Hyperparameters, PrivacyConfig, PrivacyTargetError, job_spec
from client_sdk.training import DEFAULT_WORKER_WAIT

__all__ = ["DeviceSession"]

#: how perturbed states and gradients travel: 8-bit blockwise codes (one float16 scale per 64 values;
#: the mechanism's noise dwarfs the rounding, docs/BENCHMARKS.md) or float16
WIRE_DTYPES = ("q8", "float16")
DEFAULT_WIRE_DTYPE = "q8"

CLASSIFICATION_COLUMNS = ("text_column", "label_column")
GENERATION_COLUMNS = ("prompt_column", "completion_column", "messages_column")

#: the server-limit error's param -> the option the user passed
_LIMIT_OPTIONS = {
    "method.privtune.batch_size": "hyperparameters.batch_size",
    "method.privtune.max_tokens": "max_length",
    "method.privtune.split_layer": "split_layer",
    "method.privtune.tail_layers": "tail_layers",
    "method.privtune.task": "task",
}


class DeviceSession:
    """One job's device state; build it with :meth:`prepare`."""

    @classmethod
    def prepare(
        cls,
        dataset: Any,
        *,
        model: str = "minilm-l6",
        task: str = "classification",
        privacy: PrivacyConfig | None = None,
        hyperparameters: Hyperparameters | dict | None = None,
        split_layer: int = 3,
        max_length: int = 64,
        validation_split: float = 0.1,
        seed: int = 0,
        client: Client | None = None,
        cache_dir: str | None = None,
        tail_layers: int | None = None,
        state_dir: str | None = None,
        report_metrics: bool = True,
        wire_dtype: str = DEFAULT_WIRE_DTYPE,
        worker_wait_s: float = DEFAULT_WORKER_WAIT,
        **columns: str | None,
    ) -> DeviceSession:
        """Check everything the job contract can refuse, then do the local work (see the module doc).

        ``columns``: ``text_column`` / ``label_column`` (classification), ``prompt_column`` /
        ``completion_column`` / ``messages_column`` (generation). ``worker_wait_s``: how long training
        waits, per outage, for a worker to take the job back after a crash (``WorkerWait``)."""
        self = cls()
        #: the options as given (what ``FineTuneJob.resume`` needs again), ``client`` aside
        self.options: dict[str, Any] = {
            "model": model, "task": task, "privacy": privacy, "hyperparameters": hyperparameters,
            "split_layer": split_layer, "max_length": max_length, "validation_split": validation_split, "seed": seed,
            "cache_dir": cache_dir, "tail_layers": tail_layers, "state_dir": state_dir,
            "report_metrics": report_metrics, "wire_dtype": wire_dtype, "worker_wait_s": worker_wait_s, **columns,
        }  # fmt: skip
        if not worker_wait_s >= 0:
            raise JobSpecError(f"worker_wait_s must be >= 0 seconds, got {worker_wait_s!r}", "worker_wait_s")
        self.worker_wait_s = float(worker_wait_s)
        self.client = client or Client()
        self.model, self.task, self.split_layer, self.seed = model, task, split_layer, seed
        self.max_length, self.tail_layers, self.report_metrics = max_length, tail_layers, report_metrics
        self.state_dir = state_dir
        if wire_dtype not in WIRE_DTYPES:
            raise JobSpecError(f"wire_dtype must be one of {list(WIRE_DTYPES)}, got {wire_dtype!r}", "wire_dtype")
        self.wire_dtype = wire_dtype
        self.privacy = privacy or PrivacyConfig()
        hp = Hyperparameters.coerce(hyperparameters)
        examples, self.labels = _read_dataset(dataset, task, columns)
        self.train, self.valid = train_validation_split(examples, validation_split, seed)
        self.label_secret = None
        if self.privacy.label_epsilon is not None:
            if task != "classification":
                raise JobSpecError(
                    "label_epsilon applies to task='classification' (generation has no labels)", "privacy.label_epsilon"
                )
            self.label_secret = _secret(self.privacy.seed)
            self.train = self._randomized_labels(self.train)
        self.hp = hp.resolved(len(self.train), task)
        if self.labels is not None:
            warn_rare_classes(self.train, self.labels)
        self.total_steps = -(-len(self.train) // max(self.hp.batch_size, 1)) * self.hp.n_epochs
        self.spec = self._spec()  # refuses bad options (batch_size=0, unknown keys, ...) without a request
        limits = self.client.models.retrieve(model).privtune
        if limits:
            try:
                check_limits(self.spec, ServerLimits.from_dict(limits))
            except JobSpecError as exc:
                option = _LIMIT_OPTIONS.get(exc.param, exc.param)
                raise JobSpecError(f"{option}: {exc.message} (the server's limit for {model})", option) from None
        self._local_work(cache_dir)
        return self

    def _spec(self, record: dict[str, Any] | None = None, audit: dict[str, Any] | None = None) -> PrivtuneMethod:
        return job_spec(
            self.hp,
            self.privacy,
            task=self.task,
            num_labels=len(self.labels.names) if self.labels is not None else None,
            split_layer=self.split_layer,
            max_length=self.max_length,
            total_steps=self.total_steps,
            tail_layers=self.tail_layers,
            record=record,
            audit=audit,
        ).resolved()

    def _local_work(self, cache_dir: str | None) -> None:
        import torch

        from client_sdk.models import load_bottom
        from client_sdk.privatizer import Privatizer

        tail = self.spec.device_tail
        path = self.client.bottoms.download(self.model, self.split_layer, cache_dir=cache_dir, tail_layers=tail)
        self.artifact_dir = path
        bottom, tokenizer, manifest = load_bottom(path)
        self.bottom, self.tokenizer, self.manifest = bottom, tokenizer, manifest
        self.privatizer = Privatizer(bottom, tokenizer, self.privacy.build(), max_length=self.max_length)
        labels = None if self.labels is None else [self.labels.encode(ex.label) for ex in self.train]
        # Neighbour sets depend only on the bottom model: cache them next to it, keyed by its digest.
        # A fixed privacy seed (experiments) seeds the fit, and so the per-text noise secret.
        seeded = None if self.privacy.seed is None else torch.Generator().manual_seed(self.privacy.seed)
        self.privatizer.fit(
            [_fit_text(ex) for ex in self.train],
            labels,
            cache_dir=Path(path).parent / "neighbours",
            model_id=manifest["digest"],
            generator=seeded,
        )
        self.audit: dict[str, Any] | None = None
        if self.privacy.target_asr is not None:
            self._search_eta(bottom, tokenizer)
        self.spec = self._spec(record=self.privacy_record(), audit=self.audit)

    def privacy_record(self) -> dict[str, Any]:
        """The mechanism's record plus the accounting per text over every view this job sends."""
        from client_sdk.privacy.accounting import account

        texts = [_fit_text(ex) for ex in self.train[:256]]
        ids, mask = self.privatizer.encode(texts) if texts else (None, None)
        scales = None
        if ids is not None and self.privatizer.mechanism.uses_noise:
            real = self.privatizer.token_noise_scale(ids, mask)[mask.bool()]
            scales = (float(real.min()), float(real.max()))
        epochs = self.hp.n_epochs
        views = {"training": epochs, "validation": epochs + 1 if self.valid else 0, "inference": 0}
        record = self.privatizer.privacy_record()
        record["accounting"] = account(
            self.privatizer.mechanism.config, self.privatizer.state, views=views,
            tokens_per_text=float(mask.sum(dim=1).float().mean()) if mask is not None else 0.0,
            dim=int(self.bottom.hidden_size), scale_range=scales, label_epsilon=self.privacy.label_epsilon,
            num_labels=len(self.labels.names) if self.labels is not None else None,
        )  # fmt: skip
        return record

    def privacy_summary(self) -> str:
        """What the user should read before training starts (``client_sdk.privacy.accounting.summary``)."""
        from client_sdk.privacy.accounting import summary

        text = summary(self.spec.privacy.record["accounting"], self.privacy.mechanism)
        if self.audit is not None:
            text += (f"\nmeasured on your data (on-device audit): strongest token attack {self.audit['measured_asr']:.1%} "
                     f"at eta {self.audit['chosen_eta']:g}.")  # fmt: skip
        return text

    def _randomized_labels(self, examples: list[Any]) -> list[Any]:
        """``examples`` with each label replaced, once, by randomised response (``label_epsilon``)."""
        from client_sdk.privacy.label_dp import randomized_response

        encoded = [self.labels.encode(ex.label) for ex in examples]
        noisy = randomized_response(encoded, [ex.text for ex in examples], len(self.labels.names),
                                    self.privacy.label_epsilon, self.label_secret)  # fmt: skip
        return [replace(ex, label=self.labels.names[i]) for ex, i in zip(examples, noisy, strict=True)]

    def _search_eta(self, bottom: Any, tokenizer: Any) -> None:
        """Pick eta for ``privacy.target_asr`` by auditing the user's own perturbed texts on the device."""
        import torch

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
            views=self.hp.n_epochs,  # a training text is sent once per epoch: the attacker links the views
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
        """The ``POST /v1/fine_tuning/jobs`` body: the job contract and OpenAI's mirrored fields."""
        body: dict[str, Any] = {
            "model": self.model,
            "method": {"type": "privtune", "privtune": self.spec.model_dump(mode="json")},
            "hyperparameters": LegacyHyperparameters.of(self.spec),
            "seed": self.seed,
        }
        if suffix:
            body["suffix"] = suffix
        if self.audit is not None:
            metadata = {
                **(metadata or {}),
                "privtune_target_asr": str(self.audit["target_asr"]),
                "privtune_eta": f"{self.audit['chosen_eta']:g}",
                "privtune_audit_asr": f"{self.audit['measured_asr']:.4f}",
            }
        if metadata:
            body["metadata"] = metadata
        return body

    def wait_running(self, job_id: str, timeout_s: float = 600.0) -> Any:
        """The job's record once a worker runs it; raises if it ends or does not start in time."""
        deadline, delay = time.monotonic() + timeout_s, 0.2
        while True:
            record = self.client.fine_tuning.jobs.retrieve(job_id)
            if record.status == "running":
                return record
            if record.status in ("failed", "cancelled", "succeeded"):
                raise RuntimeError(f"job {job_id} is {record.status} and cannot train: {record.error}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not start within {timeout_s:.0f} s (status {record.status})")
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def end(self) -> Any:
        """A fresh device end (head or tail) for this job, drawn from the device's own entropy."""
        from client_sdk.inference import build_end

        return build_end(self.end_meta(), self.bottom, self.artifact_dir, end_generator(self.privacy.seed))

    def end_meta(self) -> dict[str, Any]:
        """What the device's end is, saved with it (``client_sdk.inference`` rebuilds the model from it)."""
        return {
            "model": self.model,
            "task": self.task,
            "split_layer": self.split_layer,
            "tail_layers": self.spec.device_tail,
            "max_length": self.max_length,
            "labels": list(self.labels.names) if self.labels is not None else None,
            "lora_r": self.hp.lora_r,
            "lora_alpha": self.hp.lora_alpha,
            "hidden_size": int(self.bottom.hidden_size),
            "bottom_digest": self.manifest["digest"],
            "privacy": self.privacy.declared(),
        }

    def trainer(self, job_id: str) -> Any:
        """The device half of the job's training loop, posting through this session's client; its end
        is saved under ``state_dir`` (default ``$PRIVTUNE_STATE_DIR`` or ``~/.cache/privtune/jobs``)."""
        from client_sdk.end_state import EndStore
        from client_sdk.end_tasks import HeadTask, TailTask
        from client_sdk.training import DeviceTrainer, WorkerWait

        store = EndStore(job_id, self.state_dir)
        self._keep_privacy(store)
        end = self.end()
        if self.task == "classification":
            task = HeadTask(end, self.privatizer, self.labels)
        else:
            task = TailTask(end, self.privatizer, self.tokenizer, self.max_length)
        store.save_meta(self.end_meta())
        return DeviceTrainer(
            job_id,
            lambda payload: self.client.fine_tuning.jobs.post_step(job_id, payload),
            task,
            self.train,
            self.hp.batch_size,
            optimizer=self.spec.optimizer,
            total_steps=self.total_steps,
            seed=self.seed,
            generator=self.privacy.generator(),
            store=store,
            validation=self.valid,
            report_metrics=self.report_metrics,
            float_dtype=self.wire_dtype,
            prefetch=not _on_this_machine(self.client.base_url),
            wait=WorkerWait(
                job_id,
                lambda: self.client.fine_tuning.jobs.retrieve(job_id).status,
                timeout_s=self.worker_wait_s,
                sleep=self.client.sleep,
            ),
        )

    def _keep_privacy(self, store: Any) -> None:
        """The first time a job trains, keep its fitted mechanism state (with the per-text noise secret)
        and its randomised labels with the job; a resumed job uses exactly those again, so the views it
        sends are the ones it sent before and each label keeps its one randomised value."""
        import json

        from client_sdk.privacy import load_state, save_state

        directory = store.directory / "privacy"
        labels_file = directory / "labels.json"
        if (directory / "state.json").is_file():
            self.privatizer.state = load_state(directory)
            if labels_file.is_file():
                saved = json.loads(labels_file.read_text())
                if len(saved) == len(self.train):
                    self.train = [replace(ex, label=label) for ex, label in zip(self.train, saved, strict=True)]
            return
        if self.privatizer.state is not None:
            save_state(self.privatizer.state, directory)
        if self.label_secret is not None:
            directory.mkdir(parents=True, exist_ok=True)
            labels_file.write_text(json.dumps([ex.label for ex in self.train]))

    def save_final(self, trainer: Any) -> None:
        """Keep the trained end and the fitted mechanism on the device, for inference with the model."""
        from client_sdk.privacy import save_state

        trainer.store.save_final(trainer.task.end.state(), self.end_meta())
        if self.privatizer.state is not None:
            save_state(self.privatizer.state, trainer.store.directory / "privacy")

    def metrics(self, trainer: Any, report: Any, before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
        """What the device measured, as ``FineTuneJob.metrics``."""
        out: dict[str, Any] = {
            "task": self.task,
            "validation_examples": len(self.valid),
            "bytes_sent": trainer.report.bytes_sent,
            "bytes_received": trainer.report.bytes_received,
            "samples_per_second": round(report.samples_per_second, 3),
            "validation_before": before,
            "validation_after": after,
            "validation_per_epoch": report.validation,
            "privacy": {**self.privacy.declared(), "record": self.privatizer.privacy_record()},
            "hyperparameters": asdict(self.hp),
        }
        if self.task == "classification":
            out["accuracy_before"] = before.get("valid_accuracy", float("nan"))
            out["accuracy_after"] = after.get("valid_accuracy", float("nan"))
        return out


def _read_dataset(dataset: Any, task: str, columns: dict[str, str | None]) -> tuple[list[Any], LabelMap | None]:
    """The examples of ``dataset`` for ``task`` and, for classification, the label map."""
    allowed = CLASSIFICATION_COLUMNS if task == "classification" else GENERATION_COLUMNS
    unknown = sorted(set(columns) - set(allowed))
    if unknown:
        raise TypeError(f"{unknown[0]} does not apply to task={task!r}; the column options are {list(allowed)}")
    if task == "generation":
        from client_sdk.generation_data import load_generation_examples

        return load_generation_examples(dataset, **columns), None
    if task != "classification":
        raise JobSpecError(f"task must be 'classification' or 'generation', got {task!r}", "task")
    examples = load_examples(dataset, **columns)
    return examples, LabelMap.fit(ex.label for ex in examples)


def _fit_text(example: Any) -> str:
    """The text the mechanism is fitted on (classification: the text; generation: the whole exchange)."""
    if hasattr(example, "text"):
        return example.text
    if example.messages:
        return " ".join(str(m.get("content", "")) for m in example.messages)
    return f"{example.prompt} {example.completion}"


def _secret(seed: int | None) -> str:
    """A 32-byte hex secret: from the OS entropy source, or derived from a fixed seed (experiments)."""
    import hashlib

    if seed is None:
        return secrets.token_hex(32)
    return hashlib.sha256(f"privtune-labels-{seed}".encode()).hexdigest()


def _on_this_machine(base_url: str) -> bool:
    """Whether the gateway (and so, likely, its workers) runs on this machine: then the device's
    background privatisation competes with the worker for the same cores and is slower, not faster
    (docs/BENCHMARKS.md, issue 9), so batches are privatised after each reply instead."""
    from urllib.parse import urlsplit

    from client_sdk._http import is_loopback

    return is_loopback(urlsplit(str(base_url)).hostname or "")


def end_generator(seed: int | None) -> Any:
    """The generator of the device end's initial weights: the OS entropy source unless the privacy
    config fixes a seed (experiments); never derived from anything the server knows."""
    import torch

    return torch.Generator().manual_seed(seed + 1 if seed is not None else secrets.randbits(63))
