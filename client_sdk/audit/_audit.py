"""The on-device audit: the attacks' ASR on exactly what the SDK would send for the user's own texts.

Promises: ``privacy_audit`` privatizes a sample of the texts with ``Privatizer.privatize`` (the audit
point), attacks them with A2 (nearest prototype) and the adaptive learned A0, and reports each
attack's ASR next to its chance level and its undefended ASR (``AuditReport``). Reproducible: one
generator (default seed 0) draws the split and the noise. Nothing is sent anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..privatizer import Privatizer
from ._attacks import TokenDiscriminant, majority_rate, nearest_prototype
from ._expected import expected_lone_tokens, expected_privatizer

__all__ = ["AttackScore", "AuditReport", "privacy_audit"]


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
        "A2-nearest-prototype",
        rate(nearest_prototype(target.sent, prototypes)),
        chance,
        rate(nearest_prototype(target.clean, prototypes)),
        int(ids.numel()),
        {"vocabulary": int(prototypes.shape[0])},
    )
    vocab = torch.arange(prototypes.shape[0])
    extra = lambda means: {"fallback_ids": vocab, "fallback_means": means} if fallback else {}
    adaptive = TokenDiscriminant.fit(
        pub.sent,
        pub.ids,
        mean_hidden=pub.expected,
        shrinkage=shrinkage,
        **extra(expected_lone_tokens(privatizer, prototypes) if fallback else None),
    )
    undefended = TokenDiscriminant.fit(pub.clean, pub.ids, shrinkage=shrinkage, **extra(prototypes))
    a0 = AttackScore(
        "A0-learned-adaptive",
        rate(adaptive.predict(target.sent)),
        chance,
        rate(undefended.predict(target.clean)),
        int(ids.numel()),
        {
            "classes": int(adaptive.classes.numel()),
            "coverage": adaptive.coverage(ids),
            "fallback": fallback,
            "shrinkage": shrinkage,
            "public_tokens": int(pub.ids.numel()),
        },
    )
    mechanism = privatizer.mechanism.config.to_dict()
    return AuditReport(mechanism, (a2, a0), len(private), len(public), source)
