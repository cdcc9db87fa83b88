"""On-device privacy audit: run the cheap inversion attacks on your own data before anything is sent.

``privacy_audit(privatizer, texts)`` measures how many of your tokens an attacker who holds the bottom
model recovers from what the SDK would send (``Privatizer.privatize``), with two attacks:

- **A2, nearest prototype** (``nearest_prototype``): token = argmax_v cos(h~_i, p_v) over the bottom's
  split-layer token prototypes p_v (the whole vocabulary).
- **A0, learned inversion, adaptive** (``TokenDiscriminant``): a linear discriminant (class-conditional
  Gaussians with one shared, shrunk covariance; method.md section 8) fitted on *public* text passed
  through the same mechanism with the same parameters (Kerckhoffs). Its classes are the tokens seen in
  the public text; other tokens are never predicted (``coverage`` says how many scored tokens could be).

Both attacks score top-1 recovery over real, non-special tokens; ``chance`` is the rate of the most
frequent scored token (a majority guesser). The report also gives the *undefended* ASR (the same
attacks on the clean representations) and ``max_asr`` over the attacks.

``search_eta(factory, texts, target_asr)`` audits privatizers built for a grid of eta values and picks
the largest eta (least noise) whose audited ``max_asr`` meets the target.

The evaluation package reuses ``nearest_prototype``, ``prototype_shortlist`` and ``TokenDiscriminant``;
this module depends only on torch and the SDK.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_ETAS",
    "AttackScore",
    "AuditReport",
    "EtaPoint",
    "EtaSearchResult",
    "TokenDiscriminant",
    "majority_rate",
    "nearest_prototype",
    "privacy_audit",
    "prototype_shortlist",
    "search_eta",
]

DEFAULT_ETAS: tuple[float, ...] = tuple(2.0**k for k in range(11))
"""Geometric eta grid 1, 2, 4, ..., 1024: with the l1 metric the noise-to-signal norm ratio is about
2.8 sqrt(d) / eta (d=384: 55 at eta=1, 0.05 at eta=1024), with l2 about 2 d / eta."""


# ---------------------------------------------------------------- attack math (shared with evaluation)


def majority_rate(values: torch.Tensor) -> float:
    """Chance level of a majority guesser: the frequency of the most common value in ``values`` (0 if empty)."""
    values = values.reshape(-1)
    if values.numel() == 0:
        return 0.0
    return float(torch.unique(values, return_counts=True)[1].max()) / values.numel()


def prototype_shortlist(
    hidden: torch.Tensor, prototypes: torch.Tensor, k: int, *, block_size: int = 4096
) -> torch.Tensor:
    """The ``k`` token ids whose prototypes are most cosine-similar to each row of ``hidden`` (n, d): (n, k), best first."""
    protos = F.normalize(prototypes.detach().float(), dim=-1).to(hidden.device)  # (V, d)
    k = min(k, protos.shape[0])
    out = []
    for start in range(0, hidden.shape[0], block_size):
        rows = F.normalize(hidden[start : start + block_size].detach().float(), dim=-1)  # (b, d)
        out.append((rows @ protos.T).topk(k, dim=1).indices)  # (b, k)
    return torch.cat(out) if out else torch.empty(0, k, dtype=torch.long, device=hidden.device)


def nearest_prototype(hidden: torch.Tensor, prototypes: torch.Tensor, *, block_size: int = 4096) -> torch.Tensor:
    """A2: argmax_v cos(h_i, p_v) for each row of ``hidden`` (n, d) over ``prototypes`` (V, d): token ids (n,)."""
    return prototype_shortlist(hidden, prototypes, 1, block_size=block_size)[:, 0]


@dataclass(frozen=True)
class TokenDiscriminant:
    """Learned inversion model: linear discriminant over the tokens seen in training.

    Each token class c is a Gaussian N(mu_c, S) with one pooled within-class covariance S, shrunk
    toward a scaled identity: S' = (1 - shrinkage) S + shrinkage * (tr S / d) I. Prediction is the
    maximum posterior class: argmax_c x^T S'^-1 mu_c - mu_c^T S'^-1 mu_c / 2 + log prior_c.
    ``classes`` (C,) token ids, ``weight`` (d, C), ``bias`` (C,).
    """

    classes: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    shrinkage: float

    @classmethod
    def fit(
        cls, hidden: torch.Tensor, token_ids: torch.Tensor, *, shrinkage: float = 0.1, prior: str = "empirical"
    ) -> TokenDiscriminant:
        """Fit on representations ``hidden`` (n, d) labelled with their ``token_ids`` (n,).

        ``prior``: 'empirical' (class frequencies: the Bayes classifier under the model) or 'uniform'.
        """
        if hidden.shape[0] == 0 or hidden.shape[0] != token_ids.shape[0]:
            raise ValueError(f"need n >= 1 rows with one token id each, got {tuple(hidden.shape)} and {tuple(token_ids.shape)}")
        if not 0.0 <= shrinkage <= 1.0 or prior not in ("empirical", "uniform"):
            raise ValueError(f"shrinkage must be in [0, 1] and prior 'empirical' or 'uniform', got {shrinkage}, {prior!r}")
        x = hidden.detach().double()  # (n, d)
        classes, inverse, counts = torch.unique(token_ids.reshape(-1), return_inverse=True, return_counts=True)
        means = torch.zeros(classes.shape[0], x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, inverse, x)
        means = means / counts.unsqueeze(1)  # (C, d)
        centred = x - means[inverse]  # (n, d)
        cov = centred.T @ centred / x.shape[0]  # (d, d) pooled within-class
        scale = float(torch.trace(cov)) / x.shape[1]
        scale = scale if scale > 0 else float(x.pow(2).mean()) or 1.0  # all classes singletons: isotropic
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        cov = (1.0 - shrinkage) * cov + (shrinkage * scale) * eye + 1e-6 * scale * eye
        chol = torch.linalg.cholesky(cov)
        weight = torch.cholesky_solve(means.T, chol)  # (d, C) = S'^-1 mu_c
        log_prior = torch.log(counts.double() / counts.sum()) if prior == "empirical" else torch.zeros_like(weight[0])
        bias = -0.5 * (means.T * weight).sum(dim=0) + log_prior.to(x.device)  # (C,)
        return cls(classes, weight.float(), bias.float(), float(shrinkage))

    def predict(self, hidden: torch.Tensor, *, block_size: int = 8192) -> torch.Tensor:
        """The most probable token id for each row of ``hidden`` (n, d): (n,)."""
        weight, bias = self.weight.to(hidden.device), self.bias.to(hidden.device)
        out = [
            self.classes.to(hidden.device)[(hidden[s : s + block_size].float() @ weight + bias).argmax(dim=1)]
            for s in range(0, hidden.shape[0], block_size)
        ]  # each (b,)
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=hidden.device)

    def coverage(self, token_ids: torch.Tensor) -> float:
        """Fraction of ``token_ids`` that are classes of this model (an upper bound on its recovery rate)."""
        if token_ids.numel() == 0:
            return 0.0
        return float(torch.isin(token_ids.reshape(-1), self.classes.to(token_ids.device)).float().mean())


# ---------------------------------------------------------------- the audit


@dataclass(frozen=True)
class AttackScore:
    """One attack's result in an audit: ASR on what would be sent, chance level, ASR without the mechanism."""

    name: str
    asr: float
    chance: float
    undefended_asr: float
    n: int
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditReport:
    """What ``privacy_audit`` measured. ``max_asr``: the strongest attack's ASR on the perturbed data."""

    mechanism: dict[str, Any]
    attacks: tuple[AttackScore, ...]
    n_texts: int
    n_public_texts: int
    public_source: str

    @property
    def max_asr(self) -> float:
        return max(a.asr for a in self.attacks)

    @property
    def undefended_max_asr(self) -> float:
        return max(a.undefended_asr for a in self.attacks)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the report (with ``max_asr`` and ``undefended_max_asr``)."""
        out = asdict(self)
        out.update(max_asr=self.max_asr, undefended_max_asr=self.undefended_max_asr)
        return out


def _default_generator(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


@torch.no_grad()
def _token_rows(
    privatizer: Any, texts: Sequence[str], generator: torch.Generator, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clean (n, d), sent (n, d), token ids (n,)) of the real, non-special tokens of ``texts``."""
    bottom = privatizer.bottom
    first = next(iter(bottom.parameters()), None) if hasattr(bottom, "parameters") else None
    device = first.device if first is not None else torch.device("cpu")
    special = torch.tensor(privatizer.special_ids, dtype=torch.long)
    clean, sent, ids = [], [], []
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        input_ids, mask = privatizer.encode(batch)  # (b, t)
        hidden = bottom(input_ids.to(device), mask.to(device)).hidden.float().cpu()  # (b, t, d)
        out = privatizer.privatize(batch, generator=generator)["hidden"]  # (b, t, d): what is sent
        if out.shape[:2] != input_ids.shape:
            raise RuntimeError(f"privatize returned {tuple(out.shape)} for token ids {tuple(input_ids.shape)}")
        keep = mask.bool() & ~torch.isin(input_ids, special)  # (b, t)
        clean.append(hidden[keep])
        sent.append(out[keep])
        ids.append(input_ids[keep])
    d = int(getattr(bottom, "hidden_size", 0))
    if not ids:
        return torch.empty(0, d), torch.empty(0, d), torch.empty(0, dtype=torch.long)
    return torch.cat(clean), torch.cat(sent), torch.cat(ids)


