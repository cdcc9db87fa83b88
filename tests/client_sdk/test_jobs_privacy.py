"""What a data owner is told and what the server is given about privacy, on a whole job against the mock
gateway of ``test_jobs``: the summary before training, the warning under ``none``, the accounting in
the job's record, the sensitive terms kept off the wire, label DP and its state kept for a resume."""

from __future__ import annotations

import json

import pytest

from client_sdk.jobs import FineTuneJob, PrivacyConfig, PrivacyWarning
from tests.client_sdk.test_client import Recorder, make_client
from tests.client_sdk.test_jobs import DATA, FakeGateway
from tests.helpers import make_tiny_bert


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from worker.models import export_bottom

    root = tmp_path_factory.mktemp("jobs-privacy")
    return export_bottom(str(make_tiny_bert(root / "bert")), 2, root / "artifact")


def run(artifact, tmp_path, privacy, progress=False):
    fake = FakeGateway(artifact)
    client, _ = make_client(Recorder(fake))
    job = FineTuneJob.create(
        DATA, privacy=privacy, hyperparameters={"batch_size": 8, "n_epochs": 2}, split_layer=2, client=client,
        progress=progress, cache_dir=str(tmp_path / "cache"), state_dir=str(tmp_path / "state"),
    )  # fmt: skip
    return job, fake


def test_no_noise_warns_and_says_so_before_training(artifact, tmp_path, capsys):
    with pytest.warns(PrivacyWarning, match="adds no noise"):
        job, fake = run(artifact, tmp_path, PrivacyConfig(mechanism="none", seed=0), progress=True)
    err = capsys.readouterr().err
    assert "WARNING: no noise is added" in err
    assert "fine-tuning, NO noise (mechanism='none')" in err and "private fine-tuning:" not in err  # the bar
    accounting = fake.created["method"]["privtune"]["privacy"]["record"]["accounting"]
    assert accounting["epsilon_per_text"] is None and accounting["labels"] is None
    assert any("labels are not protected" in note for note in accounting["notes"])


def test_the_record_accounts_every_view_and_keeps_the_sensitive_terms_on_the_device(artifact, tmp_path, capsys):
    privacy = PrivacyConfig(mechanism="dchi_importance", params={"sensitive_terms": ["w7", "w11"], "importance_score": "information"}, seed=0,
                            label_epsilon=1.0)  # fmt: skip
    job, fake = run(artifact, tmp_path, privacy, progress=True)
    declared = fake.created["method"]["privtune"]["privacy"]
    assert declared["sensitive_terms"] == [] and "w7" not in json.dumps(fake.created)
    accounting = declared["record"]["accounting"]
    assert accounting["views"] == {"training": 2, "validation": 3, "inference": 0}
    assert accounting["views_charged"] == 1 and "per-text noise" in accounting["composition"]
    token = accounting["per_token_one_view"]
    assert 0 < token["most_noised"] < token["least_noised"]
    assert accounting["epsilon_per_text"] == pytest.approx(token["least_noised"] * accounting["tokens_per_text"])
    assert accounting["labels"]["randomised_response_epsilon"] == 1.0
    err = capsys.readouterr().err
    assert "views charged: 1" in err and "randomised response, epsilon 1" in err
    kept = tmp_path / "state" / job.id / "privacy"
    assert (kept / "state.json").is_file() and len(json.loads((kept / "labels.json").read_text())) == 18


def test_fresh_noise_is_charged_for_every_view(artifact, tmp_path):
    privacy = PrivacyConfig(mechanism="dchi", params={"view_noise": "fresh"}, seed=0)
    _, fake = run(artifact, tmp_path, privacy)
    accounting = fake.created["method"]["privtune"]["privacy"]["record"]["accounting"]
    assert (
        accounting["views_charged"] == accounting["views_total"] == 3
    )  # a validation text: before, 1 epoch end, after
    assert any("average them" in note for note in accounting["notes"])


def test_a_resumed_session_reuses_the_kept_state_and_labels(artifact, tmp_path):
    from client_sdk.end_state import EndStore
    from client_sdk.session import DeviceSession

    fake = FakeGateway(artifact)
    client, _ = make_client(Recorder(fake))
    options = dict(privacy=PrivacyConfig(mechanism="dchi", label_epsilon=0.5), hyperparameters={"batch_size": 8},
                   split_layer=2, client=client, cache_dir=str(tmp_path / "cache"), state_dir=str(tmp_path / "s"))  # fmt: skip
    first = DeviceSession.prepare(DATA, **options)
    first.trainer("ftjob-r")
    second = DeviceSession.prepare(DATA, **options)  # another process: another secret, other draws
    assert second.privatizer.state.noise_secret != first.privatizer.state.noise_secret
    second.trainer("ftjob-r")
    assert second.privatizer.state.noise_secret == first.privatizer.state.noise_secret
    assert [ex.label for ex in second.train] == [ex.label for ex in first.train]
    assert (EndStore("ftjob-r", str(tmp_path / "s")).directory / "privacy" / "labels.json").is_file()


def test_label_epsilon_is_checked_and_needs_labels():
    with pytest.raises(ValueError, match="label_epsilon"):
        PrivacyConfig(label_epsilon=0)
    with pytest.raises(ValueError, match="label_epsilon"):
        PrivacyConfig(label_epsilon=float("inf"))
