"""Load through the real service: N concurrent device processes train tiny-BERT jobs against the workers
while reader threads hammer the API.

    python -m benchmarks.load --clients 8 --workers 2 --readers 4 [--json out.json] [--out docs/benchmarks-load.md]

One stack (``benchmarks.stack``: PostgreSQL, its own redis-server, the gateway under uvicorn, ``--workers``
GPU-queue worker processes). First one job alone, nothing else running: its step latency is the
unloaded reference. Then ``--clients`` device processes start at once (``FineTuneJob.create``; each
job ``--examples`` rows x ``--epochs``) while ``--readers`` threads loop over list jobs, retrieve a
job and list its events, each on its own connection, with the organization's second API key.

Measured from the devices' request logs (one record per HTTP attempt, below the SDK's retries):
step latency (a step request's round trip through the gateway, Redis and the worker, answered 200),
queue wait (a job's creation to its first request to the step endpoint: with W workers, jobs beyond
W wait queued), throughput (steps applied by all jobs / first creation to last completion), and from the
readers: API read latency. 429 answers and every ``x-ratelimit-*`` header seen are counted for both.
Everything runs on this one machine: devices, readers and workers share its cores.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.drills import machine
from benchmarks.stack import TERMINAL, Device, DeviceSpec, Stack, services_missing, stop_on_signals

#: The service's own defaults, except leases and sweeps short enough for a run of a few minutes.
LOAD_SETTINGS = {
    "PRIVTUNE_LOG_EVERY_STEPS": "10",
    "PRIVTUNE_CHECKPOINT_EVERY": "20",
    "PRIVTUNE_LEASE_SECONDS": "30",
    "PRIVTUNE_HEARTBEAT_SECONDS": "5",
    "PRIVTUNE_REAPER_INTERVAL_S": "5",
    "PRIVTUNE_QUEUED_REQUEUE_S": "120",
    "PRIVTUNE_FIRST_STEP_TIMEOUT_S": "600",
}


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Phase:
    """What one phase measured (seconds unless named otherwise)."""

    jobs: int = 0
    succeeded: int = 0
    steps: int = 0
    wall_s: float = 0.0  # the phase, device processes' start-up and preparation included
    first_create: float | None = None  # epoch seconds: the first job's creation answered
    last_complete: float | None = None  # the last completion answered
    step_latencies: list[float] = field(default_factory=list, repr=False)
    queue_waits: list[float] = field(default_factory=list)
    device_429s: int = 0
    device_errors: list[str] = field(default_factory=list)
    reads: int = 0
    read_latencies: list[float] = field(default_factory=list, repr=False)
    read_429s: int = 0
    read_errors: int = 0
    ratelimit_headers: dict[str, str] = field(default_factory=dict)  # one sample per header name
    ratelimit_remaining_min: int | None = None  # the lowest x-ratelimit-remaining-requests seen
    gateway: dict[str, float | None] = field(default_factory=dict)  # from /metrics, see step_histogram_quantiles
    retry_after: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("step_latencies", "read_latencies")}
        span = (self.last_complete - self.first_create) if self.first_create and self.last_complete else None
        out["training_span_s"] = span
        out["steps_per_s"] = self.steps / span if span else None
        for name, values in (("step", self.step_latencies), ("read", self.read_latencies)):
            out[f"{name}_p50_ms"] = _ms(percentile(values, 0.5))
            out[f"{name}_p99_ms"] = _ms(percentile(values, 0.99))
            out[f"{name}_n"] = len(values)
        out["queue_wait_max_s"] = max(self.queue_waits, default=None)
        return out


def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The gateway's ``/metrics`` samples: (name, sorted labels) -> value."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{stack.port}/metrics", timeout=30).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def step_histogram_quantiles(before: dict, after: dict) -> dict[str, float | None]:
    """p50 / p99 of ``privtune_step_seconds{kind="step"}`` between two scrapes, linearly interpolated
    inside its buckets (so an estimate, bounded by the bucket edges), and the 429s counted meanwhile."""
    buckets = []
    for (name, labels), value in after.items():
        label = dict(labels)
        if name == "privtune_step_seconds_bucket" and label.get("kind") == "step":
            edge = float("inf") if label["le"] == "+Inf" else float(label["le"])
            buckets.append((edge, value - before.get((name, labels), 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    out: dict[str, float | None] = {"gateway_steps": total}
    for q, key in ((0.5, "gateway_step_p50_ms"), (0.99, "gateway_step_p99_ms")):
        out[key] = _bucket_quantile(buckets, total, q)
    limited = [v - before.get(k, 0.0) for k, v in after.items() if k[0] == "privtune_rate_limited_total"]
    out["gateway_429s"] = sum(limited)
    return out


def _bucket_quantile(buckets: list[tuple[float, float]], total: float, q: float) -> float | None:
    if not total:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for edge, count in buckets:
        if count >= rank:
            if edge == float("inf"):
                return _ms(lower)
            inside = count - below
            return _ms(lower + (edge - lower) * ((rank - below) / inside if inside else 1.0))
        lower, below = edge, count
    return None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def absorb_device(phase: Phase, device: Device, final: dict[str, Any]) -> None:
    """Add one device's request log and final record to ``phase``."""
    records = device.records()
    created = [r["t1"] for r in records if r.get("job_id") and r.get("method") == "POST" and r.get("status")]
    first_step = [r["t0"] for r in records if r.get("kind") in ("step", "infer")]
    if created and first_step:
        phase.queue_waits.append(round(min(first_step) - min(created), 2))
    done = [r["t1"] for r in records if r.get("final") and r.get("status") == 200]
    if created:
        phase.first_create = min(created + ([phase.first_create] if phase.first_create else []))
    if done:
        phase.last_complete = max(done + ([phase.last_complete] if phase.last_complete else []))
    for rec in records:
        if rec.get("kind") == "step" and not rec.get("final") and rec.get("status") == 200:
            phase.step_latencies.append(rec["t1"] - rec["t0"])
        if rec.get("status") == 429:
            phase.device_429s += 1
        _headers(phase, rec.get("ratelimit") or {})
    phase.jobs += 1
    if final.get("event") == "done" and final.get("status") == "succeeded":
        phase.succeeded += 1
        phase.steps += int(final.get("steps_completed") or 0)
    else:
        phase.device_errors.append(f"{final.get('type', final.get('status'))}: {str(final.get('message', ''))[:200]}")


