"""Bottom-then-top equals the full model; attentions, prototypes, heads, LoRA targeting."""

from __future__ import annotations

import pytest
import torch

from client_sdk.models.bottom import BottomModel
from client_sdk.models.catalog import SplitLayerError, UnsupportedArchitectureError
from tests.model_fixtures import TEXTS, padded_batch
from worker.models import TopModel, build_bottom, build_top
from worker.models.full_model import load_full_model

TOL = 1e-5


def _split(path, layer, task):
    full, tokenizer, _ = load_full_model(path)
    bottom, _ = build_bottom(path, layer)
    top = build_top(path, layer, task)
    return full, tokenizer, bottom, top


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_roberta"])
@pytest.mark.parametrize("layer", [1, 2, 3])
def test_encoder_split_equals_full(request, fixture, layer):
    full, tokenizer, bottom, top = _split(request.getfixturevalue(fixture), layer, "features")
    ids, mask = padded_batch(tokenizer, TEXTS)
    assert (mask == 0).any(), "the batch must contain padding"
    with torch.no_grad():
        expected = full(input_ids=ids, attention_mask=mask).last_hidden_state  # (b, t, d)
        got = top(bottom(ids, mask).hidden, mask)
    real = mask.bool()
    assert got.shape == expected.shape
    assert (got[real] - expected[real]).abs().max() < TOL


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_llama_untied"])
@pytest.mark.parametrize("layer", [1, 2, 3])
def test_causal_u_split_equals_full(request, fixture, layer):
    full, tokenizer, bottom, top = _split(request.getfixturevalue(fixture), layer, "generation")
    ids, mask = padded_batch(tokenizer, TEXTS)
    with torch.no_grad():
        expected = full(input_ids=ids, attention_mask=mask).logits  # (b, t, |V|)
        last_hidden = top(bottom(ids, mask).hidden, mask)  # (b, t, d), before the final norm
        got = bottom.lm_logits(last_hidden)
    real = mask.bool()
    assert last_hidden.shape == (*ids.shape, 32) and got.shape == expected.shape
    assert (got[real] - expected[real]).abs().max() < TOL


def test_causal_features_equal_full_last_hidden_state(tiny_llama):
    full, tokenizer, bottom, top = _split(tiny_llama, 2, "features")
    ids, mask = padded_batch(tokenizer, TEXTS)
    with torch.no_grad():
        expected = full.model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = top(bottom(ids, mask).hidden, mask)
    assert (got[mask.bool()] - expected[mask.bool()]).abs().max() < TOL


@pytest.mark.parametrize("server_head", [False, True], ids=["device_head", "upload_mode"])
@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_llama"])
def test_classification_ignores_padding(request, fixture, server_head):
    path = request.getfixturevalue(fixture)
    bottom, tokenizer = build_bottom(path, 2)
    top = build_top(path, 2, "classification", num_labels=3, server_head=server_head)
    ids, mask = padded_batch(tokenizer, TEXTS)
    with torch.no_grad():
        out = top(bottom(ids, mask).hidden, mask)  # (b, d) representation, or (b, 3) logits in upload mode
        one_ids, one_mask = padded_batch(tokenizer, TEXTS[1:2])
        alone = top(bottom(one_ids, one_mask).hidden, one_mask)
    assert out.shape == (len(TEXTS), 3 if server_head else top.hidden_size)
    assert (out[1] - alone[0]).abs().max() < TOL


