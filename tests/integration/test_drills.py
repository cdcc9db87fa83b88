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

from benchmarks.drills import SHORT, DrillRunner, Verdict, table
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
