"""What every attack shares: its result type, what the server observed, threat models and scoring.

Threat models (method.md section 7; the attacker always holds the bottom model and what the server saw):

- ``"naive"``: the paper's attacker. It does not know the perturbation and trains its models on
  *clean* representations of public text.
- ``"adaptive"``: Kerckhoffs' attacker. It knows the mechanism and its parameters, trains on public
  text passed through the *same* mechanism, and models the mechanism's deterministic part (clipping,
  the OPT-3 shift) and its noise distribution where the attack has a model of the observation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from client_sdk.audit import majority_rate
from client_sdk.privacy.token_classes import CLASS_NAMES, CONTENT, FUNCTION, PUNCTUATION

__all__ = [
    "THREAT_MODELS",
    "AttackResult",
    "AttackUnavailable",
    "Observation",
    "check_threat_models",
    "default_generator",
    "pooled",
    "token_result",
    "token_splits",
]

THREAT_MODELS: tuple[str, ...] = ("naive", "adaptive")


class AttackUnavailable(ValueError):
    """The attack cannot run on this observation/kit (e.g. no attributes, no gradients, no top model)."""


@dataclass(frozen=True)
class AttackResult:
    """One attack under one threat model.

    ``asr``: attack success rate in [0, 1] (top-1 token recovery, label or attribute accuracy);
    ``chance``: a majority guesser's rate on the same items; ``n``: number of scored items
    (tokens or texts); ``details``: attack-specific, JSON-able figures (settings, timing, coverage).
    """

    name: str
    asr: float
    chance: float
    threat_model: str
    n: int
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threat_model not in THREAT_MODELS:
            raise ValueError(f"threat_model must be one of {THREAT_MODELS}, got {self.threat_model!r}")
        if not (0.0 <= self.asr <= 1.0 and 0.0 <= self.chance <= 1.0):
            raise ValueError(f"asr and chance must lie in [0, 1], got {self.asr}, {self.chance}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the result."""
        return {"name": self.name, "asr": self.asr, "chance": self.chance, "threat_model": self.threat_model,
                "n": self.n, "details": dict(self.details)}  # fmt: skip


