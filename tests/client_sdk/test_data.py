"""``client_sdk.data``: the datasets the SDK reads, its label map, the validation split and the batches
of each step."""

from __future__ import annotations

import csv
import gzip
import json
from collections import Counter

import pytest

from client_sdk.data import DatasetError, Example, LabelMap, batch_indices, load_examples, train_validation_split

ROWS = [("a great film", "pos"), ("a dull plot", "neg"), ("fine acting", "pos")]
EXAMPLES = [Example(text, label) for text, label in ROWS]


# ---- load_examples -------------------------------------------------------------------------------


def test_a_list_of_pairs():
    assert load_examples(ROWS) == EXAMPLES
    assert load_examples([list(row) for row in ROWS]) == EXAMPLES
    assert load_examples(iter(ROWS)) == EXAMPLES  # any iterable


@pytest.mark.parametrize(("text_key", "label_key"), [("text", "label"), ("sentence", "labels"), ("prompt", "answer")])
def test_a_list_of_dicts_with_any_known_keys(text_key, label_key):
    rows = [{text_key: text, label_key: label, "id": i} for i, (text, label) in enumerate(ROWS)]
    assert load_examples(rows) == EXAMPLES


def test_explicit_keys_win():
    rows = [{"review": text, "stars": label, "text": "ignored"} for text, label in ROWS]
    assert load_examples(rows, text_column="review", label_column="stars") == EXAMPLES


def test_falsy_labels_are_labels():
    assert load_examples([("w1", 0), ("w2", False)]) == [Example("w1", 0), Example("w2", False)]
    assert load_examples([{"text": "w1", "label": 0}]) == [Example("w1", 0)]


def test_a_jsonl_file(tmp_path):
    path = tmp_path / "train.jsonl"
    lines = [json.dumps({"text": text, "label": label}) for text, label in ROWS]
    path.write_text("\n".join(lines[:2]) + "\n\n" + lines[2] + "\n", encoding="utf-8")  # blank lines skipped
    assert load_examples(path) == EXAMPLES
    assert load_examples(str(path)) == EXAMPLES


def test_a_gzipped_jsonl_file(tmp_path):
    path = tmp_path / "train.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"sentence": t, "label": lab}) + "\n" for t, lab in ROWS)
    assert load_examples(path) == EXAMPLES


def test_a_csv_file(tmp_path):
    path = tmp_path / "train.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows([("a film, with a comma", 1), ("a plot", 0)])
    assert load_examples(path) == [Example("a film, with a comma", "1"), Example("a plot", "0")]


def test_an_empty_dataset(tmp_path):
    with pytest.raises(DatasetError, match="empty"):
        load_examples([])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="empty"):
        load_examples(empty)


def test_a_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="no such file") as info:
        load_examples(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in str(info.value)


def test_an_unsupported_file_type(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("a great film\tpos\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"\.jsonl, \.jsonl\.gz or \.csv"):
        load_examples(path)


@pytest.mark.parametrize("dataset", [42, 3.5, None])
def test_an_unsupported_dataset_type(dataset):
    with pytest.raises(DatasetError, match=f"unsupported dataset type {type(dataset).__name__}"):
        load_examples(dataset)


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"label": "pos"}, r"row 1 has columns \['label'\]; expected a text column \(one of text, "),
        ({"text": "   ", "label": "pos"}, "row 1: text must be a non-empty string"),
        ({"text": 5, "label": "pos"}, "row 1: text must be a non-empty string"),
        ({"text": "w1"}, r"row 1 has columns \['text'\]; expected a label column \(one of label, "),
        ({"text": "w1", "label": None}, "row 1: missing label"),
        (("w1", None), "row 1: missing label"),
        ("just text", r"row 1: expected \(text, label\)"),
        (("w1", "pos", "extra"), r"row 1: expected \(text, label\)"),
    ],
)
def test_a_bad_row_is_named(row, match):
    with pytest.raises(DatasetError, match=match):
        load_examples([ROWS[0], row])


