"""``client_sdk.upload.write_privatized_file``: the upload-mode file holds exactly what the privatizer
gives (padded to ``max_length``) plus the labels and a manifest, never text or token ids, and passes
the format's own checks (``client_sdk.privatized_file``). A tiny random BERT privatizer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from client_sdk import privatized_file, wire
from client_sdk.data import DatasetError, LabelMap
from client_sdk.privacy import get_config
from client_sdk.privacy.table import config_from_dict
from client_sdk.privatizer import Privatizer
from client_sdk.upload import write_privatized_file
from tests.helpers import WORDS, make_tiny_bert

MODEL, SPLIT, MAX_LENGTH, D = "tiny-bert", 2, 12, 32
SECRET = "zebracornucopia"  # a distinctive word of the dataset: it must not occur in the file
DATASET = [
    (f"{SECRET} {' '.join(WORDS[i : i + 1 + i % 5])}" if i % 4 == 0 else " ".join(WORDS[i : i + 1 + i % 5]), label)
    for i, label in enumerate(["neg", "pos", "pos", "neg", "pos", "neg", "neg", "pos", "pos", "neg"])
]
LONG = (" ".join(WORDS[:30]), "pos")  # longer than max_length: truncated
MAX_BYTES = 1 << 24


@pytest.fixture(scope="module")
def bottom(tmp_path_factory):
    from worker.models import build_bottom

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors gain nothing from threads on a shared CPU
    yield build_bottom(str(make_tiny_bert(tmp_path_factory.mktemp("upload") / "bert")), SPLIT)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def privatizer(bottom):
    return Privatizer(*bottom, "none", max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def written(privatizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("file") / "train.privtune"
    return write_privatized_file(privatizer, [*DATASET, LONG], path, model=MODEL, batch_size=4)


def test_the_file_passes_the_formats_header_check(written):
    data = written.read_bytes()
    header, infos = wire.inspect(data, wire.WireLimits(max_payload_bytes=MAX_BYTES))
    manifest, n, t, d = privatized_file.check(header, infos)
    assert header.kind == privatized_file.KIND
    assert (n, t, d) == (len(DATASET) + 1, MAX_LENGTH, D)
    assert set(infos) == {privatized_file.HIDDEN, privatized_file.MASK, privatized_file.LABELS}
    assert manifest == privatized_file.load(written, MAX_BYTES, D).manifest


def test_the_manifest_describes_the_model_split_labels_and_mechanism(written, privatizer):
    manifest = privatized_file.load(written, MAX_BYTES, D).manifest
    assert (manifest.model, manifest.split_layer) == (MODEL, SPLIT)
    assert (manifest.num_labels, manifest.label_names) == (2, ("neg", "pos"))
    assert manifest.mechanism == "none"
    assert manifest.mechanism_config == privatizer.mechanism.config.to_dict()
    assert config_from_dict(manifest.declared_privacy()) == get_config("none")


def test_the_file_holds_no_text_and_no_token_ids(written):
    data = written.read_bytes()
    assert SECRET.encode() not in data
    for text, _ in [*DATASET, LONG]:
        assert text.encode() not in data
    _, infos = wire.inspect(data, wire.WireLimits(max_payload_bytes=MAX_BYTES))
    assert "input_ids" not in infos and infos[privatized_file.HIDDEN].dtype in privatized_file.FLOAT_DTYPES


def test_hidden_is_what_the_privatizer_sends_padded_to_max_length(written, privatizer):
    loaded = privatized_file.load(written, MAX_BYTES, D)
    texts = [text for text, _ in [*DATASET, LONG]]
    for start in range(0, len(texts), 4):  # the batches the file was written in
        out = privatizer.privatize(texts[start : start + 4])
        pad = MAX_LENGTH - out["hidden"].shape[1]
        hidden = F.pad(out["hidden"], (0, 0, 0, pad)).half().float()  # (b, max_length, d), float16 on disk
        mask = F.pad(out["attention_mask"], (0, pad))
        assert torch.equal(loaded.hidden[start : start + 4], hidden)
        assert torch.equal(loaded.attention_mask[start : start + 4], mask)
    assert int(loaded.attention_mask[-1].sum()) == MAX_LENGTH  # the long text is truncated, not dropped


def test_the_labels_are_the_label_maps_indices(written):
    loaded = privatized_file.load(written, MAX_BYTES, D)
    assert len(loaded) == len(DATASET) + 1
    expected = [("neg", "pos").index(label) for _, label in [*DATASET, LONG]]
    assert loaded.labels.tolist() == expected and loaded.labels.dtype == torch.int64


def test_a_given_label_map_is_used(privatizer, tmp_path):
    labels = LabelMap(("neg", "neutral", "pos"))
    path = write_privatized_file(privatizer, DATASET, tmp_path / "f", model=MODEL, labels=labels)
    loaded = privatized_file.load(path, MAX_BYTES, D)
    assert loaded.manifest.label_names == labels.names and loaded.manifest.num_labels == 3
    assert loaded.labels.tolist() == [labels.encode(label) for _, label in DATASET]


def test_a_label_outside_the_map_writes_nothing(privatizer, tmp_path):
    with pytest.raises(DatasetError, match="'pos'"):
        write_privatized_file(privatizer, DATASET, tmp_path / "f", model=MODEL, labels=LabelMap(("a", "neg")))
    assert list(tmp_path.iterdir()) == []


def test_a_noisy_mechanism_is_declared_and_reproducible_with_a_generator(bottom, tmp_path):
    config = get_config("gaussian", noise_multiplier=0.5, view_noise="fresh")  # the generator draws the noise
    noisy = Privatizer(*bottom, config, max_length=MAX_LENGTH).fit([t for t, _ in DATASET])
    paths = [
        write_privatized_file(
            noisy, DATASET, tmp_path / f"f{i}", model=MODEL, generator=torch.Generator().manual_seed(seed)
        )
        for i, seed in enumerate((1, 1, 2))
    ]
    first, again, other = (p.read_bytes() for p in paths)
    assert first == again and first != other
    manifest = privatized_file.load(paths[0], MAX_BYTES, D).manifest
    assert manifest.mechanism == "gaussian" and config_from_dict(manifest.declared_privacy()) == config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f0", "f1", "f2"]  # no temporary file is left
