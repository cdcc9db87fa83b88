"""A1-label on the head-on-device protocol, on synthetic gradient rows: it recovers the label partition
of dL/d(representation) rows through a random head, sits near chance on random rows, and its
matching and naming do what they say."""

from __future__ import annotations

import sys

import pytest
import torch

from client_sdk.models.ends import ClassifierHead
from evaluation.attacks import Observation, a1_label_clustering
from evaluation.attacks.a1_label import best_assignment, matched_accuracy, name_clusters
from evaluation.attacks.kit import head_gradients, step_sizes


def _synthetic_rows(n: int, d: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows (n, d) of dL/d(representation) through a random head, labels (n,), representations (n, d))."""
    g = torch.Generator().manual_seed(seed)
    representation = torch.randn(n, d, generator=g)  # (n, d)
    labels = torch.randint(c, (n,), generator=g)
    head = ClassifierHead(d, c, g)
    return head_gradients(head, representation, labels) / step_sizes(n, 8).unsqueeze(1), labels, representation


def _rows_observation(rows: torch.Tensor, labels: torch.Tensor, c: int | None) -> Observation:
    n = rows.shape[0]
    ids = torch.ones(n, 3, dtype=torch.long)
    return Observation(torch.zeros(n, 3, 4), torch.ones(n, 3), ids, torch.zeros(n, 3, dtype=torch.bool),
                       labels=labels, grad_output=rows, grad_batch_size=step_sizes(n, 8), num_labels=c)  # fmt: skip


@pytest.mark.parametrize("c", [2, 4])
def test_a1_label_recovers_the_partition_of_noiseless_gradient_rows(c):
    rows, labels, _ = _synthetic_rows(200, 32, c, seed=c)
    (result,) = a1_label_clustering(_rows_observation(rows, labels, c), None, "naive")
    assert result.name == "A1-label" and result.n == 200 and result.details["k"] == c
    assert result.asr > 0.9, result
    assert result.chance == pytest.approx(float(torch.bincount(labels).max()) / 200)
    assert result.details["matched_chance"] < result.asr and result.details["named_asr"] is None  # no kit


def test_a1_label_sits_near_chance_on_random_rows():
    g = torch.Generator().manual_seed(3)
    rows, labels = torch.randn(300, 32, generator=g), torch.randint(2, (300,), generator=g)
    (result,) = a1_label_clustering(_rows_observation(rows, labels, 2), None, "naive")
    assert abs(result.asr - result.chance) < 0.1 and abs(result.asr - result.details["matched_chance"]) < 0.1


def test_a1_label_matching_and_naming():
    score = torch.tensor([[1.0, 5.0, 0.0], [4.0, 4.5, 0.0], [0.0, 0.0, 1.0]])
    assert best_assignment(score).tolist() == [1, 0, 2]  # one-to-one, not the per-row argmax
    accuracy, names = matched_accuracy(torch.tensor([1, 1, 0, 0, 0]), torch.tensor([0, 0, 1, 1, 0]), 2, 2)
    assert accuracy == pytest.approx(0.8) and names.tolist() == [1, 0]
    # clusters named by the nearest public class mean of the representation, without the truth
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 16, generator=g) * 3
    truth, public_labels = torch.randint(3, (90,), generator=g), torch.arange(3).repeat(4)
    observed = means[truth] + torch.randn(90, 16, generator=g)
    public = means[public_labels] + torch.randn(12, 16, generator=g)
    cluster = (truth + 1) % 3  # a perfect partition under other names
    names = name_clusters(cluster, 3, observed, public, public_labels, 3)
    assert torch.equal(names[cluster], truth)


def test_matching_without_scipy_is_the_same_assignment(monkeypatch):
    score = torch.rand(4, 5, generator=torch.Generator().manual_seed(1))
    expected = best_assignment(score)
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)  # the import fails: brute force over permutations
    fallback = best_assignment(score)
    assert torch.equal(fallback, expected) and len(set(fallback.tolist())) == 4
