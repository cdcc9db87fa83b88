"""``FineTuneJob`` through a provider's failures, over an ``httpx.MockTransport`` gateway serving a real tiny
bottom: it waits for a worker through ``job_not_running`` (showing it on the progress bar) and sends the
same step again, completes only with the last step named and trains again when the worker refuses,
pauses the job on Ctrl-C and says how to resume it, and reports a failed bottom export before creating
anything."""

from __future__ import annotations

import httpx
import pytest

from client_sdk import protocol, wire
from client_sdk.errors import BottomExportError
from client_sdk.jobs import FineTuneJob, PrivacyConfig, resume_call
from client_sdk.training import JobInterruptedError
from tests.client_sdk.test_client import Recorder, error, job, make_client
from tests.client_sdk.test_jobs import DATA, MODEL, FakeGateway, paths
from tests.helpers import make_tiny_bert

JOBS = "/v1/fine_tuning/jobs/ftjob-e2e"
TOTAL = 3  # 18 training examples in batches of 8
OPTIONS = {"privacy": PrivacyConfig(mechanism="none", seed=0), "hyperparameters": {"batch_size": 8, "n_epochs": 1},
           "split_layer": 2}  # fmt: skip


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from worker.models import export_bottom

    root = tmp_path_factory.mktemp("recovery")
    return export_bottom(str(make_tiny_bert(root / "bert")), 2, root / "artifact")


class FaultyGateway(FakeGateway):
    """``FakeGateway`` plus faults: ``statuses`` are what retrieving the job answers, in turn (the last one
    repeated); ``faults`` maps (kind of request, step) to the responses given instead, in turn; ``on_step``
    runs before a step is answered."""

    def __init__(self, artifact, statuses=("running",), faults=None, on_step=None) -> None:
        super().__init__(artifact)
        self.statuses, self.faults, self.on_step = list(statuses), dict(faults or {}), on_step
        self.completions: list[wire.WireHeader] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == JOBS and request.method == "GET":
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            return httpx.Response(200, json=job("ftjob-e2e", status=status))
        if path == f"{JOBS}/pause":
            return httpx.Response(200, json=job("ftjob-e2e", status="paused"))
        if path in (f"{JOBS}/steps", f"{JOBS}/complete"):
            header = wire.decode(request.content)[0]
            kind = "complete" if path.endswith("complete") else header.kind
            if kind == "complete":
                self.completions.append(header)
            if self.on_step and kind == "step":
                self.on_step(header.step)
            answers = self.faults.get((kind, header.step))
            if answers:
                return answers.pop(0)
        return super().__call__(request)


def train(fake, tmp_path, rec: Recorder | None = None, **options):
    rec = rec or Recorder(fake)
    client, sleeps = make_client(rec)
    kwargs = {"client": client, "progress": False, "cache_dir": str(tmp_path / "cache"),
              "state_dir": str(tmp_path / "state"), **OPTIONS, **options}  # fmt: skip
    return FineTuneJob.create(DATA, **kwargs), rec, sleeps


def step_numbers(rec: Recorder) -> list[int]:
    return [wire.decode(r.content)[0].step for r in rec.requests if r.url.path == f"{JOBS}/steps"]


NOT_RUNNING = error(409, "not running", code="job_not_running", job_status="queued")


def test_the_device_waits_for_a_worker_and_shows_it(artifact, tmp_path, capsys):
    fake = FaultyGateway(artifact, statuses=["running", "queued", "queued", "running"],
                         faults={("step", 2): [NOT_RUNNING]})  # fmt: skip
    done, rec, sleeps = train(fake, tmp_path, progress=True)
    assert done.status == "succeeded"
    assert step_numbers(rec) == [0, 1, 2, 2, 3, 4, 0]  # inference, the steps (2 twice: the same request), flush
    sent = [r.content for r in rec.requests if r.url.path == f"{JOBS}/steps"]
    assert sent[2] == sent[3]
    assert sleeps == [0.5, 1.0, 2.0]  # polled until a worker took the job back
    err = capsys.readouterr().err
    assert "created job ftjob-e2e" in err and "waiting for a worker (job queued)" in err


