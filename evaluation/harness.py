"""One privacy-utility experiment, trained through the service's own split code, in one process.

``run_experiment(config, resources)`` does, for one ``ExperimentConfig``:

1. load the dataset's private / public / test parts (``evaluation.data``);
2. fit a ``Privatizer`` (the device's audit point) on the private training texts and labels;
3. train with ``DeviceTrainer`` posting the real wire payloads to the worker's ``StepServer.handle``
   (``TopTrainer``: LoRA on the top blocks), i.e. the same code as a service job minus HTTP and
   Redis; every step privatizes its batch again, so each epoch sees fresh noise;
4. measure utility: test accuracy through the same perturbed path (private inference), and,
   labelled separately, with unperturbed representations at inference time;
5. record what the server observed in the final training steps (``ServerView``: the decoded
   payloads, i.e. perturbed hidden states as sent, in float16, and the returned ``grad_output``) for
   at least ``n_attack`` private texts (``last_steps``), and run the attacks on it under both threat
   models
   (``run_attacks`` below, on ``evaluation.attacks``).

The result is one JSON-able row. The undefended figures (the same attacks with mechanism ``none``)
are attached by ``evaluation.sweep.Runner``, which runs and caches the baseline row first.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from client_sdk import protocol, wire
from client_sdk.data import LabelMap, batch_indices
from client_sdk.privacy import MECHANISMS, mechanism_class
from evaluation.data import EvalData, load_eval_data

HARNESS_VERSION = 3  # part of every key: bump when a change makes old rows incomparable
NOISELESS = tuple(name for name in MECHANISMS if not mechanism_class(name).uses_noise)  # none, opt3, opt3_importance
OPT3_MECHANISMS = ("opt3", "opt3_importance", "privtune")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines one experiment (and so its key).

    ``eta`` is the d_chi privacy parameter of the noise mechanisms (``dchi``, ``dchi_importance``,
    ``privtune``); for ``gaussian`` it sets ``noise_multiplier = sqrt(2) / eta``, the same
    per-coordinate standard deviation as l1 d_chi noise at that eta (Delta = 2C for both), so all
    noise mechanisms share one axis. It must be None for ``none``/``opt3``/``opt3_importance``
    (no noise); None for a noise mechanism means its configured default. ``hops`` sets the OPT-3
    hop count n (OPT-3 mechanisms only). ``params`` are further mechanism options as sorted
    (name, value) pairs, e.g. (("metric", "l2"),). ``attack_budget`` ("full" | "quick" | "smoke", see
    ``ATTACK_BUDGETS``) sets the attacks' cost options. ``noise_aware``: the server's top model weights
    attention keys and the pool by each token's estimated precision (``TopModel``); None = what the
    SDK chooses, i.e. on exactly when the mechanism adds noise. ``n_attack`` private texts of the final steps are attacked.
    """

    dataset: str = "vader-movie"
    model: str = "minilm-l6"
    mechanism: str = "privtune"
    eta: float | None = None
    hops: int | None = None
    params: tuple[tuple[str, Any], ...] = ()
    split_layer: int = 3
    n_train: int = 2000
    n_public: int = 2000
    n_test: int = 1000
    n_attack: int = 256
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 5e-3
    lora_r: int = 8
    max_length: int = 64
    seed: int = 0
    attack_budget: str = "full"
    noise_aware: bool | None = None

    def __post_init__(self) -> None:
        if self.mechanism in NOISELESS and self.eta is not None:
            raise ValueError(f"mechanism {self.mechanism!r} adds no noise: eta must be None")
        if self.hops is not None and self.mechanism not in OPT3_MECHANISMS:
            raise ValueError(f"hops applies to OPT-3 mechanisms {OPT3_MECHANISMS}, not {self.mechanism!r}")
        if self.attack_budget not in ATTACK_BUDGETS:
            raise ValueError(f"attack_budget must be one of {tuple(ATTACK_BUDGETS)}, got {self.attack_budget!r}")
        object.__setattr__(self, "params", tuple(sorted(tuple(p) for p in self.params)))
        if self.eta is not None:
            object.__setattr__(self, "eta", float(self.eta))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; ``params`` as a dict. ``from_dict`` inverts it."""
        out = asdict(self)
        out["params"] = dict(self.params)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        """Inverse of ``to_dict`` (unknown keys raise ``TypeError``)."""
        data = dict(data)
        data["params"] = tuple(sorted((data.get("params") or {}).items()))
        return cls(**data)

    def key(self) -> str:
        """Stable 16-hex-digit hash of the config and the harness version (the JSONL row key)."""
        blob = json.dumps({"v": HARNESS_VERSION, **self.to_dict()}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def baseline(self) -> ExperimentConfig:
        """The same experiment with mechanism ``none`` (plain split learning): the undefended row."""
        return replace(self, mechanism="none", eta=None, hops=None, params=(), noise_aware=None)

    def top_noise_aware(self) -> bool:
        """Whether the top model is noise-aware (``noise_aware``, or the SDK's choice when None)."""
        return self.mechanism not in NOISELESS if self.noise_aware is None else bool(self.noise_aware)

    def mechanism_params(self) -> dict[str, Any]:
        """Keyword arguments for ``client_sdk.privacy.get_mechanism(self.mechanism, ...)``."""
        params = dict(self.params)
        if self.eta is not None:
            if self.mechanism == "gaussian":
                params["noise_multiplier"] = math.sqrt(2.0) / self.eta
            else:
                params["eta"] = self.eta
        if self.hops is not None:
            params["hops"] = self.hops
        return params

    def label(self) -> str:
        """Short human-readable name, e.g. ``privtune eta=20 l=3 hops=3``."""
        parts = [self.mechanism]
        if self.eta is not None:
            parts.append(f"eta={self.eta:g}")
        parts.append(f"l={self.split_layer}")
        if self.hops is not None:
            parts.append(f"hops={self.hops}")
        parts += [f"{k}={v}" for k, v in self.params]
        if self.noise_aware is not None:
            parts.append(f"noise_aware={self.noise_aware}")
        return " ".join(parts)


def config_fields() -> tuple[str, ...]:
    """The field names of ``ExperimentConfig`` (for CLIs and reports)."""
    return tuple(f.name for f in fields(ExperimentConfig))


# ---------------------------------------------------------------- shared, cached resources


@dataclass
class Resources:
    """Per-process caches: bottom + tokenizer and token prototypes per (model, l), datasets.

    Prototypes are also cached on disk under ``cache_dir`` (with the neighbour index), so a resumed
    sweep does not recompute them. ``data_dir`` is passed to ``evaluation.data``.
    """

    cache_dir: Path
    data_dir: str | None = None
    _bottoms: dict[tuple[str, int], tuple[Any, Any]] = field(default_factory=dict)
    _data: dict[tuple, EvalData] = field(default_factory=dict)
    _kit_entries: dict[str, Any] = field(default_factory=dict)  # attack-kit entries shared across experiments

    def bottom(self, model: str, split_layer: int) -> tuple[Any, Any]:
        """(bottom, tokenizer) for ``model`` cut after ``split_layer``; ``token_prototypes`` memoised."""
        key = (model, split_layer)
        if key not in self._bottoms:
            from client_sdk.models import build_bottom

            bottom, tokenizer = build_bottom(model, split_layer)
            prototypes = self._prototypes(bottom, model, split_layer)
            bottom.token_prototypes = lambda *args, **kwargs: prototypes  # the fit reuses them
            self._bottoms = {key: (bottom, tokenizer)}  # keep one bottom at a time (memory)
        return self._bottoms[key]

    def _prototypes(self, bottom: Any, model: str, split_layer: int) -> torch.Tensor:
        from safetensors.torch import load_file, save_file

        name = hashlib.sha256(f"{model}:{split_layer}".encode()).hexdigest()[:12]
        path = self.cache_dir / f"prototypes-{name}.safetensors"
        if path.exists():
            return load_file(str(path))["prototypes"]
        prototypes = bottom.token_prototypes().detach().float().cpu().contiguous()  # (|V|, d)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        save_file({"prototypes": prototypes}, str(path))
        return prototypes

    def kit_entries(self, keys: dict[str, str]) -> dict[str, Any]:
        """Cached attack-kit entries for ``{entry name: fingerprint}`` (those present)."""
        return {name: self._kit_entries[fp] for name, fp in keys.items() if fp in self._kit_entries}

    def keep_kit_entries(self, keys: dict[str, str], entries: dict[str, Any], limit: int = 6) -> None:
        """Remember ``entries`` under their fingerprints (the ``limit`` most recent are kept: memory)."""
        for name, fp in keys.items():
            if name in entries:
                self._kit_entries.pop(fp, None)
                self._kit_entries[fp] = entries[name]
        while len(self._kit_entries) > limit:
            self._kit_entries.pop(next(iter(self._kit_entries)))

    def data(self, config: ExperimentConfig) -> EvalData:
        """The dataset parts for ``config`` (cached per dataset, sizes and seed)."""
        key = (config.dataset, config.n_train, config.n_public, config.n_test, config.seed)
        if key not in self._data:
            self._data[key] = load_eval_data(*key[:4], seed=config.seed, data_dir=self.data_dir)
        return self._data[key]


def model_id(model: str, split_layer: int) -> str:
    """The id the neighbour cache is keyed by (a path is reduced to a short hash)."""
    return model if "/" not in model else "path-" + hashlib.sha256(model.encode()).hexdigest()[:12]


# ---------------------------------------------------------------- what the server sees


class ServerView:
    """A ``post`` wrapper that keeps what the server received on chosen steps, then forwards.

    ``steps``: the training steps whose activations are kept; their ``grad_output`` (which arrives
    with the next step's payload, or with the final flush) is kept too. Payloads are decoded with
    the same codec the worker uses, so the tensors are exactly what the server saw (float16).
    """

    def __init__(self, post: Any, steps: set[int]):
        self.post, self.steps = post, steps
        self.hidden: dict[int, torch.Tensor] = {}
        self.mask: dict[int, torch.Tensor] = {}
        self.grad: dict[int, torch.Tensor] = {}

    def __call__(self, payload: bytes) -> bytes:
        header, tensors = wire.decode(payload)
        if header.kind == "step":
            if header.step in self.steps and protocol.HIDDEN in tensors:
                self.hidden[header.step] = tensors[protocol.HIDDEN].float()
                self.mask[header.step] = tensors[protocol.ATTENTION_MASK].long()
            if header.step - 1 in self.steps and protocol.GRAD_OUTPUT in tensors:
                self.grad[header.step - 1] = tensors[protocol.GRAD_OUTPUT].float()
        return self.post(payload)


def _pad_cat(chunks: list[torch.Tensor], length: int, value: float = 0) -> torch.Tensor:
    """Concatenate (b_i, t_i, ...) chunks along dim 0, right-padding dim 1 to ``length``."""
    out = []
    for c in chunks:
        pad = [0, 0] * (c.dim() - 2) + [0, length - c.shape[1]]
        out.append(torch.nn.functional.pad(c, pad, value=value))
    return torch.cat(out)


def now_iso() -> str:
    """The current UTC time, ISO 8601, seconds."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def machine() -> dict[str, Any]:
    """CPU, core count and torch threads of this machine (for the report)."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "nproc": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


# ---------------------------------------------------------------- the experiment


def last_steps(n_examples: int, config: ExperimentConfig, total_steps: int, per_epoch: int) -> set[int]:
    """The final training steps whose batches hold at least ``n_attack`` texts (within the last epoch).

    The last steps are watched because the gradient attacks (A1, A4) use the server's top model after
    training: with the linear schedule the learning rate has decayed to ~0 there, so that model is,
    up to a few tiny updates, the one that produced the recorded gradients.
    """
    watched, rows, step = set(), 0, total_steps
    while rows < config.n_attack and step > total_steps - per_epoch:
        watched.add(step)
        rows += len(batch_indices(n_examples, config.batch_size, step, config.seed))
        step -= 1
    return watched


def run_experiment(config: ExperimentConfig, resources: Resources) -> dict[str, Any]:
    """Train, evaluate and attack one configuration; returns its result row (JSON-able).

    Promises: the row has ``key``, ``config``, ``utility`` (``accuracy`` through the perturbed path,
    ``accuracy_unperturbed_inference``, ``chance`` = majority share of the test labels), ``noise``
    (the measured noise-to-signal ratio of what was sent, the privacy record), ``attacks`` (one entry
    per attack and threat model: ``name``, ``threat_model``, ``asr``, ``chance``, ``n``, ``details``;
    ``asr`` None with ``skipped`` when an attack cannot run), ``timing`` and ``machine``. Nothing is
    written but the prototype / neighbour cache under ``resources.cache_dir``.
    """
    from client_sdk.privacy import get_mechanism
    from client_sdk.privatizer import Privatizer
    from client_sdk.training import DeviceTrainer
    from worker.step_server import StepServer
    from worker.trainer import TopTrainer, TrainSpec

    started = time.perf_counter()
    timing: dict[str, float] = {}
    data = resources.data(config)
    bottom, tokenizer = resources.bottom(config.model, config.split_layer)
    labels = LabelMap.fit(r.label for r in data.private)
    examples = [r.example() for r in data.private]
    test = [r.example() for r in data.test if r.label in labels.names]  # a label the device never saw: dropped

    t0 = time.perf_counter()
    mechanism = get_mechanism(config.mechanism, **config.mechanism_params())
    privatizer = Privatizer(bottom, tokenizer, mechanism, max_length=config.max_length)
    plain = Privatizer(bottom, tokenizer, "none", max_length=config.max_length)
    if config.mechanism != "none":
        privatizer.fit([ex.text for ex in examples], [labels.encode(ex.label) for ex in examples],
                       cache_dir=resources.cache_dir / "neighbours",
                       model_id=model_id(config.model, config.split_layer),
                       generator=torch.Generator().manual_seed(config.seed))  # fmt: skip
    timing["fit_s"] = time.perf_counter() - t0

    per_epoch = -(-len(examples) // config.batch_size)
    total_steps = per_epoch * config.epochs
    watched = last_steps(len(examples), config, total_steps, per_epoch)
    spec = TrainSpec(
        model=config.model, split_layer=config.split_layer, task="classification", num_labels=len(labels.names),
        total_steps=total_steps, lora_r=config.lora_r, lora_alpha=2 * config.lora_r,
        learning_rate=config.learning_rate, seed=config.seed, noise_aware=config.top_noise_aware(),
    )  # fmt: skip
    job_id = f"eval-{config.key()}"
    top = TopTrainer(spec)
    shape = protocol.StepShape(bottom.hidden_size, "classification", len(labels.names), 1024, config.max_length)
    server = StepServer(top, shape, job_id)
    view = ServerView(server.handle, watched)
    noise = torch.Generator().manual_seed(config.seed + 1)
    device = DeviceTrainer(job_id, view, privatizer, labels, examples, config.batch_size, config.seed, noise)
    t0 = time.perf_counter()
    report = device.train(total_steps)
    timing["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    accuracy = device.evaluate(test)
    accuracy_plain = DeviceTrainer(job_id, server.handle, plain, labels, examples, config.batch_size).evaluate(test)
    timing["eval_s"] = time.perf_counter() - t0
    majority = max(sum(ex.label == name for ex in test) for name in labels.names) / max(len(test), 1)

    observed = build_observation(view, data, config, privatizer, plain)
    t0 = time.perf_counter()
    attacks = run_attacks(observed, config, resources, data, privatizer, top.model, labels)
    timing["attack_s"] = time.perf_counter() - t0
    top.close()
    timing["total_s"] = time.perf_counter() - started
    last = report.losses[-per_epoch:]
    return {
        "key": config.key(),
        "label": config.label(),
        "config": config.to_dict(),
        "harness_version": HARNESS_VERSION,
        "status": "ok",
        "utility": {
            "accuracy": accuracy,
            "accuracy_unperturbed_inference": accuracy_plain,
            "chance": majority,
            "n_test": len(test),
            "last_epoch_loss": sum(last) / max(len(last), 1),
            "steps": report.steps,
        },
        "noise": {"ratio": observed.noise_ratio, "privacy": _privacy(privatizer)},
        "attacks": attacks,
        "observation": {"texts": observed.observation.n, "attribute_values": list(observed.attribute_names)},
        "data": data.summary(),
        "timing": {k: round(v, 2) for k, v in timing.items()},
        "machine": machine(),
        "finished_at": now_iso(),
    }


def _privacy(privatizer: Any) -> dict[str, Any]:
    """The privacy record, reduced to JSON-able values."""
    record = privatizer.privacy_record()
    return json.loads(json.dumps(record, default=lambda o: o.tolist() if torch.is_tensor(o) else str(o)))


@dataclass
class Observed:
    """The server's view of the watched texts as an attack ``Observation``, plus diagnostics.

    ``observation.hidden`` is what was sent (float16 on the wire), ``grad_output`` the dL/d(logits)
    the device returned for those rows; input ids, attributes and labels are there for scoring only.
    ``noise_ratio``: mean over real, non-special tokens of ||sent - clean|| / ||clean||.
    """

    observation: Any
    texts: list[str]
    attribute_names: tuple[str, ...]
    noise_ratio: float


@torch.no_grad()
def build_observation(
    view: ServerView, data: EvalData, config: ExperimentConfig, privatizer: Any, plain: Any
) -> Observed:
    """Assemble the watched steps into one ``Observation`` (rows in step order, at most ``n_attack``)."""
    from evaluation.attacks.base import Observation

    examples = [r.example() for r in data.private]
    labels = LabelMap.fit(ex.label for ex in examples)
    attribute_names = tuple(sorted({str(r.attribute) for r in (*data.private, *data.public)}))
    hidden, masks, ids, clean, grads, sizes, label_ids, attributes, texts = ([] for _ in range(9))
    for step in sorted(view.hidden):
        idx = batch_indices(len(examples), config.batch_size, step, config.seed)
        batch_texts = [examples[i].text for i in idx]
        input_ids, mask = privatizer.encode(batch_texts)  # the same tokenisation the device used
        if not torch.equal(mask, view.mask[step]):
            raise RuntimeError(f"step {step}: the re-encoded batch does not match what was sent")
        hidden.append(view.hidden[step])
        masks.append(mask)
        ids.append(input_ids)
        clean.append(plain.privatize(batch_texts)["hidden"])  # (b, t, d) unperturbed bottom output
        grads.append(view.grad.get(step))
        sizes += [len(idx)] * len(idx)
        label_ids += [labels.encode(examples[i].label) for i in idx]
        attributes += [attribute_names.index(str(data.private[i].attribute)) for i in idx]
        texts += batch_texts
    length = max(m.shape[1] for m in masks)
    n = min(config.n_attack, len(texts))
    input_ids, mask = _pad_cat(ids, length)[:n], _pad_cat(masks, length)[:n]
    special = torch.isin(input_ids, torch.tensor(privatizer.special_ids, dtype=input_ids.dtype)) | ~mask.bool()
    sent, unperturbed = _pad_cat(hidden, length)[:n], _pad_cat(clean, length)[:n]
    real = ~special
    ratio = ((sent - unperturbed).norm(dim=-1) / unperturbed.norm(dim=-1).clamp_min(1e-8))[real]
    has_grad = all(g is not None for g in grads)
    observation = Observation(
        hidden=sent, attention_mask=mask, input_ids=input_ids, special_mask=special,
        attribute=torch.tensor(attributes[:n]) if data.has_attribute else None,
        labels=torch.tensor(label_ids[:n]), grad_output=torch.cat(grads)[:n] if has_grad else None,
        grad_batch_size=torch.tensor(sizes[:n]),
    )  # fmt: skip
    mean_ratio = float(ratio.mean()) if ratio.numel() else float("nan")
    return Observed(observation, texts[:n], attribute_names, mean_ratio)


# ---------------------------------------------------------------- the attacks

#: keyword options per attack and budget (the attacks' own defaults otherwise)
ATTACK_BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {"A0-opt": {"max_sequences": 32}, "A1": {"max_sequences": 4}},
    "quick": {"A0-opt": {"max_sequences": 8}, "A1": {"max_sequences": 2, "steps": 50}},
    "smoke": {"A0-opt": {"max_sequences": 4, "steps": 5}, "A1": {"max_sequences": 2, "steps": 3}},  # tests only
}


NOISE_FIELDS = ("eta", "noise_multiplier")


def kit_fingerprints(config: ExperimentConfig, privatizer: Any, public_texts: list[str]) -> dict[str, str]:
    """Fingerprints of the attack-kit entries that do not depend on the noise draw or level.

    ``naive``: clean public representations (model, split, public texts, tokenisation).
    ``expected`` / ``prototypes_adaptive``: the mechanism's noiseless output on public text and on lone
    prototypes, which depend on its config without the noise level and on the fitted state (clip
    norm, OPT-3 constraints, centroids, importance table), not on eta. Equal fingerprints, equal values
    (up to the 1e-12-scaled noise of ``client_sdk.audit.noiseless_mechanism``).
    """
    base = hashlib.sha256()
    base.update(
        json.dumps([config.model, config.split_layer, config.max_length, config.batch_size, config.seed]).encode()
    )
    for text in public_texts:
        base.update(text.encode() + b"\0")
    naive = base.hexdigest()
    mech = hashlib.sha256(naive.encode())
    settings = {k: v for k, v in privatizer.mechanism.config.to_dict().items() if k not in NOISE_FIELDS}
    mech.update(json.dumps(settings, sort_keys=True, default=str).encode())
    state = privatizer.state
    if state is not None:
        mech.update(json.dumps(state.summary(), sort_keys=True, default=str).encode())
        for name in ("mu", "centroids", "centroid_labels", "importance_table"):
            value = getattr(state, name, None)
            if torch.is_tensor(value):
                mech.update(value.detach().cpu().contiguous().numpy().tobytes())
    fp = mech.hexdigest()
    return {"naive": "naive:" + naive, "expected": "expected:" + fp, "prototypes_adaptive": "protos:" + fp}


def run_attacks(
    observed: Observed,
    config: ExperimentConfig,
    resources: Resources,
    data: EvalData,
    privatizer: Any,
    top: torch.nn.Module,
    labels: LabelMap,
) -> list[dict[str, Any]]:
    """Every attack of ``evaluation.attacks.ATTACKS`` under both threat models; one JSON-able dict each.

    The kit (``AttackKit.from_privatizer``) holds the victim's fitted privatizer (Kerckhoffs: the
    adaptive attacker knows the mechanism, its parameters and fitted state), the public texts with
    their attributes and task labels, the cached prototypes and the server's top model after
    training. With mechanism ``none`` both threat models see the same thing, so "adaptive" copies
    "naive". An attack that cannot run (e.g. attribute attacks without an attribute) gets ``asr``
    None and ``skipped``. ``details["harness_seconds"]``: wall time of the attack (both threat models).
    """
    from evaluation.attacks import ATTACKS, AttackKit, AttackUnavailable
    from evaluation.attacks import run_attacks as run_suite

    names = observed.attribute_names
    public = [r for r in data.public if r.label in labels.names]
    kit = AttackKit.from_privatizer(
        privatizer, [r.text for r in public],
        public_attributes=[names.index(str(r.attribute)) for r in public] if data.has_attribute else None,
        public_labels=[labels.encode(r.label) for r in public], top=top,
        prototypes=resources.bottom(config.model, config.split_layer)[0].token_prototypes(),
        seed=config.seed, batch_size=config.batch_size,
    )  # fmt: skip
    shared = kit_fingerprints(config, privatizer, [r.text for r in public])
    cache = getattr(kit, "_cache", None)  # the kit's own memo (evaluation.attacks.kit); reused if present
    if isinstance(cache, dict):
        cache.update(resources.kit_entries(shared))
    threat_models = ("naive",) if config.mechanism == "none" else ("naive", "adaptive")
    options = ATTACK_BUDGETS.get(config.attack_budget, {})
    out: list[dict[str, Any]] = []
    for name in ATTACKS:
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(config.seed)
        try:
            suite = run_suite(observed.observation, kit, [name], threat_models, generator, options, False)
            results = [r.to_dict() for r in suite]
        except AttackUnavailable as exc:
            results = [{"name": name, "threat_model": m, "asr": None, "chance": None, "n": 0, "details": {},
                        "skipped": str(exc)} for m in threat_models]  # fmt: skip
        seconds = round(time.perf_counter() - started, 2)
        for r in results:
            r["details"]["harness_seconds"] = seconds
        if config.mechanism == "none":
            results += [{**r, "threat_model": "adaptive", "details": {**r["details"], "same_as": "naive"}}
                        for r in results if r["threat_model"] == "naive"]  # fmt: skip
        out += results
    if isinstance(cache, dict):
        resources.keep_kit_entries(shared, cache)
    return out
