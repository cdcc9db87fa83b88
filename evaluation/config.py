"""The experiment config: everything that defines one privacy-utility experiment, and so its row key.

Promises: ``ExperimentConfig`` is frozen and validated on construction (no eta for the noise-free
mechanisms, hops only for OPT-3 mechanisms, a known attack budget); ``to_dict`` / ``from_dict``
round-trip through JSON; ``key()`` is a stable hash of the config and ``HARNESS_VERSION``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from client_sdk.privacy.table import MECHANISMS, mechanism_info

__all__ = [
    "ATTACK_BUDGETS",
    "HARNESS_VERSION",
    "NOISELESS",
    "OPT3_MECHANISMS",
    "ExperimentConfig",
    "config_fields",
]

HARNESS_VERSION = 5  # part of every key: bump when a change makes old rows incomparable (5: every view attacked)
NOISELESS = tuple(n for n in MECHANISMS if not mechanism_info(n).adds_noise)  # none, opt3, opt3_importance
OPT3_MECHANISMS = tuple(n for n in MECHANISMS if mechanism_info(n).uses_opt3)  # opt3, opt3_importance, privtune

#: keyword options per attack and budget (the attacks' own defaults otherwise). "quick" keeps
#: ``privtune eval --quick`` under 20 minutes on 2 cores: measured on minilm-l6 with the quick grid's
#: 64 attacked and 500 public texts (privtune eta 10), the attacks took 159 s per defended experiment at
#: the attacks' defaults, 95 s of it A0-context (its time cap, 45 s per threat model) and 29 s A0-opt;
#: with the caps below about 105 s (estimate).
ATTACK_BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {"A0-opt": {"max_sequences": 32}, "A1": {"max_sequences": 4}},
    "quick": {
        "A0-opt": {"max_sequences": 8, "steps": 20},
        "A0-context": {"max_seconds": 10.0},
        "A1": {"max_sequences": 2, "steps": 50},
    },
    "smoke": {  # tests only
        "A0-opt": {"max_sequences": 4, "steps": 5},
        "A0-context": {"max_seconds": 2.0, "max_epochs": 2},
        "A1": {"max_sequences": 2, "steps": 3},
    },
}


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

    Views: the attacks get every view of the attacked texts the server received, one per training
    epoch plus ``validation_views`` (the SDK's job evaluates before and after training: 2) and
    ``inference_views`` (private inference on the same texts after the job: 0 in the grids), sent as
    the device sends them (``evaluation.harness.server_view``). The SDK validates on a held-out split
    (and also at each epoch end), so these views are the case of a text the server receives again
    outside training (validated on, or inferred over, after being trained on); 2 mirrors the job's
    before / after evaluations. ``label_epsilon``: the device trains on labels randomised once per
    text (``PrivacyConfig(label_epsilon=...)``, ``client_sdk.privacy.label_dp``); attacks are scored
    against the true labels.
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
    validation_views: int = 2
    inference_views: int = 0
    label_epsilon: float | None = None

    def __post_init__(self) -> None:
        if self.label_epsilon is not None and not self.label_epsilon > 0:
            raise ValueError(f"label_epsilon must be > 0 or None, got {self.label_epsilon!r}")
        if self.mechanism in NOISELESS and self.eta is not None:
            raise ValueError(f"mechanism {self.mechanism!r} adds no noise: eta must be None")
        if self.hops is not None and self.mechanism not in OPT3_MECHANISMS:
            raise ValueError(f"hops applies to OPT-3 mechanisms {OPT3_MECHANISMS}, not {self.mechanism!r}")
        if self.attack_budget not in ATTACK_BUDGETS:
            raise ValueError(f"attack_budget must be one of {tuple(ATTACK_BUDGETS)}, got {self.attack_budget!r}")
        for name in ("validation_views", "inference_views"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
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
        """The same experiment with mechanism ``none`` and no label DP (plain split learning): the undefended row."""
        return replace(self, mechanism="none", eta=None, hops=None, params=(), noise_aware=None, label_epsilon=None)

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
        if self.label_epsilon is not None:
            parts.append(f"label_eps={self.label_epsilon:g}")
        defaults = ExperimentConfig.__dataclass_fields__
        for name in ("validation_views", "inference_views"):
            if getattr(self, name) != defaults[name].default:
                parts.append(f"{name}={getattr(self, name)}")
        return " ".join(parts)

    def views(self) -> int:
        """K, the number of views of each attacked text the server receives: epochs + validation + inference."""
        return self.epochs + self.validation_views + self.inference_views


def config_fields() -> tuple[str, ...]:
    """The field names of ``ExperimentConfig`` (for CLIs and reports)."""
    return tuple(f.name for f in fields(ExperimentConfig))
