"""``privtune.corpus``: the chatterbot-corpus datasets (classification utterances, generation pairs)."""

from __future__ import annotations

import pytest

pytest.importorskip("chatterbot_corpus")
pytest.importorskip("yaml")

from privtune import demo  # noqa: E402
from privtune.corpus import (  # noqa: E402
    DEMO_CATEGORIES,
    chatterbot_categories,
    chatterbot_dataset,
    chatterbot_pairs,
    split_pairs,
)


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, str]]:
    return chatterbot_pairs()


def test_the_demo_uses_the_moved_dataset():
    assert demo.chatterbot_dataset is chatterbot_dataset and demo.DEMO_CATEGORIES == DEMO_CATEGORIES
    rows = chatterbot_dataset(max_per_class=20, seed=1)
    assert len(rows) == 20 * len(DEMO_CATEGORIES) and {c for _, c in rows} == set(DEMO_CATEGORIES)
    assert rows == chatterbot_dataset(max_per_class=20, seed=1)


def test_categories():
    categories = chatterbot_categories()
    assert len(categories) == 21 and set(DEMO_CATEGORIES) <= set(categories) and list(categories) == sorted(categories)


def test_pairs_are_distinct_clean_consecutive_turns(pairs):
    assert len(pairs) == 1176  # chatterbot-corpus 1.3.3 (the docstring gives the count per category)
    assert len(set(pairs)) == len(pairs)
    assert all(isinstance(s, str) and isinstance(r, str) and s and r for s, r in pairs)
    assert all(s == " ".join(s.split()) and r == " ".join(r.split()) for s, r in pairs)
    assert (
        "What is AI?",
        "Artificial Intelligence is the branch of engineering and science devoted to constructing machines that think.",
    ) in pairs
    # a multi-turn conversation (health.yml) gives each consecutive turn pair
    health = chatterbot_pairs(["health"])
    assert len(health) == 8 and ("Did you take medicine?", "Yes.") in health and ("Yes.", "When?") in health


def test_counts_per_category():
    counts = {c: len(chatterbot_pairs([c])) for c in chatterbot_categories()}
    assert counts["ai"] == 105 and counts["tech_support"] == 10 and counts["trivia"] == 260
    assert sum(counts.values()) == 1177  # one pair ("Hello", "Hi") is in both greetings and conversations
    assert len(chatterbot_pairs(["greetings", "conversations"])) == counts["greetings"] + counts["conversations"] - 1


def test_the_order_is_fixed_by_the_seed(pairs):
    assert chatterbot_pairs(seed=0) == pairs
    other = chatterbot_pairs(seed=1)
    assert other != pairs and sorted(other) == sorted(pairs)
    assert sorted(chatterbot_pairs(["ai", "coding"])) == sorted(chatterbot_pairs(["coding", "ai", "ai"]))


def test_unknown_categories_are_refused():
    with pytest.raises(ValueError, match=r"unknown chatterbot categories \['weather'\]; available: ai, botprofile"):
        chatterbot_pairs(["ai", "weather"])


def test_split_holds_out_a_fixed_set_of_unseen_statements(pairs):
    train, test = split_pairs(pairs, n_test=100, seed=0)
    assert len(test) == 100 and len({s for s, _ in test}) == 100
    assert not {s for s, _ in test} & {s for s, _ in train}  # no held-out statement is trained on
    assert set(test) <= set(pairs) and set(train) <= set(pairs)
    assert len(train) + len(test) <= len(pairs)
    assert [p for p in pairs if p in set(train)] == train  # train keeps the given order
    # the held-out set depends on the pairs and the seed, not on their order
    train_again, test_again = split_pairs(chatterbot_pairs(seed=7), n_test=100, seed=0)
    assert test_again == test and sorted(train_again) == sorted(train)
    assert split_pairs(pairs, n_test=100, seed=1)[1] != test


def test_split_bounds():
    few = [("a", "1"), ("a", "2"), ("b", "3")]
    assert split_pairs(few, 1, seed=0)[1] in ([("a", "1")], [("b", "3")])
    for n_test in (0, 2):
        with pytest.raises(ValueError, match="n_test must be in"):
            split_pairs(few, n_test, seed=0)
