"""Contract tests of /v1/fine_tuning/jobs over raw HTTP."""

from __future__ import annotations

import pytest

from service.db import repo
from tests.api.conftest import job_body

JOB_FIELDS = {
    "id",
    "object",
    "created_at",
    "finished_at",
    "model",
    "fine_tuned_model",
    "organization_id",
    "status",
    "hyperparameters",
    "method",
    "training_file",
    "validation_file",
    "result_files",
    "trained_tokens",
    "error",
    "seed",
    "estimated_finish",
    "integrations",
    "metadata",
    "steps_completed",
    "total_steps",
}


def test_create_job_returns_openai_job_and_enqueues(env):
    job = env.create_job(lora={"r": 4}, privacy={"mechanism": "privtune", "eta": 50, "lam": 0.3})
    assert set(job) >= JOB_FIELDS
    assert job["id"].startswith("ftjob-") and job["object"] == "fine_tuning.job"
    assert job["status"] == "queued" and job["organization_id"] == env.org_id
    assert job["steps_completed"] == 0 and job["total_steps"] == 10
    cfg = job["method"]["privtune"]
    assert job["method"]["type"] == "privtune"
    assert cfg["split_layer"] == 3 and cfg["lora"] == {"r": 4, "alpha": 16, "dropout": 0.0, "target_modules": None}
    assert cfg["privacy"] == {"mechanism": "privtune", "eta": 50, "lam": 0.3}
    assert job["hyperparameters"] == {"batch_size": 8, "learning_rate_multiplier": 1.0, "n_epochs": 1}
    assert env.enqueuer.jobs == [job["id"]]
    events = env.client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=env.headers()).json()
    assert [e["message"] for e in events["data"]] == ["Job created"]


@pytest.mark.parametrize(
    ("privacy", "task", "given", "expected"),
    [
        ({"mechanism": "privtune"}, "classification", None, True),
        ({"mechanism": "gaussian"}, "classification", None, True),
        ({"mechanism": "opt3"}, "classification", None, False),
        ({"mechanism": "none"}, "classification", None, False),
        ({"mechanism": "privtune"}, "generation", None, False),
        ({"mechanism": "privtune"}, "classification", False, False),
        ({"mechanism": "none"}, "classification", True, True),
    ],
)
def test_noise_aware_top_defaults_to_on_for_noisy_classification(env, privacy, task, given, expected):
    body = job_body("smollm2-135m" if task == "generation" else "minilm-l6", privacy=privacy, task=task)
    if task == "generation":
        body["method"]["privtune"].pop("num_labels")
    if given is not None:
        body["method"]["privtune"]["noise_aware"] = given
    r = env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.headers())
    assert r.status_code == 200, r.text
    assert r.json()["method"]["privtune"]["noise_aware"] is expected


def test_the_torch_free_mechanism_table_matches_the_registry():
    from client_sdk.privacy import MECHANISMS, mechanism_class
    from client_sdk.privacy.table import MECHANISM_TABLE, NOISE_MECHANISMS

    assert tuple(MECHANISM_TABLE) == MECHANISMS
    for name, info in MECHANISM_TABLE.items():
        cls = mechanism_class(name)
        assert cls.config_class is info.config_class
        assert (cls.uses_noise, cls.uses_importance, cls.uses_opt3) == (
            info.adds_noise,
            info.uses_importance,
            info.uses_opt3,
        )
    assert set(NOISE_MECHANISMS) == {name for name in MECHANISMS if mechanism_class(name).uses_noise}


@pytest.mark.parametrize(
    ("privacy", "param"),
    [
        ({"mechanism": "privtune", "alpha": 0.3}, "method.privtune.privacy.alpha"),  # not a privtune parameter
        ({"mechanism": "dchi", "eta": -1}, "method.privtune.privacy.eta"),
        ({"mechanism": "dchi", "metric": "l3"}, "method.privtune.privacy.metric"),
        ({"mechanism": "privtune", "top_fraction": 2.0}, "method.privtune.privacy.top_fraction"),
        ({"mechanism": "laplace"}, "method.privtune.privacy.mechanism"),
    ],
)
def test_declared_mechanism_is_validated_by_its_config_class(env, privacy, param):
    r = env.client.post("/v1/fine_tuning/jobs", json=job_body(privacy=privacy), headers=env.headers())
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert env.client.get("/v1/fine_tuning/jobs", headers=env.headers()).json()["data"] == []  # nothing created


