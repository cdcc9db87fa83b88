"""Privatizer: the audit call returns exactly what would be sent, with a tiny fake bottom + tokenizer."""

import json
from dataclasses import dataclass

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from client_sdk.privacy import NeighbourIndex, PrivacyConfigError, PrivacyStateError, get_config
from client_sdk.privatizer import Privatizer

WORDS = ["the", "a", "movie", "film", "plot", "actor", "good", "great", "fine", "awful", "bad", "boring"]
TEXTS = [
    "the movie good great",
    "a film great plot good",
    "the actor fine good",
    "great great movie",
    "the movie bad awful",
    "a film boring plot bad",
    "the actor awful bad",
    "boring boring movie",
]
LABELS = [1, 1, 1, 1, 0, 0, 0, 0]


@dataclass
class FakeOutput:
    hidden: torch.Tensor
    attentions: tuple | None = None


class FakeBottom(torch.nn.Module):
    """The BottomModel interface: embedding + one attention mixing step + linear."""

    def __init__(self, vocab_size: int, d: int = 16, causal: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = torch.nn.Embedding(vocab_size, 8)
        self.proj = torch.nn.Linear(8, d)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(vocab_size, 8, generator=g))
            self.proj.weight.copy_(torch.randn(d, 8, generator=g) / 3)
            self.proj.bias.zero_()
        self.hidden_size, self.vocab_size, self.is_causal, self.split_layer = d, vocab_size, causal, 1
        self.calls: list[bool] = []

    def forward(self, input_ids, attention_mask, output_attentions=False):
        self.calls.append(output_attentions)
        x = self.proj(self.embed(input_ids))  # (b, t, d)
        scores = x @ x.transpose(1, 2) / x.shape[-1] ** 0.5  # (b, t, t)
        allowed = attention_mask.bool()[:, None, :].expand_as(scores)
        if self.is_causal:
            allowed = allowed & torch.tril(torch.ones_like(scores, dtype=torch.bool))
        attn = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        hidden = x + attn @ x
        return FakeOutput(hidden, (attn.unsqueeze(1),) if output_attentions else None)

    def input_embeddings(self):
        return self.embed.weight

    @torch.no_grad()
    def token_prototypes(self):
        ids = torch.arange(self.vocab_size).unsqueeze(1)
        return self.forward(ids, torch.ones_like(ids)).hidden[:, 0]


def make_tokenizer():
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


@pytest.fixture
def parts():
    tokenizer = make_tokenizer()
    return FakeBottom(len(tokenizer)), tokenizer


def small(name, **params):
    """Configs sized for a 16-token vocabulary."""
    if name in ("opt3", "opt3_importance", "privtune"):
        params = {"k": 3, "hops": 2, "num_centroids": 2, **params}
    return get_config(name, **params)


def test_none_sends_the_bottom_output(parts):
    bottom, tokenizer = parts
    sent = Privatizer(bottom, tokenizer, "none").privatize(TEXTS[:3])
    ids = tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = bottom(ids["input_ids"], ids["attention_mask"]).hidden
    assert set(sent) == {"hidden", "attention_mask"}  # nothing else leaves the device
    assert sent["hidden"].dtype == torch.float32 and sent["attention_mask"].dtype == torch.int64
    assert torch.equal(sent["hidden"], expected)
    assert torch.equal(sent["attention_mask"], ids["attention_mask"])


@pytest.mark.parametrize("name", ["gaussian", "dchi", "dchi_importance", "opt3", "opt3_importance", "privtune"])
def test_fit_then_privatize(parts, name):
    bottom, tokenizer = parts
    priv = Privatizer(bottom, tokenizer, small(name), max_length=8).fit(TEXTS, LABELS)
    a = priv.privatize(TEXTS[:4], generator=torch.Generator().manual_seed(1))
    b = priv.privatize(TEXTS[:4], generator=torch.Generator().manual_seed(1))
    ids, mask = priv.encode(TEXTS[:4])
    with torch.no_grad():
        clean = bottom(ids, mask).hidden
    assert a["hidden"].shape == (4, mask.shape[1], bottom.hidden_size) and mask.shape[1] <= 8
    assert torch.equal(a["hidden"], b["hidden"])
    assert torch.equal(a["hidden"][mask == 0], clean[mask == 0])  # padded positions untouched
    assert not torch.equal(a["hidden"][mask == 1], clean[mask == 1])
    if priv.mechanism.uses_noise:  # per-text noise (the default): a re-send is the same view, whatever the generator
        c = priv.privatize(TEXTS[:4], generator=torch.Generator().manual_seed(2))
        assert torch.equal(a["hidden"], c["hidden"])
        fresh = Privatizer(bottom, tokenizer, small(name, view_noise="fresh"), max_length=8).fit(TEXTS, LABELS)
        x = fresh.privatize(TEXTS[:4], generator=torch.Generator().manual_seed(1))
        y = fresh.privatize(TEXTS[:4], generator=torch.Generator().manual_seed(2))
        assert not torch.equal(x["hidden"], y["hidden"])
    json.dumps(priv.privacy_record())