def test_a_paused_job_is_a_clear_error_saying_how_to_resume(artifact, tmp_path):
    paused = error(409, "not running", code="job_not_running", job_status="paused")
    fake = FaultyGateway(artifact, statuses=["running", "paused"], faults={("step", 2): [paused]})
    with pytest.raises(JobInterruptedError, match=r"paused; resume it with FineTuneJob.resume\('ftjob-e2e'"):
        train(fake, tmp_path)
    assert fake.completions == []


def test_completion_names_the_last_step_and_a_refusal_trains_again_from_the_expected_step(artifact, tmp_path):
    refused = error(409, "cannot complete", code="step_out_of_order", expected_step=2)
    fake = FaultyGateway(artifact, faults={("complete", 0): [refused]})
    done, rec, _ = train(fake, tmp_path)
    assert done.status == "succeeded"
    assert [h.extra[protocol.LAST_STEP] for h in fake.completions] == [str(TOTAL + 1)] * 2
    assert step_numbers(rec) == [0, 1, 2, 3, 4, 0, 2, 3, 4, 0]  # steps 2..3 again, their flush, validation
    assert len(done.report.losses) == TOTAL and done.report.steps == TOTAL


def interrupt_at(step: int):
    def on_step(number: int) -> None:
        if number == step:
            raise KeyboardInterrupt

    return on_step


def test_ctrl_c_pauses_the_job_and_prints_how_to_resume_it(artifact, tmp_path, capsys):
    fake = FaultyGateway(artifact, on_step=interrupt_at(3))
    rec = Recorder(fake)
    with pytest.raises(KeyboardInterrupt):
        train(fake, tmp_path, rec, seed=5)
    assert paths(rec)[-1] == f"POST {JOBS}/pause" and fake.completions == []
    err = capsys.readouterr().err
    assert "interrupted at step 2 of 3: pausing job ftjob-e2e" in err and "job ftjob-e2e is paused" in err
    call = err.split("Continue it with:\n")[1].strip()
    assert call.startswith("FineTuneJob.resume('ftjob-e2e', dataset, privacy=PrivacyConfig(mechanism='none'")
    assert "hyperparameters={'batch_size': 8, 'n_epochs': 1}" in call and "seed=5" in call
    assert "split_layer=2" in call and "model=" not in call  # only what differs from create's defaults
    assert f"state_dir={str(tmp_path / 'state')!r}" in call


def test_a_second_ctrl_c_during_the_pause_leaves_at_once_saying_the_job_was_not_paused(artifact, tmp_path, capsys):
    fake = FaultyGateway(artifact, on_step=interrupt_at(2))
    rec = Recorder(fake)

    def pause_interrupted(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"{JOBS}/pause":
            raise KeyboardInterrupt
        return fake(request)

    rec.replies = [pause_interrupted]
    with pytest.raises(KeyboardInterrupt):
        train(fake, tmp_path, rec)
    assert [p for p in paths(rec) if p.endswith("/pause")] == [f"POST {JOBS}/pause"]  # tried once, no retry
    err = capsys.readouterr().err
    assert "job ftjob-e2e was NOT paused" in err and "client.fine_tuning.jobs.cancel('ftjob-e2e')" in err
    assert "FineTuneJob.resume('ftjob-e2e', dataset" in err


def test_the_resume_call_lists_only_what_differs_from_the_defaults():
    assert resume_call("ftjob-1", {"model": MODEL, "split_layer": 3, "seed": 1}) == (
        "FineTuneJob.resume('ftjob-1', dataset, seed=1)"
    )


def test_a_failed_bottom_export_is_raised_before_any_job_is_created(artifact, tmp_path):
    failed = error(
        500, "the model package is missing", code="bottom_export_failed", headers={"x-should-retry": "false"}
    )
    fake = FaultyGateway(artifact)

    def export_fails(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/v1/privtune/bottoms/{MODEL}/2":
            return failed
        return fake(request)

    rec = Recorder(export_fails)
    with pytest.raises(BottomExportError, match=f"could not export the bottom of '{MODEL}' at split layer 2"):
        train(fake, tmp_path, rec)
    assert paths(rec) == [f"GET /v1/models/{MODEL}", f"GET /v1/privtune/bottoms/{MODEL}/2"]  # once, no job