def test_noise_aware_generation_is_refused(env):
    body = job_body("smollm2-135m", task="generation")
    body["method"]["privtune"].pop("num_labels")
    body["method"]["privtune"]["noise_aware"] = True
    r = env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.headers())
    assert r.status_code == 400 and r.json()["error"]["param"] == "method.privtune.noise_aware"
    assert env.client.get("/v1/fine_tuning/jobs", headers=env.headers()).json()["data"] == []


def test_legacy_hyperparameters_are_mirrored(env):
    body = job_body()
    body["method"]["privtune"].pop("batch_size")
    body["hyperparameters"] = {"batch_size": 4, "learning_rate_multiplier": 2, "n_epochs": 3}
    job = env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.headers()).json()
    assert job["hyperparameters"] == {"batch_size": 4, "learning_rate_multiplier": 2.0, "n_epochs": 3}
    assert job["method"]["privtune"]["optimizer"]["learning_rate"] == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("mutate", "param"),
    [
        (lambda b: b.update(model="gpt-4o"), "model"),
        (lambda b: b.update(model="/etc/passwd"), "model"),
        (lambda b: b["method"]["privtune"].update(split_layer=6), "method.privtune.split_layer"),
        (lambda b: b["method"]["privtune"].update(split_layer=0), "method.privtune.split_layer"),
        (lambda b: b["method"]["privtune"].update(lora={"r": 0}), "method.privtune.lora.r"),
        (lambda b: b["method"]["privtune"].update(lora={"dropout": 0.9}), "method.privtune.lora.dropout"),
        (
            lambda b: b["method"]["privtune"].update(optimizer={"learning_rate": 5}),
            "method.privtune.optimizer.learning_rate",
        ),
        (lambda b: b["method"]["privtune"].update(batch_size=1000), "method.privtune.batch_size"),
        (lambda b: b["method"]["privtune"].update(n_epochs=51), "method.privtune.n_epochs"),
        (lambda b: b["method"]["privtune"].update(total_steps=0), "method.privtune.total_steps"),
        (lambda b: b["method"]["privtune"].pop("total_steps"), "method.privtune.total_steps"),
        (lambda b: b["method"]["privtune"].pop("num_labels"), "method.privtune.num_labels"),
        (lambda b: b["method"]["privtune"].update(privacy={"mechanism": "magic"}), "method.privtune.privacy.mechanism"),
        (lambda b: b["method"].update(type="dpo"), "method.type"),
        (lambda b: b.pop("method"), "method"),
        (lambda b: b.update(hyperparameters={"n_epochs": 0}), "hyperparameters.n_epochs"),
        (lambda b: b.update(metadata={f"k{i}": "v" for i in range(17)}), "metadata"),
        (lambda b: b.update(metadata={"k" * 65: "v"}), "metadata"),
        (lambda b: b.update(metadata={"k": "v" * 513}), "metadata"),
        (lambda b: b.update(suffix="s" * 65), "suffix"),
        (lambda b: b.update(training_file="file-nope"), "training_file"),
    ],
)
def test_create_rejects_bad_input_with_param(env, mutate, param):
    body = job_body()
    mutate(body)
    r = env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.headers())
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert env.enqueuer.jobs == []


def test_list_pagination_newest_first_and_metadata_filter(env):
    ids = []
    for i in range(5):
        body = job_body()
        body["metadata"] = {"team": "a" if i % 2 == 0 else "b", "n": str(i)}
        ids.append(env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.headers()).json()["id"])
    newest_first = ids[::-1]
    page1 = env.client.get("/v1/fine_tuning/jobs?limit=2", headers=env.headers()).json()
    assert page1["object"] == "list" and page1["has_more"] is True
    assert [j["id"] for j in page1["data"]] == newest_first[:2]
    assert page1["first_id"] == newest_first[0] and page1["last_id"] == newest_first[1]
    page2 = env.client.get(f"/v1/fine_tuning/jobs?limit=2&after={page1['last_id']}", headers=env.headers()).json()
    page3 = env.client.get(f"/v1/fine_tuning/jobs?limit=2&after={page2['last_id']}", headers=env.headers()).json()
    assert [j["id"] for j in page2["data"] + page3["data"]] == newest_first[2:]
    assert page3["has_more"] is False
    filtered = env.client.get("/v1/fine_tuning/jobs?metadata[team]=a", headers=env.headers()).json()
    assert [j["id"] for j in filtered["data"]] == [ids[4], ids[2], ids[0]]
    both = env.client.get("/v1/fine_tuning/jobs?metadata[team]=a&metadata[n]=2", headers=env.headers()).json()
    assert [j["id"] for j in both["data"]] == [ids[2]]
    other = env.client.get("/v1/fine_tuning/jobs", headers=env.headers(env.other_key)).json()
    assert other["data"] == [] and other["has_more"] is False and other["first_id"] is None
    bad = env.client.get("/v1/fine_tuning/jobs?limit=0", headers=env.headers())
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"
    cursor = env.client.get("/v1/fine_tuning/jobs?after=ftjob-unknown", headers=env.headers())
    assert cursor.status_code == 400 and cursor.json()["error"]["param"] == "after"


