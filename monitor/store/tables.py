"""SQLModel tables: the whole history of models, eval set versions, runs and per-item results.

Schema changes go through Alembic (``monitor/store/migrations``); a test checks
that the migrations and these classes describe the same schema.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def aware(value: datetime) -> datetime:
    """A stored timestamp as timezone-aware UTC.

    SQLite returns naive datetimes even for timezone-aware columns; we only ever store UTC.
    PostgreSQL returns them in the session's time zone, which need not be UTC.
    """
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """A stored timestamp as a timezone-aware UTC datetime."""
    return None if value is None else aware(value)


RUN_STATUSES = ("running", "succeeded", "failed", "interrupted")


class ModelRecord(SQLModel, table=True):
    """A named model the monitor evaluates: a base plus an optional adapter, served by a backend."""

    __tablename__ = "models"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=200)
    kind: str = Field(max_length=40)
    base: str = Field(sa_column=Column(Text, nullable=False))
    adapter: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    fingerprint: str | None = Field(default=None, max_length=80)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class EvalSetVersionRecord(SQLModel, table=True):
    """One content version of an eval set; runs point at the exact version they used."""

    __tablename__ = "evalset_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_evalset_versions_name_version"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, max_length=200)
    version: str = Field(max_length=80)
    task: str = Field(max_length=40)
    path: str = Field(sa_column=Column(Text, nullable=False))
    item_count: int
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class RunRecord(SQLModel, table=True):
    """One evaluation of one model on one eval set version under one prompt strategy."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_model_evalset_started", "model_id", "evalset_name", "started_at"),
        Index("ix_runs_status", "status"),
        #: the latest-per-series reads (status, metrics): a year of history read in tens of ms
        Index("ix_runs_series", "model_id", "evalset_name", "strategy", "status", "id"),
        Index("ix_runs_started", "started_at", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="models.id")
    evalset_version_id: int = Field(foreign_key="evalset_versions.id")
    evalset_name: str = Field(max_length=200)
    job: str | None = Field(default=None, max_length=200)
    status: str = Field(max_length=20)
    trigger: str = Field(max_length=40)
    strategy: str = Field(max_length=40)
    fewshot_k: int = 0
    settings_digest: str = Field(max_length=40)
    settings: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    model_fingerprint: str | None = Field(default=None, max_length=80)
    #: The configured model version; a fingerprint change without a version change is a canary.
    model_version: str | None = Field(default=None, max_length=80)
    evalset_version: str = Field(max_length=80)
    started_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    #: When the scheduler meant the run to start (scheduled runs only): the schedule lag is measured from it.
    scheduled_for: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    finished_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    duration_s: float | None = None
    load_s: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    items_total: int = 0
    items_done: int = 0
    items_failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    backend_info: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: The job fire this run belongs to (None: a run made outside the daemon, or before fires were recorded).
    fire_id: int | None = Field(default=None, foreign_key="fires.id", index=True)
    #: When the current stretch of work began (the start, or the last resumption): the duration
    #: counts the time spent working, not the downtime between an interruption and its resumption.
    segment_started_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    #: When the run last stored a chunk: a run cut by a crash counts its work up to here.
    progress_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class ItemResultRecord(SQLModel, table=True):
    """How one item did in one run; unique per run and item, so a resumed run never stores it twice."""

    __tablename__ = "item_results"
    __table_args__ = (UniqueConstraint("run_id", "item_id", name="uq_item_results_run_item"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id", index=True)
    item_id: str = Field(max_length=200)
    prediction: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    target: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    correct: bool | None = None
    score: float | None = None
    scores: dict[str, float] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    loglikelihoods: list[float] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: What the item carries besides its scores (:func:`monitor.evals.results.item_details`): every
    #: sample, filtered outputs, per-metric errors, and the hashes of the exact prompt scored and the
    #: conversation sent (their text is in :class:`ItemTextRecord`, once per distinct text).
    details: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class ItemTextRecord(SQLModel, table=True):
    """A prompt or conversation an item was scored on, kept once by its hash: the same eval set under
    the same settings renders the same prompts every night, so runs share them."""

    __tablename__ = "item_texts"

    sha256: str = Field(primary_key=True, max_length=71)
    text: str = Field(sa_column=Column(Text, nullable=False))


class DaemonLease(SQLModel, table=True):
    """The single-instance guard: one row per database, held by the daemon that heartbeats it."""

    __tablename__ = "daemon_lease"

    name: str = Field(primary_key=True, max_length=40)
    holder: str = Field(max_length=300)
    host: str = Field(max_length=255)
    pid: int
    acquired_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    heartbeat_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    #: Grows by one at every take-over: the fencing token that every run write checks.
    epoch: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


FIRE_STATUSES = ("open", "done", "abandoned")


class FireRecord(SQLModel, table=True):
    """One fire of a job (scheduled, catch-up, run-now, release): the unit that a restart completes.

    A fire is recorded when it is taken, before any of its runs; ``key`` makes it
    exactly-once (a scheduled fire is ``job@time``, a run-now request
    ``job#request-N``).  ``planned`` lists the runs the fire makes
    (``model/evalset/strategy``), written when it starts; ``after_job_at`` is
    set when the after-job work (drift, recommendations) is done, and the fire
    is ``done`` then.  An open fire found at start is finished: its
    interrupted run resumed, its missing runs made, its after-job work done once.
    """

    __tablename__ = "fires"
    __table_args__ = (Index("ix_fires_status", "status"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=300, unique=True)
    job: str = Field(max_length=200, index=True)
    trigger: str = Field(max_length=40)
    scheduled_for: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    #: open, done, abandoned
    status: str = Field(max_length=20)
    planned: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    started_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    after_job_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    finished_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: ``monitor run JOB --slot``: who holds the fire (host:pid:token), until when, under which epoch.
    #: A claimant that died (its pid is gone, or its claim expired) is taken over with the next epoch.
    claimed_by: str | None = Field(default=None, max_length=300)
    claim_epoch: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    claim_expires_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class RunRequest(SQLModel, table=True):
    """A request to run a job now (``monitor run-now``), picked up by the running daemon."""

    __tablename__ = "run_requests"

    id: int | None = Field(default=None, primary_key=True)
    job: str = Field(max_length=200)
    requested_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    requested_by: str = Field(default="", max_length=300)
    picked_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))


class VerdictRecord(SQLModel, table=True):
    """A run's comparison with its baseline on one metric: the statistics and the resulting state."""

    __tablename__ = "verdicts"
    __table_args__ = (
        Index("ix_verdicts_series", "model_id", "evalset_name", "strategy", "metric", "run_id"),
        Index("ix_verdicts_series_newest", "model_id", "evalset_name", "strategy", "metric", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id", index=True)
    model_id: int = Field(foreign_key="models.id")
    evalset_name: str = Field(max_length=200)
    strategy: str = Field(max_length=40)
    metric: str = Field(max_length=80)
    baseline_run_id: int | None = None
    #: paired, unpaired or refused
    mode: str = Field(max_length=20)
    method: str | None = Field(default=None, max_length=80)
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    adjusted_p: float | None = None
    min_detectable: float | None = None
    tolerance: float = 0.0
    alpha: float = 0.05
    #: whether this run alone shows a significant drop beyond the tolerance
    significant_drop: bool = False
    consecutive: int = 0
    #: ok, suspect (dropping, not yet confirmed), regressed (confirmed), refused
    state: str = Field(max_length=20)
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class DriftRecord(SQLModel, table=True):
    """One drift analysis: behaviour drift against the baseline, an integrity canary, or input drift."""

    __tablename__ = "drift_analyses"
    __table_args__ = (Index("ix_drift_series", "model_id", "kind", "source", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="models.id")
    #: behaviour, canary, input, or estimate (label-free production accuracy)
    kind: str = Field(max_length=20)
    #: the eval set (behaviour, canary) or the production source (input)
    source: str = Field(max_length=200)
    run_id: int | None = Field(default=None, foreign_key="runs.id")
    score: float | None = None
    p_value: float | None = None
    threshold: float | None = None
    drifted: bool = False
    state: str = Field(max_length=20)
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class RecommendationRecord(SQLModel, table=True):
    """What to do with a fine-tune (keep, rollback, retrain, rebase, retire), why, and what each option costs."""

    __tablename__ = "recommendations"
    __table_args__ = (Index("ix_recommendations_model", "model_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="models.id")
    action: str = Field(max_length=20)
    previous_action: str | None = Field(default=None, max_length=20)
    changed: bool = False
    summary: str = Field(sa_column=Column(Text, nullable=False))
    reasons: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    evidence: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    costs: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class WebhookEvent(SQLModel, table=True):
    """The transactional outbox: an event, written in the same transaction as what caused it."""

    __tablename__ = "webhook_events"

    id: int | None = Field(default=None, primary_key=True)
    #: The ``webhook-id`` header: stable across retries, so receivers can drop duplicates.
    event_id: str = Field(max_length=64, unique=True, index=True)
    type: str = Field(max_length=80)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class WebhookDelivery(SQLModel, table=True):
    """One event to one endpoint: pending until delivered, or dead after the give-up time."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "endpoint", name="uq_webhook_deliveries_event_endpoint"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    event_id: int = Field(foreign_key="webhook_events.id", index=True)
    endpoint: str = Field(max_length=200)
    #: pending, delivered, dead (gave up: the dead letter) or disabled (the endpoint answered 410)
    status: str = Field(max_length=20)
    attempts: int = 0
    next_attempt_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    delivered_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class WebhookEndpointState(SQLModel, table=True):
    """An endpoint the monitor stopped sending to (it answered 410 Gone)."""

    __tablename__ = "webhook_endpoints"

    name: str = Field(primary_key=True, max_length=200)
    disabled_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class ReleaseRecord(SQLModel, table=True):
    """A base-model release: registered in the configuration or found by a release watcher.

    A discovered release becomes a model the daemon can evaluate (its name is a
    ``models:`` name) and triggers the challenger evaluation of every fine-tune
    of its family, once; ``evaluated_at`` records when that evaluation finished
    (a release without it is evaluated again at the next start).
    """

    __tablename__ = "releases"

    id: int | None = Field(default=None, primary_key=True)
    family: str = Field(max_length=200, index=True)
    name: str = Field(max_length=200, unique=True)
    #: ``directory``, ``openai`` or ``hub``: the kind of watcher that found it.
    source: str = Field(max_length=40)
    #: A folder, a served model id or a hub repository: what the model entry loads.
    location: str = Field(sa_column=Column(Text, nullable=False))
    revision: str | None = Field(default=None, max_length=200)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    discovered_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    evaluated_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


#: The newest verdict of every (model, eval set, strategy, metric) and the newest finding of every
#: (model, kind, source), kept by triggers on ``verdicts`` and ``drift_analyses`` (migration 0012)
#: in the transaction of every write: the latest-per-series reads join these rows, not a
#: ``GROUP BY`` over the whole history.
LATEST_VERDICTS = Table(
    "latest_verdicts",
    SQLModel.metadata,
    Column("model_id", Integer, primary_key=True, autoincrement=False),
    Column("evalset_name", String(200), primary_key=True),
    Column("strategy", String(40), primary_key=True),
    Column("metric", String(80), primary_key=True),
    Column("verdict_id", Integer, nullable=False),
)
LATEST_FINDINGS = Table(
    "latest_findings",
    SQLModel.metadata,
    Column("model_id", Integer, primary_key=True, autoincrement=False),
    Column("kind", String(20), primary_key=True),
    Column("source", String(200), primary_key=True),
    Column("finding_id", Integer, nullable=False),
)


#: The run-duration buckets ``run_counters`` keeps (seconds; migration 0011 holds the same list).
RUN_DURATION_BOUNDS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)


def bucket_column(bound: float) -> str:
    """The ``run_counters`` column counting runs of at most ``bound`` seconds (``le_300``)."""
    return f"le_{bound:g}".replace(".", "_")


#: The runs' counters summed per (model, eval set, job, status), kept by triggers on ``runs``
#: (migration 0010) in the transaction of every insert, update and delete of a run: a scrape reads
#: these rows, not every run.  ``job`` is ``''`` for runs without one.
RUN_COUNTERS = Table(
    "run_counters",
    SQLModel.metadata,
    Column("model_id", Integer, primary_key=True, autoincrement=False),
    Column("evalset_name", String(200), primary_key=True),
    Column("job", String(200), primary_key=True),
    Column("status", String(20), primary_key=True),
    Column("runs", BigInteger, nullable=False),
    Column("items_done", BigInteger, nullable=False),
    Column("items_failed", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    # migration 0011: the duration histogram (runs with a duration; their sum; at most each bound)
    Column("timed_runs", BigInteger, nullable=False),
    Column("duration_s_total", Float, nullable=False),
    *(Column(bucket_column(bound), BigInteger, nullable=False) for bound in RUN_DURATION_BOUNDS),
    # and the newest of the group's runs: finished, with a load time, scheduled
    Column("last_finished_at", DateTime(timezone=True), nullable=True),
    Column("last_load_id", Integer, nullable=True),
    Column("last_scheduled_id", Integer, nullable=True),
)
