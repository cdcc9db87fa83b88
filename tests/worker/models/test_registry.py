"""Name/path resolution, the model cache location and full-model loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from client_sdk.models.catalog import UnknownModelError, UnsupportedArchitectureError
from worker.models.full_model import CACHE_ENV, ModelSpec, load_full_model, model_cache_dir, resolve_model


def test_resolve_local_directory(tiny_llama):
    spec = resolve_model(tiny_llama)
    assert spec == ModelSpec(str(tiny_llama.resolve()), "llama", str(tiny_llama.resolve()))


def test_resolve_base_encoder_points_at_package_dir():
    spec = resolve_model("minilm-l6")
    assert spec.family == "bert" and (Path(spec.path) / "config.json").exists()


def test_resolve_errors(tiny_gpt2):
    with pytest.raises(UnknownModelError):
        resolve_model("gpt-17")
    with pytest.raises(UnsupportedArchitectureError):
        resolve_model(tiny_gpt2)


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert model_cache_dir() == Path("~/.cache/privtune/models").expanduser()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert model_cache_dir() == tmp_path / "env"
    assert model_cache_dir(tmp_path / "arg") == tmp_path / "arg"


def test_load_full_encoder(tiny_bert):
    model, tokenizer, spec = load_full_model(tiny_bert)
    assert spec.family == "bert" and model.pooler is None and not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer("w1 w2")["input_ids"] == [2, 6, 7, 3]


def test_load_full_causal_lm(tiny_llama):
    model, _, spec = load_full_model(tiny_llama)
    assert type(model).__name__ == "LlamaForCausalLM" and spec.family == "llama" and not model.training
