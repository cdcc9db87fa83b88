"""Choosing eta: the least noise whose audited ASR meets a target.

Promises: ``search_eta`` audits privatizers built for a grid of etas with ``privacy_audit`` on one
common random stream (a fixed generator gives identical results) and returns the largest eta whose
max ASR is <= the target (``EtaSearchResult``), or the closest point when none meets it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._audit import AuditReport, privacy_audit

__all__ = ["DEFAULT_ETAS", "EtaPoint", "EtaSearchResult", "search_eta"]

DEFAULT_ETAS: tuple[float, ...] = tuple(2.0**k for k in range(11))
"""Geometric eta grid 1, 2, 4, ..., 1024: with the l1 metric the noise-to-signal norm ratio is about
2.8 sqrt(d) / eta (d=384: 55 at eta=1, 0.05 at eta=1024), with l2 about 2 d / eta."""


@dataclass(frozen=True)
class EtaPoint:
    """One audited eta: its ``max_asr`` (the report's ``worst_asr``) and the full report."""

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
    """Pick the largest eta in ``etas`` (least noise) whose audited worst ASR is <= ``target_asr``: the
    strongest attack's rate over all tokens, over content words and over exposed tokens
    (``AuditReport.worst_asr``), so a low average cannot hide an exposed set.

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
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    audited: dict[int, EtaPoint] = {}

    def audit(i: int) -> EtaPoint:
        nonlocal prototypes
        if i not in audited:
            privatizer = privatizer_factory(grid[i])
            if prototypes is None:
                prototypes = privatizer.bottom.token_prototypes().detach().float().cpu()
            report = privacy_audit(
                privatizer,
                texts,
                public_texts,
                sample_size,
                torch.Generator().manual_seed(seed),
                prototypes=prototypes,
                **audit_options,
            )
            audited[i] = EtaPoint(grid[i], report.worst_asr, report)  # worst of all / content / exposed tokens
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
        measured_asr=(chosen or closest).max_asr,
        target_asr=float(target_asr),
        met_target=chosen is not None,
        closest=closest,
        table=table,
        strategy=strategy,
    )
