"""Mechanism contract: identity, determinism under a generator, padded positions, noise scales, state."""

import json

import pytest
import torch

from client_sdk.privacy import (
    MECHANISMS,
    PerturbContext,
    PrivacyStateError,
    get_mechanism,
    prepare_state,
)

V, D, B, T = 150, 16, 4, 9
NOISY = ("gaussian", "dchi", "dchi_importance", "privtune")


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(V, D, generator=g) * 2 + 1
    emb = torch.randn(V, 8, generator=g)
    sample = protos[torch.randint(V, (500,), generator=g)] + 0.5 * torch.randn(500, D, generator=g)
    ids = torch.randint(V, (B, T), generator=g)
    hidden = protos[ids] + 0.5 * torch.randn(B, T, D, generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 6:] = 0
    mask[3, 2:] = 0
    hidden[mask == 0] = 1e4  # garbage the mechanisms must not touch
    importance = torch.randn(B, T, generator=g)
    return dict(protos=protos, emb=emb, sample=sample, ids=ids, hidden=hidden, mask=mask, importance=importance)


def setup(name, data, **params):
    mech = get_mechanism(name, **params)
    state = prepare_state(mech.config, train_hidden=data["sample"], prototypes=data["protos"], embeddings=data["emb"])
    return mech, PerturbContext(state=state, input_ids=data["ids"], importance=data["importance"])


def run(mech, ctx, data, seed=0):
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    return mech.perturb(data["hidden"], data["mask"], ctx, gen)


def test_none_is_the_identity(data):
    out = get_mechanism("none").perturb(data["hidden"], data["mask"])
    assert torch.equal(out, data["hidden"])


@pytest.mark.parametrize("name", MECHANISMS)
def test_padded_positions_untouched_and_real_ones_finite(name, data):
    mech, ctx = setup(name, data)
    out = run(mech, ctx, data)
    pads = data["mask"] == 0
    assert out.shape == data["hidden"].shape and out.dtype == data["hidden"].dtype
    assert torch.equal(out[pads], data["hidden"][pads])
    assert torch.isfinite(out[~pads]).all()
    if name != "none":
        assert not torch.equal(out[~pads], data["hidden"][~pads])


@pytest.mark.parametrize("name", NOISY)
def test_fixed_generator_reproduces_other_seed_differs(name, data):
    mech, ctx = setup(name, data)
    a, b, c = run(mech, ctx, data, 7), run(mech, ctx, data, 7), run(mech, ctx, data, 8)
    assert torch.equal(a, b)
    real = data["mask"] == 1
    assert not torch.equal(a[real], c[real])
    assert not torch.equal(run(mech, ctx, data, None)[real], run(mech, ctx, data, None)[real])  # OS-seeded


@pytest.mark.parametrize("name", ["opt3", "opt3_importance"])
def test_opt3_is_deterministic_and_bounded(name, data):
    mech, ctx = setup(name, data)
    a, b = run(mech, ctx, data, None), run(mech, ctx, data, 3)
    assert torch.equal(a, b)
    state = ctx.state
    real = data["mask"] == 1
    clipped = data["hidden"][real] * (state.clip_norm / data["hidden"][real].norm(dim=1, keepdim=True)).clamp(max=1)
    shift = (a[real] - clipped).norm(dim=1)
    assert shift.max() > 0
    if name == "opt3":
        assert (shift <= state.eps_local * (1 + 1e-4)).all()


def test_all_padding_batch_is_returned_unchanged(data):
    mech, ctx = setup("privtune", data)
    mask = torch.zeros(B, T, dtype=torch.long)
    assert torch.equal(mech.perturb(data["hidden"], mask, ctx, torch.Generator()), data["hidden"])


@pytest.mark.parametrize(("metric", "expected"), [("l2", lambda d, s: d * s), ("l1", lambda d, s: None)])
def test_dchi_noise_scale(metric, expected):
    n, d, clip = 4000, 8, 1.0
    mech = get_mechanism("dchi", eta=20.0, metric=metric, clip_norm=clip)
    state = prepare_state(mech.config)  # explicit clip norm: no sample needed
    hidden = torch.zeros(1, n, d)
    z = mech.perturb(hidden, torch.ones(1, n), PerturbContext(state=state), torch.Generator().manual_seed(0))[0]
    scale = 2 * clip / 20.0  # Delta / eta with Delta = 2C
    if metric == "l2":
        assert z.norm(dim=1).mean().item() == pytest.approx(d * scale, rel=0.03)
    else:
        assert z.var().item() == pytest.approx(2 * scale**2, rel=0.05)


