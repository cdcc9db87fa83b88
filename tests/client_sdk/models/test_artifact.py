"""Bottom artifacts: export -> load round trip, no top weights, integrity checks, idempotency."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open

from client_sdk.models import BottomModel, load_bottom
from client_sdk.models.artifact import ArtifactError, artifact_digest, verify_artifact
from client_sdk.models.catalog import SplitLayerError
from tests.model_fixtures import TEXTS, padded_batch
from worker.models import build_bottom, export_bottom
from worker.models.full_model import load_full_model


@pytest.fixture(scope="module")
def bert_artifact(tiny_bert, tmp_path_factory):
    return export_bottom(tiny_bert, 2, tmp_path_factory.mktemp("artifacts") / "bert-l2")


def test_manifest_contents(bert_artifact, tiny_bert):
    manifest = json.loads((bert_artifact.path / "manifest.json").read_text())
    assert manifest == bert_artifact.manifest
    assert {k: manifest[k] for k in ("model", "family", "split_layer", "hidden_size", "vocab_size", "num_layers")} == {
        "model": str(tiny_bert.resolve()),
        "family": "bert",
        "split_layer": 2,
        "hidden_size": 32,
        "vocab_size": 64,
        "num_layers": 4,
    }
    files = manifest["files"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(files)
    for name, digest in files.items():
        assert hashlib.sha256((bert_artifact.path / name).read_bytes()).hexdigest() == digest
    assert manifest["digest"] == bert_artifact.digest == artifact_digest(files)
    assert bert_artifact.digest == hashlib.sha256("".join(sorted(files.values())).encode()).hexdigest()


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_roberta", "tiny_llama", "tiny_llama_untied"])
def test_round_trip_gives_identical_outputs(request, fixture, tmp_path):
    path = request.getfixturevalue(fixture)
    artifact = export_bottom(path, 2, tmp_path / "artifact")
    loaded, tokenizer, manifest = load_bottom(artifact.path)
    reference, _ = build_bottom(path, 2)
    ids, mask = padded_batch(tokenizer, TEXTS)
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask).hidden, reference(ids, mask).hidden)
        assert torch.equal(loaded.token_prototypes(), reference.token_prototypes())
        if loaded.is_causal:
            last = torch.randn(2, 3, 32)
            assert torch.equal(loaded.lm_logits(last), reference.lm_logits(last))
    assert isinstance(loaded, BottomModel) and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert manifest["split_layer"] == loaded.split_layer == 2


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_llama"])
def test_artifact_holds_no_top_weights(request, fixture, tmp_path):
    path = request.getfixturevalue(fixture)
    artifact = export_bottom(path, 1, tmp_path / "artifact")
    with safe_open(str(artifact.path / "model.safetensors"), "pt") as handle:
        stored = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    layer_ids = {name.split(".")[2] for name in stored if name.startswith("blocks.layers.")}
    assert layer_ids == {"0"}
    full, _, _ = load_full_model(path)
    # weight matrices of blocks 2..4 (norm weights are all ones at random init, so they are not telling)
    top_tensors = [
        p for name, p in full.named_parameters() if p.dim() == 2 and any(f".{i}." in name for i in (1, 2, 3))
    ]
    assert top_tensors
    for top_tensor in top_tensors:
        assert not any(t.shape == top_tensor.shape and torch.equal(t, top_tensor) for t in stored.values())
    assert json.loads((artifact.path / "config.json").read_text())["num_hidden_layers"] == 1


def test_export_is_idempotent(bert_artifact, tiny_bert):
    before = {p.name: p.stat().st_mtime_ns for p in bert_artifact.path.iterdir()}
    again = export_bottom(tiny_bert, 2, bert_artifact.path)
    assert again.digest == bert_artifact.digest
    assert {p.name: p.stat().st_mtime_ns for p in bert_artifact.path.iterdir()} == before


def test_export_replaces_stale_artifact(tiny_bert, tmp_path):
    first = export_bottom(tiny_bert, 2, tmp_path / "a")
    second = export_bottom(tiny_bert, 3, tmp_path / "a")
    assert second.manifest["split_layer"] == 3 and second.digest != first.digest
    assert load_bottom(tmp_path / "a")[0].split_layer == 3


def test_export_refuses_foreign_directory(tiny_bert, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="not a bottom artifact"):
        export_bottom(tiny_bert, 2, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_export_validates_split_layer(tiny_bert, tmp_path):
    with pytest.raises(SplitLayerError):
        export_bottom(tiny_bert, 4, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_tampered_weights_are_rejected(tiny_bert, tmp_path):
    artifact = export_bottom(tiny_bert, 2, tmp_path / "a")
    weights = artifact.path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"'model.safetensors'.*modified"):
        load_bottom(artifact.path)
    # a later export notices the damage and rebuilds the artifact
    assert verify_artifact(export_bottom(tiny_bert, 2, artifact.path).path)["digest"] == artifact.digest


def test_unlisted_missing_and_forged_manifest(tiny_bert, tmp_path):
    artifact = export_bottom(tiny_bert, 2, tmp_path / "a")
    (artifact.path / "added_tokens.json").write_text("{}")
    with pytest.raises(ArtifactError, match="not listed"):
        load_bottom(artifact.path)
    (artifact.path / "added_tokens.json").unlink()
    (artifact.path / "config.json").unlink()
    with pytest.raises(ArtifactError, match="missing 'config.json'"):
        load_bottom(artifact.path)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_bottom(tmp_path)


def test_forged_digest_is_rejected(tiny_bert, tmp_path):
    artifact = export_bottom(tiny_bert, 2, tmp_path / "a")
    manifest = dict(artifact.manifest, digest="0" * 64)
    (artifact.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="digest"):
        load_bottom(artifact.path)


def test_trimmed_manifest_still_loads(tiny_bert, tmp_path):
    """A manifest reduced to the required keys (as a strict client schema might keep) still loads."""
    artifact = export_bottom(tiny_bert, 2, tmp_path / "a")
    required = ("model", "family", "split_layer", "hidden_size", "vocab_size", "num_layers", "files", "digest")
    (artifact.path / "manifest.json").write_text(json.dumps({k: artifact.manifest[k] for k in required}))
    bottom, _, _ = load_bottom(artifact.path)
    assert (bottom.prefix_ids, bottom.suffix_ids) == ((2,), (3,))
