"""Result rows: typed, lossless through JSON, shared by the sweep's store, the baseline attachment and the report."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from evaluation.config import HARNESS_VERSION, ExperimentConfig
from evaluation.rows import AttackEntry, Machine, NoiseSummary, ResultRow, Timing, Utility
from evaluation.sweep import ResultStore, attach_undefended

RESULTS = sorted((Path(__file__).resolve().parents[2] / "docs" / "results").glob("*.jsonl"))


def _row(config: ExperimentConfig, asr: float | None = 0.5, **kw) -> ResultRow:
    attacks = (
        AttackEntry(name="A2", threat_model="naive", asr=asr, chance=0.05, n=10, details={"seconds": 1.0}),
        AttackEntry(name="A3", threat_model="naive", asr=None, chance=None, n=0, skipped="no attribute"),
    )
    return ResultRow(
        key=config.key(),
        label=config.label(),
        config=config,
        harness_version=HARNESS_VERSION,
        status="ok",
        utility=Utility(accuracy=0.8, accuracy_unperturbed_inference=0.81, chance=0.5),
        noise=NoiseSummary(ratio=1.5),
        attacks=attacks,
        timing=Timing(total_s=3.0),
        **kw,
    )


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_every_stored_row_round_trips_exactly(path):
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert lines
    for line in lines:
        data = json.loads(line)
        row = ResultRow.from_dict(data)
        assert row.to_dict() == data
        assert json.dumps(row.to_dict(), sort_keys=True) == json.dumps(data, sort_keys=True)
        assert isinstance(row.config, ExperimentConfig) and row.key == data["key"]


def test_unknown_keys_survive_and_absent_keys_stay_absent():
    data = json.loads(RESULTS[0].read_text(encoding="utf-8").splitlines()[0])
    data["from_the_future"] = {"x": 1}
    data["config"]["new_option"] = 3
    data["utility"]["f1"] = 0.7
    data["attacks"][0]["rank"] = 2
    del data["attacks"][1]["undefended_asr"]  # an entry without the baseline comparison
    data["attacks"][2]["undefended_asr"] = None  # one whose baseline lacks the attack
    del data["machine"], data["observation"]
    row = ResultRow.from_dict(data)
    assert row.to_dict() == data
    assert row.extra == {"from_the_future": {"x": 1}} and row.config_extra == {"new_option": 3}
    assert row.utility.extra == {"f1": 0.7} and row.attacks[0].extra == {"rank": 2}
    assert not row.attacks[1].has_undefended and row.attacks[2].has_undefended
    assert row.machine is None and row.observation is None
    with pytest.raises(TypeError):
        ResultRow.from_dict({k: v for k, v in data.items() if k != "utility"})


def test_attach_undefended_copies_the_baselines_figures():
    config = ExperimentConfig(mechanism="dchi", eta=10.0)
    base = _row(config.baseline(), asr=0.9)
    row = attach_undefended(_row(config, asr=0.2), base)
    assert row.undefended_key == base.key and row.utility.undefended_accuracy == base.utility.accuracy
    a2, a3 = row.attacks
    assert (a2.undefended_asr, a3.undefended_asr) == (0.9, None) and a2.has_undefended and a3.has_undefended
    out = row.to_dict()
    assert out["attacks"][1]["undefended_asr"] is None and out["attacks"][1]["skipped"] == "no attribute"
    assert "undefended_asr" not in _row(config).to_dict()["attacks"][0]  # not attached: not written
    lacking = attach_undefended(row, replace(base, attacks=base.attacks[1:]))
    assert lacking.attacks[0].undefended_asr is None  # the baseline has no A2 entry that ran


def test_the_store_writes_sorted_json_lines_and_returns_typed_rows(tmp_path):
    config = ExperimentConfig(mechanism="dchi", eta=10.0)
    row = _row(config, machine=Machine(cpu="cpu", nproc=2), finished_at="2026-01-01T00:00:00+00:00")
    store = ResultStore(tmp_path / "r.jsonl")
    store.append(row)
    line = (tmp_path / "r.jsonl").read_text().splitlines()[0]
    assert line == json.dumps(row.to_dict(), sort_keys=True)
    (tmp_path / "r.jsonl").open("a").write('{"key": "x", "status": "ok"}\n{"key": "trunc')  # unreadable rows
    again = ResultStore(tmp_path / "r.jsonl")
    assert again.rows() == [row] and again.get(config.key()) == row and "x" not in again