def test_a_csv_whose_columns_do_not_fit_says_which_it_expected_and_found(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,category\nthe film was a delight,pos\na tedious mess,neg\n", encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        load_examples(path)
    message = str(info.value)
    assert "['category', 'text']" in message and "label_column" in message and "one of label, labels" in message
    assert [e.label for e in load_examples(path, label_column="category")] == ["pos", "neg"]
    with pytest.raises(DatasetError, match=r"expected label_column='stars'"):
        load_examples(path, label_column="stars")


def test_a_malformed_jsonl_line_is_a_dataset_error(tmp_path):
    """The SDK promises a DatasetError for a dataset it cannot read (FineTuneJob.create's docstring)."""
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "w1", "label": "pos"}\n{"text": "w2", "label": \n', encoding="utf-8")
    with pytest.raises(DatasetError) as info:  # today: json.JSONDecodeError escapes
        load_examples(path)
    assert "train.jsonl" in str(info.value) and "2" in str(info.value)  # the file and the line


# ---- LabelMap ------------------------------------------------------------------------------------


def test_labels_are_sorted_by_their_string_form():
    labels = LabelMap.fit(["pos", "neg", "pos", "neutral"])
    assert labels.names == ("neg", "neutral", "pos")
    assert [labels.encode(x) for x in ("neg", "neutral", "pos")] == [0, 1, 2]
    numbers = LabelMap.fit([2, 10, 1, 2])
    assert numbers.names == ("1", "10", "2")
    assert numbers.encode(10) == numbers.encode("10") == 1


def test_the_map_does_not_depend_on_the_order_of_the_data():
    assert LabelMap.fit(["b", "a", "c"]) == LabelMap.fit(["c", "b", "a", "a"])


def test_encoding_an_unseen_label_names_it():
    with pytest.raises(DatasetError) as info:
        LabelMap.fit(["neg", "pos"]).encode("neutral")
    assert "'neutral'" in str(info.value) and "['neg', 'pos']" in str(info.value)


def test_one_label_is_not_a_classification():
    with pytest.raises(DatasetError, match="at least two distinct labels"):
        LabelMap.fit(["pos", "pos"])


# ---- train_validation_split ----------------------------------------------------------------------

MANY = [Example(f"w{i}", i) for i in range(20)]


def test_the_split_is_deterministic_and_a_partition():
    train, valid = train_validation_split(MANY, 0.25, seed=3)
    assert (train, valid) == train_validation_split(MANY, 0.25, seed=3)
    assert (len(train), len(valid)) == (15, 5)
    assert sorted(ex.label for ex in train + valid) == list(range(20))
    assert train_validation_split(MANY, 0.25, seed=4) != (train, valid)


@pytest.mark.parametrize(("fraction", "n_valid"), [(0.0, 0), (0.1, 2), (0.01, 1), (0.5, 10)])
def test_split_sizes(fraction, n_valid):
    train, valid = train_validation_split(MANY, fraction, seed=0)
    assert (len(train), len(valid)) == (20 - n_valid, n_valid)


@pytest.mark.parametrize("fraction", [1.0, 1.5, -0.1])
def test_the_fraction_must_lie_in_zero_to_one(fraction):
    with pytest.raises(DatasetError, match="validation_split"):
        train_validation_split(MANY, fraction, seed=0)


# ---- batch_indices -------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "batch_size"), [(10, 3), (12, 4), (5, 8), (7, 1)])
def test_each_epoch_covers_every_example_once(n, batch_size):
    per_epoch = -(-n // batch_size)
    for epoch in range(3):
        steps = range(epoch * per_epoch + 1, (epoch + 1) * per_epoch + 1)
        batches = [batch_indices(n, batch_size, step, seed=5) for step in steps]
        assert Counter(i for batch in batches for i in batch) == Counter(range(n))
        assert all(1 <= len(batch) <= batch_size for batch in batches)
        assert all(len(batch) == batch_size for batch in batches[:-1])


def test_epochs_are_shuffled_differently_and_seeds_differ():
    first = [batch_indices(30, 10, step, seed=0) for step in (1, 2, 3)]
    second = [batch_indices(30, 10, step, seed=0) for step in (4, 5, 6)]
    assert first != second
    assert first != [batch_indices(30, 10, step, seed=1) for step in (1, 2, 3)]


def test_any_step_can_be_rebuilt_alone():
    in_order = [batch_indices(10, 3, step, seed=2) for step in range(1, 13)]
    assert [batch_indices(10, 3, step, seed=2) for step in range(12, 0, -1)] == in_order[::-1]
    assert batch_indices(10, 3, 7, seed=2) == in_order[6]
