"""The report's tables of what the best-response token attacks report beside their ASR.

Promises: every function takes the rows of one setting and a dataset and returns the table's Markdown
lines, empty when no row carries the figures (rows of harness version 4 and older, attacks that do not
report them); a row or entry lacking a figure gets "n/a", never an error. The figures are read from the
attack entries' ``details`` (written by ``evaluation.attacks``):

    by_class          {"content" | "function" | "punctuation": {"asr", "chance", "n"}}
    by_exposure       {"exposed" | "buried": {"asr", "chance", "n"}}  (exposed: the mechanism's lowest noise level)
    asr_by_views      [ASR with the first k views, k = 1..K]            (the multi-view attack)
    exposure_accuracy share of scored tokens whose level the attacker read right (adaptive)
    confident         {"threshold", "precision", "share"}              (the attacker's confident tokens)

Tables: ``token_split_table`` (strongest token ASR split by exposure and by token class, with chance and the
undefended row), ``views_table`` (ASR against the number of views), ``exposure_table`` (exposure
detection accuracy against its chance) and ``confidence_table`` (precision on confident tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evaluation.report.queries import ABLATION_ORDER, THREATS, TOKEN_ATTACKS, first, pick, strongest
from evaluation.report.tables import markdown_table, pct
from evaluation.rows import AttackEntry, ResultRow

__all__ = ["CLASSES", "confidence_table", "exposure_table", "split_cell", "token_split_table", "views_table"]

CLASSES = ("content", "function", "punctuation")
EXPOSURE = ("exposed", "buried")


def _order(r: ResultRow) -> tuple:
    mechanism = r.config.mechanism
    rank = ABLATION_ORDER.index(mechanism) if mechanism in ABLATION_ORDER else len(ABLATION_ORDER)
    return (mechanism != "none", rank, r.config.eta or 0.0, r.label)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _split(entry: AttackEntry | None, kind: str, part: str, field: str = "asr") -> float | None:
    """``entry.details[kind][part][field]`` (e.g. by_class / content / asr), None when absent."""
    if entry is None:
        return None
    group = entry.details.get(kind)
    cell = group.get(part) if isinstance(group, dict) else None
    return _number(cell.get(field)) if isinstance(cell, dict) else None


def split_cell(row: ResultRow | None, kind: str, part: str, field: str = "asr") -> str:
    """ "naive / adaptive" cell of the strongest token attack's ``kind``/``part`` figure (percent)."""
    if row is None:
        return "n/a"
    return " / ".join(pct(_split(strongest(row, threat), kind, part, field)) for threat in THREATS)


def _has(rows: Sequence[ResultRow], key: str) -> bool:
    return any(key in e.details for r in rows for e in r.attacks if e.asr is not None)


def _undefended_last(rows: list[ResultRow]) -> tuple[list[ResultRow], ResultRow | None]:
    """``rows`` (in display order) with the undefended default row moved to the end, and that row."""
    base = first(pick(rows, mechanism="none", defaults=True))
    return [r for r in rows if r is not base] + ([base] if base is not None else []), base


def _label(row: ResultRow, base: ResultRow | None) -> str:
    return "undefended (none)" if row is base else row.label


def _reference(row: ResultRow) -> AttackEntry | None:
    """The naive token entry with class splits that scored the most tokens (all of them, not a subset):
    its chance per class is that of the attacked texts."""
    entries = [e for n in TOKEN_ATTACKS if (e := row.attack(n, "naive")) is not None and "by_class" in e.details]
    return max(entries, key=lambda e: e.n) if entries else strongest(row, "naive")


def _strongest_names(row: ResultRow) -> str:
    names = [e.name if (e := strongest(row, t)) is not None else "n/a" for t in THREATS]
    return names[0] if len(set(names)) == 1 else " / ".join(names)


def token_split_table(rows: list[ResultRow], dataset: str) -> list[str]:
    """Strongest token ASR per row, split by exposure (exposed / buried tokens) and by token class.

    The strongest attack is chosen per threat model by its overall ASR (as everywhere in the report) and
    its splits are shown; the chance row gives each class's majority rate on the undefended row (the
    same attacked texts), the exposure chance is per row (its exposed set is the mechanism's)."""
    same = sorted(pick(rows, dataset=dataset), key=_order)
    if not (_has(same, "by_class") or _has(same, "by_exposure")):
        return []
    ordered, base = _undefended_last(same)
    header = [
        "experiment",
        "strongest attack",
        "strongest token ASR %",
        "exposed share %",
        "exposed ASR %",
        "buried ASR %",
        "exposed / buried chance %",
        *[f"{c} ASR %" for c in CLASSES],
    ]
    ref_entry = _reference(base or same[0])
    chance = ["chance", "", pct(None if ref_entry is None else ref_entry.chance), "", "", "", ""]
    chance += [pct(_split(ref_entry, "by_class", c, "chance")) for c in CLASSES]
    body = [chance]
    for r in ordered:
        share = r.observation.exposed_share if r.observation is not None else None
        # the chance of a split is the same under both threat models (the same tokens): the first that has it
        has = [e for t in THREATS if (e := strongest(r, t)) is not None and "by_exposure" in e.details]
        exposure_chance = " / ".join(pct(_split(first(has), "by_exposure", p, "chance")) for p in EXPOSURE)
        cells = [
            _label(r, base),
            _strongest_names(r),
            " / ".join(pct(e.asr if (e := strongest(r, t)) else None) for t in THREATS),
        ]
        cells += [pct(share), split_cell(r, "by_exposure", "exposed"), split_cell(r, "by_exposure", "buried")]
        cells += [exposure_chance, *[split_cell(r, "by_class", c) for c in CLASSES]]
        body.append(cells)
    counts = ", ".join(f"{c} {n:.0f}" for c in CLASSES if (n := _split(ref_entry, "by_class", c, "n")) is not None)
    note = [f"Scored tokens of the undefended row by class: {counts}."] if counts else []
    return markdown_table(header, body) + ([""] + note if note else [])