def test_importance_reduces_noise_on_important_tokens():
    n, d = 4000, 8
    mech = get_mechanism("dchi_importance", eta=10.0, clip_norm=1.0, importance_to_scale="sigmoid", noise_floor=0.0)
    ctx_imp = torch.tensor([3.0, -3.0]).repeat(n // 2).unsqueeze(0)  # (1, n)
    ctx = PerturbContext(state=prepare_state(mech.config), importance=ctx_imp)
    z = mech.perturb(torch.zeros(1, n, d), torch.ones(1, n), ctx, torch.Generator().manual_seed(0))[0]
    w_hi, w_lo = 2 * torch.sigmoid(torch.tensor(3.0)), 2 * torch.sigmoid(torch.tensor(-3.0))
    ratio = z[1::2].abs().mean() / z[0::2].abs().mean()
    assert ratio.item() == pytest.approx((w_hi / w_lo).item(), rel=0.05)


def test_top_fraction_map_gives_two_noise_levels():
    n, d = 4000, 8
    mech = get_mechanism("dchi_importance", eta=10.0, clip_norm=1.0, noise_floor=0.0)  # top_fraction, w 16 / 0.25
    ctx_imp = torch.tensor([0.5, -0.5]).repeat(n // 2).unsqueeze(0)  # shifted table: > 0 = the top tokens
    ctx = PerturbContext(state=prepare_state(mech.config), importance=ctx_imp)
    z = mech.perturb(torch.zeros(1, n, d), torch.ones(1, n), ctx, torch.Generator().manual_seed(0))[0]
    assert (z[1::2].abs().mean() / z[0::2].abs().mean()).item() == pytest.approx(16.0 / 0.25, rel=0.05)


def test_gaussian_std_is_multiplier_times_delta():
    mech = get_mechanism("gaussian", noise_multiplier=0.5, clip_norm=2.0)
    ctx = PerturbContext(state=prepare_state(mech.config))
    z = mech.perturb(torch.zeros(1, 5000, 4), torch.ones(1, 5000), ctx, torch.Generator().manual_seed(0))
    assert z.std().item() == pytest.approx(0.5 * 4.0, rel=0.03)


def test_privtune_noise_is_centred_on_the_opt3_shift(data):
    mech, ctx = setup("privtune", data, eta=200.0, metric="l2")
    opt3, _ = setup("opt3", data)
    centre = run(opt3, PerturbContext(state=ctx.state, input_ids=data["ids"]), data, None)[0]  # (t, d)
    s = 400  # draws: the first sequence repeated s times in one batch
    reps = PerturbContext(state=ctx.state, input_ids=data["ids"][:1].expand(s, T),
                          importance=data["importance"][:1].expand(s, T))  # fmt: skip
    draws = mech.perturb(data["hidden"][:1].expand(s, T, D), torch.ones(s, T), reps, torch.Generator().manual_seed(0))
    noise = draws - centre  # (s, t, d)
    assert noise.norm(dim=2).mean() > 0
    assert noise.mean(dim=0).norm(dim=1).max() < 0.2 * noise.norm(dim=2).mean()


def test_label_centroid_mode_needs_labels(data):
    mech = get_mechanism("opt3", centroid_mode="label")
    token_labels = torch.randint(2, (data["sample"].shape[0],))
    state = prepare_state(mech.config, train_hidden=data["sample"], prototypes=data["protos"],
                          embeddings=data["emb"], train_labels=token_labels)  # fmt: skip
    assert state.centroids.shape == (2, D)
    ctx = PerturbContext(state=state, input_ids=data["ids"])
    with pytest.raises(PrivacyStateError, match="labels"):
        mech.perturb(data["hidden"], data["mask"], ctx)
    labelled = PerturbContext(state=state, input_ids=data["ids"], labels=torch.tensor([0, 1, 0, 1]))
    assert torch.isfinite(mech.perturb(data["hidden"], data["mask"], labelled)[data["mask"] == 1]).all()


@pytest.mark.parametrize("name", [n for n in MECHANISMS if n != "none"])
def test_missing_state_raises(name, data):
    with pytest.raises(PrivacyStateError):
        get_mechanism(name).perturb(data["hidden"], data["mask"], PerturbContext(), torch.Generator())


def test_missing_importance_and_ids_raise(data):
    mech, ctx = setup("privtune", data)
    with pytest.raises(PrivacyStateError, match="importance"):
        mech.perturb(data["hidden"], data["mask"], PerturbContext(state=ctx.state, input_ids=data["ids"]))
    with pytest.raises(PrivacyStateError, match="input_ids"):
        mech.perturb(data["hidden"], data["mask"], PerturbContext(state=ctx.state, importance=data["importance"]))


def test_prepare_state_needs_a_sample_without_explicit_clip_norm():
    with pytest.raises(PrivacyStateError, match="train_hidden"):
        prepare_state(get_mechanism("dchi").config)


def test_diameter_sensitivity_does_not_clip(data):
    mech, ctx = setup("dchi", data, sensitivity="diameter", eta=1e6)
    state = ctx.state
    assert state.clip_norm is None
    assert state.sensitivity == pytest.approx(torch.cdist(data["sample"], data["sample"]).max().item(), rel=1e-5)
    out = run(mech, ctx, data)
    real = data["mask"] == 1
    assert torch.allclose(out[real], data["hidden"][real], atol=1e-2)


@pytest.mark.parametrize("name", MECHANISMS)
def test_privacy_record_is_json(name, data):
    mech, ctx = setup(name, data)
    record = json.loads(json.dumps(mech.privacy_record(ctx.state)))
    assert record["mechanism"] == name and record["guarantee"]


def test_privtune_record_states_budget_and_slack(data):
    mech, ctx = setup("privtune", data, eta=10.0, metric="l2", importance_to_scale="sigmoid")
    g = mech.privacy_record(ctx.state)["guarantee"]
    delta, eps = ctx.state.sensitivity, ctx.state.eps_local
    assert g["per_token_budget"] == {"min": 0.0, "max": 20.0}  # eta * w, w in (0, 2)
    assert g["additive_slack"]["max"] == pytest.approx(20.0 / delta * 2 * eps)
    mech, ctx = setup("privtune", data, eta=10.0, metric="l2")  # default top_fraction map: w in {0.25, 16}
    g = mech.privacy_record(ctx.state)["guarantee"]
    assert g["per_token_budget"] == {"min": 2.5, "max": 160.0}
    assert g["additive_slack"]["max"] == pytest.approx(160.0 / ctx.state.sensitivity * 2 * ctx.state.eps_local)
