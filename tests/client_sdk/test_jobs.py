"""``FineTuneJob.create`` as a new user calls it: every option a job spec can refuse is refused before
any local work (no bottom download), over an ``httpx.MockTransport`` that records every request.
Also the job handle's reads and actions (refresh, events, checkpoints, cancel, pause)."""

from __future__ import annotations

import json

import httpx
import pytest

from client_sdk import protocol, wire
from client_sdk.data import DatasetError
from client_sdk.errors import NotFoundError
from client_sdk.jobs import FineTuneJob, PrivacyConfig
from client_sdk.jobspec import JobSpecError
from client_sdk.options import Hyperparameters
from client_sdk.privacy.errors import PrivacyConfigError
from tests.client_sdk.test_client import BASE, Recorder, job, make_client, paged
from tests.helpers import make_tiny_bert

MODEL = "minilm-l6"
LIMITS = {"max_batch_size": 256, "max_tokens": 512, "num_layers": 6, "max_positions": 512, "tasks": ["classification"]}
DATA = [(f"w{i} w{i + 1} w{i + 2}", "pos" if i % 2 else "neg") for i in range(20)]


def gateway(request: httpx.Request) -> httpx.Response:
    """The gateway as far as a refused job gets: the model object, and a 404 for everything else."""
    if request.method == "GET" and request.url.path == f"/v1/models/{MODEL}":
        body = {"id": MODEL, "object": "model", "created": 1, "owned_by": "privtune", "privtune": LIMITS}
        return httpx.Response(200, json=body)
    return httpx.Response(404, json={"error": {"message": "no such thing", "type": "invalid_request_error"}})


@pytest.fixture
def recorded():
    rec = Recorder(gateway)
    client, _ = make_client(rec)
    return client, rec


def paths(rec: Recorder) -> list[str]:
    return [f"{r.method} {r.url.path}" for r in rec.requests]


def no_download(rec: Recorder) -> bool:
    return not any("/privtune/bottoms/" in r.url.path for r in rec.requests)


# ---- refused before any request ------------------------------------------------------------------


def test_batch_size_zero_is_refused_without_a_request(recorded):
    client, rec = recorded
    with pytest.raises(JobSpecError) as info:
        FineTuneJob.create(DATA, hyperparameters={"batch_size": 0}, client=client, progress=False)
    assert info.value.param == "hyperparameters.batch_size"
    assert "got 0" in str(info.value)
    assert rec.requests == []


def test_an_unknown_hyperparameter_lists_the_valid_keys_and_suggests_one(recorded):
    client, rec = recorded
    with pytest.raises(JobSpecError) as info:
        FineTuneJob.create(DATA, hyperparameters={"epochs": 2}, client=client, progress=False)
    message = str(info.value)
    assert info.value.param == "hyperparameters.epochs"
    assert "'epochs'" in message and "n_epochs" in message and "did you mean 'n_epochs'" in message
    for key in ("batch_size", "learning_rate", "lora_r", "lora_alpha", "lora_dropout", "warmup_steps"):
        assert key in message
    assert rec.requests == []


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"hyperparameters": {"learning_rate": 2.0}}, "hyperparameters.learning_rate"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"lora_dropout": 0.9}}, "hyperparameters.lora_dropout"),
        ({"hyperparameters": Hyperparameters(weight_decay=-1.0)}, "hyperparameters.weight_decay"),
        ({"hyperparameters": ["batch_size", 8]}, "hyperparameters"),
        ({"split_layer": 0}, "split_layer"),
        ({"max_length": 0}, "max_length"),
    ],
)
def test_other_contract_violations_name_the_users_option_without_a_request(recorded, options, param):
    client, rec = recorded
    with pytest.raises(JobSpecError) as info:
        FineTuneJob.create(DATA, client=client, progress=False, **options)
    assert info.value.param == param
    assert rec.requests == []


