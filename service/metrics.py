"""The service's Prometheus metrics, defined once and imported where they are counted.

The gateway serves them at ``/metrics`` (``api/routes/metrics.py``): the counters and histograms
below, plus gauges read from the database and Redis at scrape time (jobs by status, queue depth,
worker heartbeat ages). Everything here is process-local and cheap to update; nothing blocks.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

#: step round trips through the gateway (relay submit to reply), seconds
STEP_SECONDS = Histogram(
    "privtune_step_seconds",
    "Latency of one step through the gateway, from the request body read to the worker's reply.",
    ["kind"],  # step | complete
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
#: bytes relayed between devices and workers
RELAY_BYTES = Counter("privtune_relay_bytes_total", "Bytes relayed on the step channel.", ["direction"])  # in | out
#: jobs the lease reaper re-queued after their worker stopped heartbeating
REAPED_JOBS = Counter("privtune_reaped_jobs_total", "Jobs re-queued because their worker's lease expired.")
#: jobs stuck in queued that the sweep sent to the GPU queue again
REQUEUED_JOBS = Counter("privtune_requeued_jobs_total", "Queued jobs sent to the GPU queue again by the sweep.")
#: requests refused with 429
RATE_LIMITED = Counter(
    "privtune_rate_limited_total", "Requests refused with 429.", ["reason"]
)  # requests | concurrency | active_jobs
#: every HTTP request the gateway answered
HTTP_REQUESTS = Counter("privtune_http_requests_total", "HTTP requests answered.", ["method", "route", "status"])
HTTP_SECONDS = Histogram(
    "privtune_http_request_seconds",
    "HTTP request latency (to the response start).",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
)
#: webhook delivery attempts by outcome
WEBHOOK_DELIVERIES = Counter(
    "privtune_webhook_deliveries_total", "Webhook delivery attempts.", ["outcome"]
)  # delivered | retry | failed
