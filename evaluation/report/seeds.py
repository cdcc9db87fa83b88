"""Rows over seeds: mean and a 95% confidence interval per configuration that was run with several seeds.

Promises: ``seed_groups`` groups rows whose configs differ only in ``seed`` (in order of their first
row, seeds sorted); ``mean_ci`` is the mean and the half-width of the two-sided 95% Student-t interval
over the values (sample standard deviation, n - 1 degrees of freedom; half-width None for n < 2);
``seeds_table`` shows, per group of at least ``min_seeds`` rows, accuracy, the utility drop against the
undefended row of the same seed (paired), and the strongest token ASR under both threat models.
Pure: nothing is written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from evaluation.report.queries import THREATS, strongest
from evaluation.report.tables import markdown_table
from evaluation.rows import ResultRow

__all__ = ["T_975", "SeedGroup", "mean_ci", "seed_groups", "seeds_table", "t_quantile"]

#: two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30
T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z_975 = 1.959964


def t_quantile(df: int) -> float:
    """t_{0.975, df}: the table for df <= 30, beyond it the Cornish-Fisher expansion (error < 1e-3)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = _Z_975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Sequence[float]) -> tuple[float, float | None, int]:
    """(mean, half-width of the 95% t-interval or None when n < 2, n) of ``values``."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = sum(values) / n
    if n < 2:
        return mean, None, n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile(n - 1) * sd / math.sqrt(n), n


@dataclass(frozen=True)
class SeedGroup:
    """Rows whose configs differ only in ``seed`` (sorted by seed)."""

    rows: tuple[ResultRow, ...]

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(r.config.seed for r in self.rows)

    @property
    def first(self) -> ResultRow:
        return self.rows[0]


def _without_seed(row: ResultRow) -> str:
    data = row.config.to_dict()
    data.pop("seed")
    return json.dumps(data, sort_keys=True, default=str)


def seed_groups(rows: Iterable[ResultRow]) -> list[SeedGroup]:
    """Rows grouped by their config without ``seed`` (one row per seed: a later duplicate replaces an
    earlier one), in order of each group's first row."""
    groups: dict[str, dict[int, ResultRow]] = {}
    for r in rows:
        groups.setdefault(_without_seed(r), {})[r.config.seed] = r
    return [SeedGroup(tuple(g[s] for s in sorted(g))) for g in groups.values()]


def _cell(values: Sequence[float | None], scale: float = 100.0, signed: bool = False) -> str:
    """ "mean ± half [lo, hi]" of the non-None values (in percent / points), "n/a" when there are none."""
    present = [v for v in values if v is not None]
    if not present:
        return "n/a"
    mean, half, _ = mean_ci(present)
    fmt = "{:+.1f}" if signed else "{:.1f}"
    if half is None:
        return fmt.format(scale * mean) + " (one seed)"
    lo, hi = scale * (mean - half), scale * (mean + half)
    text = f"{fmt.format(scale * mean)} ± {scale * half:.1f} [{fmt.format(lo)}, {fmt.format(hi)}]"
    return text + ("" if len(present) == len(values) else f" (n={len(present)})")


def _setting(row: ResultRow) -> str:
    c = row.config
    return f"{c.attack_budget}-n{c.n_train}-e{c.epochs}"


def seeds_table(rows: Iterable[ResultRow], min_seeds: int = 2) -> list[str]:
    """Mean and 95% t-interval over seeds per configuration run with at least ``min_seeds`` seeds.

    Columns: the setting (without the seed), dataset, experiment, n and the seeds, UP accuracy, the UP
    drop (the row's ``undefended_accuracy`` minus its accuracy, i.e. paired with the undefended row of
    the same seed; n/a for rows without it), and the strongest token ASR per threat model. Empty when
    no configuration has ``min_seeds`` seeds."""
    groups = [g for g in seed_groups(rows) if len(g.rows) >= max(min_seeds, 1)]
    if not groups:
        return []
    header = ["setting", "dataset", "experiment", "n seeds (seeds)", "UP acc %", "UP drop (pts, paired)"]
    header += [f"strongest token ASR % ({threat})" for threat in THREATS]
    body = []
    for g in groups:
        accuracy = [r.utility.accuracy for r in g.rows]
        drop = [
            None if r.utility.undefended_accuracy is None else r.utility.undefended_accuracy - r.utility.accuracy
            for r in g.rows
        ]
        asr = {t: [None if (e := strongest(r, t)) is None else e.asr for r in g.rows] for t in THREATS}
        seeds = ", ".join(str(s) for s in g.seeds)
        cells = [_setting(g.first), g.first.config.dataset, g.first.label, f"{len(g.rows)} ({seeds})"]
        drop_cell = "0 (undefended)" if g.first.config.mechanism == "none" else _cell(drop, signed=True)
        cells += [_cell(accuracy), drop_cell, *[_cell(asr[t]) for t in THREATS]]
        body.append(cells)
    return markdown_table(header, body)
