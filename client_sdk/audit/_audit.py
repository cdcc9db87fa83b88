"""The on-device audit: the attacks' ASR on exactly what the SDK would send for the user's own texts.

Promises: ``privacy_audit`` privatizes a sample of the texts with ``Privatizer.privatize`` (the audit
point) as many times as the job sends each text (``views``) and attacks what a server that links those
views would hold, with A2 (nearest prototype), the adaptive learned A0 and the best response A0-bayes
(the noise level of each position read from its norm, a per-level Bayes decoder; method.md section
9). Each attack's ASR stands next to its chance level and its undefended ASR, split by token class
(content / function / punctuation) and by exposed / buried tokens (``AuditReport``), and
``worst_asr`` takes the worst of the overall, content-word and exposed-token rates, so an exposed set
cannot pass as a low average. Reproducible: one generator (default seed 0) draws the split and the
noise. Nothing is sent anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..privacy.token_classes import CONTENT, FUNCTION, PUNCTUATION, token_class_table
from ..privatizer import Privatizer
from ._attacks import TokenDiscriminant, majority_rate, nearest_prototype
from ._best_response import ExposureDetector, LevelBayesDecoder, noise_kind
from ._expected import expected_lone_tokens, expected_privatizer

__all__ = ["AttackScore", "AuditReport", "privacy_audit"]


@dataclass(frozen=True)
class AttackScore:
    """One attack's result in an audit: ASR on what would be sent, chance level, ASR without the mechanism;
    ``groups``: ASR and count per token class and per exposed / buried tokens (where present)."""

    name: str
    asr: float
    chance: float
    undefended_asr: float
    n: int
    details: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def worst(self) -> float:
        """The largest of the overall, the content-word and the exposed-token ASR."""
        rates = [self.asr] + [self.groups[g]["asr"] for g in ("content", "exposed") if g in self.groups]
        return max(rates)


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
    def worst_asr(self) -> float:
        """The strongest attack's worst rate over all tokens, content words and exposed tokens."""
        return max(a.worst for a in self.attacks)

    @property
    def undefended_max_asr(self) -> float:
        return max(a.undefended_asr for a in self.attacks)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the report (with ``max_asr`` and ``undefended_max_asr``)."""
        out = asdict(self)
        out.update(max_asr=self.max_asr, worst_asr=self.worst_asr, undefended_max_asr=self.undefended_max_asr)
        return out


def _default_generator(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


@dataclass(frozen=True)
class _Rows:
    """Real, non-special tokens of some texts: clean (n, d), sent (n, d) (the mean of the linked views),
    expected (n, d) or None, ids (n,), scale (n,) the noise scale, classes (n,) token classes,
    distinct (n,) how many of the views differed."""

    clean: torch.Tensor
    sent: torch.Tensor
    expected: torch.Tensor | None
    ids: torch.Tensor
    scale: torch.Tensor
    classes: torch.Tensor
    distinct: torch.Tensor


@torch.no_grad()
def _token_rows(
    privatizer: Privatizer,
    texts: Sequence[str],
    generator: torch.Generator,
    batch_size: int,
    expected: bool = False,
    views: int = 1,
) -> _Rows:
    bottom = privatizer.bottom
    first = next(iter(bottom.parameters()), None) if hasattr(bottom, "parameters") else None
    device = first.device if first is not None else torch.device("cpu")
    special = torch.tensor(privatizer.special_ids, dtype=torch.long)
    twin = expected_privatizer(privatizer) if expected else None
    parts: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("clean", "sent", "expected", "ids", "scale", "classes", "distinct")
    }
    table = token_class_table(privatizer.tokenizer, int(getattr(bottom, "vocab_size", 0)) or None)
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        input_ids, mask = privatizer.encode(batch)  # (b, t)
        keep = mask.bool() & ~torch.isin(input_ids, special)  # (b, t)
        hidden = bottom(input_ids.to(device), mask.to(device)).hidden.float().cpu()  # (b, t, d)
        sends = [privatizer.privatize(batch, generator=generator)["hidden"] for _ in range(max(views, 1))]
        sent = torch.stack(sends).mean(dim=0)  # (b, t, d): what a server linking the views averages
        if sent.shape[:2] != input_ids.shape:
            raise RuntimeError(f"privatize returned {tuple(sent.shape)} for token ids {tuple(input_ids.shape)}")
        distinct = torch.ones(keep.shape, dtype=torch.long)
        for j, view in enumerate(sends[1:], start=1):
            distinct += ~torch.stack([(view == sends[i]).all(dim=-1) for i in range(j)]).any(dim=0)  # (b, t)
        parts["clean"].append(hidden[keep])
        parts["sent"].append(sent[keep])
        parts["ids"].append(input_ids[keep])
        parts["scale"].append(privatizer.token_noise_scale(input_ids, mask)[keep])
        parts["classes"].append(table[input_ids.clamp(max=table.shape[0] - 1)][keep])
        parts["distinct"].append(distinct[keep])
        if twin is not None:
            parts["expected"].append(twin.privatize(batch, generator=torch.Generator().manual_seed(0))["hidden"][keep])
    d = int(getattr(bottom, "hidden_size", 0))
    cat = lambda key: torch.cat(parts[key]) if parts[key] else torch.empty(0, d)
    flat = lambda key, dtype: torch.cat(parts[key]) if parts[key] else torch.empty(0, dtype=dtype)
    return _Rows(
        cat("clean"), cat("sent"), cat("expected") if expected else None, flat("ids", torch.long),
        flat("scale", torch.float32), flat("classes", torch.long), flat("distinct", torch.long),
    )  # fmt: skip


def _groups(hits: torch.Tensor, rows: _Rows) -> dict[str, dict[str, float]]:
    """ASR and count per token class and, when the scales take two or more levels, exposed / buried."""
    out: dict[str, dict[str, float]] = {}
    rate = lambda sel: {"asr": float(hits[sel].float().mean()), "n": int(sel.sum())}
    for name, code in (("content", CONTENT), ("function", FUNCTION), ("punctuation", PUNCTUATION)):
        if bool((rows.classes == code).any()):
            out[name] = rate(rows.classes == code)
    low, high = (float(rows.scale.min()), float(rows.scale.max())) if rows.scale.numel() else (0.0, 0.0)
    if high > 1.5 * low:
        exposed = rows.scale <= low * (1 + 1e-4)
        out["exposed"], out["buried"] = rate(exposed), rate(~exposed)
    return out


def _bayes(privatizer: Privatizer, pub: _Rows, target: _Rows, fallback: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A0-bayes predictions on the sent and on the clean target rows: (ids (n,), undefended ids (n,))."""
    kind = noise_kind(privatizer.mechanism)
    ids = fallback["fallback_ids"] if fallback else None
    scale = None
    if kind != "none" and pub.scale.numel() and float(pub.scale.max()) > 0:
        detector = ExposureDetector.fit(pub.sent, pub.scale)  # public text through the same mechanism
        scale = detector.predict_scale(target.sent)  # (n,) the level read from each received norm
    means = pub.expected if pub.expected is not None else pub.clean
    decoder = LevelBayesDecoder.fit(
        means, pub.ids, noise=kind, fallback_ids=ids, fallback_means=fallback.get("adaptive") if fallback else None
    )
    predicted, _ = decoder.predict(target.sent, scale, views=target.distinct.float())
    clean = LevelBayesDecoder.fit(
        pub.clean, pub.ids, fallback_ids=ids, fallback_means=fallback.get("clean") if fallback else None
    )
    return predicted, clean.predict(target.clean)[0]


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
    views: int = 1,
) -> AuditReport:
    """Audit ``privatizer`` on the user's own ``texts``: the attacks' ASR on what would be sent.

    The attacker's public text is ``public_texts`` (up to ``public_size`` of them) or, by default, a
    random half of ``texts`` held out as a stand-in for public text from the same distribution (then
    the other half is attacked). Up to ``sample_size`` of the remaining texts are privatized exactly as
    the SDK sends them, ``views`` times each (the times a job sends a text; fresh noise is averaged by
    the attacker, per-text noise repeats one view), and attacked with A2 (nearest prototype over the
    whole vocabulary), A0-bayes (each position's noise level from its norm, ``ExposureDetector`` fitted
    on the public half through the same mechanism; the per-level ``LevelBayesDecoder`` over the
    mechanism's noiseless output) and the adaptive learned A0: a ``TokenDiscriminant`` whose class means are the mechanism's noiseless
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
    target = _token_rows(privatizer, private, g, batch_size, views=views)
    pub = _token_rows(privatizer, public, g, batch_size, expected=True)
    ids = target.ids
    if ids.numel() == 0 or pub.ids.numel() == 0:
        raise ValueError("no real, non-special tokens to audit in the texts or the public texts")
    chance = majority_rate(ids)

    def score(name: str, pred: torch.Tensor, clean: torch.Tensor, details: dict[str, Any]) -> AttackScore:
        hits = pred.cpu() == ids
        undefended = float((clean.cpu() == ids).float().mean())
        return AttackScore(
            name, float(hits.float().mean()), chance, undefended, int(ids.numel()), details, _groups(hits, target)
        )

    a2 = score("A2-nearest-prototype", nearest_prototype(target.sent, prototypes),
               nearest_prototype(target.clean, prototypes), {"vocabulary": int(prototypes.shape[0])})  # fmt: skip
    vocab = torch.arange(prototypes.shape[0])
    lone = expected_lone_tokens(privatizer, prototypes) if fallback else None
    extra = lambda means: {"fallback_ids": vocab, "fallback_means": means} if fallback else {}
    adaptive = TokenDiscriminant.fit(pub.sent, pub.ids, mean_hidden=pub.expected, shrinkage=shrinkage, **extra(lone))
    undefended = TokenDiscriminant.fit(pub.clean, pub.ids, shrinkage=shrinkage, **extra(prototypes))
    a0 = score(
        "A0-learned-adaptive", adaptive.predict(target.sent), undefended.predict(target.clean),
        {"classes": int(adaptive.classes.numel()), "coverage": adaptive.coverage(ids), "fallback": fallback,
         "shrinkage": shrinkage, "public_tokens": int(pub.ids.numel())},
    )  # fmt: skip
    means = {"fallback_ids": vocab, "adaptive": lone, "clean": prototypes} if fallback else None
    bayes, bayes_clean = _bayes(privatizer, pub, target, means)
    a0_bayes = score(
        "A0-bayes-adaptive",
        bayes,
        bayes_clean,
        {"views": views, "distinct_views": float(target.distinct.float().mean())},
    )
    mechanism = privatizer.mechanism.config.to_dict()
    return AuditReport(mechanism, (a2, a0, a0_bayes), len(private), len(public), source)