def _headers(phase: Phase, headers: dict[str, str]) -> None:
    for name, value in headers.items():
        phase.ratelimit_headers.setdefault(name, value)
    remaining = headers.get("x-ratelimit-remaining-requests")
    if remaining is not None and remaining.isdigit():
        low = phase.ratelimit_remaining_min
        phase.ratelimit_remaining_min = int(remaining) if low is None else min(low, int(remaining))


class Readers:
    """``n`` threads reading the API as fast as it answers: list jobs, retrieve one, list its events."""

    def __init__(self, base_url: str, api_key: str, n: int):
        self.base_url, self.api_key, self.n = base_url, api_key, n
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.records: list[tuple[float, int | None, dict[str, str]]] = []
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(n)]

    def __enter__(self) -> Readers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _loop(self, seed: int) -> None:
        import httpx

        rng = random.Random(seed)
        headers = {"Authorization": f"Bearer {self.api_key}"}
        job_ids: list[str] = []
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=30) as http:
            while not self.stop.is_set():
                paths = ["/fine_tuning/jobs?limit=20"]
                if job_ids:
                    job = rng.choice(job_ids)
                    paths += [f"/fine_tuning/jobs/{job}", f"/fine_tuning/jobs/{job}/events?limit=20"]
                for path in paths:
                    started = time.perf_counter()
                    try:
                        response = http.get(path)
                    except httpx.HTTPError:
                        self._add(time.perf_counter() - started, None, {})
                        continue
                    seconds = time.perf_counter() - started
                    kept = {
                        k: v for k, v in response.headers.items() if k.startswith("x-ratelimit") or k == "retry-after"
                    }
                    self._add(seconds, response.status_code, kept)
                    if path.startswith("/fine_tuning/jobs?") and response.status_code == 200:
                        job_ids = [j["id"] for j in response.json()["data"]] or job_ids

    def _add(self, seconds: float, status: int | None, headers: dict[str, str]) -> None:
        with self.lock:
            self.records.append((seconds, status, headers))

    def absorb(self, phase: Phase) -> None:
        for seconds, status, headers in self.records:
            phase.reads += 1
            if status == 200:
                phase.read_latencies.append(seconds)
            elif status == 429:
                phase.read_429s += 1
                if "retry-after" in headers and len(phase.retry_after) < 5:
                    phase.retry_after.append(headers["retry-after"])
            else:
                phase.read_errors += 1
            _headers(phase, {k: v for k, v in headers.items() if k != "retry-after"})