@pytest.mark.parametrize("value", ["auto", None, "8"])  # OpenAI's "auto"; a value read from JSON or a CLI
def test_a_batch_size_that_is_not_an_int_is_refused_or_accepted_never_a_crash(recorded, tmp_path, value):
    client, rec = recorded
    try:
        FineTuneJob.create(
            DATA, hyperparameters={"batch_size": value}, client=client, progress=False, cache_dir=str(tmp_path)
        )
    except JobSpecError as exc:  # refused: named, before any request
        assert exc.param == "hyperparameters.batch_size" and rec.requests == []
    except NotFoundError:  # accepted: it went on to the (missing) bottom
        assert paths(rec)[-1] == f"GET /v1/privtune/bottoms/{MODEL}/3"


def test_privacy_config_is_checked_at_construction():
    with pytest.raises(PrivacyConfigError) as info:
        PrivacyConfig(mechanism="laplace")
    assert info.value.parameter == "mechanism" and "privtune" in str(info.value)
    with pytest.raises(PrivacyConfigError) as info:
        PrivacyConfig(mechanism="dchi", eta=-1)
    assert info.value.parameter == "eta"


def test_generation_on_an_encoder_is_refused_after_the_model_lookup_only(recorded):
    client, rec = recorded
    with pytest.raises(JobSpecError, match="supports \\['classification'\\]") as info:
        FineTuneJob.create(DATA, task="generation", client=client, progress=False)
    assert info.value.param == "task" and paths(rec) == [f"GET /v1/models/{MODEL}"]


def test_an_unknown_task_or_a_column_option_of_the_other_task_is_refused_without_a_request(recorded):
    client, rec = recorded
    with pytest.raises(JobSpecError) as info:
        FineTuneJob.create(DATA, task="summarise", client=client, progress=False)
    assert info.value.param == "task"
    with pytest.raises(TypeError, match="prompt_column does not apply to task='classification'"):
        FineTuneJob.create(DATA, prompt_column="question", client=client, progress=False)
    assert rec.requests == []


@pytest.mark.parametrize(
    ("dataset", "options", "match"),
    [
        ([], {}, "empty"),
        ([("w1 w2", "pos"), ("w3 w4", "pos")], {}, "two distinct labels"),
        (DATA, {"validation_split": 1.5}, "validation_split"),
    ],
)
def test_an_unusable_dataset_is_refused_without_a_request(recorded, dataset, options, match):
    client, rec = recorded
    with pytest.raises(DatasetError, match=match):
        FineTuneJob.create(dataset, client=client, progress=False, **options)
    assert rec.requests == []


# ---- refused by the server's published limits, before the download -------------------------------


@pytest.mark.parametrize(
    ("options", "param", "limit"),
    [
        ({"hyperparameters": {"batch_size": 100000}}, "hyperparameters.batch_size", "256"),
        ({"split_layer": 6}, "split_layer", "5"),
        ({"max_length": 1000}, "max_length", "512"),
    ],
)
def test_the_servers_limits_refuse_after_the_model_lookup_only(recorded, options, param, limit):
    client, rec = recorded
    with pytest.raises(JobSpecError) as info:
        FineTuneJob.create(DATA, model=MODEL, client=client, progress=False, **options)
    assert info.value.param == param
    assert str(info.value).startswith(f"{param}:") and limit in str(info.value) and MODEL in str(info.value)
    assert paths(rec) == [f"GET /v1/models/{MODEL}"]
    assert no_download(rec)


def test_an_unknown_model_is_not_found_before_any_download(recorded):
    client, rec = recorded
    with pytest.raises(NotFoundError):
        FineTuneJob.create(DATA, model="no-such-model", client=client, progress=False)
    assert paths(rec) == ["GET /v1/models/no-such-model"]
    assert no_download(rec)


def test_options_within_the_limits_go_on_to_the_download(recorded, tmp_path):
    client, rec = recorded
    with pytest.raises(NotFoundError):  # the mock has no bottom: the download is the next request
        FineTuneJob.create(
            DATA,
            hyperparameters={"batch_size": 256},
            split_layer=5,
            max_length=512,
            client=client,
            progress=False,
            cache_dir=str(tmp_path),
        )
    assert paths(rec) == [f"GET /v1/models/{MODEL}", f"GET /v1/privtune/bottoms/{MODEL}/5"]


