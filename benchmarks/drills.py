"""Failure drills through the real service: each disturbs one process of a running job and checks the outcome.

    python -m benchmarks.drills [--short] [--only a,c] [--json out.json]

Each drill trains one tiny-BERT job from a device process (``benchmarks.stack``), injects its fault
once the device has passed ``--fault-step``, and waits for the job to end. It then checks, from the
job's events (one metrics event per applied step) and the device's request log, that no step was
applied twice and none lost: every applied step is the one after the previous, except the documented
rewind to the checkpoint a worker resumed from (``Job restarted ...; resumed from checkpoint at step
N``), and the job ends ``succeeded`` with ``steps_completed == total_steps``. It records the steps
redone (applied updates thrown away by the rewind, and forwards the device had to send again) and the
time lost against an undisturbed run of the same job in the same invocation.

Drills: (a) SIGKILL the job's worker (a second worker takes over after the lease expires); (b) SIGKILL
and restart Redis, without and with persistence (AOF, fsync always); (c) SIGKILL and restart the
gateway; (d) restart PostgreSQL (``pg_ctlcluster``; long form only, as root); (e) the device process
is killed and a new one resumes the job (``FineTuneJob.resume``); (f) the checkpoint disk (a small
tmpfs, as root) is full for a while, then freed. ``--short`` runs a, b (no persistence), c and e.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.stack import TERMINAL, Device, DeviceSpec, Stack, services_missing, stop_on_signals

SHORT = ("a", "b", "c", "e")
LONG = ("a", "b", "b+aof", "c", "e", "f", "d")  # d last: PostgreSQL is shared with other sessions


@dataclass
class Verdict:
    """What one drill shows; ``failures`` is empty when every check held."""

    drill: str
    title: str
    outcome: str = "pass"  # pass | fail | skip
    job_id: str | None = None
    job_status: str | None = None
    steps_completed: int | None = None
    total_steps: int | None = None
    attempts: int | None = None
    rewinds: list[list[int]] = field(default_factory=list)  # [last applied, checkpoint resumed from]
    updates_redone: int = 0  # applied updates thrown away by rewinds (worker side)
    forwards_redone: int = 0  # steps the device sent again after a rewind
    step_409s: int = 0
    wall_s: float | None = None
    time_lost_s: float | None = None
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---- the checks (pure: events and request logs in, findings out) --------------------------------------
def check_events(events: list[dict[str, Any]], total_steps: int, verdict: Verdict) -> None:
    """Every applied step follows the previous one, except a rewind to the checkpoint a worker resumed from."""
    last, saved = 0, 0
    skipped = False
    for event in events:
        data = event.get("data") or {}
        kind = data.get("kind")
        if kind == "checkpoint_saved":
            saved = int(data["step"])
        elif kind == "checkpoint_skipped":
            skipped = True
        elif kind == "job_restarted":
            step = int(data["step"])
            if step > last:
                verdict.failures.append(f"resumed from a checkpoint at step {step} beyond the last applied step {last}")
            if step < saved and not skipped:
                verdict.failures.append(f"resumed from step {step} although a checkpoint at step {saved} was saved")
            verdict.rewinds.append([last, step])
            verdict.updates_redone += last - step
            last, saved, skipped = step, step, False
        elif event.get("type") == "metrics" and "total_steps" in data:
            step = int(data["step"])
            if step != last + 1:
                what = "applied twice" if step <= last else f"steps {last + 1}..{step - 1} lost"
                verdict.failures.append(f"step {step} applied after step {last} ({what})")
            last = step
    if last != total_steps:
        verdict.failures.append(f"the last applied step is {last}, not {total_steps}")


def check_device(records: list[dict[str, Any]], verdict: Verdict) -> None:
    """The device's step requests (all its processes, in time order) go on by one, repeat a step (a
    retry, answered from the stored reply) or go back to a step the worker asked for (409 expected_step)."""
    steps = sorted((r for r in records if r.get("kind") == "step" and not r.get("final")), key=lambda r: r["t0"])
    prev, asked = 0, None
    for rec in steps:
        if rec.get("status") == 409 and rec.get("expected_step"):
            verdict.step_409s += 1
            asked = int(rec["expected_step"])
            continue
        if rec.get("status") != 200:
            continue
        step = rec["step"]
        if step < prev:
            if step != asked:
                verdict.failures.append(f"the device went back from step {prev} to {step} unasked")
            verdict.forwards_redone += prev - step + 1
        elif step > prev + 1:
            verdict.failures.append(f"the device jumped from step {prev} to step {step}")
        prev, asked = step, None


def job_wall(records: list[dict[str, Any]]) -> float | None:
    """Seconds from the job's creation to its accepted completion, as the device(s) saw them."""
    created = [r["t1"] for r in records if r.get("job_id") and r.get("method") == "POST" and r.get("status")]
    done = [r["t1"] for r in records if r.get("final") and r.get("status") == 200]
    return (max(done) - min(created)) if created and done else None