@dataclass(frozen=True)
class Observation:
    """What the server saw for N private texts, plus the truth used only for scoring.

    Seen by the attacks: ``hidden`` (N, T, d) the perturbed split-layer states as sent,
    ``attention_mask`` (N, T), and, when recorded, ``grad_output`` (N, d_out): the rows of
    dL/d(server output) the device returned. On the head-on-device protocol the server's output is
    the pooled representation, so d_out = d and each row is W^T (softmax(W r + b) - onehot(y)) / B
    for the device's private head W (C, d): dL/d(representation), scaled by 1 / (its step's batch
    size) as cross-entropy with mean reduction gives; ``grad_batch_size`` is that batch size (an int,
    or (N,) per row; the server knows it). ``num_labels``: the job's label count C (public in the job
    contract), None when unknown. ``views`` (K, N, T, d): every view of the same N texts the server
    received over the job (training epochs, validation, inference), view 0 equal to ``hidden``; None
    when only one was recorded. Scoring only (never read by an attack): ``input_ids`` (N, T),
    ``special_mask`` (N, T) True where a position is not scored (special tokens; padding is excluded
    through the mask too), ``attribute`` (N,) int private attribute, ``labels`` (N,) int task labels, ``exposure`` (N, T) bool:
    True where the victim's mechanism used its lowest noise level (the "exposed" tokens; all False for
    isotropic mechanisms), ``token_class`` (N, T) int: ``client_sdk.privacy.token_classes`` class of
    each token (content / function / punctuation / special).
    """

    hidden: torch.Tensor
    attention_mask: torch.Tensor
    input_ids: torch.Tensor
    special_mask: torch.Tensor
    attribute: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    grad_output: torch.Tensor | None = None
    grad_batch_size: int | torch.Tensor = 1
    num_labels: int | None = None
    views: torch.Tensor | None = None
    exposure: torch.Tensor | None = None
    token_class: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n, t = self.hidden.shape[:2]
        if self.hidden.dim() != 3:
            raise ValueError(f"hidden must be (N, T, d), got {tuple(self.hidden.shape)}")
        for name in ("attention_mask", "input_ids", "special_mask"):
            if tuple(getattr(self, name).shape) != (n, t):
                raise ValueError(f"{name} must be {(n, t)}, got {tuple(getattr(self, name).shape)}")
        for name in ("exposure", "token_class"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (n, t):
                raise ValueError(f"{name} must be {(n, t)}, got {tuple(value.shape)}")
        if self.views is not None and tuple(self.views.shape[1:]) != tuple(self.hidden.shape):
            raise ValueError(f"views must be (K, {n}, {t}, d), got {tuple(self.views.shape)}")
        for name in ("attribute", "labels", "grad_output"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != n:
                raise ValueError(f"{name} must have N={n} rows, got {tuple(value.shape)}")

    @property
    def n(self) -> int:
        return int(self.hidden.shape[0])

    @property
    def scored(self) -> torch.Tensor:
        """(N, T) bool: real, non-special positions (the tokens an inversion attack is scored on)."""
        return self.attention_mask.bool() & ~self.special_mask.bool()

    def per_sample_gradient(self) -> torch.Tensor:
        """(N, d_out) dL/d(server output) of each text on its own: ``grad_output`` times its step's batch size."""
        if self.grad_output is None:
            raise AttackUnavailable("the observation has no recorded gradients (grad_output)")
        size = torch.as_tensor(self.grad_batch_size, dtype=self.grad_output.dtype)
        return self.grad_output * (size.reshape(-1, 1) if size.dim() else size)

    def subset(self, index: torch.Tensor | Sequence[int]) -> Observation:
        """The observation restricted to rows ``index`` (same T)."""
        index = torch.as_tensor(index, dtype=torch.long)
        pick = lambda t: None if t is None else t[index]
        size = self.grad_batch_size
        if torch.is_tensor(size) and size.dim():
            size = size[index]
        return replace(
            self, hidden=self.hidden[index], attention_mask=self.attention_mask[index],
            input_ids=self.input_ids[index], special_mask=self.special_mask[index], attribute=pick(self.attribute),
            labels=pick(self.labels), grad_output=pick(self.grad_output), grad_batch_size=size,
            views=None if self.views is None else self.views[:, index], exposure=pick(self.exposure),
            token_class=pick(self.token_class),
        )  # fmt: skip

    def sample(self, max_rows: int | None, generator: torch.Generator) -> Observation:
        """At most ``max_rows`` random rows (all rows, in order, when ``max_rows`` is None or >= N)."""
        if max_rows is None or max_rows >= self.n:
            return self
        return self.subset(torch.randperm(self.n, generator=generator)[:max_rows].sort().values)


def check_threat_models(threat_models: str | Sequence[str]) -> tuple[str, ...]:
    """Normalise ``threat_models`` (a name or names) to a tuple; unknown names raise ``ValueError``."""
    models = (threat_models,) if isinstance(threat_models, str) else tuple(threat_models)
    bad = [m for m in models if m not in THREAT_MODELS]
    if bad or not models:
        raise ValueError(f"threat models must be among {THREAT_MODELS}, got {threat_models!r}")
    return models


def default_generator(generator: torch.Generator | None) -> torch.Generator:
    """``generator``, or a fresh one seeded 0 (attacks are reproducible by default)."""
    return generator if generator is not None else torch.Generator().manual_seed(0)


def pooled(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over the real tokens: (N, T, d) -> (N, d), float32."""
    w = attention_mask.to(hidden.device, torch.float32).unsqueeze(-1)  # (n, t, 1)
    return (hidden.float() * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def _rate(hits: torch.Tensor, truth: torch.Tensor) -> dict[str, Any]:
    """{"asr", "chance", "n"} of one group of scored tokens (asr and chance None when it is empty)."""
    n = int(hits.numel())
    if not n:
        return {"asr": None, "chance": None, "n": 0}
    return {"asr": round(float(hits.float().mean()), 6), "chance": round(majority_rate(truth), 6), "n": n}


def token_splits(hits: torch.Tensor, truth: torch.Tensor, observation: Observation) -> dict[str, Any]:
    """The token-class and exposure splits of per-token ``hits`` (n_scored,) with their ``truth`` ids,
    aligned with ``observation.scored``: ``by_class`` {content, function, punctuation: {asr, chance, n}}
    when the observation carries ``token_class``, ``by_exposure`` {exposed, buried} when it carries
    ``exposure`` (truth used for scoring only)."""
    scored = observation.scored
    out: dict[str, Any] = {}
    if observation.token_class is not None:
        cls = observation.token_class.to(hits.device)[scored.to(hits.device)]  # (n,)
        out["by_class"] = {
            CLASS_NAMES[c]: _rate(hits[cls == c], truth[cls == c]) for c in (CONTENT, FUNCTION, PUNCTUATION)
        }
    if observation.exposure is not None:
        exposed = observation.exposure.to(hits.device).bool()[scored.to(hits.device)]  # (n,)
        out["by_exposure"] = {
            "exposed": _rate(hits[exposed], truth[exposed]),
            "buried": _rate(hits[~exposed], truth[~exposed]),
        }
    return out


def token_result(
    name: str, threat_model: str, predicted: torch.Tensor, observation: Observation, details: dict[str, Any]
) -> AttackResult:
    """Score token predictions ``predicted`` (N, T) against the observation's scored tokens.

    ``details`` gains the token-class / exposure splits (``token_splits``) when the observation carries
    those truths, so every token attack reports them."""
    scored = observation.scored
    truth = observation.input_ids[scored]  # (n,)
    hits = predicted.to(truth.device)[scored] == truth
    asr = float(hits.float().mean()) if truth.numel() else 0.0
    details = {**details, **token_splits(hits, truth, observation)}
    return AttackResult(name, asr, majority_rate(truth), threat_model, int(truth.numel()), details)