def test_classification_importance_table_comes_from_labels(parts):
    bottom, tokenizer = parts
    priv = Privatizer(
        bottom, tokenizer, small("dchi_importance", importance_to_scale="sigmoid", importance_score="information")
    ).fit(TEXTS, LABELS)
    table = priv.state.importance_table
    vocab = tokenizer.get_vocab()
    assert table[vocab["good"]] > table[vocab["movie"]] and table[vocab["bad"]] > table[vocab["the"]]
    assert table[vocab["[CLS]"]] == 0
    bottom.calls.clear()
    priv.privatize(TEXTS[:2], generator=torch.Generator())
    assert bottom.calls == [False]  # table lookup: no attentions needed


def test_top_fraction_table_marks_the_top_share_of_occurrences(parts):
    bottom, tokenizer = parts
    priv = Privatizer(
        bottom, tokenizer, small("dchi_importance", top_fraction=0.3, importance_score="information")
    ).fit(TEXTS, LABELS)
    table, vocab = priv.state.importance_table, tokenizer.get_vocab()
    ids, mask = priv.encode(TEXTS)
    real = mask.bool() & ~torch.isin(ids, torch.tensor(priv.special_ids))
    assert 0 < (table[ids[real]] > 0).float().mean() <= 0.3  # the top tokens cover at most 30% of occurrences
    assert table[vocab["[CLS]"]] < 0 and table[vocab["the"]] < 0  # special and neutral tokens: noisier
    unseen = sorted(set(range(table.shape[0])) - set(ids[mask.bool()].tolist()))
    assert unseen and bool((table[unseen] == -1.0).all())  # never seen in the fitting data: noisier


def test_generation_importance_uses_attentions(parts):
    tokenizer = parts[1]
    bottom = FakeBottom(len(tokenizer), causal=True)
    priv = Privatizer(bottom, tokenizer, small("privtune", importance_score="information")).fit(
        TEXTS
    )  # no labels: attention importance
    assert priv.state.importance_table is None
    bottom.calls.clear()
    sent = priv.privatize(TEXTS[:2], generator=torch.Generator().manual_seed(0))
    assert bottom.calls == [True]
    assert torch.isfinite(sent["hidden"]).all()


def test_neighbour_cache_is_written_and_reused(parts, tmp_path, monkeypatch):
    bottom, tokenizer = parts
    Privatizer(bottom, tokenizer, small("opt3")).fit(TEXTS, LABELS, cache_dir=tmp_path, model_id="fake/bottom")
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    monkeypatch.setattr(NeighbourIndex, "build", classmethod(lambda *a, **k: pytest.fail("not reused")))
    priv = Privatizer(bottom, tokenizer, small("opt3")).fit(TEXTS, LABELS, cache_dir=tmp_path, model_id="fake/bottom")
    assert priv.state.neighbours.model_id == "fake/bottom" and priv.state.neighbours.split_layer == 1


def test_fit_uses_given_prototypes_instead_of_recomputing_them(parts, monkeypatch):
    bottom, tokenizer = parts
    prototypes = bottom.token_prototypes()  # (|V|, d)
    seeded = lambda: torch.Generator().manual_seed(0)  # a seeded fit derives its noise secret from the seed
    reference = Privatizer(bottom, tokenizer, small("privtune")).fit(TEXTS, LABELS, generator=seeded())
    monkeypatch.setattr(bottom, "token_prototypes", lambda *a, **k: pytest.fail("prototypes recomputed"))
    given = Privatizer(bottom, tokenizer, small("privtune")).fit(
        TEXTS, LABELS, prototypes=prototypes, generator=seeded()
    )
    sent = [p.privatize(TEXTS[:4], generator=torch.Generator().manual_seed(3))["hidden"] for p in (reference, given)]
    assert torch.equal(sent[0], sent[1])


def test_privatize_before_fit_raises(parts):
    with pytest.raises(PrivacyStateError, match="fit"):
        Privatizer(*parts, "dchi").privatize(TEXTS[:1])


def test_bad_arguments(parts):
    with pytest.raises(PrivacyConfigError) as info:
        Privatizer(*parts, "dchi", max_length=0)
    assert info.value.parameter == "max_length"
    with pytest.raises(PrivacyConfigError) as info:
        Privatizer(*parts, "dchi").fit(TEXTS, LABELS[:3])
    assert info.value.parameter == "labels"


def test_right_padding_even_if_the_tokenizer_pads_left(parts):
    bottom, tokenizer = parts
    tokenizer.padding_side = "left"
    _, mask = Privatizer(bottom, tokenizer, "none").encode(["the movie good", "a"])
    assert mask[1].tolist() == [1, 1, 1, 0, 0]


def test_fit_runs_the_bottom_only_until_the_sample_is_full(parts):
    bottom, tokenizer = parts
    bottom.calls.clear()
    priv = Privatizer(bottom, tokenizer, small("dchi")).fit(TEXTS * 4, LABELS * 4, sample_tokens=11, batch_size=2)
    assert len(bottom.calls) == 2  # 3-5 real tokens per text: one batch of 2 < 11 <= two batches
    assert priv.state.clip_norm > 0
