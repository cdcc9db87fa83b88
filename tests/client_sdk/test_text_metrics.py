"""``client_sdk.text_metrics``: ROUGE-L F1 against hand-computed values."""

from __future__ import annotations

import pytest

from client_sdk.text_metrics import mean_rouge_l, rouge_l, words


def test_words_are_lowercased_and_punctuation_free():
    assert words("Hello, World! It's 42.") == ["hello", "world", "it", "s", "42"]


def test_identical_texts_score_one_whatever_the_case_and_punctuation():
    assert rouge_l("The cat sat.", "the CAT sat") == 1.0


def test_hand_computed_scores():
    # LCS("the cat sat on the mat", "the cat is on the mat") = the cat on the mat = 5; P = 5/6, R = 5/6
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # prediction 2 words, reference 4, LCS 2 ("a c"): P = 1, R = 1/2, F1 = 2/3
    assert rouge_l("a c", "a b c d") == pytest.approx(2 / 3)
    # LCS is a subsequence, not a substring: "a b c" vs "c a x b" -> "a b" = 2; P = 2/3, R = 1/2, F1 = 4/7
    assert rouge_l("a b c", "c a x b") == pytest.approx(4 / 7)
    # order matters: the reversed sentence shares only one word in order; P = R = 1/3
    assert rouge_l("one two three", "three two one") == pytest.approx(1 / 3)


def test_disjoint_and_empty_texts_score_zero():
    assert rouge_l("a b", "c d") == 0.0
    assert rouge_l("", "a") == rouge_l("a", "") == rouge_l("...", "...") == 0.0


def test_rouge_l_is_symmetric():
    assert rouge_l("a c", "a b c d") == rouge_l("a b c d", "a c")


def test_mean_rouge_l():
    assert mean_rouge_l(["a c", "x", "the cat"], ["a b c d", "y", "The cat!"]) == pytest.approx((2 / 3 + 0 + 1) / 3)
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        mean_rouge_l(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        mean_rouge_l([], [])
