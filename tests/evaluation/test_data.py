"""Evaluation datasets (evaluation.data): the medicine setting's private / public / test parts."""

from __future__ import annotations

import pytest

from evaluation.data import DATASETS, EvalDataError, load_eval_data


def test_medicine_keeps_private_and_test_texts_medical_and_public_texts_from_other_domains(data_dir):
    spec = DATASETS["multiemo-medicine"]
    assert spec.domains == ("medicine",) and spec.public_domains == ("hotels", "products", "reviews")
    data = load_eval_data("multiemo-medicine", 60, 100, 20, data_dir=data_dir)
    medicine = {r["text"] for r in _rows(data_dir) if r["domain"] == "medicine"}
    assert len(data.private) == 60 and len(data.public) == 100 and len(data.test) == 20
    assert all(r.text in medicine for r in (*data.private, *data.test))
    assert not any(r.text in medicine for r in data.public)  # the attacker's text is not medical
    assert not data.has_attribute and data.summary()["private_attributes"] is None
    assert load_eval_data("multiemo-medicine", 60, 100, 20, data_dir=data_dir) == data  # deterministic
    assert load_eval_data("multiemo-medicine", 60, 100, 20, seed=1, data_dir=data_dir) != data
    whole = [r for r in _rows(data_dir) if r["domain"] == "medicine" and r["split"] == "test"]
    assert len(load_eval_data("multiemo-medicine", 60, 100, 1000, data_dir=data_dir).test) == len(whole)
    with pytest.raises(EvalDataError, match="n_public"):
        load_eval_data("multiemo-medicine", 60, 10_000, 20, data_dir=data_dir)


def test_multiemo_still_holds_every_domain(data_dir):
    data = load_eval_data("multiemo", 96, 48, 30, data_dir=data_dir)
    assert set(data.summary()["private_attributes"]) == {"hotels", "medicine", "products"}
    assert not {r.text for r in data.private} & {r.text for r in data.public}


def _rows(data_dir):
    import gzip
    import json

    with gzip.open(data_dir / "sentiment_multiemo.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]
