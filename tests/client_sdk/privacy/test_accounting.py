"""The accounting per text over views, and randomised response on labels."""

import math
from collections import Counter

import pytest
import torch

from client_sdk.privacy import get_config, prepare_state
from client_sdk.privacy.accounting import account, label_keep_probability, summary
from client_sdk.privacy.label_dp import randomized_response


def record(name="dchi", scale=(0.5, 2.0), **params):
    config = get_config(name, **params)
    state = prepare_state(config, train_hidden=torch.randn(64, 16, generator=torch.Generator().manual_seed(0)))
    views = {"training": 3, "validation": 4, "inference": 1}
    return account(config, state, views=views, tokens_per_text=10.0, dim=16, scale_range=scale, num_labels=2), state


def test_l1_bound_per_token_and_per_text():
    out, state = record()
    delta = state.sensitivity
    assert out["per_token_one_view"]["least_noised"] == pytest.approx(math.sqrt(16) * delta / 0.5)
    assert out["per_token_one_view"]["most_noised"] == pytest.approx(math.sqrt(16) * delta / 2.0)
    assert out["views_total"] == 4 and out["views_charged"] == 1  # per-text noise: re-sends cost nothing
    assert out["epsilon_per_text"] == pytest.approx(10 * math.sqrt(16) * delta / 0.5)


def test_fresh_noise_composes_over_views_and_gaussian_and_l2_bounds():
    fresh, _ = record(view_noise="fresh")
    per_text, _ = record()
    assert fresh["epsilon_per_text"] == pytest.approx(4 * per_text["epsilon_per_text"])
    l2, state = record(metric="l2")
    assert l2["per_token_one_view"]["least_noised"] == pytest.approx(state.sensitivity / 0.5)
    gauss, state = record("gaussian", scale=(1.0, 1.0))
    assert gauss["per_token_one_view"]["least_noised"] == pytest.approx(
        state.sensitivity * math.sqrt(2 * math.log(1.25e5))
    )


def test_no_noise_and_unprotected_labels_are_said_in_plain_words():
    out, _ = record("none", scale=None)
    assert out["epsilon_per_text"] is None
    text = summary(out, "none")
    assert "WARNING: no noise is added" in text and "labels are not protected" in text


def test_randomized_response_keeps_the_label_at_its_rate_and_is_stable():
    texts = [f"text {i}" for i in range(4000)]
    labels = [i % 3 for i in range(4000)]
    noisy = randomized_response(labels, texts, 3, 1.0, "ab" * 32)
    kept = sum(a == b for a, b in zip(labels, noisy, strict=True)) / len(labels)
    assert kept == pytest.approx(label_keep_probability(1.0, 3), abs=0.03)
    flips = Counter((a, b) for a, b in zip(labels, noisy, strict=True) if a != b)
    assert set(flips) == {(a, b) for a in range(3) for b in range(3) if a != b}  # every other label reachable
    assert noisy == randomized_response(labels, texts, 3, 1.0, "ab" * 32)
    assert noisy != randomized_response(labels, texts, 3, 1.0, "cd" * 32)
    assert randomized_response(labels, texts, 3, 50.0, "ab" * 32) == labels
