"""Process settings for the service, read once from ``VIDQ_``-prefixed environment variables.

Every setting has an embedded-mode default, so a newcomer's machine with no PostgreSQL, Redis or
object store runs the whole product on SQLite, an in-process broker and a local folder.

`Settings` extends the engine's settings (`spec.settings.EngineSettings`: data and models folders,
device, attention, compile, offload, the GPU memory budget), so every `VIDQ_` variable is read by
one field with one default, and a worker passes its settings to the engine as they are.
"""

from __future__ import annotations

import ipaddress
import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from spec.settings import EngineSettings

DEFAULT_SECRET = "change-me"
TEARDOWN_THREADS = 4  # threads that end read requests' transactions (api.deps), apart from the route threads
DEV_DEFAULT_MODEL = "tiny-wan"  # random weights, written on first use: renders noise, fast, on any CPU
PRODUCTION_DEFAULT_MODEL = "wan2.1-t2v-1.3b"

# Standard Webhooks' schedule after the first, immediate attempt: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h
# (about 27.5 hours of waits; jittered exponential backoff that spans a day and more of receiver downtime).
DEFAULT_WEBHOOK_RETRY_SCHEDULE_S = [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]


class MissingSecretKey(ValueError):
    """The service was asked to start with the default secret where that is unsafe."""