def test_retrieve_and_isolation(env):
    job = env.create_job()
    r = env.client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=env.headers())
    assert r.status_code == 200 and r.json()["id"] == job["id"]
    for path in ("", "/cancel", "/pause", "/resume", "/events", "/checkpoints"):
        method = "post" if path in ("/cancel", "/pause", "/resume") else "get"
        other = getattr(env.client, method)(
            f"/v1/fine_tuning/jobs/{job['id']}{path}", headers=env.headers(env.other_key)
        )
        assert other.status_code == 404, path
        assert other.json()["error"]["code"] == "not_found"
    missing = env.client.get("/v1/fine_tuning/jobs/ftjob-doesnotexist", headers=env.headers())
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "fine_tuning_job_id"


def test_cancel_then_cancel_again_conflicts(env):
    job = env.create_job()
    env.run_job(job["id"])
    r = env.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=env.headers())
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    again = env.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=env.headers())
    assert again.status_code == 409 and again.headers["x-should-retry"] == "false"
    assert "cancelled" in again.json()["error"]["message"]
    with env.session() as s:  # the worker sees the flag on its next heartbeat
        assert repo.heartbeat(s, job["id"], "worker-1", 60) == "cancelled"


def test_pause_and_resume(env):
    job = env.create_job()
    env.run_job(job["id"])
    r = env.client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause", headers=env.headers())
    assert r.status_code == 200 and r.json()["status"] == "paused"
    busy = env.client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume", headers=env.headers())
    assert busy.status_code == 409 and busy.headers.get("x-should-retry") != "false"  # worker still saving
    with env.session() as s:
        assert repo.heartbeat(s, job["id"], "worker-1", 60, steps_completed=4) == "paused"
        assert repo.release_job(s, job["id"], "worker-1", "paused")
    r = env.client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume", headers=env.headers())
    assert r.status_code == 200 and r.json()["status"] == "queued" and r.json()["steps_completed"] == 4
    assert env.enqueuer.jobs == [job["id"], job["id"]]
    again = env.client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume", headers=env.headers())
    assert again.status_code == 409 and again.headers["x-should-retry"] == "false"


def test_events_and_checkpoints_pagination(env):
    job = env.create_job()
    env.run_job(job["id"])
    with env.session() as s:
        for step in (1, 2, 3):
            repo.add_event(s, job["id"], f"step {step}", type="metrics", data={"step": step, "train_loss": 1 / step})
            repo.add_checkpoint(s, job["id"], step * 10, {"train_loss": 0.5}, f"/ckpt/{step}")
    r = env.client.get(f"/v1/fine_tuning/jobs/{job['id']}/events?limit=2", headers=env.headers()).json()
    assert [e["message"] for e in r["data"]] == ["step 3", "step 2"] and r["has_more"]
    assert r["data"][0]["object"] == "fine_tuning.job.event" and r["data"][0]["data"]["step"] == 3
    rest = env.client.get(f"/v1/fine_tuning/jobs/{job['id']}/events?after={r['last_id']}", headers=env.headers()).json()
    assert [e["message"] for e in rest["data"]] == ["step 1", "Job created"]
    ckpts = env.client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints", headers=env.headers()).json()
    assert [c["step_number"] for c in ckpts["data"]] == [30, 20, 10]
    first = ckpts["data"][0]
    assert first["object"] == "fine_tuning.job.checkpoint" and first["fine_tuning_job_id"] == job["id"]
    assert first["metrics"] == {"step": 30, "train_loss": 0.5} and "path" not in first
    assert first["fine_tuned_model_checkpoint"] == f"ft:minilm-l6:acme::{job['id']}:ckpt-step-30"


