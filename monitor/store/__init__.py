"""Storage of runs and per-item results (SQLModel + Alembic)."""

from .db import ItemResult, SeriesStatus, Store, as_utc, make_engine, migrate, redact_url
from .tables import (
    DaemonLease,
    EvalSetVersionRecord,
    ItemResultRecord,
    ModelRecord,
    RunRecord,
    RunRequest,
    utcnow,
)

__all__ = [
    "DaemonLease",
    "EvalSetVersionRecord",
    "ItemResult",
    "ItemResultRecord",
    "ModelRecord",
    "RunRecord",
    "RunRequest",
    "SeriesStatus",
    "Store",
    "as_utc",
    "make_engine",
    "migrate",
    "redact_url",
    "utcnow",
]
