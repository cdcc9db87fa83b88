"""The evaluation harness end to end on a tiny random model: one experiment, resume, report."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from evaluation.data import load_eval_data
from evaluation.harness import HARNESS_VERSION, ExperimentConfig, Resources
from evaluation.report import load_rows, render
from evaluation.rows import ResultRow
from evaluation.sweep import MECHANISMS, ResultStore, Runner, grid


def _config(tiny: str, **kw) -> ExperimentConfig:
    base = dict(
        dataset="vader-mixed", model=tiny, mechanism="privtune", eta=20.0, split_layer=2, n_train=96, n_public=48,
        n_test=30, n_attack=24, epochs=2, batch_size=16, learning_rate=1e-2, max_length=16, attack_budget="smoke",
    )  # fmt: skip
    base.update(kw)
    return ExperimentConfig(**base)


def test_data_parts_are_disjoint_and_balanced(data_dir):
    data = load_eval_data("vader-mixed", 96, 48, 30, data_dir=data_dir)
    assert not {r.text for r in data.private} & {r.text for r in data.public}
    assert data.summary()["private_attributes"] == {"amazon": 32, "movie": 32, "tweet": 32}
    assert set(data.summary()["public_attributes"]) == {"amazon", "movie", "tweet"}
    assert data.has_attribute and len(data.test) == 30
    assert load_eval_data("vader-mixed", 96, 48, 30, data_dir=data_dir) == data  # deterministic


def test_config_key_is_stable_and_baseline_is_none(tiny):
    cfg = _config(tiny)
    assert cfg.key() == ExperimentConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).key()
    assert cfg.key() != replace(cfg, eta=40.0).key()
    assert cfg.baseline().mechanism == "none" and cfg.baseline().eta is None
    assert replace(cfg, mechanism="gaussian").mechanism_params()["noise_multiplier"] == pytest.approx(2**0.5 / 20)
    with pytest.raises(ValueError, match="eta must be None"):
        _config(tiny, mechanism="opt3")
    assert cfg.views() == 2 + 2 and _config(tiny, inference_views=3).views() == 7
    assert (
        cfg.key() != replace(cfg, validation_views=0).key()
        and "inference_views=3" in _config(tiny, inference_views=3).label()
    )
    with pytest.raises(ValueError, match="validation_views"):
        _config(tiny, validation_views=-1)


def test_experiment_end_to_end_then_resume_does_no_training(tiny, data_dir, tmp_path):
    store = ResultStore(tmp_path / "results.jsonl")
    runner = Runner(store, Resources(tmp_path / "cache", str(data_dir)), log=lambda msg: None)
    cfg = _config(tiny)
    row = runner.run(cfg)
    assert runner.trained == 2  # the undefended baseline first, then the experiment
    assert isinstance(row, ResultRow) and row.key == cfg.key() and row.status == "ok" and row.config == cfg
    utility = row.utility
    assert 0.0 <= utility.accuracy <= 1.0 and 0.0 <= utility.accuracy_unperturbed_inference <= 1.0
    assert utility.steps == 2 * 6 and 0 < utility.chance <= 1
    assert row.noise.ratio > 0.1  # eta=20 on d=32: noise is of the order of the signal
    assert row.observation.views == 4 and row.observation.view_sources == {"training": 2, "validation": 2}
    assert row.observation.exposed_share is None or 0.0 <= row.observation.exposed_share <= 1.0
    attacks = {(a.name, a.threat_model): a for a in row.attacks}
    for name in ("A0-learned", "A2", "A1-label", "A3", "A5"):
        for threat in ("naive", "adaptive"):
            entry = attacks[(name, threat)]
            assert 0.0 <= entry.asr <= 1.0 and 0.0 < entry.chance <= 1.0
            assert entry.undefended_asr is not None and entry.details["harness_seconds"] >= 0
    label = attacks[("A1-label", "naive")]  # the head is on the device; its gradient rows still cluster by label
    assert label.asr >= 0.9 and label.details["row_dim"] == 32 and label.details["k"] == 2, label  # (n, d) rows
    assert label.details["public_examples"] > 0 and 0.0 <= label.details["named_asr"] <= 1.0
    for threat in ("naive", "adaptive"):  # no head on the server: no shadow gradients for A4
        a4 = attacks[("A4", threat)]
        assert a4.asr is None and "head-on-device" in a4.skipped
    baseline = store.get(cfg.baseline().key())
    assert baseline is not None and baseline.config.mechanism == "none"
    assert baseline.noise.ratio < 1e-2  # float16 on the wire only
    # without noise the unperturbed path is the perturbed one: the same trained top and head answer both
    assert baseline.utility.accuracy == baseline.utility.accuracy_unperturbed_inference
    assert row.undefended_key == baseline.key and row.utility.undefended_accuracy == baseline.utility.accuracy
    assert {(a.name, a.details.get("same_as")) for a in baseline.attacks if a.threat_model == "adaptive"} == {
        (a.name, "naive") for a in baseline.attacks if a.threat_model == "naive"
    }  # with mechanism none the adaptive attacker is the naive one
    stored = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [ResultRow.from_dict(json.loads(line)) for line in stored] == [baseline, row]  # what was returned

    (tmp_path / "results.jsonl").open("a").write('{"key": "trunc')  # a crash mid-write

    def no_training(config, resources):
        raise AssertionError(f"{config.label()} should have been skipped")

    again = Runner(ResultStore(tmp_path / "results.jsonl"), Resources(tmp_path / "cache", str(data_dir)),
                   log=lambda msg: None, experiment=no_training)  # fmt: skip
    counts = again.run_all([cfg.baseline(), cfg])
    assert counts == {"done": 2, "ran": 0, "failed": 0, "left": 0} and again.trained == 0


def test_run_all_logs_failures_and_respects_the_budget(tiny, tmp_path):
    calls = []

    def fake(config, resources):
        calls.append(config.mechanism)
        if config.mechanism == "dchi":
            raise RuntimeError("boom")
        return ResultRow.from_dict(_fake_row(config, acc=0.8, asr=0.9))

    logs = []
    runner = Runner(ResultStore(tmp_path / "r.jsonl"), Resources(tmp_path), log=logs.append, experiment=fake)
    counts = runner.run_all([_config(tiny, mechanism="dchi"), _config(tiny)])
    assert counts == {"done": 0, "ran": 2, "failed": 1, "left": 0}
    assert any("FAILED" in line for line in logs) and calls == ["none", "dchi", "privtune"]
    later = Runner(ResultStore(tmp_path / "r.jsonl"), Resources(tmp_path), log=logs.append, experiment=fake)
    assert later.run_all([_config(tiny, eta=99.0)], budget_s=-1) == {"done": 0, "ran": 0, "failed": 0, "left": 1}


def test_shards_partition_the_grid_and_share_finished_rows(tiny, tmp_path):
    from evaluation.sweep import shard

    configs = grid()
    parts = [shard(configs, i, 3) for i in range(3)]
    assert sorted(c.key() for p in parts for c in p) == sorted(c.key() for c in configs)
    with pytest.raises(ValueError):
        shard(configs, 3, 3)
    calls = []

    def fake(config, resources):
        calls.append(config.mechanism)
        return ResultRow.from_dict(_fake_row(config, acc=0.8, asr=0.9))

    first = Runner(ResultStore(tmp_path / "r.jsonl"), Resources(tmp_path), log=lambda m: None, experiment=fake)
    second = Runner(ResultStore(tmp_path / "r.jsonl"), Resources(tmp_path), log=lambda m: None, experiment=fake)
    first.run_all([_config(tiny)])  # runs the baseline and the config
    assert second.run_all([_config(tiny, mechanism="dchi")])["ran"] == 1  # the baseline is read from the file
    assert calls == ["none", "privtune", "dchi"]


def test_grids_have_unique_keys_and_a_baseline():
    from evaluation.cli import GRID_NAMES, OTHER_GRIDS
    from evaluation.sweep import DEFAULT_GRIDS, GRIDS

    assert DEFAULT_GRIDS == GRID_NAMES and tuple(GRIDS) == GRID_NAMES + OTHER_GRIDS  # no torch in the CLI
    for quick in (True, False):
        configs = grid(quick=quick)
        assert len({c.key() for c in configs}) == len(configs)
        assert any(c.mechanism == "none" and c.split_layer == 3 for c in configs)
        assert {c.mechanism for c in configs} >= {"none", "dchi", "privtune", "opt3"}
    full = grid()
    assert {c.mechanism for c in full} == set(MECHANISMS)
    assert {c.split_layer for c in full} == {3, 4, 5} and {c.hops for c in full} == {None, 4, 5}
    assert {c.dataset for c in full} == {"vader-movie", "vader-mixed", "multiemo", "multiemo-medicine"}
    assert {c.seed for c in full} == {0, 1, 2} and {c.seed for c in grid(quick=True)} == {0}  # headline: full only


def _fake_row(config: ExperimentConfig, acc: float, asr: float, ratio: float = 1.0) -> dict:
    attacks = []
    for name, chance in (("A0-learned", 0.05), ("A2", 0.05), ("A1-label", 0.5), ("A3", 0.34)):
        for threat in ("naive", "adaptive"):
            value = asr if threat == "naive" else min(1.0, asr * 1.1)
            attacks.append({"name": name, "threat_model": threat, "asr": value, "chance": chance, "n": 100,
                            "details": {}, "undefended_asr": 0.95})  # fmt: skip
    return {
        "key": config.key(), "label": config.label(), "config": config.to_dict(), "status": "ok",
        "harness_version": HARNESS_VERSION,
        "utility": {"accuracy": acc, "accuracy_unperturbed_inference": acc + 0.01, "chance": 0.5},
        "noise": {"ratio": ratio}, "attacks": attacks,
        "timing": {"fit_s": 1.0, "train_s": 2.0, "eval_s": 1.0, "attack_s": 3.0, "total_s": 7.0},
        "machine": {"cpu": "test cpu", "nproc": 2, "torch_threads": 2, "torch": "x"},
        "finished_at": "2026-01-01T00:00:00+00:00",
    }  # fmt: skip


def test_report_renders_the_paper_shaped_tables(tmp_path):
    base = ExperimentConfig(n_train=64, n_public=32, n_test=32, n_attack=16, epochs=1, attack_budget="quick")
    rows = [_fake_row(base.baseline(), 0.80, 0.92, ratio=0.0), _fake_row(replace(base, mechanism="opt3"), 0.78, 0.5)]
    for mechanism in ("privtune", "dchi", "gaussian"):
        for eta, acc, asr in ((10.0, 0.55, 0.08), (20.0, 0.78, 0.40), (160.0, 0.795, 0.85)):
            rows.append(_fake_row(replace(base, mechanism=mechanism, eta=eta), acc, asr, ratio=57 / eta))
    rows += [_fake_row(replace(base, split_layer=5, mechanism="none"), 0.79, 0.7),
             _fake_row(replace(base, split_layer=5, mechanism="privtune", eta=10.0), 0.76, 0.3),
             _fake_row(replace(base, mechanism="privtune", eta=10.0, hops=5), 0.77, 0.38),
             _fake_row(replace(base, mechanism="privtune", eta=20.0, noise_aware=False), 0.60, 0.41),
             _fake_row(replace(base, mechanism="privtune", eta=20.0, params=(("importance_to_scale", "sigmoid"),)),
                       0.70, 0.9),
             _fake_row(replace(base, dataset="vader-mixed", mechanism="none"), 0.7, 0.9)]  # fmt: skip
    results = tmp_path / "rows.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    out = tmp_path / "docs" / "RESULTS.md"
    text = render(load_rows([results]), out, sources=[str(results)])
    assert out.read_text() == text
    for heading in ("Headline check", "Table III shape: `privtune`", "Table III shape: `dchi`", "paper's Table III",
                    "Table IV shape", "Table V shape: OPT-3 hop count", "Table V shape: mechanism ablation",
                    "Attribute inference on `vader-mixed`", "Variants: non-default options", "test cpu"):  # fmt: skip
        assert heading in text, heading
    assert (
        "| privtune | 20 | noise_aware top=False |" in text
        and "| privtune | 20 | importance_to_scale=sigmoid |" in text
    )
    assert "| 20 | 2.85 | 78.0 |" in text  # the default row, not a variant, in the eta table
    assert "| 10 | 5.70 | 55.0 | +25.0 | 56.0 | 8.0 / 8.8 |" in text  # eta row: ratio, UP, drop, strongest ASR
    assert "None (no noise = undefended)" in text and "inf (opt3: shift only)" in text
    assert "| privtune | naive |" in text and "| privtune | adaptive |" in text
    pngs = sorted(p.name for p in out.parent.glob("*.png"))
    assert pngs == ["eta_quick-n64-e1-s0.png", "privacy_utility_quick-n64-e1-s0.png"]
    # hand-written notes survive a re-render
    out.write_text(text.replace("(hand-written analysis goes here; kept when the report is regenerated)", "MY NOTES"))
    assert "MY NOTES" in render(load_rows([results]), out)


def test_python_m_evaluation_report_writes_the_document(tmp_path, capsys):
    from evaluation.report import main

    base = ExperimentConfig(n_train=64, n_public=32, n_test=32, n_attack=16, epochs=1, attack_budget="quick")
    rows = [_fake_row(base.baseline(), 0.8, 0.9), _fake_row(replace(base, mechanism="dchi", eta=10.0), 0.6, 0.1)]
    results = tmp_path / "rows.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "RESULTS.md"
    assert main([str(results), "--out", str(out)]) == 0
    assert "Table III shape: `dchi`" in out.read_text() and "from 2 rows" in capsys.readouterr().out
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "empty.jsonl"), "--out", str(out)])
    assert info.value.code == 2


def test_cli_reports_from_a_jsonl_without_running(tmp_path, capsys):
    from privtune.cli import main

    base = ExperimentConfig(n_train=64, n_public=32, n_test=32, n_attack=16, epochs=1, attack_budget="quick")
    rows = [_fake_row(base.baseline(), 0.8, 0.9), _fake_row(replace(base, mechanism="dchi", eta=10.0), 0.6, 0.1)]
    results = tmp_path / "rows.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "RESULTS.md"
    assert main(["eval", "--no-run", "--report", "--out", str(results), "--report-out", str(out)]) == 0
    assert "Table III shape: `dchi`" in out.read_text()
    assert main(["eval", "--quick", "--list", "--out", str(results)]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(listed) == len(grid(quick=True)) and not any(item["done"] for item in listed)
