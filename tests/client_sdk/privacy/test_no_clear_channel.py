"""The mechanism without a clear channel: per-text noise, the noise floor, sensitive terms, the
data-independent importance map, and the per-position noise scale the Privatizer reports."""

import math

import pytest
import torch

from client_sdk.privacy import PrivacyConfigError, get_config, load_state, save_state
from client_sdk.privacy.token_classes import CONTENT, FUNCTION, PUNCTUATION, SPECIAL, token_class_table
from client_sdk.privacy.view_noise import position_seeds
from client_sdk.privatizer import Privatizer
from tests.client_sdk.test_privatizer import LABELS, TEXTS, FakeBottom, make_tokenizer


def privatizer(name="dchi_importance", causal=False, labels=True, **params):
    if name != "none":
        # the label-informed map (the toy vocabulary: a few tokens cover 30% of occurrences) unless named
        params = {"top_fraction": 0.3, "importance_score": "information", **params}
    tokenizer = make_tokenizer()
    bottom = FakeBottom(len(tokenizer), causal=causal)
    priv = Privatizer(bottom, tokenizer, get_config(name, **params), max_length=8)
    return priv.fit(TEXTS, LABELS if labels else None)


def test_per_text_noise_repeats_the_view_and_differs_between_texts():
    priv = privatizer()
    a = priv.privatize(TEXTS[:4])["hidden"]
    b = priv.privatize(TEXTS[:4])["hidden"]  # another send (epoch, validation, inference)
    assert torch.equal(a, b)
    alone = priv.privatize(TEXTS[1:2])["hidden"]  # the same text in another batch, other padding
    assert torch.equal(alone[0, : alone.shape[1]], a[1, : alone.shape[1]])
    clean = priv.privatize(TEXTS[:4], generator=None)["hidden"]
    assert torch.equal(clean, a)
    other = privatizer()  # another device: another secret, other noise for the same text
    assert not torch.equal(other.privatize(TEXTS[:4])["hidden"], a)


def test_fresh_noise_differs_on_every_send():
    priv = privatizer(view_noise="fresh")
    assert not torch.equal(priv.privatize(TEXTS[:2])["hidden"], priv.privatize(TEXTS[:2])["hidden"])


def test_causal_noise_depends_on_the_prefix_only():
    priv = privatizer(causal=True)
    ids, mask = priv.encode(["the movie good great"])
    full = priv.privatize_ids(ids, mask)["hidden"]
    prefix = priv.privatize_ids(ids[:, :3], mask[:, :3])["hidden"]  # a prompt at inference
    assert torch.allclose(full[:, :3], prefix, atol=1e-5)  # same noise (the bottom's matmuls differ in T)
    changed = ids.clone()
    changed[0, 3] = ids[0, 1]
    later = priv.privatize_ids(changed, mask)["hidden"]
    assert torch.equal(later[:, :3], full[:, :3]) and not torch.equal(later[:, 3], full[:, 3])


def test_bidirectional_noise_is_keyed_by_the_whole_text():
    secret = "ab" * 32
    ids = torch.tensor([[2, 4, 5, 3], [2, 4, 6, 3]])
    seeds = position_seeds(secret, ids, torch.ones_like(ids), causal=False).view(2, 4)
    assert (seeds[0] != seeds[1]).all()  # one token differs: every position's noise differs
    causal = position_seeds(secret, ids, torch.ones_like(ids), causal=True).view(2, 4)
    assert torch.equal(causal[0, :2], causal[1, :2]) and (causal[0, 2:] != causal[1, 2:]).all()
    assert not torch.equal(position_seeds("cd" * 32, ids, torch.ones_like(ids), False).view(2, 4), seeds)


