"""The short failure drills (``python -m benchmarks.drills --short``) on a real stack of processes.

One stack (PostgreSQL database of its own, a redis-server of its own without persistence, the
gateway, two GPU-queue workers) trains one undisturbed tiny-BERT job, then one job per drill: the
job's worker SIGKILLed, Redis SIGKILLed and restarted, the gateway SIGKILLed and restarted, the
device SIGKILLed and replaced by one that resumes. Each must end ``succeeded`` with every step
applied exactly once in the final lineage (``benchmarks.drills.check_events`` / ``check_device``).
Skips when PostgreSQL (127.0.0.1:5432) or redis-server is not available.
"""

from __future__ import annotations

import pytest

from benchmarks.drills import SHORT, DrillRunner, Verdict, check_device, check_events, table
from benchmarks.stack import DeviceSpec, services_missing

pytestmark = pytest.mark.integration

SPEC = DeviceSpec(examples=96, n_epochs=3)  # 33 steps of batch 8
FAULT_STEP = 8


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory) -> dict[str, Verdict]:
    missing = services_missing()
    if missing:
        pytest.skip(missing)
    results = DrillRunner(tmp_path_factory.mktemp("drills"), SPEC, FAULT_STEP, timeout=120.0).run(list(SHORT))
    print(table(results))
    return {v.drill: v for v in results}


def _explain(verdict: Verdict) -> str:
    return "\n".join(verdict.failures + verdict.notes)


def test_a_killed_worker_is_replaced_and_no_step_is_applied_twice(verdicts):
    verdict = verdicts["a"]
    assert verdict.outcome == "pass", _explain(verdict)
    assert verdict.rewinds, "a killed worker's job resumes from a checkpoint"
    assert all(resumed <= applied for applied, resumed in verdict.rewinds)


def test_b_redis_restart_without_persistence_loses_no_step(verdicts):
    verdict = verdicts["b"]
    assert verdict.outcome == "pass", _explain(verdict)


def test_c_gateway_restart_loses_no_step(verdicts):
    verdict = verdicts["c"]
    assert verdict.outcome == "pass", _explain(verdict)
    assert verdict.rewinds == [], "the worker kept running: nothing to rewind"


def test_e_device_that_comes_back_resumes_where_the_worker_is(verdicts):
    verdict = verdicts["e"]
    assert verdict.outcome == "pass", _explain(verdict)
    assert verdict.steps_completed == verdict.total_steps


# ---- the checks themselves, on made-up logs (no services needed) --------------------------------------
def _metrics(*steps: int) -> list[dict]:
    return [{"type": "metrics", "data": {"step": s, "total_steps": 6}} for s in steps]


def _event(kind: str, step: int) -> dict:
    return {"type": "message", "data": {"kind": kind, "step": step}}


def test_check_events_accepts_a_rewind_to_the_saved_checkpoint():
    events = _metrics(1, 2, 3, 4) + [_event("checkpoint_saved", 4)] + _metrics(5)
    events += [_event("job_restarted", 4)] + _metrics(5, 6)
    verdict = Verdict("t", "t")
    check_events(events, 6, verdict)
    assert verdict.failures == [] and verdict.rewinds == [[5, 4]] and verdict.updates_redone == 1


def test_check_events_finds_a_step_applied_twice_a_lost_one_and_an_unfinished_job():
    verdict = Verdict("t", "t")
    check_events(_metrics(1, 2, 2, 4), 6, verdict)
    assert verdict.failures == [
        "step 2 applied after step 2 (applied twice)",
        "step 4 applied after step 2 (steps 3..3 lost)",
        "the last applied step is 4, not 6",
    ]


def test_check_device_counts_a_requested_rewind_and_flags_an_unasked_one():
    def rec(step: int, status: int = 200, expected: str | None = None, t0: float = 0.0) -> dict:
        return {"kind": "step", "step": step, "status": status, "expected_step": expected, "t0": t0}

    log = [rec(1, t0=1), rec(2, t0=2), rec(3, t0=3), rec(3, t0=3.5), rec(1, 409, "3", t0=4), rec(3, t0=5), rec(4, t0=6)]
    verdict = Verdict("t", "t")
    check_device(log, verdict)
    assert verdict.failures == [] and verdict.step_409s == 1
    verdict = Verdict("t", "t")
    check_device([rec(1, t0=1), rec(2, t0=2), rec(1, t0=3), rec(5, t0=4)], verdict)
    assert verdict.failures == [
        "the device went back from step 2 to 1 unasked",
        "the device jumped from step 1 to step 5",
    ]
