"""Datasets the SDK accepts, normalised to (text, label) pairs that never leave the device."""

from __future__ import annotations

import csv
import gzip
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEXT_KEYS = ("text", "sentence", "prompt", "input")
LABEL_KEYS = ("label", "labels", "target", "answer")


class DatasetError(ValueError):
    """The dataset cannot be read; the message says what was expected."""


@dataclass(frozen=True)
class Example:
    text: str
    label: Any


def load_examples(dataset: Any, text_column: str | None = None, label_column: str | None = None) -> list[Example]:
    """Read a list of (text, label) pairs or dicts, a JSONL/JSONL.GZ/CSV path, or a ``datasets.Dataset``.

    Dict rows (JSONL, CSV, datasets) take the text from ``text_column`` and the label from
    ``label_column``, or by default from the first of ``TEXT_KEYS`` / ``LABEL_KEYS`` they have; a row
    without them is a ``DatasetError`` that names the columns expected and the columns found."""
    if isinstance(dataset, (str, Path)):
        rows = read_rows(dataset)
    elif isinstance(dataset, Iterable):  # lists of pairs or dicts, datasets.Dataset (iterates dict rows)
        rows = list(dataset)
    else:
        raise DatasetError(
            f"unsupported dataset type {type(dataset).__name__}: give a list of (text, label), "
            "a .jsonl/.csv path or a datasets.Dataset"
        )
    if not rows:
        raise DatasetError("the dataset is empty")
    return [_example(row, i, text_column, label_column) for i, row in enumerate(rows)]


def read_rows(path: str | Path) -> list[Any]:
    """The rows of a .jsonl / .jsonl.gz file (one JSON value a line) or a .csv file (dicts of strings)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"no such file: {path}")
    suffixes = "".join(path.suffixes[-2:]).lower()
    opener = gzip.open if suffixes.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        if ".jsonl" in suffixes or ".json" in suffixes:
            rows = []
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
            return rows
        if ".csv" in suffixes:
            return list(csv.DictReader(fh))
    raise DatasetError(f"{path}: expected a .jsonl, .jsonl.gz or .csv file")


_read_path = read_rows  # the former private name


def _column(row: dict, index: int, given: str | None, defaults: tuple[str, ...], what: str) -> Any:
    """The value of ``row``'s text or label column, or a ``DatasetError`` naming expected and found columns."""
    wanted = (given,) if given else defaults
    key = next((k for k in wanted if k in row), None)
    if key is None:
        expected = f"{what}_column={given!r}" if given else f"a {what} column (one of {', '.join(defaults)})"
        hint = "" if given else f"; name it with {what}_column=..."
        raise DatasetError(f"row {index} has columns {sorted(map(str, row))}; expected {expected}{hint}")
    return row[key]


def _example(row: Any, index: int, text_column: str | None, label_column: str | None) -> Example:
    if isinstance(row, dict):
        text = _column(row, index, text_column, TEXT_KEYS, "text")
        label = _column(row, index, label_column, LABEL_KEYS, "label")
    elif isinstance(row, Sequence) and not isinstance(row, str) and len(row) == 2:
        text, label = row
    else:
        raise DatasetError(f"row {index}: expected (text, label) or a dict with text and label keys")
    if not isinstance(text, str) or not text.strip():
        raise DatasetError(f"row {index}: text must be a non-empty string")
    if label is None:
        raise DatasetError(f"row {index}: missing label")
    return Example(text, label)


@dataclass(frozen=True)
class LabelMap:
    """Stable mapping between the user's labels and class indices (sorted by their string form)."""

    names: tuple[str, ...]

    @classmethod
    def fit(cls, labels: Iterable[Any]) -> LabelMap:
        names = tuple(sorted({str(label) for label in labels}))
        if len(names) < 2:
            raise DatasetError(f"classification needs at least two distinct labels, found {list(names)}")
        return cls(names)

    def encode(self, label: Any) -> int:
        try:
            return self.names.index(str(label))
        except ValueError:
            raise DatasetError(f"label {label!r} was not seen in the training data {list(self.names)}") from None


def train_validation_split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Shuffle with ``seed`` and hold out ``fraction`` (at least one example when fraction > 0)."""
    if not 0 <= fraction < 1:
        raise DatasetError(f"validation_split must be in [0, 1), got {fraction}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_valid = max(1, round(len(examples) * fraction)) if fraction > 0 else 0
    return [examples[i] for i in order[n_valid:]], [examples[i] for i in order[:n_valid]]


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of training step ``step`` (1-based): epoch-wise shuffles, so any step can be rebuilt."""
    per_epoch = -(-n // batch_size)
    epoch, within = divmod(step - 1, per_epoch)
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[within * batch_size : (within + 1) * batch_size]


#: fewer training examples than this in a class triggers :func:`warn_rare_classes`
MIN_EXAMPLES_PER_CLASS = 10


class DatasetWarning(UserWarning):
    """The dataset can be trained on, but probably not well (e.g. a class with very few examples)."""


def warn_rare_classes(examples: Sequence[Example], labels: LabelMap) -> dict[str, int]:
    """Warn (``DatasetWarning``) when a class has fewer than ``MIN_EXAMPLES_PER_CLASS`` training examples;
    returns the count per class."""
    import warnings

    counts = {name: 0 for name in labels.names}
    for ex in examples:
        counts[str(ex.label)] += 1
    rare = {name: n for name, n in counts.items() if n < MIN_EXAMPLES_PER_CLASS}
    if rare:
        shown = ", ".join(f"{name!r}: {n}" for name, n in sorted(rare.items(), key=lambda kv: kv[1]))
        warnings.warn(
            f"{len(rare)} of {len(counts)} classes have fewer than {MIN_EXAMPLES_PER_CLASS} training examples "
            f"({shown}); the model will hardly learn them. Add examples or merge classes.",
            DatasetWarning,
            stacklevel=3,
        )
    return counts