def test_interactive_classification_returns_the_pooled_final_representation(tiny_bert, tiny_llama):
    """The head is the device's: the server's output is the masked mean of the full model's last hidden
    state (Llama: after the final norm), and the top has no classifier nor label count."""
    for path in (tiny_bert, tiny_llama):
        full, tokenizer, bottom, top = _split(path, 2, "classification")
        assert top.classifier is None and top.num_labels is None and top.describe()["num_labels"] is None
        assert not any("classifier" in name for name, _ in top.named_parameters())
        ids, mask = padded_batch(tokenizer, TEXTS)
        with torch.no_grad():
            encoder = full if top.family == "bert" else full.model
            last = encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (b, t, d)
            expected = (last * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (b, d)
            got = top(bottom(ids, mask).hidden, mask)
        assert got.shape == (len(TEXTS), top.hidden_size)
        assert (got - expected).abs().max() < TOL


def test_classifier_head_is_seeded(tiny_bert):
    a = build_top(tiny_bert, 2, "classification", num_labels=2, seed=7, server_head=True)
    b = build_top(tiny_bert, 2, "classification", num_labels=2, seed=7, server_head=True)
    c = build_top(tiny_bert, 2, "classification", num_labels=2, seed=8, server_head=True)
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)
    assert a.classifier.weight.std() < 0.1 and torch.all(a.classifier.bias == 0)
    assert a.classifier.weight.shape == (2, 32) and a.num_labels == 2
    assert build_top(tiny_bert, 2, "classification", num_labels=2, seed=7).classifier is None  # the device's head


def test_top_keeps_only_top_blocks(tiny_llama):
    top = build_top(tiny_llama, 1, "generation")
    assert len(top.blocks.layers) == 3 and top.norm is None and top.classifier is None
    assert not any("embed" in name for name, _ in top.named_parameters())
    classification = build_top(tiny_llama, 1, "classification", num_labels=2)
    assert classification.norm is not None and classification.classifier is None
    assert build_top(tiny_llama, 1, "classification", num_labels=2, server_head=True).classifier is not None


@pytest.mark.parametrize(("layer", "tail"), [(1, 1), (1, 2), (2, 1), (1, 0)])
def test_a_generation_top_with_a_tail_keeps_blocks_l_plus_1_to_L_minus_k(tiny_llama, layer, tail):
    """L - l - k blocks, and the right ones: its output is the full model's hidden state after block L - k
    (before the final norm), the input of the device's tail."""
    full, tokenizer, _ = load_full_model(tiny_llama)
    bottom, _ = build_bottom(tiny_llama, layer)
    top = build_top(tiny_llama, layer, "generation", tail_layers=tail)
    num_layers = full.config.num_hidden_layers
    assert len(top.blocks.layers) == num_layers - layer - tail and top.tail_layers == tail
    assert top.describe()["tail_layers"] == tail and top.describe()["top_layers"] == num_layers - layer - tail
    assert top.norm is None and top.classifier is None
    ids, mask = padded_batch(tokenizer, TEXTS)
    with torch.no_grad():
        states = full.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        got = top(bottom(ids, mask).hidden, mask)  # (b, t, d)
    real = mask.bool()
    assert got.shape == (*ids.shape, 32)
    if tail:  # hidden_states[i]: after block i (the last entry is after the final norm)
        assert (got[real] - states[num_layers - tail][real]).abs().max() < TOL
    else:
        assert (bottom.lm_logits(got)[real] - full(input_ids=ids, attention_mask=mask).logits[real]).abs().max() < TOL


def test_a_tail_must_leave_the_server_a_block_and_is_for_generation_only(tiny_llama):
    for tail in (2, 3):  # l=2 of L=4: a tail of 2 leaves the server nothing
        with pytest.raises(ValueError, match="at least 1"):
            build_top(tiny_llama, 2, "generation", tail_layers=tail)
    with pytest.raises(ValueError, match="tail_layers"):
        build_top(tiny_llama, 1, "classification", num_labels=2, tail_layers=1)
    assert len(build_top(tiny_llama, 2, "generation", tail_layers=1).blocks.layers) == 1


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_llama"])
def test_attentions_are_softmax_weights(request, fixture):
    bottom, tokenizer = build_bottom(request.getfixturevalue(fixture), 2)
    ids, mask = padded_batch(tokenizer, TEXTS)
    with torch.no_grad():
        plain = bottom(ids, mask)
        out = bottom(ids, mask, output_attentions=True)
    assert plain.attentions is None
    assert len(out.attentions) == 2 and out.attentions[0].shape == (len(TEXTS), 4, *ids.shape[1:], ids.shape[1])
    assert (out.hidden - plain.hidden).abs().max() < TOL
    for weights in out.attentions:  # (b, h, t, t)
        assert torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-5)
        assert weights[~mask.bool()[:, None, None, :].expand_as(weights)].abs().max() < 1e-6  # no weight on pads
        if bottom.is_causal:
            assert weights.triu(diagonal=1).abs().max() < 1e-6
    layer = bottom.blocks.layers[0]
    attention = layer.self_attn if bottom.is_causal else layer.attention.self
    assert attention.config._attn_implementation == "sdpa"  # restored after capturing


