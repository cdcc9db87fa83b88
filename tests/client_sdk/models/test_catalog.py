"""The torch-free catalog: model facts, split-layer validation, error messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from client_sdk.models import catalog
from client_sdk.models.catalog import (
    BASE_MODELS,
    ModelInfo,
    SplitLayerError,
    UnknownModelError,
    UnsupportedArchitectureError,
    describe_model,
    validate_split_layer,
)

REPO = Path(__file__).resolve().parents[3]


def test_catalog_import_does_not_load_torch():
    code = "import client_sdk.models.catalog, client_sdk.models, sys; assert 'torch' not in sys.modules, 'torch loaded'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_artifact_module_is_torch_free_too():
    code = "import client_sdk.models.artifact, sys; assert 'torch' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_base_model_facts():
    assert BASE_MODELS == ("minilm-l6", "smollm2-135m")
    minilm = describe_model("minilm-l6")
    assert (minilm.family, minilm.hidden_size, minilm.num_layers, minilm.vocab_size, minilm.max_positions) == (
        "bert",
        384,
        6,
        30522,
        512,
    )
    smol = describe_model("smollm2-135m")
    assert (smol.family, smol.hidden_size, smol.num_layers, smol.vocab_size, smol.max_positions) == (
        "llama",
        576,
        30,
        49152,
        8192,
    )


def test_base_model_without_package_falls_back_to_known_facts(monkeypatch):
    monkeypatch.setattr(catalog.importlib.util, "find_spec", lambda name: None)
    info = describe_model("minilm-l6")
    assert info.path is None and info.hidden_size == 384


def test_local_directories(tiny_bert, tiny_roberta, tiny_llama):
    bert = describe_model(tiny_bert)
    assert bert == ModelInfo(str(tiny_bert.resolve()), "bert", 32, 4, 64, 64, str(tiny_bert.resolve()))
    roberta = describe_model(str(tiny_roberta))
    assert roberta.family == "bert" and roberta.max_positions == 64  # 66 - (pad_token_id + 1)
    llama = describe_model(tiny_llama)
    assert (llama.family, llama.num_layers, llama.vocab_size) == ("llama", 4, 63)


def test_unknown_name_lists_allowed_values():
    with pytest.raises(UnknownModelError, match="minilm-l6") as err:
        describe_model("no-such-model")
    assert isinstance(err.value, ValueError)


def test_directory_without_config(tmp_path):
    with pytest.raises(UnknownModelError, match="config.json"):
        describe_model(tmp_path)


def test_unsupported_architecture(tiny_gpt2):
    with pytest.raises(UnsupportedArchitectureError, match="model_type='gpt2'") as err:
        describe_model(tiny_gpt2)
    assert "bert" in str(err.value) and "llama" in str(err.value)


def test_bert_decoder_is_unsupported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "is_decoder": True}))
    with pytest.raises(UnsupportedArchitectureError, match="decoder"):
        describe_model(tmp_path)


@pytest.mark.parametrize("layer", [1, 2, 3])
def test_valid_split_layers(tiny_bert, layer):
    assert validate_split_layer(describe_model(tiny_bert), layer) == layer


@pytest.mark.parametrize("layer", [0, 4, 9, -1])
def test_split_layer_out_of_range(tiny_bert, layer):
    with pytest.raises(SplitLayerError, match=r"split_layer must satisfy 1 <= split_layer <= 3") as err:
        validate_split_layer(describe_model(tiny_bert), layer)
    assert isinstance(err.value, ValueError) and f"got {layer}" in str(err.value)


@pytest.mark.parametrize("layer", [True, 2.0, "2", None])
def test_split_layer_must_be_an_int(layer):
    with pytest.raises(SplitLayerError, match="split_layer must be an integer"):
        validate_split_layer(describe_model("minilm-l6"), layer)
