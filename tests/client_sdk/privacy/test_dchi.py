"""Samplers against their closed forms, clipping, and the privacy statement."""

import math

import pytest
import torch

from client_sdk.privacy import (
    clip_by_norm,
    dchi_privacy_statement,
    sample_gaussian,
    sample_l1,
    sample_l2,
    secure_generator,
)

N_DRAWS = 20_000


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_l2_radius_mean_and_variance_match_gamma():
    d, delta, eta = 16, 1.0, 4.0
    z = sample_l2((N_DRAWS,), d, delta / eta, gen())
    r = z.norm(dim=-1)
    assert z.shape == (N_DRAWS, d)
    assert r.mean().item() == pytest.approx(d * delta / eta, rel=0.02)  # E||z|| = d Delta / eta
    assert r.var().item() == pytest.approx(d * (delta / eta) ** 2, rel=0.05)  # Var = d scale^2


def test_l2_direction_is_isotropic():
    d = 8
    z = sample_l2((N_DRAWS,), d, 1.0, gen(1))
    v = z / z.norm(dim=-1, keepdim=True)
    assert v.mean(dim=0).abs().max().item() < 0.03
    second = (v.T @ v) / N_DRAWS  # E[v v^T] = I / d
    assert torch.allclose(second, torch.eye(d) / d, atol=0.01)


def test_l2_per_token_scale():
    scale = torch.tensor([1.0, 3.0]).repeat(N_DRAWS // 2)
    r = sample_l2((N_DRAWS,), 4, scale, gen(2)).norm(dim=-1)
    ratio = r[1::2].mean() / r[0::2].mean()
    assert ratio.item() == pytest.approx(3.0, rel=0.03)


def test_l1_coordinates_are_laplace():
    d, b = 16, 0.7
    z = sample_l1((N_DRAWS,), d, b, gen(3))
    assert z.mean().abs().item() < 0.01
    assert z.var().item() == pytest.approx(2 * b**2, rel=0.03)  # Var Laplace(0, b) = 2 b^2
    assert z.abs().mean().item() == pytest.approx(b, rel=0.02)  # E|z| = b
    assert torch.isfinite(z).all()


def test_l1_per_token_scale():
    scale = torch.tensor([0.5, 2.0]).repeat(N_DRAWS // 2)
    z = sample_l1((N_DRAWS,), 8, scale, gen(4))
    assert (z[1::2].abs().mean() / z[0::2].abs().mean()).item() == pytest.approx(4.0, rel=0.03)


def test_gaussian_std():
    z = sample_gaussian((N_DRAWS,), 4, 1.5, gen(5))
    assert z.std().item() == pytest.approx(1.5, rel=0.02)


@pytest.mark.parametrize("sampler", [sample_l1, sample_l2, sample_gaussian])
def test_same_seed_same_draws_other_seed_other_draws(sampler):
    a = sampler((5, 3), 7, 1.0, gen(11))
    b = sampler((5, 3), 7, 1.0, gen(11))
    c = sampler((5, 3), 7, 1.0, gen(12))
    assert a.shape == (5, 3, 7)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_secure_generator_is_unpredictable():
    a = torch.rand(4, generator=secure_generator())
    b = torch.rand(4, generator=secure_generator())
    assert not torch.equal(a, b)


def test_clip_by_norm():
    h = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    out = clip_by_norm(h, 1.0)
    assert torch.allclose(out[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(out[1:], h[1:])


def test_privacy_statement_l2():
    w = torch.tensor([0.5, 1.0, 2.0])
    rec = dchi_privacy_statement(eta=10.0, delta_sensitivity=2.0, metric="l2", dim=16, eps_local=0.3, scale_factors=w)
    assert rec["per_token_budget"] == {"min": 5.0, "max": 20.0}
    assert rec["additive_slack"]["max"] == pytest.approx(20.0 / 2.0 * 2 * 0.3)
    assert rec["worst_case_loss_per_token"]["max"] == pytest.approx(20.0 * (1 + 2 * 0.3 / 2.0))


def test_privacy_statement_l1_uses_sqrt_d():
    rec = dchi_privacy_statement(eta=10.0, delta_sensitivity=2.0, metric="l1", dim=16, eps_local=0.3)
    assert rec["eps_shift"] == pytest.approx(4 * 0.3)
    assert rec["worst_case_loss_per_token"]["max"] == pytest.approx(10.0 * (math.sqrt(16) + 2 * 1.2 / 2.0))
    assert any("sqrt(d)" in note for note in rec["notes"])
