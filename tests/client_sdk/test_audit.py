"""The on-device privacy audit and the eta search, on a tiny random BERT."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
import torch

from client_sdk.audit import (
    AuditReport,
    TokenDiscriminant,
    expected_privatizer,
    majority_rate,
    nearest_prototype,
    noiseless_mechanism,
    privacy_audit,
    search_eta,
)
from client_sdk.privacy import clip_by_norm, get_mechanism
from client_sdk.privatizer import Privatizer
from tests.helpers import make_tiny_bert, toy_dataset
from worker.models import build_bottom  # the provider cuts the bottom (tests only)

TEXTS = [text for text, _ in toy_dataset(96, seed=3)]
LABELS = [int(label == "pos") for _, label in toy_dataset(96, seed=3)]
ETAS = (0.5, 2.0, 8.0, 32.0, 128.0, 512.0)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny tensors gain nothing from threads, and an oversubscribed CPU makes OpenMP barriers very slow."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bottom(tmp_path_factory):
    return build_bottom(str(make_tiny_bert(tmp_path_factory.mktemp("audit") / "tiny")), 2)


@pytest.fixture(scope="module")
def prototypes(bottom):
    return bottom[0].token_prototypes()


def _privatizer(bottom, name: str = "none", **params) -> Privatizer:
    privatizer = Privatizer(*bottom, get_mechanism(name, **params))
    return privatizer if name == "none" else privatizer.fit(TEXTS, LABELS)


def test_audit_without_noise_finds_the_undefended_leak(bottom, prototypes):
    report = privacy_audit(_privatizer(bottom), TEXTS, sample_size=32, prototypes=prototypes)
    assert isinstance(report, AuditReport) and report.public_source == "held-out half"
    assert (report.n_texts, report.n_public_texts) == (32, 48)
    names = [a.name for a in report.attacks]
    assert names == ["A2-nearest-prototype", "A0-learned-adaptive", "A0-bayes-adaptive"]
    for attack in report.attacks:
        assert attack.asr >= 0.9 and attack.asr == attack.undefended_asr  # `none` sends the clean states
        assert attack.n == 32 * 6  # six words per text; [CLS]/[SEP] are not scored
        assert 0 < attack.chance < 0.2
    assert report.max_asr == max(a.asr for a in report.attacks)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["max_asr"] == report.max_asr and data["mechanism"]["mechanism"] == "none"


def test_audit_with_strong_noise_reports_its_rates_next_to_the_undefended_ones(bottom, prototypes):
    """Valid rates on the same tokens as the undefended run (no test caps how strong an attack may be)."""
    report = privacy_audit(_privatizer(bottom, "dchi", eta=0.5), TEXTS, sample_size=32, prototypes=prototypes)
    plain = privacy_audit(_privatizer(bottom), TEXTS, sample_size=32, prototypes=prototypes)
    for attack, clean in zip(report.attacks, plain.attacks, strict=True):
        assert 0.0 <= attack.asr <= 1.0 and attack.undefended_asr >= 0.9
        assert (attack.n, attack.chance) == (clean.n, clean.chance)
    assert report.worst_asr >= report.max_asr and report.undefended_max_asr >= 0.9


def test_audit_chance_and_public_texts(bottom, prototypes):
    public = [text for text, _ in toy_dataset(60, seed=9)]
    report = privacy_audit(_privatizer(bottom), TEXTS[:20], public_texts=public, sample_size=64, prototypes=prototypes)
    assert report.public_source == "given" and (report.n_texts, report.n_public_texts) == (20, 60)
    tokens = [word for text in TEXTS[:20] for word in text.split()]
    assert report.attacks[0].chance == pytest.approx(Counter(tokens).most_common(1)[0][1] / len(tokens))
    with pytest.raises(ValueError, match="at least 2 texts"):
        privacy_audit(_privatizer(bottom), TEXTS[:1], prototypes=prototypes)


def test_audit_is_reproducible_with_a_fixed_generator(bottom, prototypes):
    privatizer = _privatizer(bottom, "dchi", eta=8.0)
    run = lambda seed: privacy_audit(
        privatizer, TEXTS, sample_size=24, generator=torch.Generator().manual_seed(seed), prototypes=prototypes
    ).to_dict()
    assert run(4) == run(4)
    assert run(4) != run(5)  # another split and other noise
    assert privacy_audit(privatizer, TEXTS, sample_size=24, prototypes=prototypes).to_dict() == run(0)


def test_search_eta_picks_the_largest_eta_meeting_the_target(bottom, prototypes):
    # fresh noise: common random numbers across eta come from the audit's generator (per-text noise would
    # key every draw to the state's secret and the toy data's repeated texts)
    factory = lambda eta: _privatizer(bottom, "dchi", eta=eta, view_noise="fresh")
    search = lambda target, **kw: search_eta(
        factory, TEXTS, target, ETAS, sample_size=24, prototypes=prototypes,
        generator=torch.Generator().manual_seed(1), **kw,
    )  # fmt: skip
    strict, loose = search(0.3), search(0.9)
    assert strict.met_target and loose.met_target
    assert strict.chosen_eta < loose.chosen_eta
    for result in (strict, loose):
        assert result.measured_asr <= result.target_asr
        assert [p.eta for p in result.table] == sorted(p.eta for p in result.table)
        assert len(result.table) <= 3  # bisection over 6 points
        larger = [p for p in result.table if p.eta > result.chosen_eta]
        assert all(p.max_asr > result.target_asr for p in larger)
    grid = search(0.3, strategy="grid")
    assert len(grid.table) == len(ETAS) and grid.chosen_eta == strict.chosen_eta
    asrs = [p.max_asr for p in grid.table]
    assert asrs[0] < 0.2 and asrs[-1] > 0.8
    again = search(0.3)
    assert [(p.eta, p.max_asr) for p in again.table] == [(p.eta, p.max_asr) for p in strict.table]


def test_search_eta_reports_the_closest_point_when_no_eta_meets_the_target(bottom, prototypes):
    result = search_eta(
        lambda eta: _privatizer(bottom, "dchi", eta=eta), TEXTS, 0.0, ETAS[-3:], sample_size=16, prototypes=prototypes
    )
    assert not result.met_target and result.chosen_eta is None
    assert result.closest.max_asr == min(p.max_asr for p in result.table) == result.measured_asr
    with pytest.raises(ValueError):
        search_eta(lambda eta: None, TEXTS, 0.1, (), prototypes=prototypes)
    with pytest.raises(ValueError):
        search_eta(lambda eta: None, TEXTS, 0.1, ETAS, strategy="random", prototypes=prototypes)


# ---------------------------------------------------------------- the attack math


def test_token_discriminant_separates_gaussian_classes_and_falls_back():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(5, 8, generator=g) * 3  # (5, d)
    ids = torch.arange(4).repeat(50)  # classes 0..3 seen, 4 never
    x = means[ids] + torch.randn(200, 8, generator=g) * 0.3
    lda = TokenDiscriminant.fit(x, ids + 10, fallback_ids=torch.arange(10, 15), fallback_means=means)
    test_ids = torch.arange(5).repeat(20)
    pred = lda.predict(means[test_ids] + torch.randn(100, 8, generator=g) * 0.3)
    assert (pred == test_ids + 10).float().mean() >= 0.95  # class 4 only through its fallback mean
    assert lda.coverage(test_ids + 10) == pytest.approx(0.8) and lda.classes.numel() == 5
    mean_only = TokenDiscriminant.fit(x + 5.0, ids, mean_hidden=x)  # means from x, covariance from x + 5
    assert torch.equal(mean_only.predict(means[:4]), torch.arange(4))


def test_nearest_prototype_and_majority_rate():
    protos = torch.eye(4) * torch.tensor([1.0, 2.0, 3.0, 4.0]).unsqueeze(1)
    hidden = torch.tensor([[0.0, 5.0, 0.1, 0.0], [0.2, 0.0, 0.0, -1.0], [3.0, 0.0, 0.0, 0.0]])
    assert nearest_prototype(hidden, protos).tolist() == [1, 0, 0]  # cosine: norms do not matter
    assert majority_rate(torch.tensor([3, 3, 1, 2])) == 0.5 and majority_rate(torch.tensor([])) == 0.0


def test_noiseless_twin_is_the_deterministic_part(bottom):
    dchi = _privatizer(bottom, "dchi", eta=1.0)
    twin = expected_privatizer(dchi)
    texts = TEXTS[:4]
    out = [twin.privatize(texts, generator=torch.Generator().manual_seed(s))["hidden"] for s in (0, 1)]
    ids, mask = dchi.encode(texts)
    clipped = clip_by_norm(dchi.bottom(ids, mask).hidden, dchi.state.clip_norm)
    real = mask.bool()
    assert torch.allclose(out[0], out[1], atol=1e-6) and torch.allclose(out[0][real], clipped[real], atol=1e-5)
    opt3 = get_mechanism("opt3")
    assert noiseless_mechanism(opt3) is opt3
    assert noiseless_mechanism(get_mechanism("gaussian")).config.noise_multiplier < 1e-9


def test_audit_depends_on_nothing_outside_the_sdk():
    code = "import sys, client_sdk.audit; bad = [m for m in sys.modules if m.split('.')[0] in ('evaluation', 'worker', 'api')]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_best_response_reads_exposure_from_norms_and_reports_by_class(bottom, prototypes):
    """Two noise levels: the exposed tokens fall to A0-bayes; the worst rate is not the average."""
    privatizer = _privatizer(
        bottom, "dchi_importance", eta=8.0, importance_score="information", top_fraction=0.3, noise_floor=0.0
    )
    report = privacy_audit(privatizer, TEXTS, sample_size=48, prototypes=prototypes)
    bayes = {a.name: a for a in report.attacks}["A0-bayes-adaptive"]
    learned = {a.name: a for a in report.attacks}["A0-learned-adaptive"]
    assert bayes.asr >= learned.asr - 0.02  # the best response is not weaker than the pooled discriminant
    assert {"exposed", "buried"} <= set(bayes.groups)
    assert bayes.groups["exposed"]["asr"] > bayes.groups["buried"]["asr"]
    assert report.worst_asr >= bayes.groups["exposed"]["asr"] >= bayes.asr
    assert report.to_dict()["worst_asr"] == report.worst_asr


def test_linked_fresh_views_are_averaged_and_per_text_views_add_nothing(bottom, prototypes):
    fresh = _privatizer(bottom, "dchi", eta=4.0, view_noise="fresh")
    once = privacy_audit(fresh, TEXTS, sample_size=48, prototypes=prototypes)
    many = privacy_audit(fresh, TEXTS, sample_size=48, prototypes=prototypes, views=8)
    rate = lambda r: {a.name: a for a in r.attacks}["A0-bayes-adaptive"]
    assert rate(many).details["distinct_views"] == 8 and rate(many).asr > rate(once).asr
    keyed = _privatizer(bottom, "dchi", eta=4.0)
    assert (
        rate(privacy_audit(keyed, TEXTS, sample_size=48, prototypes=prototypes, views=8)).details["distinct_views"] == 1
    )