def _split(
    texts: Sequence[str], public_texts: Sequence[str] | None, sample_size: int, public_size: int, g: torch.Generator
) -> tuple[list[str], list[str], str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    if public_texts is None:
        if len(texts) < 2:
            raise ValueError("the audit needs at least 2 texts (half are held out as the attacker's public text)")
        order = torch.randperm(len(texts), generator=g).tolist()
        half = len(texts) // 2
        public, private, source = [texts[i] for i in order[:half]], [texts[i] for i in order[half:]], "held-out half"
    else:
        public, private, source = list(public_texts), texts, "given"
        order = torch.randperm(len(private), generator=g).tolist()
        private = [private[i] for i in order]
        if not public or not private:
            raise ValueError("the audit needs non-empty texts and public_texts")
    return private[:sample_size], public[:public_size], source


def _prototypes(privatizer: Any, prototypes: torch.Tensor | None) -> torch.Tensor:
    if prototypes is not None:
        return prototypes
    state = getattr(privatizer, "state", None)
    unit = getattr(state, "proto_unit", None)  # OPT-3 mechanisms keep unit prototypes: cosine needs no more
    return unit if unit is not None else privatizer.bottom.token_prototypes().detach().float().cpu()


def privacy_audit(
    privatizer: Any,
    texts: Sequence[str],
    public_texts: Sequence[str] | None = None,
    sample_size: int = 128,
    generator: torch.Generator | None = None,
    *,
    public_size: int = 512,
    prototypes: torch.Tensor | None = None,
    shrinkage: float = 0.1,
    batch_size: int = 32,
) -> AuditReport:
    """Audit ``privatizer`` on the user's own ``texts``: the attacks' ASR on what would be sent.

    The attacker's public text is ``public_texts`` (up to ``public_size`` of them) or, by default, a
    random half of ``texts`` held out as a stand-in for public text from the same distribution (then
    the other half is attacked). Up to ``sample_size`` of the remaining texts are privatized exactly as
    the SDK sends them and attacked with A2 (nearest prototype) and the adaptive learned A0 (a
    ``TokenDiscriminant`` fitted on the public text passed through the same mechanism). The undefended
    ASR is the same attacks on the clean representations (A0 then fitted on clean public text).
    ``generator`` (default: seed 0, so audits are reproducible) draws the split and the noise;
    ``prototypes`` (|V|, d) may be passed to avoid recomputing them. Nothing is sent anywhere.
    """
    g = _default_generator(generator)
    private, public, source = _split(texts, public_texts, sample_size, public_size, g)
    protos = _prototypes(privatizer, prototypes)
    clean, sent, ids = _token_rows(privatizer, private, g, batch_size)  # (n, d), (n, d), (n,)
    pub_clean, pub_sent, pub_ids = _token_rows(privatizer, public, g, batch_size)
    if ids.numel() == 0 or pub_ids.numel() == 0:
        raise ValueError("no real, non-special tokens to audit in the texts or the public texts")
    chance = majority_rate(ids)

    def rate(pred: torch.Tensor) -> float:
        return float((pred.cpu() == ids).float().mean())

    a2 = AttackScore(
        "A2-nearest-prototype", rate(nearest_prototype(sent, protos)), chance,
        rate(nearest_prototype(clean, protos)), int(ids.numel()), {"vocabulary": int(protos.shape[0])},
    )  # fmt: skip
    adaptive = TokenDiscriminant.fit(pub_sent, pub_ids, shrinkage=shrinkage)
    undefended = TokenDiscriminant.fit(pub_clean, pub_ids, shrinkage=shrinkage)
    a0 = AttackScore(
        "A0-learned-adaptive", rate(adaptive.predict(sent)), chance, rate(undefended.predict(clean)), int(ids.numel()),
        {"classes": int(adaptive.classes.numel()), "coverage": adaptive.coverage(ids), "shrinkage": shrinkage,
         "public_tokens": int(pub_ids.numel())},
    )  # fmt: skip
    mechanism = privatizer.mechanism.config.to_dict()
    return AuditReport(mechanism, (a2, a0), len(private), len(public), source)


# ---------------------------------------------------------------- choosing eta


@dataclass(frozen=True)
class EtaPoint:
    """One audited eta: its ``max_asr`` and the full report."""

    eta: float
    max_asr: float
    report: AuditReport


@dataclass(frozen=True)
class EtaSearchResult:
    """``chosen_eta``: the largest audited eta with ``max_asr <= target_asr`` (None if none met it);
    ``measured_asr``: its max ASR (or the closest point's); ``closest``: the audited point with the
    lowest max ASR; ``table``: every audited point, sorted by eta."""

    chosen_eta: float | None
    measured_asr: float
    target_asr: float
    met_target: bool
    closest: EtaPoint
    table: tuple[EtaPoint, ...]
    strategy: str


def search_eta(
    privatizer_factory: Callable[[float], Any],
    texts: Sequence[str],
    target_asr: float = 0.10,
    etas: Sequence[float] = DEFAULT_ETAS,
    *,
    public_texts: Sequence[str] | None = None,
    sample_size: int = 128,
    strategy: str = "bisect",
    generator: torch.Generator | None = None,
    prototypes: torch.Tensor | None = None,
    **audit_options: Any,
) -> EtaSearchResult:
    """Pick the largest eta in ``etas`` (least noise) whose audited max ASR is <= ``target_asr``.

    ``privatizer_factory(eta)`` returns a fitted ``Privatizer`` for that eta. Every point is audited
    with the same random stream (common random numbers, seeded once from ``generator``, default seed 0),
    so a fixed generator gives identical results. ``strategy='bisect'`` assumes the ASR grows with
    eta and audits O(log n) grid points; ``'grid'`` audits all of them (robust to non-monotone noise)
    and picks the largest passing eta. If no point meets the target, ``chosen_eta`` is None and
    ``closest`` is the audited point with the lowest ASR.
    """
    grid = sorted({float(e) for e in etas})
    if not grid or any(not math.isfinite(e) or e <= 0 for e in grid):
        raise ValueError(f"etas must be finite positive numbers, got {etas!r}")
    if strategy not in ("bisect", "grid"):
        raise ValueError(f"strategy must be 'bisect' or 'grid', got {strategy!r}")
    seed = int(torch.randint(0, 2**62, (1,), generator=_default_generator(generator)))
    audited: dict[int, EtaPoint] = {}

    def audit(i: int) -> EtaPoint:
        nonlocal prototypes
        if i not in audited:
            privatizer = privatizer_factory(grid[i])
            if prototypes is None:
                prototypes = _prototypes(privatizer, None)
            report = privacy_audit(
                privatizer, texts, public_texts, sample_size, torch.Generator().manual_seed(seed),
                prototypes=prototypes, **audit_options,
            )  # fmt: skip
            audited[i] = EtaPoint(grid[i], report.max_asr, report)
        return audited[i]

    best = None
    if strategy == "grid":
        passing = [i for i in range(len(grid)) if audit(i).max_asr <= target_asr]
        best = passing[-1] if passing else None
    else:
        lo, hi = 0, len(grid) - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            if audit(mid).max_asr <= target_asr:
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
    table = tuple(audited[i] for i in sorted(audited))
    closest = min(table, key=lambda p: (p.max_asr, -p.eta))
    chosen = audited[best] if best is not None else None
    return EtaSearchResult(
        chosen_eta=None if chosen is None else chosen.eta,
        measured_asr=(chosen or closest).max_asr, target_asr=float(target_asr), met_target=chosen is not None,
        closest=closest, table=table, strategy=strategy,
    )  # fmt: skip
