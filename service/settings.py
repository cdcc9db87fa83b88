"""Service settings: one pydantic-settings object per process, read from ``PRIVTUNE_*`` variables.

Nothing is built at import time: call :func:`get_settings` (cached) or construct :class:`Settings`
yourself (tests do, and pass it to ``api.main.create_app``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class Settings(BaseSettings):
    """Every knob of the gateway and the worker; ``PRIVTUNE_<NAME>`` overrides ``<name>``."""

    model_config = SettingsConfigDict(env_prefix="PRIVTUNE_", extra="ignore")

    data_dir: Path = Field(Path(".privtune"), description="Root of local state (SQLite file, uploads, artifacts).")
    database_url: str = Field("", description="SQLAlchemy URL; default: SQLite file privtune.sqlite3 under data_dir.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker/backend and the step channel.")
    artifact_dir: Path | None = Field(
        None, description="Bottom-model exports and checkpoints; default data_dir/artifacts."
    )
    file_dir: Path | None = Field(None, description="Uploaded files; default data_dir/files.")
    model_cache_dir: Path | None = Field(None, description="Where base models are cached; default data_dir/models.")

    max_step_bytes: int = Field(64 * MIB, gt=0, description="Largest step payload accepted (413 beyond).")
    max_file_bytes: int = Field(1024 * MIB, gt=0, description="Largest uploaded privatized training file.")
    request_body_limit: int = Field(1 * MIB, gt=0, description="Largest JSON (or other non-binary) request body.")
    max_batch_size: int = Field(256, gt=0, description="Upper bound of a job's batch_size.")
    max_tokens: int = Field(512, gt=0, description="Upper bound of a job's max_tokens (sequence length).")
    step_timeout_s: float = Field(120.0, gt=0, description="How long a step request waits for the worker.")
    threadpool_size: int = Field(
        200,
        gt=0,
        description="Worker threads for blocking calls; each waiting step holds one for up to step_timeout_s.",
    )

    lease_seconds: int = Field(60, gt=0, description="A worker's lease on a job; renewed by heartbeats.")
    heartbeat_seconds: int = Field(10, gt=0, description="How often a worker renews its lease.")
    checkpoint_every: int = Field(50, gt=0, description="Steps between checkpoints.")
    log_every_steps: int = Field(10, gt=0, description="Steps between the worker's metrics events.")
    device_idle_timeout_s: float = Field(
        900.0, gt=0, description="A running job with no step for this long is paused (with a checkpoint)."
    )
    job_visibility_timeout_s: int = Field(
        7 * 24 * 3600, gt=0, description="Redis visibility timeout; longer than any job (the DB lease rules)."
    )
    reaper_interval_s: float = Field(30.0, ge=0, description="Seconds between lease reaper runs; 0 disables it.")
    export_guard_ttl_s: int = Field(600, gt=0, description="How long one bottom-model export request is remembered.")

    # ---- limits before work (issue 11) -------------------------------------------------------------
    body_read_timeout_s: float = Field(
        30.0, gt=0, description="A request body that sends nothing for this long is refused (408)."
    )
    rate_limit_requests_per_minute: int = Field(
        6000, ge=0, description="Requests per API key per minute (token bucket in Redis; 0: no limit)."
    )
    max_concurrent_requests_per_key: int = Field(
        64, ge=0, description="Requests of one API key in flight at once (0: no limit)."
    )
    max_active_jobs_per_org: int = Field(
        32, ge=0, description="Queued + running jobs one organization may have; a create beyond is 429 (0: no cap)."
    )
    max_running_jobs_per_org: int = Field(
        4, ge=0, description="Jobs of one organization that workers train at once; more wait queued (0: no cap)."
    )
    first_step_timeout_s: float = Field(
        300.0, gt=0, description="A claimed job whose device sends no first step for this long is paused."
    )

    # ---- faults and durable state -------------------------------------------------------------------
    max_attempts: int = Field(5, gt=0, description="Claims of one job (worker crashes, re-queues) before it fails.")
    infra_retry_s: float = Field(
        60.0, gt=0, description="How long a worker retries a Redis or database error before it re-queues the job."
    )
    checkpoint_keep: int = Field(3, gt=0, description="Checkpoints kept per job (older ones are deleted).")
    queued_requeue_s: float = Field(
        120.0, gt=0, description="A job queued this long since its last enqueue is sent to the GPU queue again."
    )
    redis_key_ttl_s: int = Field(3600, gt=0, description="Expiry of every per-job and per-request Redis key.")
    drain_timeout_s: float = Field(30.0, gt=0, description="On SIGTERM a worker checkpoints and releases within this.")
    idempotency_ttl_s: int = Field(24 * 3600, gt=0, description="How long an Idempotency-Key's response is kept.")
    retention_days: float = Field(
        0.0, ge=0, description="Artifacts of jobs finished longer ago are deleted, with the job's model (0: kept)."
    )
    sweep_interval_s: float = Field(
        60.0, ge=0, description="Seconds between the gateway's sweeps (queued jobs, retention, idempotency; 0: off)."
    )

    # ---- observability ------------------------------------------------------------------------------
    log_format: str = Field("json", pattern="^(json|text)$", description="Log lines: one JSON object, or text.")
    webhook_timeout_s: float = Field(10.0, gt=0, description="How long one webhook delivery waits for its endpoint.")
    webhook_max_attempts: int = Field(8, gt=0, description="Delivery attempts (exponential backoff) before giving up.")
    webhook_interval_s: float = Field(2.0, ge=0, description="Seconds between webhook dispatcher passes (0: off).")
    webhook_allow_private_networks: bool = Field(
        False,
        description="Deliver webhooks to loopback, private and link-local addresses (off: a tenant's URL cannot "
        "reach the provider's internal services).",
    )

    torch_threads: int | None = Field(
        None,
        gt=0,
        description="torch intra-op threads of a worker process (None: torch's default, one per core).",
    )

    inference_max_adapters: int = Field(8, gt=0, description="Fine-tuned adapters an inference worker keeps loaded.")
    inference_max_sessions: int = Field(64, gt=0, description="Open inference sessions per inference worker.")
    inference_idle_timeout_s: float = Field(
        300.0, gt=0, description="An inference session unused for this long expires (the SDK reopens it)."
    )
    inference_timeout_s: float = Field(30.0, gt=0, description="How long one inference request waits for its worker.")
    inference_max_context: int = Field(2048, gt=0, description="Longest sequence (prompt + generated) of a session.")

    @model_validator(mode="after")
    def _fill_paths(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'privtune.sqlite3').as_posix()}"
        if self.artifact_dir is None:
            self.artifact_dir = self.data_dir / "artifacts"
        if self.file_dir is None:
            self.file_dir = self.data_dir / "files"
        if self.model_cache_dir is None:
            self.model_cache_dir = self.data_dir / "models"
        return self

    @property
    def bottoms_dir(self) -> Path:
        """Directory of exported bottom models: ``bottoms/<model>/l<split_layer>/``."""
        assert self.artifact_dir is not None
        return self.artifact_dir / "bottoms"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built from the environment on first call."""
    return Settings()
