"""The device artifact with a generation tail (``export_bottom(..., tail_layers=k)``): the bottom, and
in ``tail.safetensors`` exactly the base weights of the last k blocks, never the server's middle; the
manifest names the tail; a cut that leaves the server no block, or a tail on an encoder, is refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from client_sdk.models.artifact import MANIFEST, TAIL_WEIGHTS, WEIGHTS, ArtifactError, artifact_name, verify_artifact
from worker.models import export_bottom
from worker.models.full_model import load_full_model


def test_a_tail_artifact_holds_the_bottom_and_the_last_k_blocks_only(tiny_llama, tmp_path):
    out = tmp_path / artifact_name(1, 2)
    assert out.name == "l1-t2" and artifact_name(3) == "l3"
    artifact = export_bottom(tiny_llama, 1, out, tail_layers=2)
    manifest = verify_artifact(out)
    assert manifest["tail_layers"] == 2 and manifest["split_layer"] == 1 and manifest["num_layers"] == 4
    assert TAIL_WEIGHTS in manifest["files"] and artifact.digest == manifest["digest"]
    full, _, _ = load_full_model(tiny_llama)
    layers = list(full.model.layers)
    tail = load_file(out / TAIL_WEIGHTS)
    expected = torch.nn.ModuleList(layers[-2:]).state_dict()  # blocks 3 and 4 of 4, as "<i>.<param>"
    assert set(tail) == set(expected)
    assert all(torch.equal(tail[name], expected[name]) for name in expected)
    # the server's block 2 (its middle) is in neither file: compare its random matrices (norms are all ones)
    middle = [w for w in layers[1].state_dict().values() if w.dim() == 2]
    written = [w for w in [*tail.values(), *load_file(out / WEIGHTS).values()] if w.dim() == 2]
    assert middle and not any(torch.equal(m, w) for m in middle for w in written if m.shape == w.shape)


def test_a_plain_export_has_no_tail_and_a_tail_export_replaces_it(tiny_llama, tmp_path):
    out = tmp_path / "artifact"
    plain = export_bottom(tiny_llama, 1, out)
    assert plain.manifest["tail_layers"] == 0 and not (out / TAIL_WEIGHTS).exists()
    mtime = (out / MANIFEST).stat().st_mtime_ns
    assert export_bottom(tiny_llama, 1, out).digest == plain.digest  # idempotent for the same cut
    assert (out / MANIFEST).stat().st_mtime_ns == mtime
    with_tail = export_bottom(tiny_llama, 1, out, tail_layers=1)  # another cut: the stale one is replaced
    assert with_tail.digest != plain.digest and (out / TAIL_WEIGHTS).is_file()
    assert json.loads((out / MANIFEST).read_text())["tail_layers"] == 1


@pytest.mark.parametrize(("layer", "tail"), [(1, 3), (2, 2), (3, 1)])
def test_a_tail_that_leaves_the_server_no_block_is_refused(tiny_llama, tmp_path, layer, tail):
    with pytest.raises(ArtifactError, match="tail"):
        export_bottom(tiny_llama, layer, tmp_path / "out", tail_layers=tail)
    assert not (tmp_path / "out").exists()


def test_an_encoder_has_no_tail(tiny_bert, tmp_path):
    with pytest.raises(ArtifactError, match="causal LM"):
        export_bottom(tiny_bert, 1, tmp_path / "out", tail_layers=1)
    assert not (tmp_path / "out").exists()
