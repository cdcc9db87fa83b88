"""Reading result rows for the report: load, group by setting, select, and find attack entries.

Promises: ``load_rows`` returns the finished rows of the current harness version (later rows with the
same key win); ``pick`` selects rows by config fields; ``attack`` / ``strongest`` find the entries
that ran; ``operating_points`` gives one (eta, accuracy, drop, strongest ASR) point per eta row.
Everything here is pure: no files are written, nothing is formatted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client_sdk.privacy import table
from evaluation.config import HARNESS_VERSION, ExperimentConfig
from evaluation.rows import AttackEntry, ResultRow

__all__ = [
    "ABLATION_ORDER",
    "ANY",
    "ATTRIBUTE_ATTACKS",
    "LABEL_ATTACKS",
    "NOISE_MECHANISMS",
    "THREATS",
    "TOKEN_ATTACKS",
    "OperatingPoint",
    "accuracy",
    "attack",
    "config_setting",
    "first",
    "is_variant",
    "load_rows",
    "operating_points",
    "pick",
    "setting_of",
    "strongest",
]

#: the token attacks (absent ones are ignored: older rows lack the best-response attacks A0-bayes /
#: A0-multiview / A0-context; A0-multiview attacks every view of a text the server received)
TOKEN_ATTACKS = ("A0-opt", "A0-learned", "A0-bayes", "A0-multiview", "A0-context", "A1", "A2")
LABEL_ATTACKS = ("A1-label",)
ATTRIBUTE_ATTACKS = ("A3", "A3-top", "A4", "A5")
THREATS = ("naive", "adaptive")
_NOISE_DISPLAY_ORDER = ("dchi", "privtune", "gaussian", "dchi_importance")  # plots' colours and tables' order
#: The mechanisms that add noise (the table's set; a new one must be given a place in the display order).
NOISE_MECHANISMS = tuple(sorted(table.NOISE_MECHANISMS, key=_NOISE_DISPLAY_ORDER.index))
ABLATION_ORDER = table.MECHANISMS  # method.md section 6 order
#: The mechanisms without random noise (no eta axis): none, opt3, opt3_importance.
NOISELESS = tuple(m for m in table.MECHANISMS if not table.mechanism_info(m).adds_noise)


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Any()
"""``pick``'s "any value" (``None`` asks for None, e.g. ``eta=None``: no noise)."""


def load_rows(paths: Iterable[str | Path], version: int | None = None) -> list[ResultRow]:
    """The finished result rows of the given JSONL files written by harness ``version`` (default: the
    current ``HARNESS_VERSION``; older rows are not comparable). Later rows with the same key win;
    unreadable lines are skipped."""
    version = HARNESS_VERSION if version is None else version
    rows: dict[str, ResultRow] = {}
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict) and data.get("status") == "ok" and data.get("harness_version") == version:
                row = ResultRow.from_dict(data)
                rows[row.key] = row
    return list(rows.values())


def config_setting(c: ExperimentConfig) -> tuple:
    """The part of a config that must match for rows to share a table (data sizes, epochs, budget, ...)."""
    return (
        c.model,
        c.n_train,
        c.n_public,
        c.n_test,
        c.n_attack,
        c.epochs,
        c.batch_size,
        c.learning_rate,
        c.lora_r,
        c.max_length,
        c.seed,
        c.attack_budget,
    )


def setting_of(row: ResultRow) -> tuple:
    """The part of a row's config that must match for rows to share a table."""
    return config_setting(row.config)


def attack(row: ResultRow, name: str, threat: str) -> AttackEntry | None:
    """The row's entry for attack ``name`` under ``threat`` (None if absent or skipped)."""
    return row.attack(name, threat)


def strongest(row: ResultRow, threat: str, names: Sequence[str] = TOKEN_ATTACKS) -> AttackEntry | None:
    """The entry with the highest ASR among ``names`` under ``threat`` (the strongest attacker)."""
    entries = [e for n in names if (e := row.attack(n, threat)) is not None]
    return max(entries, key=lambda e: e.asr) if entries else None


def pick(
    rows: Iterable[ResultRow],
    *,
    dataset: Any = ANY,
    mechanism: Any = ANY,
    eta: Any = ANY,
    split_layer: Any = ANY,
    hops: Any = ANY,
    defaults: bool = False,
) -> list[ResultRow]:
    """Rows whose config has every given value (``ANY``: not filtered). ``defaults`` keeps only rows
    with the default options (``options`` empty: params equal to the current defaults, no explicit
    top-model ``noise_aware``, no label DP)."""

    def matches(c: ExperimentConfig) -> bool:
        pairs = (
            (dataset, c.dataset),
            (mechanism, c.mechanism),
            (eta, c.eta),
            (split_layer, c.split_layer),
            (hops, c.hops),
        )
        return all(want is ANY or got == want for want, got in pairs)

    out = [r for r in rows if matches(r.config)]
    if defaults:
        out = [r for r in out if not is_variant(r)]
    return out


def options(config: ExperimentConfig) -> dict[str, Any]:
    """The row's non-default settings: mechanism params that differ from the mechanism's current
    defaults (grids name the default's params explicitly, so their rows keep their meaning), an
    explicit top-model choice and label DP."""
    from client_sdk.privacy import get_config

    defaults = get_config(config.mechanism).to_dict()
    out = {k: v for k, v in sorted(dict(config.params).items()) if defaults.get(k, object()) != v}
    if config.noise_aware is not None:
        out["noise_aware top"] = config.noise_aware
    if getattr(config, "label_epsilon", None) is not None:
        out["label_epsilon"] = config.label_epsilon
    return out


def first(rows: Iterable[ResultRow]) -> ResultRow | None:
    """The first of ``rows``, or None."""
    return next(iter(rows), None)


def is_variant(row: ResultRow) -> bool:
    """A row with non-default mechanism options, an explicit top-model choice or label DP (``options``)."""
    return bool(options(row.config))


def accuracy(row: ResultRow | None) -> float | None:
    """Test accuracy through the perturbed path."""
    return None if row is None else row.utility.accuracy


@dataclass(frozen=True)
class OperatingPoint:
    """One eta row of a mechanism: accuracy, drop from the undefended accuracy, strongest token attack."""

    eta: float | None
    accuracy: float
    drop: float
    asr: float
    attack: str
    ratio: float


def operating_points(rows: list[ResultRow], dataset: str, mechanism: str, threat: str) -> list[OperatingPoint]:
    """(eta, accuracy, drop, strongest token ASR) per eta row of ``mechanism`` at l=3, default options."""
    same = pick(rows, dataset=dataset, split_layer=3, hops=None, defaults=True)
    base = first(pick(same, mechanism="none"))
    if base is None:
        return []
    out = []
    for r in pick(same, mechanism=mechanism):
        entry = strongest(r, threat)
        if entry is None:
            continue
        out.append(
            OperatingPoint(
                r.config.eta, accuracy(r), accuracy(base) - accuracy(r), entry.asr, entry.name, r.noise.ratio
            )
        )
    return sorted(out, key=lambda p: (p.eta is None, p.eta or 0))
