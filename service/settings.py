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
