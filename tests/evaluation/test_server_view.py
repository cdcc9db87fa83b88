"""The server's view in the harness: every view of the attacked texts, the exposure truth, token classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from client_sdk.privacy.token_classes import SPECIAL
from evaluation.harness import (
    ExperimentConfig,
    Resources,
    attacked_examples,
    exposure_truth,
    last_steps,
    tracked_positions,
    train_and_observe,
)
from tests.evaluation.test_harness import _config


def _observe(config: ExperimentConfig, data_dir: Path, tmp_path: Path):
    trained = train_and_observe(config, Resources(tmp_path / "cache", str(data_dir)))
    trained.top.close()
    return trained


def _has_view_noise() -> bool:
    from client_sdk.privacy import get_mechanism

    return hasattr(get_mechanism("privtune").config, "view_noise")


def test_every_attacked_text_is_tracked_once_per_epoch(tiny):
    config = _config(tiny, epochs=3)
    per_epoch = -(-96 // 16)
    watched = last_steps(96, config, 3 * per_epoch, per_epoch)
    attacked = attacked_examples(96, config, watched)
    assert len(attacked) == 24 and len(set(attacked)) == 24
    tracked = tracked_positions(96, config, 3 * per_epoch, attacked)
    for epoch in range(3):
        rows = [r for step, pairs in tracked.items() if (step - 1) // per_epoch == epoch for _, r in pairs]
        assert sorted(rows) == list(range(24))  # every attacked text, once per epoch


def test_views_are_the_servers_and_per_text_noise_repeats_the_view(tiny, data_dir, tmp_path):
    """K = epochs + validation + inference views; view 0 is ``hidden``; the captured views are exactly what
    the device sends for those texts; under per-text noise every re-send is the same view."""
    if not _has_view_noise():
        pytest.skip("the mechanism has no view_noise option yet (client_sdk/privatizer.py contract not landed)")
    trained = _observe(_config(tiny, inference_views=1), data_dir, tmp_path)
    observed, obs = trained.observed, trained.observed.observation
    assert observed.view_sources == {"training": 2, "validation": 2, "inference": 1} and observed.views == 5
    assert tuple(obs.views.shape) == (5, *obs.hidden.shape)
    assert torch.equal(obs.views[0], obs.hidden)
    real = obs.attention_mask.bool()  # (n, t)
    for k in range(1, 5):  # per-text noise (the default): identical views
        assert torch.equal(obs.views[k][real], obs.hidden[real]), k
    # independently: what the device's privatizer sends for those texts (float16 on the wire)
    sent = trained.privatizer.privatize(observed.texts)["hidden"].half().float()  # (n, t', d)
    t = min(sent.shape[1], obs.hidden.shape[1])
    assert torch.equal(sent[:, :t][real[:, :t]], obs.views[-1][:, :t][real[:, :t]])


def test_fresh_noise_gives_a_new_view_per_send(tiny, data_dir, tmp_path):
    if not _has_view_noise():
        pytest.skip("the mechanism has no view_noise option yet (client_sdk/privatizer.py contract not landed)")
    trained = _observe(_config(tiny, params=(("view_noise", "fresh"),), validation_views=1), data_dir, tmp_path)
    obs = trained.observed.observation
    assert obs.views.shape[0] == 3 and torch.equal(obs.views[0], obs.hidden)
    scored = obs.scored
    for a in range(3):
        for b in range(a + 1, 3):
            assert not torch.allclose(obs.views[a][scored], obs.views[b][scored]), (a, b)
    # the views differ by noise around the same clean states: their mean is closer to the clean bottom output
    clean = trained.privatizer.__class__(
        trained.privatizer.bottom, trained.privatizer.tokenizer, "none", max_length=16
    ).privatize(trained.observed.texts)["hidden"]  # (n, t', d)
    t = min(clean.shape[1], obs.hidden.shape[1])
    mask = scored[:, :t]
    one = (obs.views[0][:, :t] - clean[:, :t]).norm(dim=-1)[mask].mean()
    mean = (obs.views[:, :, :t].mean(0) - clean[:, :t]).norm(dim=-1)[mask].mean()
    assert mean < one


def test_views_without_validation_are_the_epochs(tiny, data_dir, tmp_path):
    trained = _observe(_config(tiny, mechanism="none", eta=None, validation_views=0, epochs=3), data_dir, tmp_path)
    observed = trained.observed
    assert observed.view_sources == {"training": 3} and observed.observation.views.shape[0] == 3
    assert torch.equal(observed.observation.views[0], observed.observation.hidden)
    assert observed.exposed_share == 0.0 and not observed.observation.exposure.any()  # no noise: nothing "exposed"


def test_exposure_truth_rule():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    two = torch.tensor([[1.0, 8.0, 1.0, 0.0], [8.0, 1.0, 0.0, 0.0]])  # two levels, 0 at padding
    assert exposure_truth(two, mask).tolist() == [[True, False, True, False], [False, True, False, False]]
    one = torch.tensor([[2.0, 2.0, 2.0, 0.0], [2.0, 2.0, 0.0, 0.0]])
    assert not exposure_truth(one, mask).any()  # a single level: nothing exposed
    close = torch.tensor([[1.0, 1.4, 1.0, 0.0], [1.4, 1.0, 0.0, 0.0]])
    assert not exposure_truth(close, mask).any()  # max / min = 1.4 <= 1.5: one level
    clean = torch.tensor([[0.0, 3.0, 3.0, 0.0], [3.0, 0.0, 0.0, 0.0]])
    assert exposure_truth(clean, mask).tolist() == [[True, False, False, False], [False, True, False, False]]
    assert not exposure_truth(torch.zeros(2, 4), mask).any()  # noise-free


def test_exposure_truth_on_a_two_level_mechanism(tiny, data_dir, tmp_path):
    informed = (("importance_score", "information"),)  # the label-informed map: two levels on any vocabulary
    trained = _observe(_config(tiny, params=informed), data_dir, tmp_path)
    obs, privatizer = trained.observed.observation, trained.privatizer
    if not hasattr(privatizer, "token_noise_scale"):
        pytest.skip("Privatizer.token_noise_scale (the mechanism's contract) has not landed")
    scale = privatizer.token_noise_scale(obs.input_ids, obs.attention_mask)  # (n, t)
    real = obs.attention_mask.bool()
    low, high = scale[real].min(), scale[real].max()
    assert high / low > 1.5  # privtune's top_fraction map: two noise levels
    assert torch.equal(obs.exposure, real & torch.isclose(scale, low.expand_as(scale)))
    assert 0.0 < trained.observed.exposed_share < 0.5
    isotropic = _observe(_config(tiny, mechanism="dchi"), data_dir, tmp_path).observed
    assert not isotropic.observation.exposure.any() and isotropic.exposed_share == 0.0


def test_token_class_is_per_position(tiny, data_dir, tmp_path):
    obs = _observe(_config(tiny, mechanism="none", eta=None), data_dir, tmp_path).observed.observation
    assert obs.token_class.shape == obs.input_ids.shape and obs.token_class.dtype == torch.int64
    special = obs.special_mask.bool()  # [CLS], [SEP], padding
    assert (obs.token_class[special] == SPECIAL).all() and (obs.token_class[~special] != SPECIAL).all()
