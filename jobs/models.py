"""SQLAlchemy models of the job domain. The schema itself is owned by Alembic (``migrations/``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from jobs.db import UTCDateTime, utcnow
from jobs.states import JobStatus


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    """A client credential. Only a SHA-256 of the key is stored; the key is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Signs webhooks sent to a job's own ``webhook_url``. Kept readable (signing needs it), created on
    # first use, shown at ``GET /v1/webhooks/default/secret``.
    webhook_secret: Mapped[str | None] = mapped_column(String(100), nullable=True)


class Job(Base):
    """One video generation request and everything the service learns while running it."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_owner_id_id", "owner_id", "id"),
        Index("ix_jobs_status_queue", "status", "queue"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))

    # What was asked for
    model: Mapped[str] = mapped_column(String(100))
    queue: Mapped[str] = mapped_column(String(100))
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    num_frames: Mapped[int] = mapped_column(Integer)
    fps: Mapped[int] = mapped_column(Integer)
    num_inference_steps: Mapped[int] = mapped_column(Integer)
    guidance_scale: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(BigInteger)
    num_gpus: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    webhook_url: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    webhook_events: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)  # None: all but progress

    # Where it is
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED.value)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    current_step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    stage: Mapped[str | None] = mapped_column(String(20), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    stage_timings: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The engine's memory plan for the render and the peak GPU memory of each stage.
    memory: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    eta_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)  # from measured step times
    # The denoising step the current attempt resumed after (a checkpoint of an earlier attempt), if any.
    resumed_from_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # LoRA adapters applied, as resolved at submission: [{"id", "name", "scale"}] (None: none).
    loras: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    # The sampler's flow shift for this job (None: the model's); an adapter may recommend one.
    flow_shift: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Fast modes asked for (engine.acceleration options, resolved; None: lossless) and what the
    # render did: {"steps_computed", "steps_skipped", "skipped_steps", "precision", ...}.
    acceleration: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    acceleration_result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Image-to-video: the client's first frame, fitted to the job's size (jobs.inputs), in object storage.
    input_reference_key: Mapped[str | None] = mapped_column(String(500), nullable=True)

    # When
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # last publish
    # Back-off after a transient failure: the requeued job is not published again before this time.
    retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The sequence number of the job's latest `JobEvent` (0: none yet); bumped under the row lock.
    last_event_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    # Results in object storage
    video_key: Mapped[str | None] = mapped_column(String(500), nullable=True)
    thumbnail_key: Mapped[str | None] = mapped_column(String(500), nullable=True)

    owner: Mapped[ApiKey] = relationship()

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


class JobEvent(Base):
    """One state change of a job, appended by `jobs.lifecycle` in the transaction that made it.

    ``seq`` numbers a job's events 1, 2, ... (the SSE event ids); ``data`` is the public job right
    after the change. The relay (`jobs.relay`) fans each event out after commit (render message,
    webhook deliveries, live message) and stamps ``relayed_at`` in the transaction that wrote them.
    """

    __tablename__ = "job_events"
    __table_args__ = (
        UniqueConstraint("job_id", "seq", name="uq_job_events_job_id_seq"),
        Index("ix_job_events_unrelayed", "relayed_at", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(40))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    relayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class DispatchOutbox(Base):
    """A message to publish to the broker, written in the same transaction as the job change.

    A relay publishes rows with ``published_at`` unset; if the process dies between the commit and
    the publish, the row is still there and the next relay pass publishes it.
    """

    __tablename__ = "dispatch_outbox"
    __table_args__ = (Index("ix_dispatch_outbox_unpublished", "published_at", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    queue: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    publish_attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)

    job: Mapped[Job] = relationship()


class WebhookEndpoint(Base):
    """A URL that receives the events of all its owner's jobs, signed with its own secret.

    During a rotation the previous secret signs too (a second signature) until it expires, so a
    receiver can switch secrets without dropping a message.
    """

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_owner_id", "owner_id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)  # None: all but video.progress
    description: Mapped[str] = mapped_column(String(500), default="")
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100), nullable=True)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class WebhookDelivery(Base):
    """One event for one target: the webhook outbox row, written in the job's state-change transaction.

    ``id`` is the ``webhook-id`` header, stable across retries (the receiver's idempotency key).
    ``payload`` is the event body as first written; a relay publishes rows that are ``pending`` and
    due (``next_attempt_at`` reached) to the ``webhooks`` queue and stamps ``enqueued_at``.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_job_id", "job_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    endpoint_id: Mapped[str | None] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="SET NULL"), nullable=True
    )  # None: the job's own webhook_url (signed with the owner's default secret), or a deleted endpoint
    url: Mapped[str] = mapped_column(String(2000))
    event_type: Mapped[str] = mapped_column(String(40))
    payload: Mapped[str] = mapped_column(Text)
    # The state change this delivery announces (None for `video.progress`, which has no event row).
    event_id: Mapped[int | None] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), ForeignKey("job_events.id", ondelete="CASCADE"), nullable=True
    )
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)

    endpoint: Mapped[WebhookEndpoint | None] = relationship()
    attempt_log: Mapped[list[WebhookAttempt]] = relationship(
        order_by="WebhookAttempt.id", cascade="all, delete-orphan", passive_deletes=True
    )


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: what came back, how long it took, and when the next one is due."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery_id", "delivery_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latency_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response_snippet: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class JobAttempt(Base):
    """One run of a job on one worker: opened when a worker claims it, closed when the run ends
    (completed, failed, cancelled, or the worker was lost and the sweeper took the job back)."""

    __tablename__ = "job_attempts"
    __table_args__ = (Index("ix_job_attempts_job_id", "job_id", "attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    worker_id: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(20), nullable=True)  # None while it runs
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    trace: Mapped[str | None] = mapped_column(Text, nullable=True)


class RevokedSession(Base):
    """An admin session ended by logout before its cookie expired: the cookie's nonce, refused until
    ``expires_at`` (after which the cookie's own signature has expired and the row can go)."""

    __tablename__ = "revoked_sessions"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AuditEntry(Base):
    """Who did what to which target, and when: one row per admin action."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor_key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actor: Mapped[str] = mapped_column(String(200))  # the key's name and prefix, kept if the key goes
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Lora(Base):
    """A LoRA adapter file a client uploaded (in object storage at ``storage_key``), for one model.

    Visible to its owner; ``public`` ones (only an admin can publish) are visible to every client.
    ``recommended`` holds settings a job takes when its request leaves them out
    (``num_inference_steps``, ``guidance_scale``, ``flow_shift``).
    """

    __tablename__ = "loras"
    __table_args__ = (Index("ix_loras_owner_id_id", "owner_id", "id"), Index("ix_loras_public_id", "public", "id"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(100))
    format: Mapped[str] = mapped_column(String(20))
    rank: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(500))
    recommended: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    use_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    owner: Mapped[ApiKey] = relationship()


class QueueDepth(Base):
    """How many jobs of a queue are queued, kept by ``jobs.lifecycle`` (``jobs.depths``), so a new job's
    queue position costs one small read whatever the backlog. Split over ``jobs.depths.SHARDS`` rows
    per queue (a change goes to a random one) so concurrent submits rarely wait on the same row lock;
    the queue's depth is the sum of its rows. The sweeper rewrites them from an exact count now and then.
    """

    __tablename__ = "queue_depths"

    queue: Mapped[str] = mapped_column(String(100), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    queued: Mapped[int] = mapped_column(BigInteger, nullable=False)
