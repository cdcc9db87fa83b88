"""The paper's reference numbers and the two tables that compare our rows with them.

Promises: ``PAPER_TABLE_III`` and ``PAPER_HEADLINE`` are the paper's figures (method.md section 7);
``headline_table`` says, per mechanism and threat model, whether our rows reach the paper's headline
(ASR <= 10% within a 3.33-point utility drop); ``paper_table`` puts the paper's Table III next to our
rows at the same etas (a trend comparison only: different model, data and eta unit).
"""

from __future__ import annotations

from collections.abc import Sequence

from evaluation.report.queries import NOISE_MECHANISMS, THREATS, OperatingPoint, accuracy, first, operating_points, pick
from evaluation.report.tables import markdown_table, pair, pct
from evaluation.rows import ResultRow

__all__ = ["PAPER_HEADLINE", "PAPER_TABLE_III", "headline_table", "paper_table"]

PAPER_TABLE_III = {  # Llama-3, SST, l=3 (method.md section 7): eta -> (ASR %, UP %); None = no noise
    10.0: (8.28, 89.81),
    20.0: (21.03, 90.19),
    30.0: (29.46, 91.21),
    40.0: (41.18, 93.48),
    60.0: (45.79, 95.03),
    80.0: (51.42, 95.74),
    None: (82.64, 96.27),
}
PAPER_HEADLINE = {"asr": 10.0, "up_drop": 3.33}


def _eta(p: OperatingPoint) -> str:
    return "-" if p.eta is None else f"{p.eta:g}"


def headline_table(rows: list[ResultRow], dataset: str) -> list[str]:
    """Per mechanism and threat model: the lowest ASR within the paper's 3.33-point utility drop, and
    the best utility at ASR <= 10% (the paper's headline: ASR 10% at a 3.33-point drop)."""
    header = [
        "mechanism",
        "threat model",
        "lowest strongest-token ASR % with UP drop <= 3.33 pts (eta, drop)",
        "best UP % with strongest-token ASR <= 10% (eta, drop)",
        "reaches the paper's headline?",
    ]
    body = []
    for mechanism in (*NOISE_MECHANISMS, "opt3", "opt3_importance"):
        for threat in THREATS:
            points = operating_points(rows, dataset, mechanism, threat)
            if not points:
                continue
            within = [p for p in points if p.drop <= PAPER_HEADLINE["up_drop"] / 100]
            private = [p for p in points if p.asr <= PAPER_HEADLINE["asr"] / 100]
            a = min(within, key=lambda p: p.asr) if within else None
            b = max(private, key=lambda p: p.accuracy) if private else None
            cell_a = (
                "none within the drop"
                if a is None
                else f"{pct(a.asr)} ({a.attack}; eta {_eta(a)}, {100 * a.drop:+.1f})"
            )
            cell_b = (
                "no point at ASR <= 10%" if b is None else f"{pct(b.accuracy)} (eta {_eta(b)}, {100 * b.drop:+.1f})"
            )
            reached = b is not None and b.drop <= PAPER_HEADLINE["up_drop"] / 100
            body.append([mechanism, threat, cell_a, cell_b, "yes" if reached else "no"])
    return markdown_table(header, body) if body else []


def paper_table(rows: list[ResultRow], dataset: str, mechanisms: Sequence[str] = ("privtune", "dchi")) -> list[str]:
    """The paper's Table III (Llama-3, SST) next to our rows at the same etas (trend comparison only)."""
    same = pick(rows, dataset=dataset, split_layer=3, hops=None, defaults=True)
    base = first(pick(same, mechanism="none"))
    header = ["eta", "paper ASR %", "paper UP %"]
    for m in mechanisms:
        header += [f"{m} strongest ASR % (naive / adaptive)", f"{m} UP %"]
    body = []
    for eta, (asr, up) in PAPER_TABLE_III.items():
        cells = ["None" if eta is None else f"{eta:g}", f"{asr:.2f}", f"{up:.2f}"]
        for m in mechanisms:
            r = base if eta is None else first(pick(same, mechanism=m, eta=eta))
            cells += [pair(r, None), pct(accuracy(r))]
        body.append(cells)
    return markdown_table(header, body)
