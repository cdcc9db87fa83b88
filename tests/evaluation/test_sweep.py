"""The sweep's grids (evaluation.sweep): the headline rows over seeds, the medicine setting, the quick grid."""

from __future__ import annotations

from evaluation.config import ExperimentConfig
from evaluation.sweep import DEFAULT_PARAMS, ETA_REF, FULL_ONLY_GRIDS, HEADLINE_MECHANISMS, HEADLINE_SEEDS, grid


def test_headline_is_none_and_the_default_over_three_seeds():
    configs = grid(names=["headline"])
    assert len(HEADLINE_SEEDS) >= 3 and len(configs) == len(HEADLINE_SEEDS) * len(HEADLINE_MECHANISMS)
    assert {(c.mechanism, c.eta) for c in configs} >= {("none", None), ("privtune", ETA_REF)}
    assert {c.seed for c in configs} == set(HEADLINE_SEEDS)
    assert {(c.dataset, c.model, c.split_layer) for c in configs} == {("vader-movie", "minilm-l6", 3)}
    assert any(c.params == DEFAULT_PARAMS for c in configs)  # the default named explicitly, not by code defaults
    for c in configs:  # every defended row has its undefended row of the same seed in the grid
        assert c.baseline().key() in {x.key() for x in configs}


def test_medicine_grid_and_the_quick_grid_budget():
    medicine = grid(names=["medicine"])
    assert {(c.dataset, c.mechanism) for c in medicine} == {
        ("multiemo-medicine", "none"),
        ("multiemo-medicine", "privtune"),
    }
    quick = grid(quick=True)
    assert {c.seed for c in quick} == {0} and "multiemo-medicine" not in {c.dataset for c in quick}
    assert len(quick) == 10  # the quick grid is unchanged by the full-only grids
    assert set(FULL_ONLY_GRIDS) == {"headline", "medicine"}
    named = grid(quick=True, names=["headline"])  # named explicitly: on the quick base
    assert {c.n_train for c in named} == {1024} and {c.seed for c in named} == set(HEADLINE_SEEDS)
    full = {c.key() for c in grid()}
    assert {c.key() for c in grid(names=["headline", "medicine"])} <= full


def test_views_in_the_grid_configs():
    for c in grid(quick=True):
        assert (c.validation_views, c.inference_views) == (2, 0) and c.views() == c.epochs + 2
    assert ExperimentConfig().views() == 3 + 2


def test_choice_and_label_dp_grids_name_their_settings():
    from evaluation.sweep import CHOICE_CANDIDATES, CHOICE_FULL, DEFAULTS_BASE, LABEL_EPSILONS

    quick, full = grid(quick=True, names=["choice"]), grid(names=["choice"])
    assert len(quick) == len(CHOICE_CANDIDATES) and len(full) == len(CHOICE_FULL)
    assert {(c.n_train, c.epochs) for c in full} == {(DEFAULTS_BASE.n_train, DEFAULTS_BASE.epochs)}
    assert any(c.params == DEFAULT_PARAMS for c in full) and any(c.mechanism == "none" for c in full)
    dp = grid(names=["label-dp"])
    assert [c.label_epsilon for c in dp] == [None, *LABEL_EPSILONS]
    assert all(c.params == DEFAULT_PARAMS for c in dp)
    assert {c.baseline().label_epsilon for c in dp} == {None}  # the undefended row has no label DP either