def test_noise_floor_bounds_the_least_noise_of_every_token():
    d = 16
    for floor in (0.0, 2.0):
        priv = privatizer(eta=10.0, noise_floor=floor)
        ids, mask = priv.encode(TEXTS)
        scale = priv.token_noise_scale(ids, mask)[mask.bool()]  # (n,) Laplace b
        clip = priv.state.clip_norm
        least = float(scale.min()) * math.sqrt(2 * d) / clip  # E||z||_2 / C of the least-noised token
        if floor:
            assert least == pytest.approx(floor, rel=1e-5)
        else:
            assert least < 0.5  # the paper's form: the top tokens travel nearly clean
    priv = privatizer(eta=10.0, noise_floor=2.0, view_noise="fresh")
    ids, mask = priv.encode(TEXTS)
    with torch.no_grad():
        clean = priv.bottom(ids, mask).hidden
    sent = priv.privatize_ids(ids, mask, generator=torch.Generator().manual_seed(0))["hidden"]
    ratio = (
        sent
        - torch.nn.functional.normalize(clean, dim=-1)
        * clean.norm(dim=-1, keepdim=True).clamp(max=priv.state.clip_norm)
    ).norm(dim=-1)[mask.bool()] / priv.state.clip_norm
    assert float(ratio.min()) > 1.0  # measured noise-to-signal of every token, not only its scale


def test_sensitive_terms_always_get_the_most_noise():
    plain = privatizer(eta=10.0, noise_floor=0.0)
    priv = privatizer(eta=10.0, noise_floor=0.0, sensitive_terms=["great", "Good"])
    vocab = priv.tokenizer.get_vocab()
    ids, mask = priv.encode(TEXTS)
    scale, before = priv.token_noise_scale(ids, mask), plain.token_noise_scale(ids, mask)
    terms = torch.isin(ids, torch.tensor([vocab["great"], vocab["good"]]))
    most = float(before[mask.bool()].max())
    assert terms.any() and torch.allclose(scale[terms], torch.full_like(scale[terms], most))
    assert float(before[terms].min()) < most  # without the list, these label words were exposed
    assert torch.equal(scale[~terms & mask.bool()], before[~terms & mask.bool()])
    with pytest.raises(PrivacyConfigError, match="sensitive_terms"):
        get_config("privtune", sensitive_terms="great")
    with pytest.raises(PrivacyConfigError, match="sensitive_terms"):
        get_config("privtune", sensitive_terms=["ok", " "])


def test_token_class_importance_needs_no_labels_and_exposes_function_words_only():
    priv = privatizer(eta=10.0, labels=False, importance_score="token_class", noise_floor=0.0)
    classes = token_class_table(priv.tokenizer)
    ids, mask = priv.encode(TEXTS)
    scale = priv.token_noise_scale(ids, mask)
    cls = classes[ids]
    real = mask.bool()
    low = scale[real].min()
    assert torch.all(scale[real & (cls == FUNCTION)] == low)  # "the", "a"
    assert torch.all(scale[real & ((cls == CONTENT) | (cls == SPECIAL))] > low)
    noisy = privatizer(eta=10.0, importance_score="token_class", noise_floor=0.0)  # labels are ignored
    assert torch.equal(noisy.state.importance_table, priv.state.importance_table)


def test_token_classes_of_a_wordpiece_vocabulary():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[CLS]", "the", "##the", "movie", ",", "...", "Ġof", "Ġcat"])}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[PAD]")),
                                  pad_token="[PAD]", cls_token="[CLS]")  # fmt: skip
    table = token_class_table(tok).tolist()
    assert table == [SPECIAL, SPECIAL, FUNCTION, CONTENT, CONTENT, PUNCTUATION, PUNCTUATION, FUNCTION, CONTENT]


def test_noise_scale_is_zero_at_padding_and_without_noise():
    priv = privatizer()
    ids, mask = priv.encode(TEXTS[:3])
    scale = priv.token_noise_scale(ids, mask)
    assert scale.shape == ids.shape and torch.all(scale[mask == 0] == 0) and torch.all(scale[mask == 1] > 0)
    none = privatizer("none")
    assert torch.all(none.token_noise_scale(ids, mask) == 0)


def test_the_secret_stays_on_the_device(tmp_path):
    priv = privatizer()
    secret = priv.state.noise_secret
    assert secret and len(bytes.fromhex(secret)) == 32
    assert secret not in str(priv.privacy_record()) and "noise_secret" not in priv.state.summary()
    save_state(priv.state, tmp_path)
    assert load_state(tmp_path).noise_secret == secret
    seeded = [privatizer().fit(TEXTS, LABELS, generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert seeded[0].state.noise_secret == seeded[1].state.noise_secret  # a seeded fit is reproducible
    assert privatizer(view_noise="fresh").state.noise_secret is None