# ---- running one job under a fault ------------------------------------------------------------------
@dataclass
class Context:
    """What a fault acts on; it returns the devices that carry the job on (``notes`` go to the verdict)."""

    stack: Stack
    device: Device
    job_id: str
    notes: list[str] = field(default_factory=list)


Fault = Callable[[Context], list[Device]]


@dataclass
class Drill:
    key: str
    title: str
    fault: Fault | None
    stack: dict[str, Any] = field(default_factory=dict)  # Stack keyword arguments
    needs: Callable[[], str | None] = lambda: None  # why it cannot run here (None: it can)


def run_job(stack: Stack, spec: DeviceSpec, drill: Drill, fault_step: int, timeout: float) -> Verdict:
    """Train one job, inject ``drill``'s fault after ``fault_step``, and check the outcome."""
    verdict = Verdict(drill.key, drill.title)
    device = stack.start_device(spec)
    verdict.job_id = job_id = device.job_id()
    devices = [device]
    if drill.fault is not None:
        device.wait_for_step(fault_step)
        context = Context(stack, device, job_id)
        try:
            devices = drill.fault(context)
        finally:
            verdict.notes += context.notes
    finals = [d.wait(timeout) for d in devices]
    final = finals[-1]
    if final.get("event") == "error":
        verdict.failures.append(f"the device gave up: {final.get('type')}: {final.get('message', '')[:300]}")
        verdict.notes.append("resumed once more by a new device to see whether the job can still finish")
        again = stack.start_device(DeviceSpec(**{**asdict(spec), "resume_job": job_id}))
        devices.append(again)
        final = again.wait(timeout)
        if final.get("event") == "error":
            verdict.failures.append(f"the resuming device failed too: {final.get('type')}: {final.get('message')}")
    # without a device nothing can end the job: read it as it stands, then free its worker for the next drill
    row = stack.job_row(job_id) if final.get("event") == "error" else _quiet_row(stack, job_id, timeout)
    if row.get("status") not in TERMINAL:
        _cancel(stack, job_id)
    verdict.job_status, verdict.attempts = row.get("status"), row.get("attempt")
    verdict.steps_completed, verdict.total_steps = row.get("steps_completed"), row.get("total_steps")
    if row.get("status") != "succeeded":
        verdict.failures.append(f"the job ended {row.get('status')} (error {row.get('error')})")
    if row.get("total_steps") and row.get("steps_completed") != row.get("total_steps"):
        verdict.failures.append(f"steps_completed {row.get('steps_completed')} != total_steps {row.get('total_steps')}")
    if final.get("event") == "done" and final.get("report_steps") != row.get("total_steps"):
        verdict.failures.append(f"the device's report has {final.get('report_steps')} steps")
    records = [r for d in devices for r in d.records()]
    check_events(stack.events(job_id), int(row.get("total_steps") or 0), verdict)
    check_device(records, verdict)
    ckpts = stack.checkpoint_steps(job_id)
    if row.get("status") == "succeeded" and max(ckpts, default=0) != row.get("total_steps"):
        verdict.failures.append(f"the newest checkpoint is at step {max(ckpts, default=0)}, not the last step")
    verdict.wall_s = job_wall(records)
    verdict.outcome = "fail" if verdict.failures else "pass"
    return verdict


