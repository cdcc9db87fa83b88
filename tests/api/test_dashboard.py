"""The dashboard (``/dashboard``) in headless Chromium, driven by Playwright against a real gateway.

A gateway (uvicorn in a thread, ``create_app`` over a migrated SQLite database) serves a job inserted
through ``service.db.repo``: a running PrivTune job whose declared privacy carries a real accounting
record (``client_sdk.privacy.accounting.account``) and an on-device audit, 120 training-loss events
(two pages of the events list), 4 validation events and 2 checkpoints, plus 21 other jobs (two pages
of the jobs list) and another organization's job. The test pastes a wrong key (401 shown), then the
right one, pages the list, opens the job and checks what the page draws against what was inserted.

Skipped, with the reason, only when Playwright or Chromium is missing (``scripts/setup.sh`` installs
both). ``PRIVTUNE_DASHBOARD_SCREENSHOT=docs/dashboard.png`` also writes the screenshot for the docs.
"""

from __future__ import annotations

import math
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn

from api.main import create_app
from client_sdk.jobspec import DeclaredPrivacy, PrivtuneMethod
from client_sdk.privacy.accounting import account
from client_sdk.privacy.table import config_from_dict
from service.db import repo
from service.db.session import session_scope

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

CHROMIUM = os.environ.get("PRIVTUNE_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = os.environ.get("PRIVTUNE_DASHBOARD_SCREENSHOT")

needs_playwright = pytest.mark.skipif(
    sync_playwright is None, reason="playwright is not installed (the dev extra; scripts/setup.sh installs it)"
)
needs_chromium = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"no Chromium at {CHROMIUM} (Debian's chromium package; scripts/setup.sh installs it as root)",
)

XSS_NOTE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
XSS_SUFFIX = "<script>alert(1)</script>"
HTML_SINKS = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function")
TOTAL_STEPS, DONE_STEPS, LOG_EVERY, VALID_EVERY = 1500, 1200, 10, 300
AUDIT = {
    "target_asr": 0.05,
    "chosen_eta": 20.0,
    "measured_asr": 0.0312,
    "audited": [{"eta": 40.0, "max_asr": 0.1214}, {"eta": 20.0, "max_asr": 0.0312}, {"eta": 10.0, "max_asr": 0.0087}],
}


def train_loss(step: int) -> float:
    return round(0.45 + 0.25 * math.exp(-step / 300) + 0.02 * math.sin(step / 37), 4)


def privtune_method() -> dict[str, Any]:
    """``method`` of a classification job with the privtune mechanism, its record and its audit."""
    config = config_from_dict({"mechanism": "privtune", "eta": AUDIT["chosen_eta"]})
    state = SimpleNamespace(sensitivity=2.0, eps_local=0.3, sensitivity_mode="clip")
    accounting = account(
        config, state, views={"training": 2, "validation": 3, "inference": 0}, tokens_per_text=23.4, dim=384,
        scale_range=(0.05, 3.2), num_labels=2,
    )  # fmt: skip
    record = {
        "mechanism": "privtune",
        "state": {"sensitivity_mode": "clip", "dim": 384, "Delta": 2.0, "R": 1.0, "eps_local": 0.3},
        "guarantee": {"definition": "d_chi per token with importance-weighted scale", "eta": AUDIT["chosen_eta"]},
        "accounting": accounting,
    }
    privacy = DeclaredPrivacy.from_config(config, record=record, audit=AUDIT)
    spec = PrivtuneMethod(task="classification", num_labels=2, n_epochs=2, total_steps=TOTAL_STEPS, privacy=privacy)
    return {"type": "privtune", "privtune": spec.model_dump(mode="json")}