def test_resume_checks_the_options_before_any_request(recorded):
    client, rec = recorded
    with pytest.raises(JobSpecError) as info:
        FineTuneJob.resume("ftjob-1", DATA, hyperparameters={"batch_size": 0}, suffix="x", client=client)
    assert info.value.param == "hyperparameters.batch_size"
    assert rec.requests == []


# ---- the job handle ------------------------------------------------------------------------------


def event(i: int) -> dict:
    return {"id": f"ev-{i}", "object": "fine_tuning.job.event", "created_at": i, "message": f"step {i}"}


def checkpoint(i: int) -> dict:
    return {
        "id": f"ckpt-{i}",
        "created_at": i,
        "fine_tuning_job_id": "ftjob-1",
        "step_number": i,
        "fine_tuned_model_checkpoint": f"ft:m:ckpt-{i}",
    }


def test_the_handle_reads_the_record_and_follows_the_job():
    events = [event(i) for i in range(5)]
    checkpoints = [checkpoint(i) for i in range(2)]

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/events"):
            return paged(events)(request)
        if path.endswith("/checkpoints"):
            return paged(checkpoints)(request)
        status = {"cancel": "cancelled", "pause": "paused"}.get(path.rsplit("/", 1)[-1], "succeeded")
        return httpx.Response(200, json=job(status=status, fine_tuned_model="ft:m:1"))

    rec = Recorder(handler)
    client, _ = make_client(rec)
    handle = FineTuneJob.of(client, client.fine_tuning.jobs.retrieve("ftjob-1"), metrics={"accuracy_after": 0.9})
    assert handle.id == "ftjob-1" and handle.fine_tuned_model == "ft:m:1"  # the server's fields
    assert "ftjob-1" in repr(handle) and "accuracy_after" in repr(handle)
    refreshed = handle.refresh()
    assert isinstance(refreshed, FineTuneJob) and refreshed.status == "succeeded"
    assert refreshed.metrics == {"accuracy_after": 0.9}  # what the device measured stays with the job
    assert [e.id for e in handle.events()] == [e["id"] for e in events]
    assert [e.id for e in handle.events(limit=2)] == ["ev-0", "ev-1"]
    assert [c.id for c in handle.checkpoints()] == ["ckpt-0", "ckpt-1"]
    assert handle.pause().status == "paused"
    assert handle.cancel().status == "cancelled"
    posts = [str(r.url) for r in rec.requests if r.method == "POST"]
    assert posts == [f"{BASE}/fine_tuning/jobs/ftjob-1/pause", f"{BASE}/fine_tuning/jobs/ftjob-1/cancel"]


# ---- a whole job against a mock gateway serving a real (tiny) bottom -----------------------------


class FakeGateway:
    """Serves the model, a tiny exported bottom and one job whose steps a fixed linear top answers."""

    def __init__(self, artifact) -> None:
        self.artifact, self.created, self.steps, self.completed = artifact, None, [], None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, jobs = request.url.path, "/v1/fine_tuning/jobs"
        bottom = f"/v1/privtune/bottoms/{MODEL}/2"
        if path == bottom:
            return httpx.Response(200, json=self.artifact.manifest)
        if path.startswith(bottom + "/files/"):
            return httpx.Response(200, content=(self.artifact.path / path.rsplit("/", 1)[-1]).read_bytes())
        if path == jobs:
            self.created = json.loads(request.content)
            return httpx.Response(200, json=job("ftjob-e2e", status="queued"))
        if path == f"{jobs}/ftjob-e2e":
            return httpx.Response(200, json=job("ftjob-e2e", status="running"))
        if path == f"{jobs}/ftjob-e2e/steps":
            self.steps.append(request.content)
            return httpx.Response(200, content=self.reply(request.content))
        if path == f"{jobs}/ftjob-e2e/complete":
            self.completed = request.content
            return httpx.Response(200, json=job("ftjob-e2e", status="succeeded", fine_tuned_model="ft:tiny:e2e"))
        return gateway(request)

    @staticmethod
    def reply(payload: bytes) -> bytes:
        header, tensors = wire.decode(payload)
        out = {}
        if protocol.HIDDEN in tensors:
            out[protocol.OUTPUT] = tensors[protocol.HIDDEN][:, 0, :]  # (b, d): a fixed "top"
        kind = "infer_reply" if header.kind == "infer" else "step_reply"
        return wire.encode(out, wire.WireHeader(header.job_id, header.step, kind))


