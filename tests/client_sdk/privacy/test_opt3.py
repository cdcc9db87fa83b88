"""OPT-3: the collapsed objective equals the definition, constraints hold after every step, it descends."""

import pytest
import torch

from client_sdk.privacy import InvalidChoiceError, NeighbourIndex, opt3_delta, similarity
from client_sdk.privacy.opt3 import centred_unit, neighbour_directions, opt3_objective, unit

V, D, N = 120, 12, 60


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(V, D, generator=g) + 0.5
    index = NeighbourIndex.build(protos, k=5, hops=2, max_hop_set=16, model_id="t")
    ids = torch.randint(V, (N,), generator=g)
    h = protos[ids] + 0.3 * torch.randn(N, D, generator=g)
    mu = h.mean(dim=0)
    radius = float((h - mu).norm(dim=1).median())  # binding for half the tokens
    eps = 0.15 * float(h.norm(dim=1).median())
    centroid = h[torch.randint(N, (N,), generator=g)]
    dir_cos, dir_p = neighbour_directions(ids, unit(protos), centred_unit(protos), index.knn, index.hop)
    return dict(protos=protos, index=index, ids=ids, h=h, mu=mu, radius=radius, eps=eps,
                centroid=centroid, dir_cos=dir_cos, dir_p=dir_p)  # fmt: skip


def test_collapsed_objective_equals_definition(problem):
    """G(x) = mean_{N_k} s(x, p_u) - mean_{H_n} s(x, p_v), s = Pearson + cos (eq. 15)."""
    p, idx = problem["protos"], problem["index"]
    x = problem["h"] + 0.1 * torch.randn(N, D)
    near = similarity(x.unsqueeze(1), p[idx.knn[problem["ids"]]]).mean(dim=1)  # (n,)
    hop_rows = idx.hop[problem["ids"]]
    valid = hop_rows >= 0
    far_all = similarity(x.unsqueeze(1), p[hop_rows.clamp_min(0)])  # (n, m)
    far = (far_all * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1)
    expected = near - far
    got = opt3_objective(x, problem["dir_cos"], problem["dir_p"], problem["centroid"], lam=0.0)
    assert torch.allclose(got, expected, atol=1e-5)
    with_aia = opt3_objective(x, problem["dir_cos"], problem["dir_p"], problem["centroid"], lam=0.5)
    assert torch.allclose(with_aia, expected - 0.5 * (x - problem["centroid"]).norm(dim=1), atol=1e-5)


def test_similarity_is_pearson_plus_cos():
    a, b = torch.randn(5, 9), torch.randn(5, 9)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    pearson = torch.stack([torch.corrcoef(torch.stack([x, y]))[0, 1] for x, y in zip(a, b, strict=True)])
    assert torch.allclose(similarity(a, b), cos + pearson, atol=1e-5)
    assert torch.allclose(similarity(a, b, "cos"), cos, atol=1e-6)


@pytest.mark.parametrize("rule", ["normalized", "raw"])
@pytest.mark.parametrize("per_token_eps", [False, True])
def test_both_projections_hold_after_every_step(problem, rule, per_token_eps):
    h, mu = problem["h"], problem["mu"]
    eps = problem["eps"] * torch.linspace(0.5, 2.0, N) if per_token_eps else problem["eps"]
    eps_t = torch.as_tensor(eps).expand(N)
    r_eff = torch.clamp((h - mu).norm(dim=1), min=problem["radius"])
    seen = []

    def check(step, delta):
        seen.append(step)
        assert (delta.norm(dim=1) <= eps_t * (1 + 1e-5) + 1e-6).all(), f"||delta|| > eps at step {step}"
        assert ((h + delta - mu).norm(dim=1) <= r_eff * (1 + 1e-5) + 1e-6).all(), f"ball violated at step {step}"

    result = opt3_delta(h, problem["dir_cos"], problem["dir_p"], problem["centroid"], mu, problem["radius"], eps,
                        steps=15, step_size=0.3, step_rule=rule, callback=check)  # fmt: skip
    assert seen == list(range(15))
    check(-1, result.delta)
    # the L2 ball binds for some tokens: they end on its surface
    on_ball = ((h + result.delta - mu).norm(dim=1) - r_eff).abs() < 1e-4
    assert on_ball.any()


def test_opt3_lowers_its_objective(problem):
    result = opt3_delta(problem["h"], problem["dir_cos"], problem["dir_p"], problem["centroid"], problem["mu"],
                        problem["radius"], problem["eps"])  # fmt: skip
    assert (result.objective_end <= result.objective_start).all()
    assert (result.objective_start - result.objective_end).mean() > 1e-2
    recomputed = opt3_objective(
        problem["h"] + result.delta, problem["dir_cos"], problem["dir_p"], problem["centroid"], 0.5
    )
    assert torch.allclose(recomputed, result.objective_end, atol=1e-5)
    assert result.delta.norm(dim=1).max() > 0.5 * problem["eps"]


def test_away_and_toward_move_in_opposite_directions(problem):
    args = (problem["h"], None, None, problem["centroid"], problem["mu"], 1e6, problem["eps"])
    away = opt3_delta(*args, lam=1.0, aia_sign=-1.0).delta
    toward = opt3_delta(*args, lam=1.0, aia_sign=1.0).delta
    d0 = (problem["h"] - problem["centroid"]).norm(dim=1)
    assert ((problem["h"] + away - problem["centroid"]).norm(dim=1) >= d0 - 1e-5).all()
    assert ((problem["h"] + toward - problem["centroid"]).norm(dim=1) <= d0 + 1e-5).all()


def test_unknown_step_rule():
    with pytest.raises(InvalidChoiceError) as info:
        opt3_delta(torch.randn(2, 3), None, None, torch.zeros(2, 3), torch.zeros(3), 1.0, 0.1, step_rule="adam")
    assert info.value.parameter == "step_rule"