def seed(app: Any, artifacts: Path) -> dict[str, Any]:
    """Keys, 22 jobs of one organization (the last one running, with metrics and checkpoints), one of another."""
    method = privtune_method()
    with session_scope(app.state.session_factory) as s:
        key, org_id = repo.create_api_key(s, "acme")
        other_key, other_org = repo.create_api_key(s, "globex")
        foreign = repo.create_job(s, organization_id=other_org, model="minilm-l6", method=method,
                                  hyperparameters={}, seed=1, total_steps=10)  # fmt: skip
        for i in range(21):
            repo.create_job(s, organization_id=org_id, model="minilm-l6", method=method, hyperparameters={},
                            seed=i, total_steps=100, metadata={"sweep": str(i)})  # fmt: skip
        job = repo.create_job(
            s, organization_id=org_id, model="minilm-l6", method=method, hyperparameters={}, seed=7,
            total_steps=TOTAL_STEPS, metadata={"note": XSS_NOTE, "site": "ward-7"}, suffix=XSS_SUFFIX,
        )  # fmt: skip
        assert repo.claim_job(s, job["id"], "worker-1", 600) is not None
        repo.add_event(s, job["id"], "Worker worker-1 started the job")
        for step in range(LOG_EVERY, DONE_STEPS + 1, LOG_EVERY):
            data = {"step": step, "train_loss": train_loss(step), "grad_norm": 0.8, "total_steps": TOTAL_STEPS}
            repo.add_event(s, job["id"], f"Step {step}/{TOTAL_STEPS}: training loss", type="metrics", data=data)
            if step % VALID_EVERY == 0:
                valid = {"step": step, "valid_loss": train_loss(step) + 0.05, "valid_accuracy": 0.6 + step / 6000}
                repo.add_event(s, job["id"], f"Step {step}: validation", type="metrics", data=valid)
            if step in (1000, DONE_STEPS):
                repo.add_checkpoint(s, job["id"], step, {"train_loss": train_loss(step)}, str(artifacts / str(step)))
        assert repo.heartbeat(s, job["id"], "worker-1", 600, steps_completed=DONE_STEPS) == "running"
        events, _ = repo.list_events(s, job["id"], limit=1000)
    return {"key": key, "other_key": other_key, "job": job, "foreign": foreign, "events": events}


@pytest.fixture
def gateway(settings, tmp_path) -> Iterator[SimpleNamespace]:
    """A real gateway on a free port, serving the seeded database."""
    app = create_app(settings)
    data = seed(app, tmp_path / "artifacts")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.05)
    try:
        yield SimpleNamespace(app=app, url=f"http://127.0.0.1:{port}", **data)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def test_page_and_assets_are_public_and_locked_down(gateway) -> None:
    page = httpx.get(f"{gateway.url}/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert "http" not in page.text.replace(gateway.url, "")  # no CDN, no external font
    for asset in ("app.js", "api.js", "chart.js", "dom.js", "views.js", "privacy.js", "style.css"):
        r = httpx.get(f"{gateway.url}/dashboard/{asset}")
        assert r.status_code == 200, asset
        assert not HTML_SINKS.search(r.text), asset
    assert httpx.get(f"{gateway.url}/dashboard/../main.py").status_code == 404
    assert httpx.get(f"{gateway.url}/dashboard/index.html.bak").status_code == 404
    assert httpx.get(f"{gateway.url}/v1/fine_tuning/jobs").status_code == 401


def _path_points(d: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r"[ML]\s*(-?[\d.]+),(-?[\d.]+)", d)]


def _affine_fit_error(values: list[float], drawn: list[float]) -> float:
    """The largest distance of ``drawn`` from the affine map through the first and the extreme point."""
    i, j = 0, max(range(len(values)), key=lambda k: abs(values[k] - values[0]))
    slope = (drawn[j] - drawn[i]) / (values[j] - values[i])
    return max(abs(drawn[i] + slope * (v - values[i]) - d) for v, d in zip(values, drawn, strict=True))