def test_a_whole_job_trains_through_the_gateway(tmp_path):
    from worker.models import export_bottom

    artifact = export_bottom(str(make_tiny_bert(tmp_path / "bert")), 2, tmp_path / "artifact")
    fake = FakeGateway(artifact)
    rec = Recorder(fake)
    client, _ = make_client(rec)
    privacy = PrivacyConfig(mechanism="none", seed=0)
    done = FineTuneJob.create(
        DATA,
        privacy=privacy,
        hyperparameters={"batch_size": 8, "n_epochs": 1},
        split_layer=2,
        client=client,
        progress=False,
        cache_dir=str(tmp_path / "cache"),
        suffix="e2e",
        metadata={"team": "a"},
        state_dir=str(tmp_path / "state"),
    )
    assert isinstance(done, FineTuneJob) and done.status == "succeeded" and done.fine_tuned_model == "ft:tiny:e2e"
    total, steps = 3, "POST /v1/fine_tuning/jobs/ftjob-e2e/steps"  # 18 examples (2 held out) in batches of 8
    head = [f"GET /v1/models/{MODEL}", f"GET /v1/privtune/bottoms/{MODEL}/2", "POST /v1/fine_tuning/jobs"]
    tail = [
        "GET /v1/fine_tuning/jobs/ftjob-e2e",
        *[steps] * (total + 3),
        "POST /v1/fine_tuning/jobs/ftjob-e2e/complete",
    ]
    assert [p for p in paths(rec) if "/files/" not in p] == [*head, *tail]  # checked, downloaded, then trained
    spec = fake.created["method"]["privtune"]
    assert fake.created["model"] == MODEL and fake.created["method"]["type"] == "privtune"
    assert (spec["batch_size"], spec["n_epochs"], spec["total_steps"], spec["num_labels"]) == (8, 1, total, 2)
    assert (spec["split_layer"], spec["max_tokens"]) == (2, 64)
    assert spec["privacy"]["mechanism"] == "none" and "record" in spec["privacy"]
    assert fake.created["hyperparameters"]["batch_size"] == 8 and fake.created["suffix"] == "e2e"
    assert fake.created["metadata"] == {"team": "a"} and fake.created["seed"] == 0
    header, tensors = wire.decode(fake.completed)
    assert header.extra.get(protocol.FINAL) == "1" and tensors == {}
    assert sorted(protocol.parse_metrics(header.extra[protocol.METRICS])) == ["valid_accuracy", "valid_loss"]
    saved = tmp_path / "state" / "ftjob-e2e"
    assert (saved / "final" / "end.safetensors").is_file() and (saved / "meta.json").is_file()
    assert json.loads((saved / "meta.json").read_text())["labels"] == ["neg", "pos"]
    kinds = [wire.decode(body)[0].kind for body in fake.steps]
    assert kinds == ["infer", *["step"] * (total + 1), "infer"]  # accuracy before and after
    for body in fake.steps:
        assert not any(text.encode() in body for text, _ in DATA)
    assert 0.0 <= done.metrics["accuracy_before"] <= 1.0 and done.metrics["validation_examples"] == 2
    assert done.metrics["bytes_sent"] == sum(len(body) for body in fake.steps)
    assert done.metrics["privacy"]["mechanism"] == "none" and done.metrics["hyperparameters"]["batch_size"] == 8
    assert done.report is not None and done.report.steps == total
