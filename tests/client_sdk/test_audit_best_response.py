"""client_sdk.audit's best-response math on synthetic tensors: noise variances, averaging linked views,
reading the noise level from the norm, and the per-level Bayes decoder (exact, blockwise, per level)."""

from __future__ import annotations

import pytest
import torch

from client_sdk.audit import ExposureDetector, LevelBayesDecoder, average_views, distinct_views, noise_variance
from client_sdk.privacy import sample_l1, sample_l2

D, V = 16, 40


def classes_and_rows(n: int = 4000, spread: float = 0.3, seed: int = 0):
    """Class means (V, D), token ids (n,) and noiseless rows (n, D) around their class means."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(V, D, generator=g)
    ids = torch.randint(0, V, (n,), generator=g)
    return means, ids, means[ids] + spread * torch.randn(n, D, generator=g)


def two_levels(n: int, exposed: float = 0.1, low: float = 0.02, high: float = 1.0, seed: int = 1) -> torch.Tensor:
    """(n,) Laplace scales: ``exposed`` of the positions at ``low``, the others at ``high``."""
    g = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(n, generator=g) < exposed, torch.tensor(low), torch.tensor(high))


def laplace(n: int, scale: torch.Tensor, seed: int = 2) -> torch.Tensor:
    return sample_l1((n,), D, scale, torch.Generator().manual_seed(seed))


def test_noise_variance_per_coordinate():
    b = torch.tensor([0.5, 2.0])
    assert torch.allclose(noise_variance(b, "laplace", D), 2 * b**2)
    assert torch.allclose(noise_variance(b, "gaussian", D), b**2)
    assert torch.allclose(noise_variance(b, "l2", D), (D + 1) * b**2)
    assert torch.equal(noise_variance(b, "none", D), torch.zeros(2))
    draws = sample_l2((20000,), D, 0.1, torch.Generator().manual_seed(0))  # d_chi l2 of scale 0.1
    assert float(draws.pow(2).mean()) == pytest.approx(float(noise_variance(0.1, "l2", D)), rel=0.05)
    with pytest.raises(ValueError):
        noise_variance(b, "cauchy", D)


def test_average_views_is_the_mean_and_divides_the_noise_variance_by_k():
    clean = torch.randn(1, 3000, 1, D)  # (1, N, T, d)
    k = 4
    views = clean + sample_l1((k, 3000, 1), D, 1.0, torch.Generator().manual_seed(0))  # (K, N, T, d)
    mean = average_views(views)
    assert mean.shape == (3000, 1, D) and torch.allclose(mean, views.mean(dim=0))
    residual = (mean - clean[0]).pow(2).mean()
    assert float(residual) == pytest.approx(2.0 / k, rel=0.05)  # Laplace(1): variance 2, over k views


def test_identical_resends_count_once():
    views = torch.randn(4, 3, 5, 2)
    views[2] = views[0]  # a re-send of view 0 (per-text noise)
    views[3, 1] = views[1, 1]  # text 1: its fourth view repeats its second
    assert distinct_views(views).tolist() == [3, 2, 3]
    deduped = average_views(views, dedupe=True)
    assert torch.allclose(deduped[0], views[[0, 1, 3], 0].mean(dim=0))
    assert torch.allclose(deduped[1], views[[0, 1], 1].mean(dim=0))
    same = views[:1].expand(3, -1, -1, -1)
    assert distinct_views(same).tolist() == [1, 1, 1] and torch.allclose(average_views(same, dedupe=True), views[0])


def test_exposure_detector_reads_two_levels_from_the_norm():
    means, ids, clean = classes_and_rows()
    clipped = 4.0 * torch.nn.functional.normalize(clean, dim=1)  # the mechanisms clip to C: one signal norm
    scale = two_levels(clean.shape[0])
    noisy = clipped + laplace(clean.shape[0], scale)
    detector = ExposureDetector.fit(noisy[:3000], scale[:3000])
    assert torch.allclose(detector.levels, torch.tensor([0.02, 1.0])) and detector.exposed_level == 0
    assert detector.accuracy(noisy[3000:], scale[3000:]) >= 0.99
    assert torch.isin(detector.predict_scale(noisy[3000:]), detector.levels).all()
    one = ExposureDetector.fit(noisy, torch.full((noisy.shape[0],), 0.5))
    assert one.exposed_level is None and torch.equal(
        one.predict_level(noisy), torch.zeros(noisy.shape[0], dtype=torch.long)
    )


def test_exposure_detector_with_a_reference_separates_levels_the_norm_alone_confuses():
    """Unclipped signal norms spread as much as the noise: the distance to the nearest noiseless mean does not."""
    means, ids, clean = classes_and_rows()
    scale = two_levels(clean.shape[0])
    noisy = clean + laplace(clean.shape[0], scale)
    by_norm = ExposureDetector.fit(noisy[:3000], scale[:3000])
    by_both = ExposureDetector.fit(noisy[:3000], scale[:3000], reference=means)
    norm_only, both = by_norm.accuracy(noisy[3000:], scale[3000:]), by_both.accuracy(noisy[3000:], scale[3000:])
    assert both >= 0.99 and both > norm_only, (norm_only, both)


def test_exposure_detector_uses_every_view_of_a_position():
    """Close levels, read from one view vs from four: the per-view likelihoods add."""
    _, _, clean = classes_and_rows()
    clean = 4.0 * torch.nn.functional.normalize(clean, dim=1)
    n = clean.shape[0]
    scale = two_levels(n, exposed=0.5, low=0.3, high=0.4)
    views = torch.stack([clean + laplace(n, scale, seed=10 + k) for k in range(4)])  # (4, n, d)
    detector = ExposureDetector.fit(views[0], scale)
    truth = detector.level_of(scale)
    one = float((detector.predict_level(views[0]) == truth).float().mean())
    four = float((detector.predict_level(views) == truth).float().mean())
    assert four > one + 0.05, (one, four)


def test_bayes_decoder_recovers_clean_tokens_and_scores_blockwise():
    means, ids, clean = classes_and_rows()
    decoder = LevelBayesDecoder.fit(clean, ids, noise="laplace")
    predicted, confidence = decoder.predict(clean)
    assert float((predicted == ids).float().mean()) >= 0.99
    assert bool(((confidence >= 0) & (confidence <= 1 + 1e-6)).all())
    scale = two_levels(clean.shape[0])
    noisy = clean + laplace(clean.shape[0], scale)
    whole = decoder.predict(noisy, scale)
    blocks = decoder.predict(noisy, scale, block_size=7, row_block=333)
    assert torch.equal(whole[0], blocks[0]) and torch.allclose(whole[1], blocks[1], atol=1e-5)
    post = decoder.log_posterior(noisy[:50], scale[:50])  # (50, C), normalised
    assert torch.allclose(post.exp().sum(dim=1), torch.ones(50), atol=1e-4)
    assert torch.equal(decoder.classes[post.argmax(dim=1)], whole[0][:50])
    assert torch.allclose(post.max(dim=1).values.exp(), whole[1][:50], atol=1e-4)


def test_decoding_each_level_with_its_own_variance_beats_one_pooled_variance():
    """Anisotropic within-class spread: near-clean rows need the spread's metric, noisy ones the noise's."""
    g = torch.Generator().manual_seed(0)
    means = 0.1 * torch.randn(V, D, generator=g) * torch.linspace(0.2, 2.0, D)  # means differ most late ...
    ids = torch.randint(0, V, (4000,), generator=g)
    spread = 0.1 * torch.linspace(2.0, 0.05, D)  # ... where the within-class spread is smallest
    clean = means[ids] + spread * torch.randn(4000, D, generator=g)
    scale = two_levels(clean.shape[0], exposed=0.5, low=0.001, high=1.0)
    noisy = clean + laplace(clean.shape[0], scale)
    decoder = LevelBayesDecoder.fit(clean, ids, noise="laplace", shrinkage=0.0)
    rate = lambda s, rows=slice(None): float((decoder.predict(noisy[rows], s)[0] == ids[rows]).float().mean())
    pooled_scale = float(noise_variance(scale, "laplace", D).mean().div(2).sqrt())  # one variance for all rows
    exposed = scale < 0.5
    per_level, pooled = rate(scale[exposed], exposed), rate(pooled_scale, exposed)
    assert per_level > pooled + 0.05, (per_level, pooled)
    assert rate(scale) > rate(pooled_scale)
    laplace_rate = float((decoder.predict(noisy, scale, likelihood="laplace")[0] == ids).float().mean())
    assert laplace_rate >= rate(scale) - 0.01  # the exact noise form re-ranks the top candidates


def test_views_argument_divides_the_noise_variance():
    means, ids, clean = classes_and_rows()
    n, k = clean.shape[0], 4
    views = torch.stack([clean + laplace(n, torch.full((n,), 1.5), seed=20 + j) for j in range(k)])  # (k, n, d)
    decoder = LevelBayesDecoder.fit(clean, ids, noise="laplace")
    rate = lambda rows, **kw: float((decoder.predict(rows, torch.full((n,), 1.5), **kw)[0] == ids).float().mean())
    assert rate(views.mean(dim=0), views=k) > rate(views[0]) + 0.1
    conf_k = decoder.predict(views.mean(dim=0), torch.full((n,), 1.5), views=k)[1]
    conf_1 = decoder.predict(views.mean(dim=0), torch.full((n,), 1.5), views=1)[1]
    assert float(conf_k.mean()) > float(conf_1.mean())  # the averaged rows are that much surer


def test_fallback_classes_cover_unseen_tokens_and_subsets_keep_scores():
    means, ids, clean = classes_and_rows()
    seen = ids < V - 5  # the last 5 tokens never appear in "public" text
    decoder = LevelBayesDecoder.fit(
        clean[seen], ids[seen], fallback_ids=torch.arange(V), fallback_means=means, fallback_count=0.5
    )
    assert decoder.classes.numel() == V and int(decoder.trained.sum()) == V - 5
    unseen = ~seen
    assert float((decoder.predict(clean[unseen])[0] == ids[unseen]).float().mean()) >= 0.9
    assert decoder.coverage(ids) == pytest.approx(float(seen.float().mean()))
    part = decoder.subset(torch.arange(10))
    full = decoder.log_posterior(clean[:20])[:, :10]
    assert torch.allclose(part.log_posterior(clean[:20]), full.log_softmax(dim=1), atol=1e-4)
    per_class = LevelBayesDecoder.fit(clean, ids, spread="class")
    assert float((per_class.predict(clean)[0] == ids).float().mean()) >= 0.99
