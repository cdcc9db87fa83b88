"""Shared fixtures of the evaluation tests: a tiny random BERT and toy evaluation data files."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from tests.helpers import WORDS, make_tiny_bert


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine two torch threads spin-wait
    (simple ops ~40x slower): every evaluation test module runs with one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> str:
    """A random 4-layer BERT (d=32) with a WordPiece vocabulary over ``tests.helpers.WORDS``."""
    return str(make_tiny_bert(tmp_path_factory.mktemp("eval-model") / "tiny"))


def _write(path: Path, rows: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """Toy ``sentiment_vader.jsonl.gz`` (sentiment from w0-9 / w10-19, domain from w20-28 / 29-37 / 38-46)
    and ``sentiment_multiemo.jsonl.gz`` (the same words; domains medicine / hotels / products; 2 labels)."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("eval-data")
    for file, domains in (
        ("sentiment_vader.jsonl.gz", {"movie": WORDS[20:29], "tweet": WORDS[29:38], "amazon": WORDS[38:47]}),
        ("sentiment_multiemo.jsonl.gz", {"medicine": WORDS[20:29], "hotels": WORDS[29:38], "products": WORDS[38:47]}),
    ):
        rows = []
        for i in range(360):
            label = "positive" if i % 2 else "negative"
            domain = list(domains)[i % 3]
            own = WORDS[10:20] if label == "positive" else WORDS[:10]
            words = rng.sample(own, 2) + rng.sample(domains[domain], 2) + rng.sample(WORDS[47:], 2)
            rng.shuffle(words)
            split = "test" if i % 5 == 4 else "train"  # every label x domain pair
            rows.append({"text": " ".join(words), "label": label, "domain": domain, "split": split, "score": 0.0})
        _write(path / file, rows)
    return path