def test_token_prototypes_match_single_token_runs(tiny_bert, tiny_llama):
    for path, context in ((tiny_bert, lambda v: [2, v, 3]), (tiny_llama, lambda v: [1, v])):
        bottom, _ = build_bottom(path, 2)
        prototypes = bottom.token_prototypes(batch_size=10)  # several batches, last one partial
        assert prototypes.shape == (bottom.vocab_size, bottom.hidden_size)
        tokens = [0, 9, bottom.vocab_size - 1]
        with torch.no_grad():
            direct = torch.stack([bottom(torch.tensor([context(v)]), None).hidden[0, 1] for v in tokens])
        assert (prototypes[tokens] - direct).abs().max() < TOL


def test_inputs_embeds_path_matches_ids(tiny_bert, tiny_llama):
    for path in (tiny_bert, tiny_llama):
        bottom, tokenizer = build_bottom(path, 2)
        ids, mask = padded_batch(tokenizer, TEXTS)
        one_hot = torch.nn.functional.one_hot(ids, bottom.vocab_size).float()  # (b, t, |V|)
        with torch.no_grad():
            via_ids = bottom(ids, mask).hidden
            via_embeds = bottom(None, mask, inputs_embeds=one_hot @ bottom.input_embeddings()).hidden
        assert (via_ids - via_embeds)[mask.bool()].abs().max() < TOL


def test_bottom_is_frozen_and_shaped(tiny_bert):
    bottom, _ = build_bottom(tiny_bert, 3)
    assert (bottom.family, bottom.split_layer, bottom.hidden_size, bottom.vocab_size) == ("bert", 3, 32, 64)
    assert not bottom.is_causal and not bottom.training
    assert not any(p.requires_grad for p in bottom.parameters())
    assert bottom.input_embeddings().shape == (64, 32)
    with pytest.raises(UnsupportedArchitectureError, match="encoder"):
        bottom.lm_logits(torch.zeros(1, 2, 32))


@pytest.mark.parametrize("layer", [0, 4, 9])
def test_split_layer_errors(tiny_bert, tiny_llama, layer):
    with pytest.raises(SplitLayerError, match="split_layer"):
        build_bottom(tiny_bert, layer)
    with pytest.raises(SplitLayerError, match="split_layer"):
        build_top(tiny_llama, layer, "generation")


def test_task_errors(tiny_bert, tiny_llama):
    with pytest.raises(UnsupportedArchitectureError, match="generation"):
        build_top(tiny_bert, 2, "generation")
    with pytest.raises(ValueError, match="task must be one of"):
        build_top(tiny_llama, 2, "summarise")
    for labels in (None, 1, True):  # a server-side head (upload mode) needs its label count
        with pytest.raises(ValueError, match="num_labels"):
            build_top(tiny_bert, 2, "classification", num_labels=labels, server_head=True)
    top = build_top(tiny_bert, 2, "classification")  # the device's head: the server needs no label count
    assert top.classifier is None and top.num_labels is None


def test_unsupported_architecture_errors(tiny_gpt2):
    with pytest.raises(UnsupportedArchitectureError, match="gpt2"):
        build_bottom(tiny_gpt2, 1)


