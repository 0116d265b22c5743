"""Storage of runs and per-item results (SQLModel + Alembic): the only door to the monitor's tables.

:class:`Store` (``db.py``) gathers its methods from one module per topic: ``runs``,
``fires``, ``lease``, ``releases``, ``verdicts``, ``findings``, ``recommendations``; the
webhook outbox's functions are in ``outbox``.  Nothing outside this package
opens a session except to hand it to a ``notify``/``on_change`` callback that a
store method calls inside its own transaction.

SQLAlchemy and SQLModel are imported when a name that needs them is first
used, so commands that never open a store (``monitor eval`` without ``--db``)
do not pay for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from monitor.evals.results import ItemResult

if TYPE_CHECKING:
    from monitor.store.db import SeriesStatus, Store, as_utc, make_engine, migrate, redact_url
    from monitor.store.fires import fire_key
    from monitor.store.runs import RunCount, RunSummary
    from monitor.store.tables import (
        DaemonLease,
        EvalSetVersionRecord,
        FireRecord,
        ItemResultRecord,
        ModelRecord,
        RunRecord,
        RunRequest,
        utcnow,
    )

_LAZY = {
    **dict.fromkeys(("SeriesStatus", "Store", "as_utc", "make_engine", "migrate", "redact_url"), ".db"),
    **dict.fromkeys(("RunCount", "RunSummary"), ".runs"),
    "fire_key": ".fires",
    **dict.fromkeys(
        (
            "DaemonLease",
            "EvalSetVersionRecord",
            "FireRecord",
            "ItemResultRecord",
            "ModelRecord",
            "RunRecord",
            "RunRequest",
            "utcnow",
        ),
        ".tables",
    ),
}


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "DaemonLease",
    "EvalSetVersionRecord",
    "FireRecord",
    "ItemResult",
    "ItemResultRecord",
    "ModelRecord",
    "RunCount",
    "RunRecord",
    "RunRequest",
    "RunSummary",
    "SeriesStatus",
    "Store",
    "as_utc",
    "fire_key",
    "make_engine",
    "migrate",
    "redact_url",
    "utcnow",
]