def is_loopback(host: str) -> bool:
    """True for a listen address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(EngineSettings):
    """One typed object for every knob the API, the worker, the CLI and the engine share."""

    model_config = SettingsConfigDict(env_prefix="VIDQ_", extra="ignore", populate_by_name=True)

    environment: Literal["development", "production"] = "development"

    # Infrastructure. Empty means "embedded": SQLite, in-process broker, local folder.
    database_url: str = ""
    redis_url: str = ""
    s3_endpoint: str = ""
    s3_access_key: SecretStr = SecretStr("")
    s3_secret_key: SecretStr = SecretStr("")
    s3_bucket: str = "vidq"
    s3_region: str = "us-east-1"
    s3_public_endpoint: str = ""  # where clients reach the store, when it differs from the worker's view
    s3_timeout_s: float = Field(default=10.0, gt=0)  # connect and read timeout of each S3 request
    storage_retry_s: float = Field(default=30.0, ge=0)  # how long a write keeps retrying a store that is down
    secret_key: SecretStr = SecretStr(DEFAULT_SECRET)  # also signs admin sessions and CSRF tokens
    log_format: Literal["text", "json"] = "text"

    # HTTP edge of the API (see the README's "Security notes")
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (comma-separated addresses or CIDRs,
    # "*" for any). Empty: none, the client address is the TCP peer's (a header from anyone is ignored).
    trusted_proxies: str = ""
    max_request_body_mb: float = Field(default=16.0, gt=0)  # bigger bodies get 413 before they are read
    # Requests one API process accepts at once (running or waiting for a thread); more get 503 +
    # Retry-After at once instead of queueing until a timeout.
    api_max_concurrency: int = Field(default=128, ge=1)
    # Threads that run route functions in one API process (the rest of the requests wait their turn,
    # first come first served). A route spends most of its time holding the GIL, so a few threads keep
    # a core busy; many threads only fight over the GIL, which serves them in no particular order.
    api_threads: int = Field(default=8, ge=1, le=200)
    # Database connections one process may hold; unset = one per request it accepts at once
    # (api_max_concurrency: a request holds at most one, from its first query until its transaction
    # ends) plus the process's own background work (sweeper, relay), so no request ever waits for the
    # pool behind requests that wait for it. Opened lazily: a process holds what its peak needs.
    db_pool_size: int | None = Field(default=None, ge=1)
    # How long an API process keeps a key it authenticated (one key query per interval instead of one
    # per request); a revocation reaches the other API processes within it. 0: no cache.
    api_key_cache_s: float = Field(default=1.0, ge=0, le=60)
    max_streams_per_key: int = Field(default=8, ge=1)  # open event streams (SSE) per API key and process
    stream_max_lifetime_s: float = Field(default=900.0, gt=0)  # a stream ends after this; the client reconnects

    # Admin dashboard and metrics
    admin_session_ttl_s: int = Field(default=12 * 3600, ge=60)
    metrics_public: bool = False  # True: GET /metrics needs no admin key (a scraper on a private network)

    # Jobs
    # The model of a request that names none. Unset: the random-weight tiny-wan in development (the
    # demo, the tests), a real model in production (see _default_model_by_environment).
    default_model: str = ""
    max_attempts: int = Field(default=3, ge=1)
    # A render that failed for a transient reason (storage, database or broker down) is requeued after
    # retry_backoff_s * 2^(attempt - 1) seconds, at most retry_backoff_max_s.
    retry_backoff_s: float = Field(default=5.0, ge=0)
    retry_backoff_max_s: float = Field(default=300.0, ge=0)
    result_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    presign_expiry_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)

    # Dispatch and worker liveness
    visibility_timeout_s: int = Field(default=6 * 3600, ge=60)  # longer than the longest job
    sweep_interval_s: float = Field(default=5.0, gt=0)
    redispatch_after_s: float = Field(default=15.0, gt=0)
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    heartbeat_timeout_s: float = Field(default=60.0, gt=0)
    progress_write_interval_s: float = Field(default=1.0, ge=0)

    # Denoising checkpoints (engine.checkpoint): a worker saves the loop's state to object storage every
    # N steps or S seconds of denoising, whichever comes first (0 turns that trigger off; both 0: never),
    # so a job requeued after its worker died resumes there. A job shorter than the interval saves none.
    checkpoint_every_steps: int = Field(default=0, ge=0)
    checkpoint_every_s: float = Field(default=60.0, ge=0)
    sweeper_enabled: bool = True
    # How long a worker's writes (claim, progress, completion) ride out a database outage before the
    # attempt counts as failed by it.
    db_retry_s: float = Field(default=30.0, ge=0)

    # Worker
    worker_name: str = ""  # Celery node name; default vidq-<pid>@<host>
    worker_models: str = ""  # comma-separated registry names; empty = every installed model
    # GPUs one worker runs each job across (one process per GPU, this one is rank 0), and how.
    worker_gpus: int = Field(default=1, ge=1)
    # A render worker also consumes the webhooks queue (between renders). Off by default: one client's
    # slow receiver would delay every client's renders; run `vidq worker --queues webhooks` instead.
    worker_webhooks: bool = False
    # Port of the worker's own Prometheus endpoint (its renders, steps, stages, webhook attempts and
    # GPUs by UUID); unset = none. Several workers on one host need one port each.
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    worker_ulysses_degree: int | None = None
    worker_ring_degree: int | None = None
    worker_cfg_parallel: bool = False
    collective_timeout_s: float = Field(default=600.0, gt=0)
    # LoRA files a worker keeps on its disk (fetched from storage on first use); the converted
    # adapters in memory are bounded by the engine's VIDQ_LORA_CACHE_MB.
    lora_files_kept: int = Field(default=32, ge=1)

    # LoRA uploads (POST /v1/loras): the largest file accepted
    lora_max_upload_mb: int = Field(default=2048, ge=1)

    # Webhooks and live events
    # Comma-separated host:port entries exempt from the private-address check ("host:*": every port;
    # a bare host: its scheme's default port). Their answers' bodies are never recorded.
    webhook_allowed_hosts: str = ""
    webhook_timeout_s: float = Field(default=15.0, gt=0)  # the WHOLE attempt: connect, headers and body read
    # Attempts in flight at once for one client (API key) across a sender's threads: one client's slow
    # receivers cannot take every sender thread.
    webhook_client_concurrency: int = Field(default=4, ge=1)
    # Waits before each retry (JSON list or comma-separated seconds); its length is the number of retries.
    webhook_retry_schedule_s: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_RETRY_SCHEDULE_S)
    )
    webhook_disable_after_s: float = Field(default=5 * 24 * 3600, gt=0)  # an endpoint failing this long is disabled
    sse_heartbeat_s: float = Field(default=15.0, gt=0)

    @field_validator("webhook_retry_schedule_s", mode="before")
    @classmethod
    def _parse_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("webhook_retry_schedule_s")
    @classmethod
    def _non_negative_schedule(cls, value: list[float]) -> list[float]:
        if any(delay < 0 for delay in value):
            raise ValueError("retry delays must be >= 0 seconds")
        return value

    @model_validator(mode="after")
    def _refuse_default_secret_in_production(self) -> Settings:
        if self.environment == "production" and self.secret_key.get_secret_value() == DEFAULT_SECRET:
            raise ValueError(
                "VIDQ_SECRET_KEY is the default value and VIDQ_ENVIRONMENT is production: set VIDQ_SECRET_KEY "
                "to a long random string, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        return self

    @model_validator(mode="after")
    def _default_model_by_environment(self) -> Settings:
        if not self.default_model:
            self.default_model = PRODUCTION_DEFAULT_MODEL if self.environment == "production" else DEV_DEFAULT_MODEL
        return self

    def require_service_secret(self, *, host: str | None = None) -> None:
        """Refuse to serve with the built-in default ``VIDQ_SECRET_KEY`` (it signs admin sessions and
        CSRF tokens: anyone could forge an admin cookie), except in embedded mode on loopback, a
        newcomer's own machine. ``host`` is the listen address when known (None: not embedded)."""
        if self.secret_key.get_secret_value() != DEFAULT_SECRET:
            return
        if self.embedded and host is not None and is_loopback(host):
            return
        raise MissingSecretKey(
            "VIDQ_SECRET_KEY is not set: it signs admin sessions, and only embedded mode on loopback may run "
            "without one; set it to a long random string, e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )

    @property
    def embedded(self) -> bool:
        return not self.database_url

    @property
    def trusted_proxy_list(self) -> list[str]:
        return [p.strip() for p in self.trusted_proxies.split(",") if p.strip()]

    @property
    def max_request_body_bytes(self) -> int:
        return int(self.max_request_body_mb * 1024 * 1024)

    @property
    def resolved_db_pool_size(self) -> int:
        return self.db_pool_size or self.api_max_concurrency + 4

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'vidq.db'}"

    @property
    def broker_url(self) -> str:
        return self.redis_url or "memory://localhost/"

    @property
    def lora_files_dir(self) -> Path:
        return self.data_dir / "lora-files"

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"

    @property
    def webhook_allowed_host_set(self) -> frozenset[str]:
        from jobs.webhooks.targets import parse_allowed_hosts

        return parse_allowed_hosts(self.webhook_allowed_hosts)

    @property
    def worker_model_names(self) -> list[str]:
        return [m.strip() for m in self.worker_models.split(",") if m.strip()]


@lru_cache
def get_settings() -> Settings:
    return Settings()
