"""On-device privacy audit: run the cheap inversion attacks on your own data before anything is sent.

``privacy_audit(privatizer, texts)`` measures how many of your tokens an attacker who holds the bottom
model recovers from what the SDK would send (``Privatizer.privatize``), with two attacks:

- **A2, nearest prototype** (``nearest_prototype``): token = argmax_v cos(h~_i, p_v) over the bottom's
  split-layer token prototypes p_v (the whole vocabulary).
- **A0, learned inversion, adaptive** (``TokenDiscriminant``): a linear discriminant (class-conditional
  Gaussians with one shared, shrunk covariance; method.md section 8) fitted on *public* text passed
  through the same mechanism with the same parameters (Kerckhoffs): class means from the mechanism's
  noiseless output (``expected_privatizer``), covariance from its noisy output. Its classes are the
  tokens seen in the public text plus, as a fallback, every other vocabulary token centred on its
  prototype's noiseless output (``coverage`` says how many scored tokens were seen in public text).

Both attacks score top-1 recovery over real, non-special tokens; ``chance`` is the rate of the most
frequent scored token (a majority guesser). The report also gives the *undefended* ASR (the same
attacks on the clean representations) and ``max_asr`` over the attacks.

``search_eta(factory, texts, target_asr)`` audits privatizers built for a grid of eta values and picks
the largest eta (least noise) whose audited ``max_asr`` meets the target.

The evaluation package reuses ``nearest_prototype``, ``prototype_shortlist``, ``TokenDiscriminant`` and
the noiseless twin of a mechanism; this module depends only on torch and the SDK.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from .privacy import Mechanism, PerturbContext, PreparedState, mechanism_from_config
from .privacy.config import DChiOptions
from .privatizer import Privatizer

__all__ = [
    "DEFAULT_ETAS",
    "AttackScore",
    "AuditReport",
    "EtaPoint",
    "EtaSearchResult",
    "TokenDiscriminant",
    "expected_lone_tokens",
    "expected_privatizer",
    "majority_rate",
    "nearest_prototype",
    "noiseless_mechanism",
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
    """Learned inversion model: a linear discriminant over token classes.

    Each token class c is a Gaussian N(mu_c, S) with one pooled within-class covariance S, shrunk
    toward a scaled identity: S' = (1 - shrinkage) S + shrinkage * (tr S / d) I. Prediction is the
    maximum posterior class: argmax_c x^T S'^-1 mu_c - mu_c^T S'^-1 mu_c / 2 + log prior_c.
    ``classes`` (C,) token ids, ``weight`` (d, C), ``bias`` (C,); ``trained`` (C,) bool: the class was
    seen in training (the others are fallback classes).
    """

    classes: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    trained: torch.Tensor
    shrinkage: float

    @classmethod
    def fit(
        cls,
        hidden: torch.Tensor,
        token_ids: torch.Tensor,
        *,
        mean_hidden: torch.Tensor | None = None,
        fallback_ids: torch.Tensor | None = None,
        fallback_means: torch.Tensor | None = None,
        fallback_count: float = 0.5,
        shrinkage: float = 0.1,
        prior: str = "empirical",
    ) -> TokenDiscriminant:
        """Fit on representations ``hidden`` (n, d) labelled with their ``token_ids`` (n,).

        ``mean_hidden`` (n, d), aligned with ``hidden``: take the class means from these rows instead
        (e.g. the mechanism's noiseless output, when the attacker can compute it) and the covariance
        from ``hidden`` around them. ``fallback_ids`` (m,) with ``fallback_means`` (m, d): extra classes
        for tokens absent from ``token_ids`` (e.g. every vocabulary token, with its prototype as mean),
        each with prior weight ``fallback_count`` samples. ``prior``: 'empirical' (class frequencies:
        the Bayes classifier under the model) or 'uniform'.
        """
        if hidden.shape[0] == 0 or hidden.shape[0] != token_ids.shape[0]:
            raise ValueError(
                f"need n >= 1 rows with one token id each, got {tuple(hidden.shape)} and {tuple(token_ids.shape)}"
            )
        if not 0.0 <= shrinkage <= 1.0 or prior not in ("empirical", "uniform"):
            raise ValueError(
                f"shrinkage must be in [0, 1] and prior 'empirical' or 'uniform', got {shrinkage}, {prior!r}"
            )
        x = hidden.detach().double()  # (n, d)
        source = x if mean_hidden is None else mean_hidden.detach().double().to(x.device)  # (n, d)
        classes, inverse, counts = torch.unique(
            token_ids.reshape(-1).to(x.device), return_inverse=True, return_counts=True
        )
        means = torch.zeros(classes.shape[0], x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, inverse, source)
        means = means / counts.unsqueeze(1)  # (C, d)
        centred = x - means[inverse]  # (n, d)
        cov = centred.T @ centred / x.shape[0]  # (d, d) pooled within-class
        counts = counts.double()
        trained = torch.ones(classes.shape[0], dtype=torch.bool, device=x.device)
        if fallback_ids is not None:
            extra = ~torch.isin(fallback_ids.to(x.device), classes)  # (m,)
            classes = torch.cat([classes, fallback_ids.to(x.device)[extra]])
            means = torch.cat([means, fallback_means.detach().double().to(x.device)[extra]])
            counts = torch.cat(
                [counts, torch.full((int(extra.sum()),), float(fallback_count), dtype=x.dtype, device=x.device)]
            )
            trained = torch.cat([trained, torch.zeros(int(extra.sum()), dtype=torch.bool, device=x.device)])
        scale = float(torch.trace(cov)) / x.shape[1]
        scale = scale if scale > 0 else float(x.pow(2).mean()) or 1.0  # all classes singletons: isotropic
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        cov = (1.0 - shrinkage) * cov + (shrinkage * scale) * eye + 1e-6 * scale * eye
        weight = torch.cholesky_solve(means.T, torch.linalg.cholesky(cov))  # (d, C) = S'^-1 mu_c
        log_prior = torch.log(counts / counts.sum()) if prior == "empirical" else torch.zeros_like(counts)
        bias = -0.5 * (means.T * weight).sum(dim=0) + log_prior  # (C,)
        return cls(classes, weight.float(), bias.float(), trained, float(shrinkage))

    def predict(self, hidden: torch.Tensor, *, block_size: int = 4096) -> torch.Tensor:
        """The most probable token id for each row of ``hidden`` (n, d): (n,)."""
        weight, bias = self.weight.to(hidden.device), self.bias.to(hidden.device)
        out = [
            self.classes.to(hidden.device)[(hidden[s : s + block_size].float() @ weight + bias).argmax(dim=1)]
            for s in range(0, hidden.shape[0], block_size)
        ]  # each (b,)
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=hidden.device)

    def coverage(self, token_ids: torch.Tensor) -> float:
        """Fraction of ``token_ids`` that were classes seen in training (fallback classes excluded)."""
        if token_ids.numel() == 0:
            return 0.0
        seen = self.classes[self.trained].to(token_ids.device)
        return float(torch.isin(token_ids.reshape(-1), seen).float().mean())


# ---------------------------------------------------------------- the mechanism's deterministic part

_NOISELESS = 1e-12  # noise scale factor of the noiseless twin


def noiseless_mechanism(mechanism: Mechanism) -> Mechanism:
    """The same mechanism with its noise scaled by 1e-12: clipping, the OPT-3 shift and importance
    unchanged, so its output is the mechanism's deterministic part (the mean of the noisy output)."""
    config = mechanism.config
    if not mechanism.uses_noise:
        return mechanism
    if isinstance(config, DChiOptions):
        return mechanism_from_config(replace(config, eta=config.eta / _NOISELESS))
    return mechanism_from_config(replace(config, noise_multiplier=config.noise_multiplier * _NOISELESS))


def expected_privatizer(privatizer: Privatizer) -> Privatizer:
    """A Privatizer sharing ``privatizer``'s bottom, tokenizer and fitted state whose mechanism is
    ``noiseless_mechanism(privatizer.mechanism)``: its ``privatize`` gives the expected output."""
    return Privatizer(privatizer.bottom, privatizer.tokenizer, noiseless_mechanism(privatizer.mechanism),
                      state=privatizer.state, max_length=privatizer.max_length)  # fmt: skip


@torch.no_grad()
def expected_lone_tokens(privatizer: Privatizer, prototypes: torch.Tensor, block_size: int = 4096) -> torch.Tensor:
    """The mechanism's deterministic output for each prototype (|V|, d) taken as a lone token (its own
    id; importance from the state's table, else w = 1): (|V|, d). For noise-only mechanisms, clipping."""
    mechanism = noiseless_mechanism(privatizer.mechanism)
    state = privatizer.state or PreparedState()
    table = state.importance_table
    g = torch.Generator().manual_seed(0)
    out = []
    for s in range(0, prototypes.shape[0], block_size):
        h = prototypes[s : s + block_size].detach().float().unsqueeze(1)  # (b, 1, d)
        ids = torch.arange(s, s + h.shape[0]).unsqueeze(1)  # (b, 1)
        importance = None
        if mechanism.uses_importance:
            importance = table[ids] if table is not None else torch.zeros(ids.shape)
        context = PerturbContext(state=state, input_ids=ids, importance=importance)
        out.append(mechanism.perturb(h, torch.ones(ids.shape, dtype=torch.long), context, g)[:, 0])
    return torch.cat(out)


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


@dataclass(frozen=True)
class _Rows:
    """Real, non-special tokens of some texts: clean (n, d), sent (n, d), expected (n, d) or None, ids (n,)."""

    clean: torch.Tensor
    sent: torch.Tensor
    expected: torch.Tensor | None
    ids: torch.Tensor


@torch.no_grad()
def _token_rows(
    privatizer: Privatizer, texts: Sequence[str], generator: torch.Generator, batch_size: int, expected: bool = False
) -> _Rows:
    bottom = privatizer.bottom
    first = next(iter(bottom.parameters()), None) if hasattr(bottom, "parameters") else None
    device = first.device if first is not None else torch.device("cpu")
    special = torch.tensor(privatizer.special_ids, dtype=torch.long)
    twin = expected_privatizer(privatizer) if expected else None
    parts: dict[str, list[torch.Tensor]] = {"clean": [], "sent": [], "expected": [], "ids": []}
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        input_ids, mask = privatizer.encode(batch)  # (b, t)
        keep = mask.bool() & ~torch.isin(input_ids, special)  # (b, t)
        hidden = bottom(input_ids.to(device), mask.to(device)).hidden.float().cpu()  # (b, t, d)
        sent = privatizer.privatize(batch, generator=generator)["hidden"]  # (b, t, d): what is sent
        if sent.shape[:2] != input_ids.shape:
            raise RuntimeError(f"privatize returned {tuple(sent.shape)} for token ids {tuple(input_ids.shape)}")
        parts["clean"].append(hidden[keep])
        parts["sent"].append(sent[keep])
        parts["ids"].append(input_ids[keep])
        if twin is not None:
            parts["expected"].append(twin.privatize(batch, generator=torch.Generator().manual_seed(0))["hidden"][keep])
    d = int(getattr(bottom, "hidden_size", 0))
    cat = lambda key: torch.cat(parts[key]) if parts[key] else torch.empty(0, d)
    ids = torch.cat(parts["ids"]) if parts["ids"] else torch.empty(0, dtype=torch.long)
    return _Rows(cat("clean"), cat("sent"), cat("expected") if expected else None, ids)


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


def privacy_audit(
    privatizer: Privatizer,
    texts: Sequence[str],
    public_texts: Sequence[str] | None = None,
    sample_size: int = 128,
    generator: torch.Generator | None = None,
    *,
    public_size: int = 512,
    prototypes: torch.Tensor | None = None,
    fallback: bool = True,
    shrinkage: float = 0.1,
    batch_size: int = 32,
) -> AuditReport:
    """Audit ``privatizer`` on the user's own ``texts``: the attacks' ASR on what would be sent.

    The attacker's public text is ``public_texts`` (up to ``public_size`` of them) or, by default, a
    random half of ``texts`` held out as a stand-in for public text from the same distribution (then
    the other half is attacked). Up to ``sample_size`` of the remaining texts are privatized exactly as
    the SDK sends them and attacked with A2 (nearest prototype over the whole vocabulary) and the
    adaptive learned A0: a ``TokenDiscriminant`` whose class means are the mechanism's noiseless
    output on the public text and whose covariance is that of the public text passed through the
    mechanism itself (noise included); with ``fallback``, tokens absent from the public text are
    extra classes centred on their prototypes' noiseless output. The undefended ASR is the same
    attacks on clean representations (A0 then fitted on clean public text). ``generator`` (default:
    seed 0, so audits are reproducible) draws the split and the noise; ``prototypes`` (|V|, d), the
    bottom's ``token_prototypes()``, may be passed to skip recomputing them. Nothing is sent anywhere.
    """
    g = _default_generator(generator)
    private, public, source = _split(texts, public_texts, sample_size, public_size, g)
    if prototypes is None:
        prototypes = privatizer.bottom.token_prototypes()
    prototypes = prototypes.detach().float().cpu()  # (V, d)
    target = _token_rows(privatizer, private, g, batch_size)
    pub = _token_rows(privatizer, public, g, batch_size, expected=True)
    ids = target.ids
    if ids.numel() == 0 or pub.ids.numel() == 0:
        raise ValueError("no real, non-special tokens to audit in the texts or the public texts")
    chance = majority_rate(ids)

    def rate(pred: torch.Tensor) -> float:
        return float((pred.cpu() == ids).float().mean())

    a2 = AttackScore(
        "A2-nearest-prototype", rate(nearest_prototype(target.sent, prototypes)), chance,
        rate(nearest_prototype(target.clean, prototypes)), int(ids.numel()), {"vocabulary": int(prototypes.shape[0])},
    )  # fmt: skip
    vocab = torch.arange(prototypes.shape[0])
    extra = lambda means: {"fallback_ids": vocab, "fallback_means": means} if fallback else {}
    adaptive = TokenDiscriminant.fit(
        pub.sent, pub.ids, mean_hidden=pub.expected, shrinkage=shrinkage,
        **extra(expected_lone_tokens(privatizer, prototypes) if fallback else None),
    )  # fmt: skip
    undefended = TokenDiscriminant.fit(pub.clean, pub.ids, shrinkage=shrinkage, **extra(prototypes))
    a0 = AttackScore(
        "A0-learned-adaptive", rate(adaptive.predict(target.sent)), chance, rate(undefended.predict(target.clean)),
        int(ids.numel()), {"classes": int(adaptive.classes.numel()), "coverage": adaptive.coverage(ids),
                           "fallback": fallback, "shrinkage": shrinkage, "public_tokens": int(pub.ids.numel())},
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
                prototypes = privatizer.bottom.token_prototypes().detach().float().cpu()
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
