"""Storage of runs and per-item results (SQLModel + Alembic)."""

from .db import ItemResult, SeriesStatus, Store, as_utc, make_engine, migrate, redact_url
from .tables import EvalSetVersionRecord, ItemResultRecord, ModelRecord, RunRecord, utcnow

__all__ = [
    "EvalSetVersionRecord",
    "ItemResult",
    "ItemResultRecord",
    "ModelRecord",
    "RunRecord",
    "SeriesStatus",
    "Store",
    "as_utc",
    "make_engine",
    "migrate",
    "redact_url",
    "utcnow",
]
