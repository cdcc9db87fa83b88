"""The shipped base models: split equals full (slow; loads real weights, converts the GGUF once).

The smollm2 conversion goes to ``$PRIVTUNE_MODEL_CACHE`` when set (reused across runs), else to a
temporary directory.
"""

from __future__ import annotations

import os

import pytest
import torch

from client_sdk.models import BottomModel, load_bottom
from client_sdk.models.catalog import describe_model
from worker.models import TopModel, export_bottom
from worker.models.full_model import CACHE_ENV, load_full_model, resolve_model

pytestmark = pytest.mark.slow

TEXTS = ["The movie was surprisingly good, I loved it.", "Terrible.", "An average film with a few nice scenes."]


def _batch(tokenizer):
    tokenizer.padding_side = "right"
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def test_minilm_split_at_3_equals_full(tmp_path):
    full, tokenizer, spec = load_full_model("minilm-l6")
    artifact = export_bottom("minilm-l6", 3, tmp_path / "minilm-l3")
    bottom, _, manifest = load_bottom(artifact.path)
    top = TopModel.from_full_model(full, 3, "features")
    ids, mask = _batch(tokenizer)
    with torch.no_grad():
        expected = full(input_ids=ids, attention_mask=mask).last_hidden_state
        got = top(bottom(ids, mask).hidden, mask)
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max() < 1e-5
    assert manifest["num_layers"] == 6 and manifest["vocab_size"] == 30522 and bottom.prefix_ids == (101,)


def test_smollm2_conversion_and_split_at_3_equal_full(tmp_path):
    cache = os.environ.get(CACHE_ENV) or tmp_path / "cache"
    spec = resolve_model("smollm2-135m", cache_dir=cache)
    info = describe_model("smollm2-135m")
    full, tokenizer, _ = load_full_model("smollm2-135m", cache_dir=cache)
    config = full.config
    assert not hasattr(config, "quantization_config") and spec.family == "llama"
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (
        info.hidden_size,
        info.num_layers,
        info.vocab_size,
    )
    assert config.max_position_embeddings == info.max_positions and config.tie_word_embeddings
    bottom = BottomModel.from_full_model(full, 3, [config.bos_token_id])
    top = TopModel.from_full_model(full, 3, "generation")
    ids, mask = _batch(tokenizer)
    with torch.no_grad():
        expected = full(input_ids=ids, attention_mask=mask).logits
        got = bottom.lm_logits(top(bottom(ids, mask).hidden, mask))
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max() < 1e-4  # logits are O(10): relative error < 1e-5
