"""The experiment config (evaluation.config): view counts, and attack budgets every attack accepts."""

from __future__ import annotations

import inspect

import pytest

from evaluation.config import ATTACK_BUDGETS, HARNESS_VERSION, ExperimentConfig


def test_view_counts_are_part_of_the_key_and_checked():
    config = ExperimentConfig()
    assert (config.validation_views, config.inference_views) == (2, 0) and config.views() == 5
    assert HARNESS_VERSION >= 5
    assert (
        len({config.key(), ExperimentConfig(validation_views=0).key(), ExperimentConfig(inference_views=1).key()}) == 3
    )
    assert ExperimentConfig.from_dict(ExperimentConfig(inference_views=4).to_dict()).inference_views == 4
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="inference_views"):
            ExperimentConfig(inference_views=bad)


@pytest.mark.parametrize("budget", sorted(ATTACK_BUDGETS))
def test_every_budget_option_is_an_option_of_its_attack(budget):
    from evaluation.attacks import ATTACKS

    for name, options in ATTACK_BUDGETS[budget].items():
        if name not in ATTACKS:  # an attack not (yet) registered: its options are never passed
            continue
        inspect.signature(ATTACKS[name]).bind_partial(None, None, **options)  # raises on an unknown option