def _curve(entry: AttackEntry | None) -> list[float | None]:
    values = entry.details.get("asr_by_views") if entry is not None else None
    return [_number(v) for v in values] if isinstance(values, list) else []


def _view_entries(row: ResultRow, threat: str) -> list[AttackEntry]:
    return [e for e in row.attacks if e.threat_model == threat and e.asr is not None and _curve(e)]


def views_table(rows: list[ResultRow], dataset: str) -> list[str]:
    """ASR against the number of views k = 1..K of each attacked text (the attacks that report
    ``asr_by_views``; per k the highest of them), with the row's views and their sources, and the
    undefended row."""
    same = sorted(pick(rows, dataset=dataset), key=_order)
    chosen = [r for r in same if any(_view_entries(r, t) for t in THREATS)]
    if not chosen:
        return []
    longest = max(len(_curve(e)) for r in chosen for t in THREATS for e in _view_entries(r, t))
    chosen, base = _undefended_last(chosen)
    header = ["experiment", "attack", "views (training + validation + inference)", "chance %"]
    header += [f"{k} view{'s' if k > 1 else ''} ASR %" for k in range(1, longest + 1)]
    body = []
    for r in chosen:
        cells_k = []
        for k in range(longest):
            pair_k = []
            for threat in THREATS:
                values = [c[k] for e in _view_entries(r, threat) if len(c := _curve(e)) > k and c[k] is not None]
                pair_k.append(pct(max(values)) if values else "n/a")
            cells_k.append(" / ".join(pair_k))
        names = sorted({e.name for t in THREATS for e in _view_entries(r, t)})
        sources = (r.observation.view_sources or {}) if r.observation is not None else {}
        parts = [str(sources.get(s, 0)) for s in ("training", "validation", "inference")]
        views = r.observation.views if r.observation is not None else None
        described = f"{views if views is not None else 'n/a'} ({' + '.join(parts)})" if sources else str(views or "n/a")
        entry = next(iter(_view_entries(r, "naive")), None)
        body.append(
            [_label(r, base), ", ".join(names), described, pct(None if entry is None else entry.chance), *cells_k]
        )
    return markdown_table(header, body)


def exposure_table(rows: list[ResultRow], dataset: str) -> list[str]:
    """How well the attacker reads which tokens were exposed: ``exposure_accuracy`` per attack that
    reports it, against its chance (a majority guess of exposed / buried: max(share, 1 - share))."""
    same, base = _undefended_last(sorted(pick(rows, dataset=dataset), key=_order))
    body = []
    for r in same:
        share = r.observation.exposed_share if r.observation is not None else None
        for e in r.attacks:
            accuracy = _number(e.details.get("exposure_accuracy")) if e.asr is not None else None
            if accuracy is None:
                continue
            truth = _number(e.details.get("true_exposed_share"))
            truth = share if truth is None else truth
            chance = None if truth is None else max(truth, 1.0 - truth)
            detected = _number(e.details.get("detected_exposed_share"))
            body.append(
                [_label(r, base), e.name, e.threat_model, pct(truth), pct(detected), pct(accuracy), pct(chance)]
            )
    if not body:
        return []
    header = [
        "experiment",
        "attack",
        "threat model",
        "true exposed share %",
        "detected exposed share %",
        "exposure accuracy %",
        "chance (majority) %",
    ]
    return markdown_table(header, body)


def confidence_table(rows: list[ResultRow], dataset: str) -> list[str]:
    """The attacker's precision on the tokens it is confident about (posterior >= the threshold) and
    their share of the scored tokens, per attack that reports it, beside its overall ASR."""
    same, base = _undefended_last(sorted(pick(rows, dataset=dataset), key=_order))
    body = []
    for r in same:
        names = [n for n in (*TOKEN_ATTACKS, *sorted({e.name for e in r.attacks} - set(TOKEN_ATTACKS)))]
        for name in names:
            entries = [r.attack(name, t) for t in THREATS]
            if not any(e is not None and isinstance(e.details.get("confident"), dict) for e in entries):
                continue
            cells = [_label(r, base), name]
            threshold = None
            for e in entries:
                sure = e.details.get("confident") if e is not None else None
                sure = sure if isinstance(sure, dict) else {}
                threshold = threshold if threshold is not None else _number(sure.get("threshold"))
                cells += [pct(_number(sure.get("precision"))), pct(_number(sure.get("share")))]
            cells.insert(2, "n/a" if threshold is None else f"{threshold:g}")
            cells.append(" / ".join(pct(None if e is None else e.asr) for e in entries))
            body.append(cells)
    if not body:
        return []
    header = ["experiment", "attack", "confidence threshold"]
    for threat in THREATS:
        header += [f"{threat} precision %", f"{threat} share of tokens %"]
    return markdown_table(header + ["ASR % (naive / adaptive)"], body)
