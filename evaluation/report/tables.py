"""The report's Markdown tables in the paper's shapes (Tables III, IV, V), plus variants and attributes.

Promises: every function takes the rows of one setting and returns the table's Markdown lines (empty
when the rows do not make that table). Every ASR cell is "naive / adaptive" in percent, every table
has a chance row or column and an undefended row (mechanism ``none``) where it applies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from evaluation.report.queries import (
    ABLATION_ORDER,
    ATTRIBUTE_ATTACKS,
    LABEL_ATTACKS,
    NOISELESS,
    THREATS,
    TOKEN_ATTACKS,
    accuracy,
    attack,
    first,
    is_variant,
    pick,
    strongest,
)
from evaluation.report.queries import options as queries_options
from evaluation.rows import ResultRow

__all__ = [
    "ablation_table",
    "attribute_table",
    "chance_cell",
    "eta_table",
    "hops_table",
    "markdown_table",
    "pair",
    "pct",
    "split_table",
    "utility_cells",
    "variants_table",
]


def pct(x: float | None, digits: int = 1) -> str:
    """``x`` in percent, or "n/a"."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def pair(row: ResultRow | None, name: str | None) -> str:
    """ "naive / adaptive" ASR cell of ``row`` (``name`` None: the strongest token attack)."""
    if row is None:
        return "n/a"
    cells = []
    for threat in THREATS:
        entry = strongest(row, threat) if name is None else attack(row, name, threat)
        cells.append(pct(None if entry is None else entry.asr))
    return " / ".join(cells)


def chance_cell(row: ResultRow | None, name: str | None) -> str:
    """The chance level of attack ``name`` (strongest: the largest chance among the token attacks)."""
    if row is None:
        return "n/a"
    names = TOKEN_ATTACKS if name is None else (name,)
    values = [e.chance for n in names if (e := attack(row, n, "naive")) is not None]
    return pct(max(values)) if values else "n/a"


