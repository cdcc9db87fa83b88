"""Infrastructure faults are told from bugs and retried with capped, jittered backoff."""

from __future__ import annotations

import errno
import random

import pytest
import redis.exceptions
import sqlalchemy.exc
from kombu.exceptions import OperationalError as KombuOperationalError

from worker.infra import Backoff, InfraUnavailable, is_disk_fault, is_infra


class Clock:
    def __init__(self):
        self.now, self.slept = 0.0, []

    def sleep(self, s):
        self.slept.append(s)
        self.now += s

    def __call__(self):
        return self.now


def test_infrastructure_faults_are_told_from_bugs():
    infra = [
        redis.exceptions.ConnectionError("reset"),
        redis.exceptions.TimeoutError("timeout"),
        sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("gone")),
        sqlalchemy.exc.InterfaceError("SELECT 1", {}, Exception("closed")),
        sqlalchemy.exc.TimeoutError("pool"),
        KombuOperationalError("broker down"),
        OSError(errno.ENOSPC, "No space left on device"),
    ]
    assert all(is_infra(e) for e in infra)
    bugs = [ValueError("bad"), KeyError("k"), FileNotFoundError(errno.ENOENT, "x"), RuntimeError("nan")]
    assert not any(is_infra(e) for e in bugs)
    assert is_disk_fault(OSError(errno.EDQUOT, "quota")) and not is_disk_fault(PermissionError(errno.EACCES, "x"))


def test_a_fault_is_retried_until_it_clears():
    clock, calls = Clock(), []

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise redis.exceptions.ConnectionError("reset")
        return "ok"

    backoff = Backoff(base_s=0.1, cap_s=0.4, sleep=clock.sleep, clock=clock, rng=random.Random(0))
    assert backoff.call(flaky, budget_s=10) == "ok" and len(calls) == 4
    assert len(clock.slept) == 3 and all(0 <= s <= 0.4 for s in clock.slept)


def test_the_delay_grows_exponentially_up_to_its_cap():
    backoff = Backoff(base_s=0.1, cap_s=1.0, rng=random.Random(1))
    for attempt, bound in [(0, 0.1), (1, 0.2), (3, 0.8), (10, 1.0)]:
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert max(delays) <= bound and max(delays) > bound * 0.8  # full jitter in [0, bound]


def test_the_budget_ends_the_retries_and_a_bug_is_not_retried():
    clock = Clock()
    backoff = Backoff(base_s=0.5, cap_s=1.0, sleep=clock.sleep, clock=clock, rng=random.Random(0))

    def down():
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("gone"))

    with pytest.raises(InfraUnavailable) as raised:
        backoff.call(down, budget_s=3)
    assert isinstance(raised.value.__cause__, sqlalchemy.exc.OperationalError) and clock.now <= 3
    calls = []

    def bug():
        calls.append(1)
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        backoff.call(bug, budget_s=3)
    assert calls == [1]
