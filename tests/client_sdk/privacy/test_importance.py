"""Classification (eq. 21) and generation (eqs. 22-25) importance, and the importance -> scale map."""

import pytest
import torch

from client_sdk.privacy import (
    InvalidChoiceError,
    classification_importance,
    generation_importance,
    generation_threshold,
    importance_to_scale,
    top_fraction_threshold,
)

# toy vocabulary: 0 pad, 1 the, 2 movie, 3 good, 4 great, 5 bad, 6 awful, 7 unseen, 8 cls
PAD, THE, MOVIE, GOOD, GREAT, BAD, AWFUL, UNSEEN, CLS = range(9)


def toy_corpus():
    pos = [[CLS, THE, MOVIE, GOOD], [CLS, THE, MOVIE, GREAT], [CLS, GOOD, THE, MOVIE], [CLS, GREAT, GOOD, PAD]]
    neg = [[CLS, THE, MOVIE, BAD], [CLS, THE, MOVIE, AWFUL], [CLS, BAD, THE, MOVIE], [CLS, AWFUL, BAD, PAD]]
    ids = torch.tensor(pos + neg)
    return ids, (ids != PAD).long(), torch.tensor([1] * 4 + [0] * 4)


def test_class_specific_tokens_rank_above_shared_ones():
    ids, mask, labels = toy_corpus()
    table = classification_importance(ids, mask, labels, vocab_size=9, ignore_ids=[CLS])
    assert table.shape == (9,) and table.dtype == torch.float32
    for specific in (GOOD, GREAT, BAD, AWFUL):
        for shared in (THE, MOVIE):
            assert table[specific] > table[shared]
    assert table[UNSEEN] == 0 and table[PAD] == 0 and table[CLS] == 0
    seen = table[[THE, MOVIE, GOOD, GREAT, BAD, AWFUL]]
    assert seen.mean().abs() < 1e-5
    assert seen.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-3)


def test_classification_importance_matches_eq21():
    ids, mask, labels = toy_corpus()
    v = 9
    counts = torch.zeros(2, v)
    for row, lab in zip(ids, labels, strict=True):
        for t in row[row != PAD].tolist():
            counts[lab, t] += 1
    p = (counts + 1) / (counts.sum(dim=1, keepdim=True) + v)
    raw = p[0] * (p[0] / p[1]).log() + p[1] * (p[1] / p[0]).log()
    seen = counts.sum(dim=0) > 0
    ref = (raw - raw[seen].mean()) / (raw[seen].std(unbiased=False) + 1e-6)
    table = classification_importance(ids, mask, labels, vocab_size=v)
    assert torch.allclose(table[seen], ref[seen].float(), atol=1e-4)


def test_single_class_gives_zero_importance():
    ids, mask, _ = toy_corpus()
    assert torch.equal(classification_importance(ids, mask, torch.zeros(8, dtype=torch.long), 9), torch.zeros(9))


def reference_generation(attn, mask, causal, exclude, eps=1e-6):
    """Loop reference for eqs. 22-25 with the causal-count normalisation."""
    b_, t_ = mask.shape
    score = torch.zeros(b_, t_)
    n_heads = 0
    for layer in attn:
        n_heads += layer.shape[1]
        for b in range(b_):
            for h in range(layer.shape[1]):
                a = layer[b, h]
                for j in range(t_):
                    queries = [i for i in range(t_) if mask[b, i] and (not causal or i >= j)]
                    base = sum(a[i, j] for i in queries) / max(len(queries), 1)
                    ent = -sum(a[j, k] * torch.log(a[j, k]) for k in range(t_) if a[j, k] > 0)
                    score[b, j] += base / (ent + eps)
    score /= n_heads
    keep = mask.bool() & ~exclude
    out = torch.zeros_like(score)
    for b in range(b_):
        vals = score[b][keep[b]]
        out[b][keep[b]] = (vals - vals.mean()) / (vals.std(unbiased=False) + eps)
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_generation_importance_matches_reference(causal):
    g = torch.Generator().manual_seed(0)
    b, h, t = 2, 3, 6
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 4:] = 0
    logits = torch.randn(b, h, t, t, generator=g)
    if causal:
        logits = logits.masked_fill(~torch.tril(torch.ones(t, t, dtype=torch.bool)), float("-inf"))
    logits = logits.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    attn = (logits.softmax(-1), logits.flip(1).softmax(-1))  # two layers
    exclude = torch.zeros(b, t, dtype=torch.bool)
    exclude[:, 0] = True  # BOS
    got = generation_importance(attn, mask, causal=causal, exclude_mask=exclude)
    ref = reference_generation(attn, mask, causal, exclude)
    assert torch.allclose(got, ref, atol=1e-4)
    assert (got[:, 0] == 0).all() and (got[1, 4:] == 0).all()