def run_phase(stack: Stack, spec: DeviceSpec, clients: int, readers: int, timeout: float) -> Phase:
    """``clients`` devices at once (and ``readers`` reader threads while they train)."""
    phase = Phase()
    reader_key = stack.new_key("drills")  # the same organization, another key: readers see the jobs
    started = time.monotonic()
    before = scrape(stack)
    with Readers(stack.base_url, reader_key, readers) as pool:
        devices = [stack.start_device(spec, name=f"load-{clients}-{i}") for i in range(clients)]
        finals = [d.wait(timeout) for d in devices]
        phase.wall_s = time.monotonic() - started
    phase.gateway = step_histogram_quantiles(before, scrape(stack))
    for device, final in zip(devices, finals, strict=True):
        absorb_device(phase, device, final)
        if final.get("job_id") and (status := stack.job_row(final["job_id"])["status"]) not in TERMINAL:
            phase.device_errors.append(f"job {final['job_id']} left {status}")
    pool.absorb(phase)
    return phase


def report(unloaded: dict[str, Any], loaded: dict[str, Any], args: argparse.Namespace, started: datetime) -> str:
    """The Markdown section for docs/BENCHMARKS.md."""

    def ratio(key: str) -> str:
        a, b = loaded.get(key), unloaded.get(key)
        return f"{a / b:.2f}x" if a and b else "-"

    def cell(value: Any) -> str:
        return "-" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))

    rows = [
        (
            "jobs (succeeded)",
            f"{unloaded['jobs']} ({unloaded['succeeded']})",
            f"{loaded['jobs']} ({loaded['succeeded']})",
            "",
        ),
        ("steps applied", unloaded["steps"], loaded["steps"], ""),
        ("first create to last completion (s)", cell(unloaded["training_span_s"]), cell(loaded["training_span_s"]), ""),
        (
            "throughput (steps/s, all jobs)",
            cell(unloaded["steps_per_s"]),
            cell(loaded["steps_per_s"]),
            ratio("steps_per_s"),
        ),
        ("step latency p50 (ms)", cell(unloaded["step_p50_ms"]), cell(loaded["step_p50_ms"]), ratio("step_p50_ms")),
        ("step latency p99 (ms)", cell(unloaded["step_p99_ms"]), cell(loaded["step_p99_ms"]), ratio("step_p99_ms")),
        ("step requests measured", unloaded["step_n"], loaded["step_n"], ""),
        ("gateway-side step p50 / p99 (ms, /metrics buckets)", _gw(unloaded), _gw(loaded), ""),
        ("create to first step: queue wait + worker setup (s)", _waits(unloaded), _waits(loaded), ""),
        (
            "API reads (p50 / p99 ms)",
            "-",
            f"{loaded['reads']} ({cell(loaded['read_p50_ms'])} / {cell(loaded['read_p99_ms'])})",
            "",
        ),
        ("429s (devices / readers)", unloaded["device_429s"], f"{loaded['device_429s']} / {loaded['read_429s']}", ""),
        ("429s counted by the gateway", _g429(unloaded), _g429(loaded), ""),
        (
            "lowest x-ratelimit-remaining-requests",
            cell(unloaded["ratelimit_remaining_min"]),
            cell(loaded["ratelimit_remaining_min"]),
            "",
        ),
        ("other read failures", "-", loaded["read_errors"], ""),
    ]
    target = loaded.get("step_p99_ms") and unloaded.get("step_p99_ms")
    verdict = (
        f"step p99 is {loaded['step_p99_ms'] / unloaded['step_p99_ms']:.2f}x its unloaded value "
        f"({'within' if loaded['step_p99_ms'] < 2 * unloaded['step_p99_ms'] else 'above'} the 2x target)"
        if target
        else "step p99 could not be measured"
    )
    headers = loaded["ratelimit_headers"]
    limits = ", ".join(f"`{k}: {v}`" for k, v in sorted(headers.items())) or "none (no `x-ratelimit-*` header was sent)"
    lines = [
        "## Load: concurrent devices and API readers (issue 11)",
        "",
        f"Machine: {machine()}. Date: {started:%Y-%m-%d %H:%M} UTC. Command: `python -m benchmarks.load "
        f"--clients {args.clients} --workers {args.workers} --readers {args.readers} --examples {args.examples} "
        f"--epochs {args.epochs} --unloaded-factor {args.unloaded_factor}"
        + (f" --rate-limit {args.rate_limit}" if args.rate_limit is not None else "")
        + "`.",
        "",
        f"One stack of processes (PostgreSQL, its own redis-server, the gateway, {args.workers} GPU-queue workers "
        f"on CPU); each job trains tiny-BERT ({args.examples} toy rows, {args.epochs} epochs of batch 8) from its "
        "own device process through the SDK. The unloaded column is one job alone (nothing else running; "
        f"{args.unloaded_factor}x the epochs, for more latency samples); the loaded column is "
        f"{args.clients} devices started at once while {args.readers} reader threads loop over list / retrieve / "
        "events with a second key of the same organization. Latencies are per HTTP attempt, from the devices' "
        "request logs; queue wait is a job's creation to its first step request. Devices, readers, workers and "
        "the gateway share this machine's cores, so the loaded figures include the devices' own CPU work.",
        "",
        "| | unloaded (1 job) | loaded | ratio |",
        "|---|---|---|---|",
        *[f"| {name} | {a} | {b} | {r} |" for name, a, b, r in rows],
        "",
        f"Result: {verdict}. Rate-limit headers seen: {limits}.",
    ]
    if loaded["retry_after"]:
        lines.append(f"Retry-After values on 429: {', '.join(loaded['retry_after'])}.")
    errors = unloaded["device_errors"] + loaded["device_errors"]
    if errors:
        lines += ["", "Devices that did not finish:", *[f"- {e}" for e in errors]]
    return "\n".join(lines) + "\n"


