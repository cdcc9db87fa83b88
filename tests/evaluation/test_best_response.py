"""The best-response token attacks (method.md section 9) on a tiny random BERT: each recovers tokens
without noise, and each is at least as strong as the simpler attack it supersedes on the same
observation. No test here caps an attack's strength."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from client_sdk.audit import noise_variance
from client_sdk.jobspec import PrivtuneMethod
from client_sdk.privacy import get_mechanism
from client_sdk.privatizer import Privatizer
from evaluation.attacks import ATTACKS, AttackKit, AttackUnavailable, observe, run_attacks
from evaluation.attacks.kit import shadow_privatizer
from evaluation.harness.server_view import exposure_truth, token_classes
from tests.evaluation.test_attacks import PRIVATE, PUBLIC, SPLIT
from worker.models import build_bottom
from worker.trainer import TopTrainer, TrainSpec

VIEWS = 4
#: privtune with two noise levels 64x apart (no floor): the 8% of occurrences the label-informed importance
#: ranks highest near clean, the rest buried (named explicitly: the tests must not move with the defaults)
TWO_LEVELS = {
    "eta": 20.0, "noise_floor": 0.0, "view_noise": "fresh", "importance_score": "information",
    "importance_to_scale": "top_fraction", "top_fraction": 0.08, "w_min": 0.25, "w_max": 16.0,
}  # fmt: skip


@pytest.fixture(scope="module")
def bottom(tiny):
    return build_bottom(tiny, SPLIT)


@pytest.fixture(scope="module")
def top(tiny):
    spec = TrainSpec(tiny, PrivtuneMethod(split_layer=SPLIT, task="classification", num_labels=2, total_steps=10))
    return TopTrainer(spec).model


def observed(privatizer: Privatizer, texts: list[str], views: int = VIEWS, **scoring):
    """The server's view of ``texts`` sent ``views`` times (noise from seeds 1..views), with the exposure
    truth (lowest of >= 2 noise levels) and token classes."""
    seen = [observe(privatizer, texts, generator=torch.Generator().manual_seed(1 + k), **scoring) for k in range(views)]
    obs = seen[0]
    ids, mask = privatizer.encode(texts)
    t = obs.hidden.shape[1]
    scale = privatizer.token_noise_scale(ids, mask)[:, :t]
    return replace(
        obs, views=torch.stack([v.hidden for v in seen]), exposure=exposure_truth(scale, obs.attention_mask),
        token_class=token_classes(privatizer, obs.input_ids),
    )  # fmt: skip


@pytest.fixture(scope="module")
def setup(bottom, top):
    """mechanism spec -> (observation with views / exposure / token_class truth, kit); built once per spec."""
    cache = {}

    def make(name: str = "none", refit: bool = True, **params):
        key = (name, refit, tuple(sorted(params.items())))
        if key not in cache:
            model, tokenizer = bottom
            privatizer = Privatizer(model, tokenizer, get_mechanism(name, **params))
            if name != "none":
                privatizer.fit([r[0] for r in PRIVATE], [r[1] for r in PRIVATE])
            obs = observed(
                privatizer, [r[0] for r in PRIVATE], attributes=[r[2] for r in PRIVATE], labels=[r[1] for r in PRIVATE]
            )
            kit = AttackKit.from_privatizer(
                privatizer, [r[0] for r in PUBLIC], public_attributes=[r[2] for r in PUBLIC],
                public_labels=[r[1] for r in PUBLIC], top=top, refit=refit,
            )  # fmt: skip
            cache[key] = (obs, kit)
        return cache[key]

    return make


def by_model(results) -> dict:
    return {r.threat_model: r for r in results}


CONTEXT_FAST = {"max_seconds": 8.0, "max_epochs": 30}


# ---------------------------------------------------------------- without noise


@pytest.mark.parametrize("name", ["A0-bayes", "A0-multiview", "A0-context"])
def test_best_response_attacks_recover_tokens_without_noise(setup, name):
    obs, kit = setup("none")
    options = CONTEXT_FAST if name == "A0-context" else {}
    results = by_model(ATTACKS[name](obs, kit, **options))
    assert set(results) == {"naive", "adaptive"}
    for result in results.values():
        assert result.name == name and result.asr >= 0.9 and result.n == int(obs.scored.sum()), result
        assert 0.0 < result.details["seconds"] < 60
        assert set(result.details["by_class"]) == {"content", "function", "punctuation"}
        assert result.details["by_exposure"]["exposed"]["n"] == 0  # no noise: nothing is "exposed"


def test_a3_top_reads_attributes_through_the_servers_top(setup):
    obs, kit = setup("none")
    for result in ATTACKS["A3-top"](obs, kit):
        assert result.name == "A3-top" and result.asr >= 0.8 and result.n == obs.n, result
        assert result.details["feature_dim"] == kit.prototypes.shape[1]
    with pytest.raises(AttackUnavailable, match="top"):
        ATTACKS["A3-top"](obs, replace(kit, top=None))


# ---------------------------------------------------------------- at least as strong as what they supersede


def test_exposure_is_read_from_the_norm_on_a_two_level_mechanism(setup):
    obs, kit = setup("privtune", **TWO_LEVELS)
    assert obs.exposure.any() and not obs.exposure.all()
    detector = kit.exposure_detector()
    assert detector.levels.numel() == 2 and float(detector.levels[1] / detector.levels[0]) == pytest.approx(
        64, rel=0.01
    )
    public = kit.public("adaptive")
    assert detector.accuracy(public.hidden[public.scored], kit.public_noise_scale()[public.scored]) >= 0.97
    adaptive = by_model(ATTACKS["A0-bayes"](obs, kit))["adaptive"]
    assert adaptive.details["exposure_accuracy"] >= 0.95, adaptive.details
    assert adaptive.details["detected_exposed_share"] == pytest.approx(adaptive.details["true_exposed_share"], abs=0.05)


def test_a0_bayes_is_at_least_as_strong_as_a0_learned(setup):
    obs, kit = setup("privtune", **TWO_LEVELS)
    bayes, learned = by_model(ATTACKS["A0-bayes"](obs, kit)), by_model(ATTACKS["A0-learned"](obs, kit))
    for model in ("naive", "adaptive"):
        assert bayes[model].asr >= learned[model].asr - 0.02, (bayes[model], learned[model])
        assert 0.0 <= bayes[model].asr <= 1.0 and bayes[model].chance == learned[model].chance
    exposed = bayes["adaptive"].details["by_exposure"]["exposed"]
    assert exposed["asr"] >= learned["adaptive"].details["by_exposure"]["exposed"]["asr"]
    confident = bayes["adaptive"].details["confident"]
    assert confident["threshold"] == 0.9 and 0.0 <= confident["share"] <= 1.0
    assert confident["precision"] is None or 0.0 <= confident["precision"] <= 1.0


def test_a0_multiview_with_every_view_is_at_least_as_strong_as_one_view(setup):
    obs, kit = setup("privtune", **TWO_LEVELS)
    single = by_model(ATTACKS["A0-bayes"](obs, kit))
    multi = by_model(ATTACKS["A0-multiview"](obs, kit, full_curve=("naive", "adaptive")))
    for model in ("naive", "adaptive"):
        curve = multi[model].details["asr_by_views"]
        assert len(curve) == VIEWS and curve[0] == pytest.approx(single[model].asr, abs=1e-5)  # k = 1: A0-bayes
        assert multi[model].asr == pytest.approx(curve[-1], abs=1e-5) and multi[model].asr >= single[model].asr
        assert multi[model].details["distinct_views"] == [1.0, 2.0, 3.0, 4.0]
    assert multi["adaptive"].asr > single["adaptive"].asr + 0.05  # fresh noise averages down
    default = by_model(ATTACKS["A0-multiview"](obs, kit))  # the full curve for the adaptive attacker only
    assert default["adaptive"].details["asr_by_views"] == multi["adaptive"].details["asr_by_views"]
    naive = default["naive"].details["asr_by_views"]
    assert naive[1:-1] == [None] * (VIEWS - 2) and naive[-1] == multi["naive"].details["asr_by_views"][-1]
    with pytest.raises(AttackUnavailable, match="views"):
        ATTACKS["A0-multiview"](replace(obs, views=None), kit)


def test_identical_resends_give_a_multiview_attacker_nothing_more(setup):
    obs, kit = setup("privtune", **{**TWO_LEVELS, "view_noise": "per_text"})
    assert torch.equal(obs.views[0], obs.views[-1])  # per-text noise: every re-send is the same view
    multi = by_model(ATTACKS["A0-multiview"](obs, kit, "adaptive"))["adaptive"]
    single = by_model(ATTACKS["A0-bayes"](obs, kit, "adaptive"))["adaptive"]
    assert multi.details["distinct_views"] == [1.0] * VIEWS and multi.asr == pytest.approx(single.asr, abs=1e-5)


def test_a0_opt_uncapped_is_at_least_as_strong_as_capped(setup):
    obs, kit = setup("privtune", **TWO_LEVELS)
    uncapped = by_model(ATTACKS["A0-opt"](obs, kit, "adaptive", max_sequences=16))["adaptive"]
    capped = by_model(
        ATTACKS["A0-opt"](obs, kit, "adaptive", max_sequences=16, shortlist=32, likelihood="plain", init="uniform")
    )["adaptive"]
    assert uncapped.details["shortlist"] is None and uncapped.details["shortlist_hit"] == 1.0
    assert (uncapped.details["likelihood"], uncapped.details["init"], uncapped.details["prior"]) == (
        "mechanism",
        "bayes",
        True,
    )
    assert capped.details["shortlist"] == 32 and uncapped.n == capped.n
    assert uncapped.asr >= capped.asr, (uncapped, capped)
    clean = by_model(ATTACKS["A0-opt"](*setup("none"), max_sequences=8))
    assert all(r.asr >= 0.9 for r in clean.values()), clean  # the uncapped adaptive form still inverts clean text


def test_a0_context_trains_within_its_budget_and_keeps_the_better_model(setup):
    obs, kit = setup("privtune", **TWO_LEVELS)
    started = time.perf_counter()
    results = by_model(ATTACKS["A0-context"](obs, kit, **CONTEXT_FAST))
    assert time.perf_counter() - started < 2 * (CONTEXT_FAST["max_seconds"] + 10)
    bayes = by_model(ATTACKS["A0-bayes"](obs, kit))
    for model, result in results.items():
        details = result.details
        assert details["selected"] in ("context", "bayes") and details["epochs"] >= 1 and details["steps"] >= 1
        assert details["holdout_asr_context"] is not None and details["holdout_asr_bayes"] is not None
        if details["selected"] == "bayes":  # the attacker keeps the Bayes decoder when context did not help
            assert result.asr == pytest.approx(bayes[model].asr)
        assert 0.0 <= result.asr <= 1.0 and result.chance == bayes[model].chance
    assert results["adaptive"].details["fresh_noise"] and not results["naive"].details["fresh_noise"]
    runs = [ATTACKS["A0-context"](obs, kit, "adaptive", max_seconds=60.0, max_steps=6) for _ in range(2)]
    assert runs[0][0].details["steps"] == 6 and runs[0][0].asr == runs[1][0].asr  # a step budget is reproducible
    assert runs[0][0].details["holdout_curve"] == runs[1][0].details["holdout_curve"]


# ---------------------------------------------------------------- attributes


def test_a3_pools_positions_by_their_detected_noise_level(setup):
    obs, kit = setup("privtune", **TWO_LEVELS)
    results = by_model(ATTACKS["A3"](obs, kit))
    assert results["naive"].details["pooling"] == "mean" and results["adaptive"].details["pooling"] == "levels"
    for result in results.values():
        assert 0.0 <= result.asr <= 1.0 and result.n == obs.n
    details = results["adaptive"].details
    for how in ("mean", "precision"):
        (other,) = ATTACKS["A3"](obs, kit, "adaptive", pooling=how)
        assert other.details["pooling"] == how and other.asr == pytest.approx(details[f"asr_{how}_pooling"])


# ---------------------------------------------------------------- the kit


def test_the_adaptive_attacker_refits_the_mechanism_on_public_text(setup):
    obs, kit = setup("privtune", **TWO_LEVELS)
    victim = setup("privtune", refit=False, **TWO_LEVELS)[1].known.privatizer
    shadow = kit.known.privatizer
    assert kit.refit and shadow is not victim and shadow.mechanism.config == victim.mechanism.config
    assert shadow.state is not victim.state and not torch.equal(shadow.state.mu, victim.state.mu)  # public sample
    assert not torch.equal(shadow.state.importance_table, victim.state.importance_table)  # public labels
    assert shadow.state.neighbours.key == victim.state.neighbours.key  # the model's, reused
    again = shadow_privatizer(victim, [r[0] for r in PUBLIC], kit.public_labels, prototypes=kit.prototypes)
    assert torch.equal(again.state.mu, shadow.state.mu) and torch.equal(again.state.centroids, shadow.state.centroids)
    old = setup("privtune", refit=False, **TWO_LEVELS)[1]
    assert not old.refit and old.known.privatizer is victim


def test_public_noise_scales_and_fresh_noise_match_the_mechanism(setup):
    _, kit = setup("privtune", **TWO_LEVELS)
    shadow = kit.known.privatizer
    scale = kit.public_noise_scale()  # (n_pub, t)
    public = kit.public_expected()
    assert scale.shape == public.input_ids.shape and bool((scale[~public.attention_mask.bool()] == 0).all())
    ids, mask = shadow.encode(list(kit.public_texts[:5]))
    assert torch.allclose(scale[:5, : ids.shape[1]], shadow.token_noise_scale(ids, mask))
    real = public.attention_mask.bool()
    draws = [kit.sample_public(torch.Generator().manual_seed(s)).hidden for s in range(2)]
    assert not torch.equal(draws[0], draws[1])  # fresh noise on every call
    noise = (draws[0] - public.hidden)[real]  # (m, d)
    expected = noise_variance(scale[real], kit.known.noise, noise.shape[1])  # (m,)
    assert float(noise.pow(2).mean()) == pytest.approx(float(expected.mean()), rel=0.1)
    assert torch.equal(draws[0][~real], public.hidden[~real])  # padding untouched


def test_every_token_attack_reports_class_and_exposure_splits(setup):
    obs, kit = setup("privtune", **TWO_LEVELS)
    names = ["A2", "A0-learned", "A0-bayes", "A0-multiview", "A0-opt"]
    options = {"A0-opt": {"max_sequences": 4, "steps": 5}}
    for result in run_attacks(obs, kit, names, "adaptive", options=options):
        splits = result.details["by_exposure"]
        assert splits["exposed"]["n"] + splits["buried"]["n"] == result.n, result.name
        classes = result.details["by_class"]
        assert sum(c["n"] for c in classes.values()) == result.n
        hits = sum(c["asr"] * c["n"] for c in classes.values() if c["n"])
        assert hits / result.n == pytest.approx(result.asr, abs=1e-4)
