"""The store: one SQLAlchemy database (SQLite by default, PostgreSQL through the same URL).

Opening a store migrates it to the newest schema with Alembic.  SQLite runs in
WAL mode with a busy timeout, so the CLI can read while a daemon writes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, event, func, inspect, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, create_engine

from monitor.errors import NotFoundError, StoreError
from monitor.evals.results import ItemResult
from monitor.store.tables import (
    DaemonLease,
    EvalSetVersionRecord,
    ItemResultRecord,
    ModelRecord,
    ReleaseRecord,
    RunRecord,
    RunRequest,
    utcnow,
)

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys."""
    try:
        if url.startswith("sqlite"):
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        return create_engine(url, pool_pre_ping=True)
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        raise StoreError(f"database URL {redact_url(url)!r} is not usable: {exc}") from exc


def redact_url(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with Alembic."""
    from alembic import command
    from alembic.util import CommandError

    cfg = alembic_config(engine)
    try:
        with engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)
    except SQLAlchemyError as exc:
        raise StoreError(
            f"cannot migrate {redact_url(str(engine.url))}: {exc.__class__.__name__}: {exc}"
        ) from exc
    except CommandError as exc:
        # Typically a database written by a newer monitor: its revision is unknown to this one.
        raise StoreError(
            f"cannot migrate {redact_url(str(engine.url))}: {exc} "
            "(was it created by a newer version of the monitor?)"
        ) from exc


class Store:
    """Reads and writes the monitor's history."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str, *, migrate_schema: bool = True) -> Store:
        """Connect to ``url`` and migrate it to the newest schema."""
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot connect to {redact_url(url)}: {exc.__class__.__name__}: {exc}") from exc
        if migrate_schema:
            migrate(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except SQLAlchemyError as exc:
                session.rollback()
                raise StoreError(f"database error: {exc.__class__.__name__}: {exc}") from exc
            except BaseException:
                session.rollback()
                raise

    def ping(self) -> bool:
        """Whether the database answers."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except SQLAlchemyError:
            return False

    def schema_tables(self) -> set[str]:
        return set(inspect(self.engine).get_table_names())

    # --- models and eval set versions --------------------------------------------------------------

    def upsert_model(
        self, name: str, *, kind: str, base: str, adapter: str | None, fingerprint: str | None = None
    ) -> ModelRecord:
        """Create or update the model called ``name``; a known fingerprint is kept when none is given."""
        now = utcnow()
        with self.session() as s:
            record = s.exec(select(ModelRecord).where(ModelRecord.name == name)).scalar_one_or_none()  # type: ignore[call-overload]
            if record is None:
                record = ModelRecord(
                    name=name,
                    kind=kind,
                    base=base,
                    adapter=adapter,
                    fingerprint=fingerprint,
                    created_at=now,
                    updated_at=now,
                )
            else:
                record.kind, record.base, record.adapter = kind, base, adapter
                if fingerprint is not None:
                    record.fingerprint = fingerprint
                record.updated_at = now
            s.add(record)
            s.flush()
            s.refresh(record)
            return record

    def get_model(self, name: str) -> ModelRecord:
        with self.session() as s:
            record = s.exec(select(ModelRecord).where(ModelRecord.name == name)).scalar_one_or_none()  # type: ignore[call-overload]
        if record is None:
            raise NotFoundError(f"no model named {name!r} in the store")
        return record

    def model_name(self, model_id: int) -> str:
        """The name of the model with ``model_id``."""
        with self.session() as s:
            record = s.get(ModelRecord, model_id)
        if record is None:
            raise NotFoundError(f"no model with id {model_id}")
        return record.name

    def ensure_evalset_version(
        self, name: str, version: str, *, task: str, path: str, item_count: int
    ) -> EvalSetVersionRecord:
        """The row for this exact eval set version, created on first use."""
        with self.session() as s:
            query = select(EvalSetVersionRecord).where(
                EvalSetVersionRecord.name == name, EvalSetVersionRecord.version == version
            )
            record = s.exec(query).scalar_one_or_none()  # type: ignore[call-overload]
            if record is None:
                record = EvalSetVersionRecord(
                    name=name,
                    version=version,
                    task=task,
                    path=path,
                    item_count=item_count,
                    created_at=utcnow(),
                )
                s.add(record)
                s.flush()
                s.refresh(record)
            return record

    # --- runs ----------------------------------------------------------------------------------------

    def start_run(
        self,
        *,
        model: ModelRecord,
        evalset: EvalSetVersionRecord,
        strategy: str,
        fewshot_k: int,
        settings_digest: str,
        settings: dict[str, Any],
        trigger: str,
        job: str | None = None,
        items_total: int = 0,
        model_fingerprint: str | None = None,
        scheduled_for: datetime | None = None,
        model_version: str | None = None,
    ) -> RunRecord:
        """Record a run as ``running`` and return it (with its id)."""
        with self.session() as s:
            run = RunRecord(
                model_id=model.id,
                evalset_version_id=evalset.id,
                evalset_name=evalset.name,
                job=job,
                status="running",
                trigger=trigger,
                strategy=strategy,
                fewshot_k=fewshot_k,
                settings_digest=settings_digest,
                settings=settings,
                model_fingerprint=model_fingerprint,
                evalset_version=evalset.version,
                started_at=utcnow(),
                scheduled_for=scheduled_for,
                model_version=model_version,
                items_total=items_total,
            )
            s.add(run)
            s.flush()
            s.refresh(run)
            return run

    def add_item_results(self, run_id: int, results: Sequence[ItemResult]) -> None:
        """Store a batch of item results in one transaction and advance the run's counters."""
        if not results:
            return
        with self.session() as s:
            s.add_all(
                ItemResultRecord(
                    run_id=run_id,
                    item_id=r.item_id,
                    prediction=r.prediction,
                    target=r.target,
                    correct=r.correct,
                    score=r.score,
                    scores=r.scores or {},
                    loglikelihoods=r.loglikelihoods,
                    prompt_tokens=r.prompt_tokens,
                    completion_tokens=r.completion_tokens,
                    error=r.error,
                )
                for r in results
            )
            s.execute(
                update(RunRecord)
                .where(RunRecord.id == run_id)  # type: ignore[arg-type]
                .values(
                    items_done=RunRecord.items_done + len(results),
                    items_failed=RunRecord.items_failed + sum(1 for r in results if r.error),
                    prompt_tokens=RunRecord.prompt_tokens + sum(r.prompt_tokens for r in results),
                    completion_tokens=RunRecord.completion_tokens + sum(r.completion_tokens for r in results),
                )
            )

    def update_run(self, run_id: int, **values: Any) -> None:
        """Set fields of a run (fingerprint, load time, ...)."""
        with self.session() as s:
            s.execute(update(RunRecord).where(RunRecord.id == run_id).values(**values))  # type: ignore[arg-type]

    def finish_run(
        self,
        run_id: int,
        *,
        status: str,
        metrics: dict[str, Any] | None = None,
        error: str | None = None,
        backend_info: dict[str, Any] | None = None,
    ) -> RunRecord:
        """Close a run with its final status, metrics and error text.

        ``error`` replaces any earlier error: a resumed run that succeeds keeps no
        error from its interruption.  Metrics and backend facts are kept when not given.
        """
        with self.session() as s:
            run = s.get(RunRecord, run_id)
            if run is None:
                raise NotFoundError(f"no run {run_id}")
            run.status = status
            run.finished_at = utcnow()
            run.duration_s = (run.finished_at - _aware(run.started_at)).total_seconds()
            if metrics is not None:
                run.metrics = metrics
            run.error = error
            if backend_info is not None:
                run.backend_info = backend_info
            s.add(run)
            s.flush()
            s.refresh(run)
            return run

    def get_run(self, run_id: int) -> RunRecord:
        with self.session() as s:
            run = s.get(RunRecord, run_id)
        if run is None:
            raise NotFoundError(f"no run with id {run_id}")
        return run

    def item_results(self, run_id: int) -> list[ItemResultRecord]:
        """Every stored item result of a run, in storage order."""
        with self.session() as s:
            query = (
                select(ItemResultRecord)
                .where(ItemResultRecord.run_id == run_id)
                .order_by(ItemResultRecord.id)
            )  # type: ignore[arg-type]
            return list(s.exec(query).scalars())  # type: ignore[call-overload]

    def completed_item_ids(self, run_id: int) -> set[str]:
        """The ids of the items a run has already stored (what a resumed run skips)."""
        with self.session() as s:
            query = select(ItemResultRecord.item_id).where(ItemResultRecord.run_id == run_id)  # type: ignore[arg-type]
            return set(s.exec(query).scalars())  # type: ignore[call-overload]

    def runs(
        self,
        *,
        model: str | None = None,
        evalset: str | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[RunRecord, str]]:
        """Runs, newest first, each with its model's name."""
        with self.session() as s:
            query = select(RunRecord, ModelRecord.name).join(
                ModelRecord, RunRecord.model_id == ModelRecord.id
            )  # type: ignore[arg-type]
            if model is not None:
                query = query.where(ModelRecord.name == model)
            if evalset is not None:
                query = query.where(RunRecord.evalset_name == evalset)
            if status is not None:
                query = query.where(RunRecord.status == status)
            query = query.order_by(RunRecord.started_at.desc(), RunRecord.id.desc())  # type: ignore[attr-defined,union-attr]
            if limit is not None:
                query = query.limit(limit)
            return [(run, name) for run, name in s.execute(query).all()]

    def latest_per_series(self) -> list[SeriesStatus]:
        """For every (model, eval set, strategy): the newest run, and the newest succeeded run before it."""
        with self.session() as s:
            newest = (
                select(
                    RunRecord.model_id,
                    RunRecord.evalset_name,
                    RunRecord.strategy,
                    func.max(RunRecord.id).label("last_id"),
                )
                .group_by(RunRecord.model_id, RunRecord.evalset_name, RunRecord.strategy)
                .subquery()
            )
            rows = s.execute(
                select(RunRecord, ModelRecord.name)
                .join(newest, RunRecord.id == newest.c.last_id)  # type: ignore[arg-type]
                .join(ModelRecord, RunRecord.model_id == ModelRecord.id)  # type: ignore[arg-type]
                .order_by(ModelRecord.name, RunRecord.evalset_name, RunRecord.strategy)
            ).all()
            out = []
            for run, name in rows:
                previous = s.execute(
                    select(RunRecord)
                    .where(
                        RunRecord.model_id == run.model_id,
                        RunRecord.evalset_name == run.evalset_name,
                        RunRecord.strategy == run.strategy,
                        RunRecord.status == "succeeded",
                        RunRecord.id < run.id,  # type: ignore[operator]
                    )
                    .order_by(RunRecord.id.desc())  # type: ignore[union-attr]
                    .limit(1)
                ).scalar_one_or_none()
                out.append(SeriesStatus(name, run, previous))
            return out

    def unfinished_runs(self) -> list[RunRecord]:
        """Runs left ``running`` (by a crash) or ``interrupted`` (by a shutdown), oldest first."""
        with self.session() as s:
            query = (
                select(RunRecord)
                .where(RunRecord.status.in_(("running", "interrupted")))
                .order_by(RunRecord.id)
            )
            return list(s.execute(query).scalars())

    def reopen_run(self, run_id: int) -> None:
        """Mark an interrupted run as running again before it is resumed."""
        self.update_run(run_id, status="running", finished_at=None, duration_s=None)

    def last_scheduled_fire(self, job: str) -> datetime | None:
        """When the newest scheduled run of ``job`` was meant to start."""
        with self.session() as s:
            value = s.execute(
                select(func.max(RunRecord.scheduled_for)).where(RunRecord.job == job)
            ).scalar_one_or_none()
        return as_utc(value)

    # --- the daemon's single-instance lease ------------------------------------------------------------

    def acquire_lease(
        self,
        holder: str,
        *,
        host: str,
        pid: int,
        ttl_s: float,
        is_alive: Any = None,
        now: datetime | None = None,
    ) -> DaemonLease | None:
        """Take the daemon lease, or return the live lease that another holder keeps.

        The lease is free when absent, expired, already ours, or held by a process
        on this host that no longer exists (``is_alive(pid)`` is false), so a
        daemon killed with ``kill -9`` does not lock its successor out for a whole TTL.
        The take-over is a compare-and-swap on the old holder, safe on any database.
        """
        from datetime import timedelta

        from sqlalchemy.exc import IntegrityError

        now = now or utcnow()
        expires = now + timedelta(seconds=ttl_s)
        fields = {"holder": holder, "host": host, "pid": pid, "heartbeat_at": now, "expires_at": expires}
        for _ in range(3):
            with Session(self.engine, expire_on_commit=False) as s:
                current = s.get(DaemonLease, "daemon")
                if current is None:
                    s.add(DaemonLease(name="daemon", acquired_at=now, **fields))
                    try:
                        s.commit()
                        return None
                    except IntegrityError:
                        s.rollback()
                        continue
                free = (
                    current.holder == holder
                    or _aware(current.expires_at) <= now
                    or (current.host == host and is_alive is not None and not is_alive(current.pid))
                )
                if not free:
                    return current
                result = s.execute(
                    update(DaemonLease)
                    .where(DaemonLease.name == "daemon", DaemonLease.holder == current.holder)
                    .values(acquired_at=now, **fields)
                )
                s.commit()
                if result.rowcount == 1:
                    return None
        raise StoreError("could not settle the daemon lease after 3 attempts")

    def renew_lease(self, holder: str, ttl_s: float, now: datetime | None = None) -> bool:
        """Extend our lease; false when someone else took it (we must stop)."""
        from datetime import timedelta

        now = now or utcnow()
        with self.session() as s:
            result = s.execute(
                update(DaemonLease)
                .where(DaemonLease.name == "daemon", DaemonLease.holder == holder)
                .values(heartbeat_at=now, expires_at=now + timedelta(seconds=ttl_s))
            )
            return bool(result.rowcount == 1)

    def release_lease(self, holder: str) -> None:
        with self.session() as s:
            s.execute(delete(DaemonLease).where(DaemonLease.name == "daemon", DaemonLease.holder == holder))

    def current_lease(self) -> DaemonLease | None:
        with self.session() as s:
            return s.get(DaemonLease, "daemon")

    # --- run-now requests ------------------------------------------------------------------------------

    def request_run(self, job: str, requested_by: str = "") -> int:
        """Queue a request for the daemon to run ``job`` now."""
        with self.session() as s:
            request = RunRequest(job=job, requested_at=utcnow(), requested_by=requested_by)
            s.add(request)
            s.flush()
            assert request.id is not None
            return request.id

    def take_run_requests(self) -> list[RunRequest]:
        """Pending run-now requests, marked as picked so that each is served once."""
        with self.session() as s:
            pending = list(
                s.execute(
                    select(RunRequest).where(RunRequest.picked_at.is_(None)).order_by(RunRequest.id)
                ).scalars()
            )
            taken = []
            for request in pending:
                result = s.execute(
                    update(RunRequest)
                    .where(RunRequest.id == request.id, RunRequest.picked_at.is_(None))
                    .values(picked_at=utcnow())
                )
                if result.rowcount == 1:
                    taken.append(request)
            return taken

    # --- base-model releases ---------------------------------------------------------------------------

    def add_release(
        self, release: Any, on_new: Any = None, *, evaluated: bool = False
    ) -> ReleaseRecord | None:
        """Store a release (anything with family, name, source, location, revision, details) unless known.

        Returns the new record, or None when a release of that name is already
        stored.  ``on_new(session, record)`` runs in the same transaction (the
        webhook outbox writes its event there).  ``evaluated``: there is nothing
        to evaluate (the release is a fine-tune's own base).
        """
        with self.session() as s:
            now = utcnow()
            known = s.execute(select(ReleaseRecord.id).where(ReleaseRecord.name == release.name)).first()
            if known is not None:
                return None
            record = ReleaseRecord(
                family=release.family,
                name=release.name,
                source=release.source,
                location=release.location,
                revision=release.revision,
                details=dict(release.details),
                discovered_at=now,
                evaluated_at=now if evaluated else None,
            )
            s.add(record)
            s.flush()
            if on_new is not None:
                on_new(s, record)
            s.refresh(record)
            return record

    def releases(self, family: str | None = None) -> list[ReleaseRecord]:
        """Stored releases, oldest first."""
        query = select(ReleaseRecord).order_by(ReleaseRecord.id)
        if family is not None:
            query = query.where(ReleaseRecord.family == family)
        with self.session() as s:
            return list(s.execute(query).scalars())

    def forget_release(self, name: str) -> bool:
        """Delete a release's row (its runs stay in the history); False when no such release."""
        with self.session() as s:
            return bool(s.execute(delete(ReleaseRecord).where(ReleaseRecord.name == name)).rowcount)

    def mark_release_evaluated(self, release_id: int, when: datetime | None = None) -> None:
        with self.session() as s:
            s.execute(
                update(ReleaseRecord)
                .where(ReleaseRecord.id == release_id)
                .values(evaluated_at=when or utcnow())
            )


@dataclass(frozen=True)
class SeriesStatus:
    """The newest run of one model on one eval set under one strategy, and the one before it."""

    model: str
    latest: RunRecord
    previous: RunRecord | None


def _aware(value: datetime) -> datetime:
    # SQLite returns naive datetimes even for timezone-aware columns; we only ever store UTC.
    # PostgreSQL returns them in the session's time zone, which need not be UTC.
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """A stored timestamp as a timezone-aware UTC datetime."""
    return None if value is None else _aware(value)
