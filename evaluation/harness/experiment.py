"""One experiment end to end: fit, train through the service's split code in-process, evaluate, attack.

Promises: ``run_experiment(config, resources)`` returns the experiment's ``ResultRow`` (see
``evaluation.rows``), deterministic for a config up to timing; it writes nothing but the prototype /
neighbour cache under ``resources.cache_dir``. ``train_and_observe`` is its first half (everything but
the attacks): the trained job and the server's view of the attacked texts (``Trained``).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from client_sdk.data import LabelMap
from evaluation.config import HARNESS_VERSION, ExperimentConfig
from evaluation.harness.resources import Resources, model_id
from evaluation.harness.server_view import (
    Observed,
    ServerView,
    attacked_examples,
    build_observation,
    last_steps,
    tracked_positions,
)
from evaluation.harness.suite import run_attacks
from evaluation.rows import DataSummary, Machine, NoiseSummary, ObservationSummary, ResultRow, Timing, Utility

__all__ = ["Trained", "machine", "now_iso", "run_experiment", "train_and_observe"]


def now_iso() -> str:
    """The current UTC time, ISO 8601, seconds."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def machine() -> Machine:
    """CPU, core count and torch threads of this machine (for the report)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return Machine(cpu=cpu, nproc=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__)


@dataclass
class Trained:
    """One trained job and what its server saw, before the attacks (``train_and_observe``).

    ``observed``: the server's view of the attacked texts (``Observed``: every view, the exposure and
    token-class truth); ``utility``: the row's utility figures; ``top``: the worker's ``TopTrainer``
    after training (close it when done); ``seconds``: wall time of fit / train / eval (the extra views
    count as eval).
    """

    config: ExperimentConfig
    data: Any
    labels: LabelMap
    privatizer: Any
    top: Any
    observed: Observed
    utility: Utility
    seconds: dict[str, float]
    started: float


def run_experiment(config: ExperimentConfig, resources: Resources) -> ResultRow:
    """Train, evaluate and attack one configuration; returns its result row.

    Promises: the row has ``key``, ``config``, ``utility`` (``accuracy`` through the perturbed path,
    ``accuracy_unperturbed_inference``, ``chance`` = majority share of the test labels), ``noise``
    (the measured noise-to-signal ratio of what was sent, the privacy record), ``attacks`` (one entry
    per attack and threat model: ``name``, ``threat_model``, ``asr``, ``chance``, ``n``, ``details``;
    ``asr`` None with ``skipped`` when an attack cannot run), ``observation`` (texts attacked, views per
    text and their sources, the exposed share), ``timing`` and ``machine``. Nothing is written but the
    prototype / neighbour cache under ``resources.cache_dir``.
    """
    trained = train_and_observe(config, resources)
    observed = trained.observed
    t0 = time.perf_counter()
    try:
        attacks = run_attacks(
            observed, config, resources, trained.data, trained.privatizer, trained.top.model, trained.labels
        )
    finally:
        trained.top.close()
    attack_s = time.perf_counter() - t0
    total_s = time.perf_counter() - trained.started
    seconds = trained.seconds
    return ResultRow(
        key=config.key(),
        label=config.label(),
        config=config,
        harness_version=HARNESS_VERSION,
        status="ok",
        utility=trained.utility,
        noise=NoiseSummary(ratio=observed.noise_ratio, privacy=_privacy(trained.privatizer)),
        attacks=tuple(attacks),
        observation=ObservationSummary(
            texts=observed.observation.n,
            attribute_values=observed.attribute_names,
            views=observed.views,
            view_sources=dict(observed.view_sources),
            exposed_share=None if observed.exposed_share is None else round(observed.exposed_share, 6),
        ),
        data=DataSummary.from_dict(trained.data.summary()),
        timing=Timing(
            fit_s=round(seconds["fit"], 2),
            train_s=round(seconds["train"], 2),
            eval_s=round(seconds["eval"], 2),
            attack_s=round(attack_s, 2),
            total_s=round(total_s, 2),
        ),
        machine=machine(),
        finished_at=now_iso(),
    )


def train_and_observe(config: ExperimentConfig, resources: Resources) -> Trained:
    """Fit, train through the service's split code, evaluate, and record the server's view (no attacks).

    Promises: the server receives, for the attacked texts, one view per epoch (training) plus
    ``config.validation_views`` inference requests of them (the first before training, as the SDK's
    job validates before and after, the others after) and ``config.inference_views`` after training,
    each sent by a device trainer with the job's privatizer (its own noise generator: the training
    draws do not depend on the view counts); all of them are in ``observed.observation.views``.
    With ``view_noise='per_text'`` the device's noise secret comes from the seeded fit (reproducible rows).
    """
    from client_sdk.end_tasks import HeadTask
    from client_sdk.jobspec import DeclaredPrivacy, LoraSpec, OptimizerSpec, PrivtuneMethod, step_shape
    from client_sdk.models.ends import ClassifierHead
    from client_sdk.privacy import get_mechanism
    from client_sdk.privatizer import Privatizer
    from worker.step_server import StepServer
    from worker.trainer import TopTrainer, TrainSpec

    started = time.perf_counter()
    data = resources.data(config)
    bottom, tokenizer = resources.bottom(config.model, config.split_layer)
    labels = LabelMap.fit(r.label for r in data.private)
    examples = [r.example() for r in data.private]
    if config.label_epsilon is not None:  # label DP: the device only ever uses the randomised labels
        examples = _randomized_labels(examples, labels, config)
    test = [r.example() for r in data.test if r.label in labels.names]  # a label the device never saw: dropped

    t0 = time.perf_counter()
    mechanism = get_mechanism(config.mechanism, **config.mechanism_params())
    privatizer = Privatizer(bottom, tokenizer, mechanism, max_length=config.max_length)
    plain = Privatizer(bottom, tokenizer, "none", max_length=config.max_length)
    if config.mechanism != "none":
        privatizer.fit(
            [ex.text for ex in examples],
            [labels.encode(ex.label) for ex in examples],
            cache_dir=resources.cache_dir / "neighbours",
            model_id=model_id(config.model, config.split_layer),
            generator=torch.Generator().manual_seed(config.seed),
            prototypes=resources.prototypes(config.model, config.split_layer),
        )
    fit_s = time.perf_counter() - t0

    per_epoch = -(-len(examples) // config.batch_size)
    total_steps = per_epoch * config.epochs
    watched = last_steps(len(examples), config, total_steps, per_epoch)
    attacked = attacked_examples(len(examples), config, watched)
    method = PrivtuneMethod(  # the job contract a service job would carry
        task="classification",
        num_labels=len(labels.names),
        split_layer=config.split_layer,
        max_tokens=config.max_length,
        batch_size=config.batch_size,
        n_epochs=config.epochs,
        total_steps=total_steps,
        lora=LoraSpec(r=config.lora_r, alpha=2 * config.lora_r),
        optimizer=OptimizerSpec(learning_rate=config.learning_rate),
        privacy=DeclaredPrivacy.from_config(mechanism.config),
        noise_aware=config.top_noise_aware(),
    )
    spec = TrainSpec(config.model, method, seed=config.seed)  # no server_head: the top returns (b, d)
    job_id = f"eval-{config.key()}"
    top = TopTrainer(spec)
    try:
        server = StepServer(top, step_shape(method, bottom.hidden_size), job_id)
        view = ServerView(server.handle, watched, tracked_positions(len(examples), config, total_steps, attacked))
        noise = torch.Generator().manual_seed(config.seed + 1)
        head = ClassifierHead(bottom.hidden_size, len(labels.names), torch.Generator().manual_seed(config.seed + 2))
        task = HeadTask(head, privatizer, labels)
        device = _device_trainer(job_id, view, task, examples, config, method, noise)
        # the extra views: the attacked texts sent again for validation / inference, as the device sends them
        probe = _device_trainer(job_id, view, task, [], config, method, torch.Generator().manual_seed(config.seed + 3))
        again = [examples[i] for i in attacked]
        t0 = time.perf_counter()
        if config.validation_views:
            _send_view(view, probe, again, "validation")  # the job validates before training
        views_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = device.train()
        train_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        for source, count in (("validation", config.validation_views - 1), ("inference", config.inference_views)):
            for _ in range(max(count, 0)):
                _send_view(view, probe, again, source)
        accuracy = device.evaluate(test)["valid_accuracy"]
        # the same trained top and head, fed unperturbed representations (nothing trains: infer requests only)
        unperturbed = _device_trainer(job_id, server.handle, HeadTask(head, plain, labels), [], config, method, None)
        accuracy_plain = unperturbed.evaluate(test)["valid_accuracy"]
        eval_s = time.perf_counter() - t0 + views_s
        majority = max(sum(ex.label == name for ex in test) for name in labels.names) / max(len(test), 1)
        observed = build_observation(view, data, config, privatizer, plain)
    except BaseException:
        top.close()
        raise
    last = report.losses[-per_epoch:]
    utility = Utility(
        accuracy=accuracy,
        accuracy_unperturbed_inference=accuracy_plain,
        chance=majority,
        n_test=len(test),
        last_epoch_loss=sum(last) / max(len(last), 1),
        steps=report.steps,
    )
    seconds = {"fit": fit_s, "train": train_s, "eval": eval_s}
    return Trained(config, data, labels, privatizer, top, observed, utility, seconds, started)


def _send_view(view: ServerView, probe: Any, examples: list[Any], source: str) -> None:
    """Send ``examples`` once more as inference requests (one view of them, recorded as ``source``)."""
    with view.capture(source):
        probe.evaluate(examples)


def _randomized_labels(examples: list[Any], labels: LabelMap, config: ExperimentConfig) -> list[Any]:
    """``examples`` with labels randomised once by randomised response at ``config.label_epsilon``."""
    import hashlib
    from dataclasses import replace as with_label

    from client_sdk.privacy.label_dp import randomized_response

    secret = hashlib.sha256(f"eval-labels-{config.seed}".encode()).hexdigest()
    noisy = randomized_response([labels.encode(ex.label) for ex in examples], [ex.text for ex in examples],
                                len(labels.names), config.label_epsilon, secret)  # fmt: skip
    return [with_label(ex, label=labels.names[i]) for ex, i in zip(examples, noisy, strict=True)]


def _device_trainer(
    job_id: str, post: Any, task: Any, examples: list[Any], config: ExperimentConfig, method: Any, noise: Any
) -> Any:
    """The device half as a service job runs it: the head trains with the job's optimiser and schedule;
    no device store (an experiment is not resumed) and no metrics on the wire."""
    from client_sdk.training import DeviceTrainer

    return DeviceTrainer(
        job_id, post, task, examples, config.batch_size, optimizer=method.optimizer,
        total_steps=int(method.total_steps), seed=config.seed, generator=noise, store=None, validation=(),
        report_metrics=False,
    )  # fmt: skip


def _privacy(privatizer: Any) -> dict[str, Any]:
    """The privacy record, reduced to JSON-able values."""
    record = privatizer.privacy_record()
    return json.loads(json.dumps(record, default=lambda o: o.tolist() if torch.is_tensor(o) else str(o)))