def _cancel(stack: Stack, job_id: str) -> None:
    try:
        with stack.client() as client:
            client.fine_tuning.jobs.cancel(job_id)
    except Exception as exc:  # already ended meanwhile: nothing to free
        print(f"cancel {job_id}: {exc!r}")


def _quiet_row(stack: Stack, job_id: str, timeout: float) -> dict[str, Any]:
    try:
        return stack.wait_status(job_id, TERMINAL | {"paused"}, timeout=timeout)
    except TimeoutError:
        return stack.job_row(job_id)


# ---- the faults ---------------------------------------------------------------------------------------
def kill_worker(ctx: Context) -> list[Device]:
    """SIGKILL the worker holding the job; the other worker takes it after the lease expires (the
    killed one is started again only after the job has ended)."""
    worker = ctx.stack.worker_of(ctx.job_id)
    worker.kill()
    ctx.notes.append(f"{worker.name} killed at device step {ctx.device.last_step()}")
    return [ctx.device]


def restart_redis(ctx: Context, down_s: float = 2.0) -> list[Device]:
    """SIGKILL redis-server (a crash), keep it down ``down_s``, start it again on the same port and dir."""
    ctx.stack.redis.kill()
    killed = time.monotonic()
    ctx.notes.append(f"redis-server killed at device step {ctx.device.last_step()}")
    time.sleep(down_s)
    ctx.stack.redis.start()
    ctx.stack.wait_redis()
    ctx.notes.append(f"redis-server answering again {time.monotonic() - killed:.1f} s after the kill")
    return [ctx.device]


def restart_gateway(ctx: Context, down_s: float = 1.0) -> list[Device]:
    """SIGKILL the gateway with the device's requests in flight, start it again on the same port."""
    ctx.stack.gateway.kill()
    killed = time.monotonic()
    ctx.notes.append(f"gateway killed at device step {ctx.device.last_step()}")
    time.sleep(down_s)
    ctx.stack.gateway.start()
    ctx.stack.wait_gateway()
    ctx.notes.append(f"gateway answering again {time.monotonic() - killed:.1f} s after the kill")
    return [ctx.device]


def restart_postgres(ctx: Context) -> list[Device]:
    """``pg_ctlcluster <ver> main restart``: every connection of every process is cut."""
    started = time.monotonic()
    subprocess.run(["pg_ctlcluster", _pg_version(), "main", "restart"], check=True, timeout=120)
    ctx.notes.append(f"PostgreSQL restarted in {time.monotonic() - started:.1f} s")
    return [ctx.device]


def device_disappears(ctx: Context, gone_s: float = 3.0) -> list[Device]:
    """SIGKILL the device mid-training; ``gone_s`` later a new device process resumes the job."""
    ctx.device.proc.kill()
    ctx.notes.append(f"device killed after step {ctx.device.last_step()}")
    time.sleep(gone_s)
    spec = DeviceSpec(**{**asdict(ctx.device.spec), "resume_job": ctx.job_id})
    return [ctx.device, ctx.stack.start_device(spec)]


def full_disk(ctx: Context, full_for_steps: int = 10) -> list[Device]:
    """Fill the checkpoint tmpfs; free it ``full_for_steps`` steps later."""
    device = ctx.device
    filler = Path(ctx.stack.artifact_dir) / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    ctx.notes.append(f"disk filled at device step {device.last_step()}")
    try:
        device.wait_for_step(device.last_step() + full_for_steps, strict=False)
    finally:
        filler.unlink()
    ctx.notes.append(f"disk freed at device step {device.last_step()}")
    return [device]


def _pg_version() -> str:
    versions = sorted(os.listdir("/etc/postgresql"), key=lambda v: float(v)) if os.path.isdir("/etc/postgresql") else []
    return versions[-1] if versions else ""


