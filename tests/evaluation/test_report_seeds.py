"""Rows over seeds (evaluation.report.seeds): grouping, the t-interval, the table and its section."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from evaluation.config import HARNESS_VERSION, ExperimentConfig
from evaluation.report import load_rows, mean_ci, render, seed_groups, seeds_table, t_quantile
from evaluation.rows import ResultRow

BASE = ExperimentConfig(n_train=64, n_public=32, n_test=32, n_attack=16, epochs=1, attack_budget="quick")


def _row(config: ExperimentConfig, acc: float, asr: float, undefended: float | None = None) -> ResultRow:
    attacks = [
        {"name": "A2", "threat_model": t, "asr": asr if t == "naive" else asr + 0.01, "chance": 0.05, "n": 100,
         "details": {}} for t in ("naive", "adaptive")
    ]  # fmt: skip
    utility = {"accuracy": acc, "accuracy_unperturbed_inference": acc, "chance": 0.5}
    if undefended is not None:
        utility["undefended_accuracy"] = undefended
    return ResultRow.from_dict({
        "key": config.key(), "label": config.label(), "config": config.to_dict(), "status": "ok",
        "harness_version": HARNESS_VERSION, "utility": utility, "noise": {"ratio": 1.0}, "attacks": attacks,
        "timing": {"total_s": 1.0}, "finished_at": "2026-01-01T00:00:00+00:00",
    })  # fmt: skip


def test_t_quantiles_and_the_interval():
    assert t_quantile(1) == 12.706 and t_quantile(2) == 4.303 and t_quantile(30) == 2.042
    assert t_quantile(31) == pytest.approx(2.0395, abs=1e-3) and t_quantile(1000) == pytest.approx(1.9623, abs=1e-3)
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 10, 29, 40, 120):
        assert t_quantile(df) == pytest.approx(float(scipy_stats.t.ppf(0.975, df)), abs=1e-3), df
    mean, half, n = mean_ci([0.70, 0.72, 0.74])
    # sd = 0.02, half-width = t_{0.975, 2} * 0.02 / sqrt(3)
    assert (mean, n) == (pytest.approx(0.72), 3) and half == pytest.approx(4.303 * 0.02 / math.sqrt(3))
    assert mean_ci([0.5]) == (0.5, None, 1)
    with pytest.raises(ValueError):
        mean_ci([])


def test_groups_are_configs_that_differ_only_in_seed():
    privtune = replace(BASE, mechanism="privtune", eta=10.0)
    rows = [_row(replace(privtune, seed=s), 0.7, 0.1) for s in (2, 0, 1)]
    rows += [_row(replace(privtune, eta=20.0), 0.75, 0.3), _row(replace(BASE.baseline(), seed=1), 0.8, 0.9)]
    groups = seed_groups(rows)
    assert [g.seeds for g in groups] == [(0, 1, 2), (0,), (1,)]
    assert all(r.config.eta == 10.0 for r in groups[0].rows)


def test_seeds_table_mean_ci_and_paired_drop(tmp_path):
    privtune = replace(BASE, mechanism="privtune", eta=10.0)
    rows = []
    for seed, base_acc, acc, asr in ((0, 0.80, 0.70, 0.08), (1, 0.82, 0.74, 0.10), (2, 0.78, 0.66, 0.12)):
        rows += [_row(replace(BASE.baseline(), seed=seed), base_acc, 0.95, undefended=base_acc)]
        rows += [_row(replace(privtune, seed=seed), acc, asr, undefended=base_acc)]
    rows.append(_row(replace(privtune, eta=20.0), 0.75, 0.3))  # one seed only: not in the table
    lines = seeds_table(rows)
    text = "\n".join(lines)
    assert len(lines) == 2 + 2  # header, rule, none, privtune
    acc_half = 4.303 * 0.04 / math.sqrt(3)  # accuracies 70, 74, 66: sd 4 points
    drop_half = 4.303 * 0.02 / math.sqrt(3)  # drops 10, 8, 12: sd 2 points
    asr_half = 4.303 * 0.02 / math.sqrt(3)
    expected = (
        f"| quick-n64-e1 | vader-movie | privtune eta=10 l=3 | 3 (0, 1, 2) | 70.0 ± {100 * acc_half:.1f} "
        f"[{70 - 100 * acc_half:.1f}, {70 + 100 * acc_half:.1f}] | +10.0 ± {100 * drop_half:.1f} "
        f"[{10 - 100 * drop_half:+.1f}, {10 + 100 * drop_half:+.1f}] | 10.0 ± {100 * asr_half:.1f} "
        f"[{10 - 100 * asr_half:.1f}, {10 + 100 * asr_half:.1f}] | 11.0 ± {100 * asr_half:.1f} "
    )
    assert expected in text, text
    assert "| none l=3 | 3 (0, 1, 2) | 80.0 ± " in text and "0 (undefended)" in text
    results = tmp_path / "rows.jsonl"
    results.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in rows))
    doc = render(load_rows([results]), tmp_path / "RESULTS.md")
    assert "## Over seeds" in doc and expected in doc
    assert doc.index("## Over seeds") < doc.index("## Setting")


def test_no_table_without_repeated_seeds():
    assert seeds_table([_row(BASE.baseline(), 0.8, 0.9)]) == []