def markdown_table(header: Sequence[str], body: list[Sequence[str]]) -> list[str]:
    """A Markdown table: the first column left-aligned, the others right-aligned."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(header))) + "|",
    ]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def _attack_names(rows: list[ResultRow], names: Sequence[str]) -> list[str]:
    present = {e.name for r in rows for e in r.attacks if e.asr is not None}
    return [n for n in names if n in present]


def utility_cells(row: ResultRow | None, base: ResultRow | None) -> list[str]:
    """noise/signal, UP %, UP drop (points, against ``base``) and UP with unperturbed inference %."""
    if row is None:
        return ["n/a"] * 4
    acc, base_acc = accuracy(row), accuracy(base)
    drop = "n/a" if base_acc is None else f"{100 * (base_acc - acc):+.1f}"
    return [f"{row.noise.ratio:.2f}", pct(acc), drop, pct(row.utility.accuracy_unperturbed_inference)]


def _asr_cells(row: ResultRow | None, names: Sequence[str]) -> list[str]:
    return [pair(row, None), *[pair(row, n) for n in names]]


_UTILITY_HEADER = ["noise/signal", "UP acc %", "UP drop (pts)", "UP, unperturbed inference %", "strongest token ASR %"]


def eta_table(rows: list[ResultRow], mechanism: str, dataset: str, split_layer: int = 3) -> list[str]:
    """Table III shape for ``mechanism``: one row per eta, plus chance, no-noise and (privtune) OPT-3 rows."""
    same = pick(rows, dataset=dataset, split_layer=split_layer, hops=None, defaults=True)
    points = sorted(pick(same, mechanism=mechanism), key=lambda r: r.config.eta)
    if not points:
        return []
    base = first(pick(same, mechanism="none"))
    names = _attack_names(same, TOKEN_ATTACKS + LABEL_ATTACKS)
    header = ["eta", *_UTILITY_HEADER, *[f"{n} ASR %" for n in names]]
    ref = base or points[0]
    chance = ["chance", "", pct(ref.utility.chance), "", "", chance_cell(ref, None)]
    body = [[*chance, *[chance_cell(ref, n) for n in names]]]
    for r in points:
        body.append([f"{r.config.eta:g}", *utility_cells(r, base), *_asr_cells(r, names)])
    if mechanism in ("privtune",):
        for opt in pick(same, mechanism="opt3"):
            body.append(["inf (opt3: shift only)", *utility_cells(opt, base), *_asr_cells(opt, names)])
    if base is not None:
        body.append(["None (no noise = undefended)", *utility_cells(base, base), *_asr_cells(base, names)])
    return markdown_table(header, body)


def split_table(rows: list[ResultRow], dataset: str, mechanism: str, eta: float) -> list[str]:
    """Table IV shape: per split layer, undefended vs ``mechanism`` at ``eta``."""
    same = pick(rows, dataset=dataset, hops=None, defaults=True)
    layers = sorted({r.config.split_layer for r in pick(same, mechanism=mechanism, eta=eta)})
    if len(layers) < 2:
        return []
    header = [
        "split layer l",
        "UP none %",
        f"UP {mechanism} %",
        "noise/signal",
        "strongest token ASR none %",
        f"strongest token ASR {mechanism} %",
        "A2 ASR none %",
        f"A2 ASR {mechanism} %",
        "chance (strongest) %",
    ]
    body = []
    for layer in layers:
        base = first(pick(same, mechanism="none", split_layer=layer))
        row = first(pick(same, mechanism=mechanism, eta=eta, split_layer=layer))
        body.append(
            [
                str(layer),
                pct(accuracy(base)),
                pct(accuracy(row)),
                f"{row.noise.ratio:.2f}",
                pair(base, None),
                pair(row, None),
                pair(base, "A2"),
                pair(row, "A2"),
                chance_cell(row, None),
            ]
        )
    return markdown_table(header, body)


def hops_table(rows: list[ResultRow], dataset: str, eta: float) -> list[str]:
    """Table V shape (hop rows): privtune at ``eta`` per OPT-3 hop count (None = the default, 3)."""
    same = pick(rows, dataset=dataset, split_layer=3, mechanism="privtune", eta=eta, defaults=True)
    if len({r.config.hops for r in same}) < 2:
        return []
    base = first(pick(rows, dataset=dataset, split_layer=3, mechanism="none"))
    names = _attack_names(same, TOKEN_ATTACKS)
    header = ["hops n", *_UTILITY_HEADER, *[f"{n} ASR %" for n in names]]
    body = []
    for r in sorted(same, key=lambda r: r.config.hops or 3):
        hops = r.config.hops
        label = f"{hops or 3}" + ("" if hops else " (default)")
        body.append([label, *utility_cells(r, base), *_asr_cells(r, names)])
    body.append(["undefended (none)", *utility_cells(base, base), *_asr_cells(base, names)])
    return markdown_table(header, body)


def ablation_table(rows: list[ResultRow], dataset: str, eta: float) -> list[str]:
    """Table V shape (ablation): every mechanism at ``eta`` (noise-free mechanisms have no eta)."""
    same = pick(rows, dataset=dataset, split_layer=3, hops=None, defaults=True)
    chosen = []
    for m in ABLATION_ORDER:
        want = None if m in NOISELESS else eta
        chosen += pick(same, mechanism=m, eta=want)
    if len(chosen) < 3:
        return []
    base = first(pick(same, mechanism="none"))
    names = _attack_names(chosen, TOKEN_ATTACKS + LABEL_ATTACKS)
    header = ["mechanism", *_UTILITY_HEADER, *[f"{n} ASR %" for n in names]]
    chance = ["chance", "", pct(base.utility.chance) if base else "n/a", "", "", chance_cell(base, None)]
    body = [[*chance, *[chance_cell(base, n) for n in names]]]
    for r in chosen:
        label = r.config.mechanism + (f" (eta {eta:g})" if r.config.eta is not None else "")
        body.append([label, *utility_cells(r, base), *_asr_cells(r, names)])
    return markdown_table(header, body)


def variants_table(rows: list[ResultRow], dataset: str) -> list[str]:
    """Rows with non-default options (e.g. method.md's importance form, the plain top) next to the defaults."""
    same = pick(rows, dataset=dataset, split_layer=3, hops=None)
    variants = [r for r in same if is_variant(r)]
    if not variants:
        return []
    base = first(pick(same, mechanism="none", defaults=True))
    defaults = {(r.config.mechanism, r.config.eta): r for r in pick(same, defaults=True)}
    chosen: list[ResultRow] = []
    for r in sorted(variants, key=lambda r: (r.config.mechanism, r.config.eta or 0, r.label)):
        default = defaults.get((r.config.mechanism, r.config.eta))
        if default is not None and default not in chosen:
            chosen.append(default)
        chosen.append(r)
    header = [
        "mechanism",
        "eta",
        "options (default if empty)",
        "noise/signal",
        "UP acc %",
        "UP drop (pts)",
        "UP, unperturbed inference %",
        "strongest token ASR %",
        "A0-learned ASR %",
        "A2 ASR %",
    ]
    body = []
    for r in chosen:
        c = r.config
        options = [f"{k}={v}" for k, v in queries_options(c).items()]
        eta = "" if c.eta is None else f"{c.eta:g}"
        body.append(
            [c.mechanism, eta, ", ".join(options), *utility_cells(r, base), *_asr_cells(r, ["A0-learned", "A2"])]
        )
    return markdown_table(header, body)


def attribute_table(rows: list[ResultRow], dataset: str) -> list[str]:
    """Attribute attacks (A3/A4/A5, and A1-label) on a dataset with a private attribute."""
    order = lambda r: (ABLATION_ORDER.index(r.config.mechanism), r.config.eta or 0)
    same = sorted(pick(rows, dataset=dataset, split_layer=3, hops=None, defaults=True), key=order)
    if not same:
        return []
    base = first(pick(same, mechanism="none"))
    names = _attack_names(same, ATTRIBUTE_ATTACKS + LABEL_ATTACKS)
    header = [
        "mechanism",
        "eta",
        "noise/signal",
        "UP acc %",
        "UP drop (pts)",
        "strongest token ASR %",
        *[f"{n} ASR %" for n in names],
    ]
    ref = base or same[0]
    chance = ["chance", "", "", pct(ref.utility.chance), "", chance_cell(ref, None)]
    body = [[*chance, *[chance_cell(ref, n) for n in names]]]
    for r in same:
        eta = "" if r.config.eta is None else f"{r.config.eta:g}"
        cells = utility_cells(r, base)
        body.append([r.config.mechanism, eta, cells[0], cells[1], cells[2], *_asr_cells(r, names)])
    return markdown_table(header, body)