def test_enqueue_failure_answers_503_and_fails_the_job(env):
    env.enqueuer.fail = True
    r = env.client.post("/v1/fine_tuning/jobs", json=job_body(), headers=env.headers())
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert r.json()["error"]["code"] == "queue_unavailable"
    jobs = env.client.get("/v1/fine_tuning/jobs", headers=env.headers()).json()["data"]
    assert jobs[0]["status"] == "failed" and jobs[0]["error"]["code"] == "queue_unavailable"


def test_sdk_job_body_is_accepted_and_privacy_recorded_as_declared(env):
    declared = {
        "mechanism": "privtune",
        "sensitivity": "clip",
        "clip_norm": None,
        "eta": 10.0,
        "metric": "l1",
        "importance_to_scale": "sigmoid",
        "beta": 0.5,
        "k": 10,
        "similarity": "pearson+cos",
        "lam": 0.5,
    }
    body = job_body(split_layer=2, n_epochs=3, lora={"r": 8, "alpha": 16, "dropout": 0.0})
    body["method"]["privtune"].update(
        optimizer={"learning_rate": 5e-4, "weight_decay": 0.0, "warmup_steps": 0}, privacy=declared
    )
    body.update(hyperparameters={"batch_size": 8, "n_epochs": 3, "learning_rate_multiplier": 1.0}, seed=1)
    r = env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.headers())
    assert r.status_code == 200, r.text
    assert r.json()["method"]["privtune"]["privacy"] == declared and r.json()["seed"] == 1


@pytest.mark.parametrize("key", ["team'", 'te"am', "a') OR 1=1 --", "x" * 65, "t$[0]", "ключ"])
def test_metadata_filter_keys_outside_the_rule_are_400_before_sql(env, key):
    """A quote in a filter key reached SQLite's JSON path (a 503 the client retried): now a 400."""
    from urllib.parse import quote

    env.create_job()
    r = env.client.get(f"/v1/fine_tuning/jobs?metadata[{quote(key)}]=a", headers=env.headers())
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_metadata_key"
    assert r.json()["error"]["param"].startswith("metadata[")
    ok = env.client.get("/v1/fine_tuning/jobs?metadata[team.name-1_x]=a", headers=env.headers())
    assert ok.status_code == 200 and ok.json()["data"] == []


def test_job_metadata_keys_follow_the_same_rule(env):
    body = job_body()
    body["metadata"] = {"bad key'": "v"}
    r = env.client.post("/v1/fine_tuning/jobs", json=body, headers=env.headers())
    assert r.status_code == 400 and r.json()["error"]["param"] == "metadata"
    assert r.json()["error"]["code"] == "invalid_metadata_key" and env.enqueuer.jobs == []


def test_create_and_resume_record_the_enqueue_time(env):
    import time

    job = env.create_job()
    with env.session() as s:
        first = repo.get_job(s, job["id"])["enqueued_at"]
    assert first is not None and abs(first - time.time()) < 5
    env.run_job(job["id"])
    env.client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause", headers=env.headers())
    with env.session() as s:
        assert repo.release_job(s, job["id"], "worker-1", "paused")
    time.sleep(0.01)
    assert env.client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume", headers=env.headers()).status_code == 200
    with env.session() as s:
        assert repo.get_job(s, job["id"])["enqueued_at"] > first


def test_create_beyond_the_organizations_active_cap_is_429_and_creates_nothing(env):
    env.settings.max_active_jobs_per_org = 2
    first, _ = env.create_job(), env.create_job()
    r = env.client.post("/v1/fine_tuning/jobs", json=job_body(), headers=env.headers())
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_active_jobs"
    assert "Retry-After" in r.headers or "retry-after" in r.headers
    assert len(env.client.get("/v1/fine_tuning/jobs", headers=env.headers()).json()["data"]) == 2
    assert len(env.enqueuer.jobs) == 2
    other = env.client.post("/v1/fine_tuning/jobs", json=job_body(), headers=env.headers(env.other_key))
    assert other.status_code == 200  # the cap is per organization
    env.client.post(f"/v1/fine_tuning/jobs/{first['id']}/cancel", headers=env.headers())
    assert env.client.post("/v1/fine_tuning/jobs", json=job_body(), headers=env.headers()).status_code == 200
