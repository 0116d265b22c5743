"""The store: one SQLAlchemy database (SQLite by default, PostgreSQL through the same URL).

Opening a store migrates it to the newest schema with Alembic.  SQLite runs in
WAL mode with a busy timeout, so the CLI can read while a daemon writes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, event, inspect
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, create_engine

from monitor.errors import DriverMissingError, StoreError
from monitor.events import Event, Notify
from monitor.store._errors import describe_db_error, redact_url
from monitor.store.findings import FindingsMixin
from monitor.store.fires import FiresMixin
from monitor.store.lease import LeaseMixin
from monitor.store.recommendations import RecommendationsMixin
from monitor.store.releases import ReleasesMixin
from monitor.store.runs import RunsMixin, SeriesStatus
from monitor.store.tables import as_utc
from monitor.store.verdicts import VerdictsMixin

__all__ = [
    "MIGRATIONS",
    "SeriesStatus",
    "Store",
    "alembic_config",
    "as_utc",
    "make_engine",
    "migrate",
    "redact_url",
]

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "ALTER", "DROP")
#: Whether the current thread's transaction has issued a write (set by the engine's cursor hook).
_tx = threading.local()


#: The fencing checks (``_mixin.StoreMixin._check_fence``) lock a row without changing it: not writes.
_FENCE_CHECK = ("UPDATE daemon_lease SET epoch=", "UPDATE fires SET claim_epoch=")


def _note_writes(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
    text = statement.lstrip()
    if text[:7].upper().startswith(_WRITES) and not text.startswith(_FENCE_CHECK):
        _tx.wrote = True


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None: not SQLite, or in memory)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[1] if "///" in url else ""
    path = path.split("?", 1)[0]
    return Path(path).expanduser() if path and path != ":memory:" else None


def make_engine(url: str, *, create: bool = True) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys.

    ``create=False``: a SQLite file (and its folder) is never created; a missing one is a
    :class:`StoreError` naming it (what read-only commands use).
    """
    try:
        if url.startswith("sqlite"):
            path = sqlite_path(url)
            if path is not None and not create and not path.exists():
                raise StoreError(
                    f"no database at {path} (nothing was created: check the URL, or run the monitor once "
                    "to create it)"
                )
            if path is not None and create:
                path.parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        event.listen(engine, "before_cursor_execute", _note_writes)
        return engine
    except ImportError as exc:
        raise DriverMissingError(_missing_driver(url, exc)) from None
    except (SQLAlchemyError, ValueError) as exc:
        raise StoreError(f"database URL {redact_url(url)!r} is not usable: {exc}") from exc


POSTGRES_EXTRA = "pip install 'model-aging-monitor[postgres]'"


def _missing_driver(url: str, exc: ImportError) -> str:
    """One line for a database URL whose driver is not installed, with the install hint."""
    module = getattr(exc, "name", None) or "its driver"
    shown = redact_url(url)
    if url.startswith("postgresql"):
        hint = POSTGRES_EXTRA
        if not url.startswith("postgresql+psycopg2"):
            # SQLAlchemy 2.1 picks psycopg 3 for a bare postgresql://; the extra installs psycopg2.
            hint += ", and write the URL as postgresql+psycopg2://..."
        return f"database URL {shown!r} needs the PostgreSQL driver {module}, not installed: {hint}"
    return f"database URL {shown!r} needs the driver {module}, not installed (install the package that provides it)"


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with Alembic.

    Several processes may open a new database at once (claimants started together by a
    scheduler): the migration runs in one transaction that first takes the database's write
    lock (SQLite ``BEGIN IMMEDIATE``, a PostgreSQL advisory lock), so one migrates and the
    others then find the schema current.  A database already at the newest revision is not
    locked at all (read-only commands on a read-only file).
    """
    from alembic import command
    from alembic.util import CommandError

    cfg = alembic_config(engine)
    try:
        if revision == "head" and _at_head(engine, cfg):
            return
        with engine.begin() as connection:
            if engine.dialect.name == "sqlite":
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            elif engine.dialect.name == "postgresql":
                connection.exec_driver_sql("SELECT pg_advisory_xact_lock(72320011)")
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot migrate {redact_url(str(engine.url))}: {describe_db_error(exc)}") from exc
    except CommandError as exc:
        # Typically a database written by a newer monitor: its revision is unknown to this one.
        raise StoreError(
            f"cannot migrate {redact_url(str(engine.url))}: {exc} "
            "(was it created by a newer version of the monitor?)"
        ) from exc


def _at_head(engine: Engine, cfg: Any) -> bool:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory.from_config(cfg).get_heads())
    with engine.connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    return current == heads


class Store(
    RunsMixin, FiresMixin, LeaseMixin, ReleasesMixin, VerdictsMixin, FindingsMixin, RecommendationsMixin
):
    """Reads and writes the monitor's history; the only door to its tables.

    The methods come in groups, one module each: :mod:`~monitor.store.runs`
    (models, eval set versions, runs, run-now requests), :mod:`~monitor.store.fires`
    (job fires), :mod:`~monitor.store.lease`,
    :mod:`~monitor.store.releases`, :mod:`~monitor.store.verdicts`,
    :mod:`~monitor.store.findings` (drift) and :mod:`~monitor.store.recommendations`;
    the webhook outbox's functions are in :mod:`~monitor.store.outbox`.
    A store is a context manager that closes itself.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: Why the last write failed; None once a write succeeds (readiness and ``monitor_store_up``).
        self.write_error: str | None = None

    @classmethod
    def open(cls, url: str, *, migrate_schema: bool = True, create: bool = True) -> Store:
        """Connect to ``url`` and migrate it to the newest schema.

        ``create=False`` (read-only commands): a SQLite file that does not exist is an
        error naming it, and nothing is created.
        """
        engine = make_engine(url, create=create)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot connect to {redact_url(url)}: {describe_db_error(exc)}") from exc
        if migrate_schema:
            migrate(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error.

        A transaction that wrote records its outcome in :attr:`write_error`, so that
        storage health reflects writes (a read-only or full database answers reads).
        """
        _tx.wrote = False
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except SQLAlchemyError as exc:
                session.rollback()
                message = describe_db_error(exc)
                if getattr(_tx, "wrote", False):
                    self.write_error = message
                    # A connection opened while the file could not be written is read-only for good
                    # (SQLite falls back to O_RDONLY): start the pool afresh, so that writes succeed
                    # again as soon as the database takes them.
                    self.engine.dispose()
                raise StoreError(f"database error: {message}") from exc
            except BaseException:
                session.rollback()
                raise
            if getattr(_tx, "wrote", False):
                self.write_error = None

    def ping(self) -> bool:
        """Whether the database answers and its last write, if any, succeeded."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except SQLAlchemyError:
            return False
        return self.write_error is None

    def record_event(self, event: Event, notify: Notify) -> None:
        """Hand ``event`` to ``notify(session, event)`` in a transaction of its own (an event with no row behind it)."""
        with self.session() as s:
            notify(s, event)

    def schema_tables(self) -> set[str]:
        return set(inspect(self.engine).get_table_names())