def _pg_restart_possible() -> str | None:
    if os.geteuid() != 0:
        return "restarting PostgreSQL needs root (pg_ctlcluster)"
    if shutil.which("pg_ctlcluster") is None or not _pg_version():
        return "no pg_ctlcluster / local cluster on this machine"
    return None


def _tmpfs_possible() -> str | None:
    if os.geteuid() != 0:
        return "mounting a small tmpfs for the full-disk drill needs root"
    return None


DRILLS = {
    "a": Drill("a", "SIGKILL the job's worker mid-job", kill_worker),
    "b": Drill("b", "restart Redis mid-job (no persistence)", restart_redis),
    "b+aof": Drill("b+aof", "restart Redis mid-job (AOF, fsync always)", restart_redis, {"redis_persistence": True}),
    "c": Drill("c", "restart the gateway mid-job", restart_gateway),
    # a stack of its own (explicitly PostgreSQL), so it runs last: other sessions share the cluster
    "d": Drill("d", "restart PostgreSQL mid-job", restart_postgres, {"database": "postgres"}, _pg_restart_possible),
    "e": Drill("e", "the device disappears and comes back (resume)", device_disappears),
    "f": Drill("f", "checkpoint disk full for 10 steps, then freed", full_disk, {"tmpfs": "48m"}, _tmpfs_possible),
}


# ---- the runner ---------------------------------------------------------------------------------------
class DrillRunner:
    """Runs drills on stacks grouped by configuration, with one undisturbed baseline job first."""

    def __init__(self, root: Path, spec: DeviceSpec, fault_step: int, timeout: float, log=print):
        self.root, self.spec, self.fault_step, self.timeout, self.log = root, spec, fault_step, timeout, log
        self.baseline: float | None = None

    def run(self, keys: list[str]) -> list[Verdict]:
        missing = services_missing()
        if missing:
            return [Verdict(k, DRILLS[k].title, "skip", notes=[missing]) for k in keys]
        groups: dict[str, list[str]] = {"{}": []}  # the default stack first: the baseline runs there
        for key in keys:
            groups.setdefault(json.dumps(DRILLS[key].stack, sort_keys=True), []).append(key)
        verdicts = []
        for group, members in groups.items():
            if members or group == "{}":
                verdicts += self._run_group(json.loads(group), members)
        by_key = {v.drill: v for v in verdicts}
        return [by_key[k] for k in keys]

    def _run_group(self, options: dict[str, Any], keys: list[str]) -> list[Verdict]:
        out = []
        runnable = []
        for key in keys:
            reason = DRILLS[key].needs()
            if reason:
                out.append(Verdict(key, DRILLS[key].title, "skip", notes=[reason]))
            else:
                runnable.append(key)
        if not runnable and self.baseline is not None:
            return out
        root = Path(tempfile.mkdtemp(prefix="stack-", dir=self.root))
        mount = None
        kwargs = dict(options)
        if "tmpfs" in kwargs:
            mount = root / "artifacts"
            mount.mkdir()
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={kwargs.pop('tmpfs')}", "tmpfs", str(mount)], check=True
            )
            kwargs["artifact_dir"] = mount
        try:
            with Stack(root, **kwargs) as stack:
                # one job first, not measured: a fresh stack's first job also pays connection pools, caches
                # and lazy imports, which would show up as time lost (or gained) by whichever job comes first
                run_job(stack, self.spec, Drill("warm-up", "undisturbed", None), 0, self.timeout)
                if self.baseline is None:
                    base = run_job(stack, self.spec, Drill("baseline", "undisturbed", None), 0, self.timeout)
                    self.baseline = base.wall_s
                    self.log(f"baseline: {base.outcome}, {base.wall_s:.1f} s, failures {base.failures}")
                for key in runnable:
                    out.append(self._one(stack, key))
        finally:
            if mount is not None:
                subprocess.run(["umount", "-l", str(mount)], check=False)
        return out

    def _one(self, stack: Stack, key: str) -> Verdict:
        drill = DRILLS[key]
        started = time.monotonic()
        try:
            verdict = run_job(stack, self.spec, drill, self.fault_step, self.timeout)
        except Exception as exc:
            verdict = Verdict(key, drill.title, "fail", failures=[f"the drill did not complete: {exc!r}"[:600]])
            verdict.notes.append(stack.logs(1500))
        if verdict.wall_s is not None and self.baseline is not None:
            verdict.time_lost_s = round(verdict.wall_s - self.baseline, 2)
        self._heal(stack)
        self.log(
            f"{key}: {verdict.outcome} in {time.monotonic() - started:.0f} s; lost {verdict.time_lost_s} s, "
            f"rewinds {verdict.rewinds}, failures {verdict.failures}"
        )
        return verdict

    def _heal(self, stack: Stack) -> None:
        """Bring back what a drill left down, so the next drill starts from a whole stack."""
        for proc in stack.workers:
            if not proc.alive:
                proc.start()
                stack.wait_worker(proc)
        if not stack.redis.alive:
            stack.redis.start()
            stack.wait_redis()
        if not stack.gateway.alive:
            stack.gateway.start()
            stack.wait_gateway()