@needs_playwright
@needs_chromium
def test_dashboard_in_chromium(gateway) -> None:
    job_id, key = gateway.job["id"], gateway.key
    dialogs: list[str] = []
    console: list[str] = []
    requests: list[tuple[str, str | None]] = []
    expect.set_options(timeout=20_000)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(20_000)
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("console", lambda m: console.append(m.text))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.on("request", lambda r: requests.append((r.url, r.headers.get("authorization"))))
            page.goto(f"{gateway.url}/dashboard")
            expect(page.locator("#view")).to_contain_text("Paste an API key")

            # a wrong key: the API's 401 is shown, not swallowed
            page.fill("#api-key", "sk-pt-not-a-real-key")
            page.click("button[type=submit]")
            alert = page.get_by_test_id("alert")
            expect(alert).to_be_visible()
            expect(alert).to_contain_text("401")
            expect(alert).to_contain_text("Incorrect API key provided.")

            # the right key: the list, two pages of it, without another organization's job
            page.fill("#api-key", key)
            page.click("button[type=submit]")
            rows = page.get_by_test_id("job-row")
            expect(rows).to_have_count(20)
            expect(alert).to_be_hidden()
            expect(rows.first).to_have_attribute("data-job-id", job_id)  # newest first
            expect(rows.first).to_contain_text("running")
            expect(rows.first).to_contain_text("1,200 / 1,500")
            page.get_by_test_id("load-more").click()
            expect(rows).to_have_count(22)
            expect(page.get_by_test_id("load-more")).to_be_hidden()
            expect(page.locator("#view")).not_to_contain_text(gateway.foreign["id"])
            assert page.evaluate("sessionStorage.getItem('privtune.apiKey')") == key
            assert page.evaluate("localStorage.length") == 0

            # the job
            rows.first.get_by_role("link").click()
            expect(page.get_by_test_id("job-title")).to_have_text(job_id)
            assert page.url.endswith(f"#/jobs/{job_id}")

            # loss curve: one point per training-loss event (events read over two pages), in step order
            metrics = [e for e in gateway.events if e["type"] == "metrics" and "train_loss" in e["data"]]
            assert len(metrics) == DONE_STEPS // LOG_EVERY > 100
            path = page.locator("[data-testid=loss-chart] path[data-series=train_loss]")
            points = _path_points(path.get_attribute("d"))
            assert len(points) == len(metrics)
            # each point is (step, loss) through one affine map per axis; SVG's y grows downwards
            steps = list(range(LOG_EVERY, DONE_STEPS + 1, LOG_EVERY))
            losses = [train_loss(step) for step in steps]
            assert _affine_fit_error(steps, [x for x, _ in points]) < 0.1
            assert _affine_fit_error(losses, [y for _, y in points]) < 0.1
            lo, hi = losses.index(min(losses)), losses.index(max(losses))
            assert points[lo][1] > points[hi][1] and points[-1][0] > points[0][0]
            n_valid = DONE_STEPS // VALID_EVERY
            expect(page.locator("[data-testid=loss-chart] circle[data-series=valid_loss]")).to_have_count(n_valid)
            expect(page.locator("[data-testid=loss-chart] rect[data-series=valid_accuracy]")).to_have_count(n_valid)

            # privacy: the mechanism, the audit's measured ASR, the accounting's own notes
            expect(page.get_by_test_id("mechanism")).to_have_text("privtune")
            expect(page.get_by_test_id("figure-mechanism")).to_contain_text("privtune")
            expect(page.get_by_test_id("audit-asr")).to_have_text("3.1%")
            expect(page.get_by_test_id("figure-asr")).to_contain_text("3.1%")
            expect(page.get_by_test_id("figure-eta")).to_contain_text("20")
            expect(page.get_by_test_id("audit-table").locator("tbody tr")).to_have_count(len(AUDIT["audited"]))
            accounting = gateway.job["method"]["privtune"]["privacy"]["record"]["accounting"]
            notes = page.get_by_test_id("accounting-notes").locator("li")
            expect(notes).to_have_count(len(accounting["notes"]))
            expect(notes.first).to_have_text(accounting["notes"][0])
            expect(page.get_by_test_id("accounting")).to_contain_text(accounting["composition"])

            # events (every one, newest first) and checkpoints
            events = page.get_by_test_id("event-row")
            expect(events).to_have_count(len(gateway.events))
            expect(events.first).to_contain_text(gateway.events[0]["message"])
            expect(events.last).to_contain_text("Job created")
            ckpts = page.get_by_test_id("checkpoints-table").locator("tbody tr")
            expect(ckpts).to_have_count(2)
            expect(ckpts.first).to_contain_text(f"ckpt-step-{DONE_STEPS}")

            # server strings are text: the markup in the metadata and the suffix is shown, never run
            expect(page.get_by_test_id("metadata")).to_contain_text(XSS_NOTE)
            expect(ckpts.first).to_contain_text(XSS_SUFFIX)
            assert page.locator("#view script, #view img").count() == 0
            assert page.evaluate("window.__pwned") is None
            assert dialogs == []

            if SCREENSHOT:
                page.screenshot(path=SCREENSHOT, full_page=True)

            # pause, then cancel (with its confirmation); the page and the database agree
            page.get_by_test_id("pause").click()
            expect(page.locator(".view-head [data-field=status]")).to_have_text("paused")
            page.get_by_test_id("cancel").click()
            page.get_by_test_id("confirm-cancel").click()
            expect(page.locator(".view-head [data-field=status]")).to_have_text("cancelled")
            expect(page.get_by_test_id("cancel")).to_have_count(0)
            with session_scope(gateway.app.state.session_factory) as s:
                assert repo.get_job(s, job_id)["status"] == "cancelled"
            expect(page.get_by_test_id("event-row").first).to_contain_text("Job cancelled")

            # an unknown job: the 404 is shown
            page.goto(f"{gateway.url}/dashboard#/jobs/ftjob-doesnotexist")
            expect(alert).to_contain_text("404")
            expect(alert).to_contain_text("ftjob-doesnotexist")
        finally:
            browser.close()

    assert not [m for m in console if "Content Security Policy" in m or m.startswith("pageerror")], console
    api_calls = [(url, auth) for url, auth in requests if "/v1/" in url]
    assert api_calls and all(auth == f"Bearer {key}" or auth == "Bearer sk-pt-not-a-real-key" for _, auth in api_calls)
    assert not [url for url, _ in requests if key in url or "sk-pt" in url]