def _gw(phase: dict[str, Any]) -> str:
    gateway = phase["gateway"]
    return f"{gateway.get('gateway_step_p50_ms')} / {gateway.get('gateway_step_p99_ms')}"


def _g429(phase: dict[str, Any]) -> str:
    return str(int(phase["gateway"].get("gateway_429s") or 0))


def _waits(phase: dict[str, Any]) -> str:
    waits = sorted(phase["queue_waits"])
    if not waits:
        return "-"
    return f"median {statistics.median(waits):.1f}, max {waits[-1]:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent device processes (one job each)")
    parser.add_argument("--workers", type=int, default=2, help="GPU-queue worker processes")
    parser.add_argument("--readers", type=int, default=4, help="API reader threads during the loaded phase")
    parser.add_argument("--examples", type=int, default=160, help="toy rows per job (10%% held out)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per job")
    parser.add_argument(
        "--unloaded-factor", type=int, default=4, help="the unloaded job trains this many times the epochs (samples)"
    )
    parser.add_argument("--database", default="postgres", choices=("postgres", "sqlite"), help="the service's database")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one device may take")
    parser.add_argument(
        "--rate-limit",
        type=int,
        default=None,
        help="PRIVTUNE_RATE_LIMIT_REQUESTS_PER_MINUTE per key for this stack (None: the service's default)",
    )
    parser.add_argument("--json", default=None, help="write both phases' figures to this file")
    parser.add_argument("--out", default=None, help="write the Markdown section to this file")
    args = parser.parse_args(argv)
    stop_on_signals()
    missing = services_missing()
    if missing:
        print(f"cannot run: {missing}")
        return 2
    spec = DeviceSpec(examples=args.examples, n_epochs=args.epochs)
    settings = dict(LOAD_SETTINGS)
    if args.rate_limit is not None:
        settings["PRIVTUNE_RATE_LIMIT_REQUESTS_PER_MINUTE"] = str(args.rate_limit)
    started = datetime.now(UTC)
    with (
        tempfile.TemporaryDirectory(prefix="privtune-load-") as tmp,
        Stack(Path(tmp), database=args.database, workers=args.workers, settings=settings) as stack,
    ):
        warm = stack.start_device(spec, name="warm-up")  # bottom export, model caches: not measured
        warm.wait(args.timeout)
        alone = DeviceSpec(examples=args.examples, n_epochs=args.epochs * args.unloaded_factor)
        unloaded = run_phase(stack, alone, 1, 0, args.timeout).summary()
        print(f"unloaded: {json.dumps(unloaded)}", flush=True)
        loaded = run_phase(stack, spec, args.clients, args.readers, args.timeout).summary()
        print(f"loaded: {json.dumps(loaded)}", flush=True)
    text = report(unloaded, loaded, args, started)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"unloaded": unloaded, "loaded": loaded, "args": vars(args)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