# ---- output -------------------------------------------------------------------------------------------
def table(verdicts: list[Verdict]) -> str:
    """A Markdown table of the verdicts."""
    head = "| drill | result | job | steps | rewinds (applied -> resumed) | updates / forwards redone | 409s | time lost (s) |"
    lines = [head, "|" + "---|" * 8]
    for v in verdicts:
        steps = f"{v.steps_completed}/{v.total_steps}" if v.total_steps else "-"
        rewinds = ", ".join(f"{a}->{b}" for a, b in v.rewinds) or "none"
        lost = "-" if v.time_lost_s is None else f"{v.time_lost_s:+.1f}"
        result = v.outcome if v.outcome != "skip" else f"skip: {'; '.join(v.notes)}"
        lines.append(
            f"| {v.drill}: {v.title} | {result} | {v.job_status or '-'} | {steps} | {rewinds} | "
            f"{v.updates_redone} / {v.forwards_redone} | {v.step_409s} | {lost} |"
        )
    return "\n".join(lines)


def machine() -> str:
    return f"{platform.node()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.drills", description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help=f"the CI form: drills {', '.join(SHORT)}")
    parser.add_argument("--only", default=None, help=f"comma-separated drills of {', '.join(LONG)}")
    parser.add_argument("--json", default=None, help="write the verdicts to this file")
    parser.add_argument("--examples", type=int, default=160, help="toy rows of the job (10%% held out)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the job (steps = rows*0.9/8 x epochs)")
    parser.add_argument("--fault-step", type=int, default=14, help="the fault comes once the device passed this step")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds one job may take")
    parser.add_argument("--keep", action="store_true", help="keep the stacks' directories (logs) and print where")
    args = parser.parse_args(argv)
    stop_on_signals()
    keys = args.only.split(",") if args.only else list(SHORT if args.short else LONG)
    unknown = [k for k in keys if k not in DRILLS]
    if unknown:
        parser.error(f"unknown drills {unknown}; choose from {list(DRILLS)}")
    spec = DeviceSpec(examples=args.examples, n_epochs=args.epochs)
    root = Path(tempfile.mkdtemp(prefix="privtune-drills-"))
    started = datetime.now(UTC)
    try:
        verdicts = DrillRunner(root, spec, args.fault_step, args.timeout).run(keys)
    finally:
        if args.keep:
            print(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\n{machine()}; {started:%Y-%m-%d %H:%M} UTC\n")
    print(table(verdicts))
    for v in verdicts:
        for failure in v.failures:
            print(f"- {v.drill}: {failure}")
        for note in v.notes:
            print(f"  ({v.drill}) {note[:400]}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(v) for v in verdicts], indent=1))
    return 1 if any(v.outcome == "fail" for v in verdicts) else 0


if __name__ == "__main__":
    raise SystemExit(main())