def test_generation_importance_ranks_the_attended_low_entropy_token_first():
    t = 5
    a = torch.full((t, t), 0.05)
    a[:, 2] = 0.8  # everyone attends to token 2; every row has the same entropy
    got = generation_importance((a.view(1, 1, t, t),), torch.ones(1, t), causal=False)
    assert got[0].argmax().item() == 2


def test_importance_to_scale():
    imp = torch.tensor([-10.0, 0.0, 10.0])
    w = importance_to_scale(imp)
    assert w[1].item() == pytest.approx(1.0)
    assert (w > 0).all() and (w < 2).all() and w[0] < w[1] < w[2]
    lin = importance_to_scale(imp, "linear", beta=0.5, w_min=0.25, w_max=1.5)
    assert lin.tolist() == [0.25, 1.0, 1.5]
    with pytest.raises(InvalidChoiceError) as info:
        importance_to_scale(imp, "exp")
    assert info.value.parameter == "importance_to_scale"


def skewed_corpus():
    """'the' (2) frequent and balanced; 'and' (3) frequent, 2:1 skewed; 'great' (4) / 'dull' (5) only in
    one class; 'rare' (6) seen once; 7 a filler of the negative class."""
    THE_, AND_, GREAT_, DULL_, RARE_, FILL = 2, 3, 4, 5, 6, 7
    pos = [[THE_, AND_, GREAT_, THE_]] * 20 + [[THE_, AND_, AND_, THE_]] * 10 + [[THE_, RARE_, THE_, THE_]]
    neg = [[THE_, AND_, DULL_, THE_]] * 20 + [[THE_, FILL, FILL, THE_]] * 10 + [[THE_, THE_, THE_, FILL]]
    ids = torch.tensor(pos + neg)
    return ids, torch.ones_like(ids), torch.tensor([1] * len(pos) + [0] * len(neg))


@pytest.mark.parametrize("score", ["log_odds_z", "information"])
def test_scores_rank_skewed_words_above_neutral_and_rare_ones(score):
    ids, mask, labels = skewed_corpus()
    table = classification_importance(ids, mask, labels, vocab_size=8, score=score)
    assert min(table[4], table[5]) > max(table[2], table[6])


def test_information_score_ranks_per_occurrence_value_above_frequency():
    ids, mask, labels = skewed_corpus()
    info = classification_importance(ids, mask, labels, vocab_size=8, score="information")
    assert min(info[4], info[5]) > info[3]  # 'and' is frequent but carries little per occurrence


def test_unknown_importance_score_is_refused():
    ids, mask, labels = skewed_corpus()
    with pytest.raises(InvalidChoiceError):
        classification_importance(ids, mask, labels, vocab_size=8, score="tfidf")


def test_top_fraction_threshold_covers_at_most_the_fraction():
    ids, mask, labels = skewed_corpus()
    table = classification_importance(ids, mask, labels, vocab_size=8, score="information")
    counts = torch.bincount(ids.flatten(), minlength=8).float()
    for fraction in (0.05, 0.2, 0.5):
        tau = top_fraction_threshold(table, ids, mask, fraction)
        covered = counts[table > tau].sum() / counts.sum()
        assert covered <= fraction + 1e-6
        assert covered + counts[table == tau].sum() / counts.sum() > fraction  # the next type would exceed it
    w = importance_to_scale(table - top_fraction_threshold(table, ids, mask, 0.4), "top_fraction", w_min=0.25, w_max=4.0)
    assert set(w.unique().tolist()) <= {0.25, 4.0} and w[4] == 4.0 and w[2] == 0.25


def test_generation_threshold_is_the_normal_quantile():
    assert generation_threshold(0.1) == pytest.approx(1.2816, abs=1e-3)
    assert generation_threshold(0.5) == pytest.approx(0.0, abs=1e-6)
