"""The report's best-response tables (evaluation.report.splits) on synthetic rows, and old rows without them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from evaluation.config import HARNESS_VERSION, ExperimentConfig
from evaluation.report import (
    confidence_table,
    exposure_table,
    load_rows,
    render,
    token_split_table,
    views_table,
)
from evaluation.rows import ResultRow

BASE = ExperimentConfig(n_train=64, n_public=32, n_test=32, n_attack=16, epochs=1, attack_budget="quick")
RESULTS = sorted((Path(__file__).resolve().parents[2] / "docs" / "results").glob("*.jsonl"))


def _split(asr: float, chance: float, n: int) -> dict:
    return {"asr": asr, "chance": chance, "n": n}


def _details(asr: float, exposed: float | None, views: list[float] | None) -> dict:
    details = {
        "by_class": {
            "content": _split(asr * 0.5, 0.02, 300),
            "function": _split(min(1.0, asr * 2), 0.2, 150),
            "punctuation": _split(min(1.0, asr * 3), 0.5, 50),
        },
        "confident": {"threshold": 0.9, "precision": 0.97, "share": 0.05},
    }
    if exposed is not None:
        details["by_exposure"] = {"exposed": _split(0.9, 0.3, 40), "buried": _split(asr, 0.05, 460)}
        details["exposure_accuracy"] = 0.93
        details["true_exposed_share"] = exposed
        details["detected_exposed_share"] = exposed + 0.01
    if views is not None:
        details["asr_by_views"] = views
    return details


def _row(config: ExperimentConfig, acc: float, asr: float, exposed: float | None = None, views=None) -> dict:
    attacks = []
    for name, value in (("A0-learned", asr * 0.8), ("A2", asr * 0.5), ("A0-multiview", asr)):
        for threat in ("naive", "adaptive"):
            scale = 1.0 if threat == "naive" else 1.1
            details = _details(value * scale, exposed if threat == "adaptive" else None, views)
            if name == "A2":
                details = {}  # an attack without the new details
            if name != "A0-multiview":
                details.pop("asr_by_views", None)
            attacks.append({"name": name, "threat_model": threat, "asr": min(1.0, value * scale), "chance": 0.05,
                            "n": 500, "details": details})  # fmt: skip
    observation = {"texts": 16, "attribute_values": [], "views": 3, "view_sources": {"training": 1, "validation": 2}}
    if exposed is not None:
        observation["exposed_share"] = exposed
    return {
        "key": config.key(), "label": config.label(), "config": config.to_dict(), "status": "ok",
        "harness_version": HARNESS_VERSION,
        "utility": {"accuracy": acc, "accuracy_unperturbed_inference": acc, "chance": 0.5},
        "noise": {"ratio": 1.0}, "attacks": attacks, "observation": observation,
        "timing": {"total_s": 7.0}, "finished_at": "2026-01-01T00:00:00+00:00",
    }  # fmt: skip


def _rows() -> list[ResultRow]:
    data = [
        _row(BASE.baseline(), 0.80, 0.95, views=[0.95, 0.95, 0.95]),
        _row(replace(BASE, mechanism="privtune", eta=10.0), 0.70, 0.10, exposed=0.08, views=[0.10, 0.10, 0.10]),
        _row(replace(BASE, mechanism="dchi", eta=10.0), 0.60, 0.20, exposed=0.0, views=[0.2, 0.3, 0.35]),
    ]
    return [ResultRow.from_dict(d) for d in data]


def test_split_table_shows_exposure_and_class_with_chance_and_undefended():
    lines = token_split_table(_rows(), "vader-movie")
    text = "\n".join(lines)
    assert lines[0].startswith("| experiment | strongest attack | strongest token ASR % | exposed share %")
    assert "| chance |  | 5.0 |  |  |  |  | 2.0 | 20.0 | 50.0 |" in text  # class chance from the undefended row
    # privtune: strongest = A0-multiview under both threat models; the naive entry has no exposure split
    assert "| privtune eta=10 l=3 | A0-multiview | 10.0 / 11.0 | 8.0 | n/a / 90.0 | n/a / 11.0 |" in text
    assert "| 30.0 / 5.0 | 5.0 / 5.5 | 20.0 / 22.0 | 30.0 / 33.0 |" in text  # exposure chance, then the classes
    assert lines[-3].startswith("| undefended (none) |")  # the undefended row last, then the token counts
    assert lines[-1] == "Scored tokens of the undefended row by class: content 300, function 150, punctuation 50."


def test_views_table_gives_asr_per_number_of_views():
    text = "\n".join(views_table(_rows(), "vader-movie"))
    assert "| 1 view ASR % | 2 views ASR % | 3 views ASR % |" in text
    assert "| dchi eta=10 l=3 | A0-multiview | 3 (1 + 2 + 0) | 5.0 | 20.0 / 20.0 | 30.0 / 30.0 | 35.0 / 35.0 |" in text
    assert "| undefended (none) | A0-multiview |" in text


def test_exposure_and_confidence_tables():
    text = "\n".join(exposure_table(_rows(), "vader-movie"))
    # privtune: 8% exposed -> a majority guess "buried" is right 92% of the time
    assert "| privtune eta=10 l=3 | A0-multiview | adaptive | 8.0 | 9.0 | 93.0 | 92.0 |" in text
    assert "| naive |" not in text  # the naive attacker does not read levels
    text = "\n".join(confidence_table(_rows(), "vader-movie"))
    assert "| privtune eta=10 l=3 | A0-learned | 0.9 | 97.0 | 5.0 | 97.0 | 5.0 | 8.0 / 8.8 |" in text
    assert "A2" not in text  # no confident figures: no line


def test_render_has_the_new_sections_and_old_rows_render_without_them(tmp_path):
    results = tmp_path / "rows.jsonl"
    results.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in _rows()))
    text = render(load_rows([results]), tmp_path / "RESULTS.md")
    for heading in ("Token attacks by exposure and token class (`vader-movie`)",
                    "Token ASR against the number of views of a text", "Reading which tokens were exposed",
                    "Attacker precision on the tokens it is confident about"):  # fmt: skip
        assert heading in text, heading
    assert "## Over seeds" not in text  # one seed per config
    rendered = 0
    for path in RESULTS:  # the stored rows of older harness versions: no new sections, no error
        version = json.loads(path.read_text().splitlines()[0])["harness_version"]
        if version >= 5:  # rows of this harness carry the new details
            continue
        old = load_rows([path], version=version)
        if not old:
            continue
        text = render(old, tmp_path / f"{path.stem}.md", plots_dir=tmp_path / "plots")
        assert "## Setting" in text and "Token attacks by exposure" not in text, path.name
        rendered += 1
    assert rendered >= 1


def test_tables_are_empty_for_rows_without_the_details():
    rows = [ResultRow.from_dict({**_row(BASE.baseline(), 0.8, 0.9), "attacks": []})]
    assert token_split_table(rows, "vader-movie") == [] and views_table(rows, "vader-movie") == []
    assert exposure_table(rows, "vader-movie") == [] and confidence_table(rows, "vader-movie") == []