@pytest.mark.parametrize(
    ("fixture", "targets"), [("tiny_bert", ["query", "value"]), ("tiny_llama", ["q_proj", "v_proj"])]
)
def test_peft_lora_targets_and_classifier(request, fixture, targets):
    from peft import LoraConfig, get_peft_model

    top = build_top(request.getfixturevalue(fixture), 2, "classification", num_labels=2, server_head=True)
    assert top.default_lora_targets == targets
    model = get_peft_model(
        top, LoraConfig(r=2, target_modules=top.default_lora_targets, modules_to_save=["classifier"])
    )
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert sum("lora_A" in name for name in trainable) == 2 * len(top.blocks.layers)
    assert all("lora_" in name or "classifier" in name for name in trainable)
    assert any("classifier" in name for name in trainable)
    hidden = torch.randn(2, 5, 32, requires_grad=True)
    model(hidden, torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])).sum().backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()


@pytest.mark.parametrize(
    ("fixture", "targets"), [("tiny_bert", ["query", "value"]), ("tiny_llama", ["q_proj", "v_proj"])]
)
def test_peft_lora_on_an_interactive_classification_top_trains_adapters_only(request, fixture, targets):
    from peft import LoraConfig, get_peft_model

    top = build_top(request.getfixturevalue(fixture), 2, "classification", num_labels=2)
    assert top.default_lora_targets == targets and top.classifier is None
    model = get_peft_model(top, LoraConfig(r=2, target_modules=top.default_lora_targets))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert sum("lora_A" in name for name in trainable) == 2 * len(top.blocks.layers)
    assert trainable and all("lora_" in name for name in trainable)
    hidden = torch.randn(2, 5, 32, requires_grad=True)
    out = model(hidden, torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
    assert out.shape == (2, 32)
    out.backward(torch.randn(2, 32))  # dL/d(representation), as the device sends it
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()


def test_module_classes_are_exposed():
    import client_sdk.models as models
    import worker.models as provider

    assert models.BottomModel is BottomModel and provider.TopModel is TopModel
    assert not hasattr(models, "TopModel") and not hasattr(models, "export_bottom")  # provider code stays out


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_llama"])
def test_noise_aware_top_equals_plain_when_norms_are_equal(request, fixture):
    path = request.getfixturevalue(fixture)
    plain = build_top(path, 2, "classification", num_labels=3)
    aware = build_top(path, 2, "classification", num_labels=3, noise_aware=True)
    _, tokenizer = build_bottom(path, 2)
    _, mask = padded_batch(tokenizer, TEXTS)
    hidden = torch.nn.functional.normalize(torch.randn(*mask.shape, plain.hidden_size), dim=-1) * 3.0
    with torch.no_grad():
        assert (plain(hidden, mask) - aware(hidden, mask)).abs().max() < TOL  # all weights 1: same model


def test_noise_aware_top_is_barely_moved_by_a_token_buried_in_noise(tiny_bert):
    plain = build_top(tiny_bert, 2, "classification", num_labels=3)
    aware = build_top(tiny_bert, 2, "classification", num_labels=3, noise_aware=True)
    assert aware.describe()["noise_aware"] and not plain.describe()["noise_aware"]
    g = torch.Generator().manual_seed(0)
    clean = torch.nn.functional.normalize(torch.randn(2, 8, plain.hidden_size, generator=g), dim=-1) * 3.0
    mask = torch.ones(2, 8, dtype=torch.long)
    noisy = clean.clone()
    noisy[:, 5] += torch.randn(2, plain.hidden_size, generator=g) * 3.0  # noise/signal ~ sqrt(d)
    without = mask.clone()
    without[:, 5] = 0  # what a model that ignores the buried token would compute
    with torch.no_grad():
        target = plain(clean, without)
        off_plain = (plain(noisy, mask) - target).abs().max()
        off_aware = (aware(noisy, mask) - target).abs().max()
    assert off_aware < 0.2 * off_plain


def test_noise_aware_generation_is_refused(tiny_llama):
    with pytest.raises(ValueError, match="noise_aware"):
        build_top(tiny_llama, 1, "generation", noise_aware=True)
