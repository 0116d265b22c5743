"""The newest verdict and finding per series (``latest_verdicts``, ``latest_findings``; migration 0012).

On SQLite and PostgreSQL: after every kind of write (the store's methods, a bulk insert, a
direct update that moves a row to another series, a delete of the newest row or of every row
of a series) the roll-ups equal the ``GROUP BY`` over every row, and the migration fills them
from the rows already there.
"""

from __future__ import annotations

from typing import Any

from alembic import command
from sqlalchemy import delete, func, insert, select, update

from monitor.store import Store
from monitor.store.db import alembic_config, migrate
from monitor.store.tables import DriftRecord, VerdictRecord, utcnow
from tests.helpers.pg import (  # noqa: F401  (fixtures)
    postgres_server,
    postgres_url,
    sqlite_or_postgres_store,
)
from tests.unit.test_store import add_model, start

VERDICTS: Any = VerdictRecord.__table__  # type: ignore[attr-defined]
FINDINGS: Any = DriftRecord.__table__  # type: ignore[attr-defined]
VERDICT_SERIES = ("model_id", "evalset_name", "strategy", "metric")
FINDING_SERIES = ("model_id", "kind", "source")


def scanned(store: Store, table: Any, series: tuple[str, ...]) -> set[int]:
    """The newest id of every series, grouped over every row: what the roll-up must hold."""
    with store.engine.connect() as conn:
        query = select(func.max(table.c.id)).group_by(*(table.c[c] for c in series))
        return set(conn.execute(query).scalars())


def assert_agree(store: Store) -> tuple[set[int], set[int]]:
    verdicts = {v.id for v in store.latest_verdicts()}
    findings = {f.id for f, _ in store.latest_findings()}
    assert verdicts == scanned(store, VERDICTS, VERDICT_SERIES)
    assert findings == scanned(store, FINDINGS, FINDING_SERIES)
    for model_id in {v.model_id for v in store.latest_verdicts()}:
        assert {v.id for v in store.latest_verdicts(model_id)} == {
            v.id for v in store.latest_verdicts() if v.model_id == model_id
        }
    return verdicts, findings  # type: ignore[return-value]


def verdict(run_id: int, model_id: int, evalset: str = "tickets", metric: str = "acc") -> VerdictRecord:
    return VerdictRecord(
        run_id=run_id,
        model_id=model_id,
        evalset_name=evalset,
        strategy="zero-shot",
        metric=metric,
        mode="paired",
        state="ok",
        created_at=utcnow(),
    )


def finding(model_id: int, kind: str = "behaviour", source: str = "tickets") -> DriftRecord:
    return DriftRecord(model_id=model_id, kind=kind, source=source, state="ok", created_at=utcnow())


def test_every_write_keeps_the_newest_per_series_equal_to_the_scan(store: Store) -> None:
    assert assert_agree(store) == (set(), set())
    run = start(store, job="nightly")
    other = start(store, model="other-bot")
    assert run.id is not None and other.id is not None
    a, b = run.model_id, other.model_id
    first = store.add_verdicts([verdict(run.id, a), verdict(run.id, a, metric="f1"), verdict(other.id, b)])
    store.add_findings([finding(a), finding(a, "canary", "stack"), finding(b, "input", "log")])
    assert_agree(store)
    newer = store.add_verdicts([verdict(run.id, a)])  # a second verdict of a series: it is the newest
    store.add_findings([finding(a)])
    verdicts, _ = assert_agree(store)
    assert newer[0].id in verdicts and first[0].id not in verdicts

    # writes that bypass the store's methods: a bulk insert, a move to another series, deletes
    row = {
        "run_id": run.id, "model_id": a, "evalset_name": "faq", "strategy": "5-shot", "metric": "acc",
        "mode": "unpaired", "state": "suspect", "tolerance": 0.0, "alpha": 0.05,
        "significant_drop": False, "consecutive": 0, "details": {}, "created_at": utcnow(),
    }  # fmt: skip
    with store.engine.begin() as conn:
        conn.execute(insert(VERDICTS), [row, row, {**row, "metric": "f1"}])
        conn.execute(
            insert(FINDINGS),
            [{"model_id": b, "kind": "input", "source": "log", "state": "ok", "drifted": True,
              "details": {}, "created_at": utcnow()}] * 3,
        )  # fmt: skip
    assert_agree(store)
    with store.engine.begin() as conn:  # the newest verdict of a series moves to another one
        conn.execute(update(VERDICTS).where(VERDICTS.c.id == newer[0].id).values(metric="exact_match"))
        conn.execute(update(FINDINGS).where(FINDINGS.c.kind == "canary").values(source="weights"))
    assert_agree(store)
    with store.engine.begin() as conn:  # the newest of a series deleted: the one before it is the newest
        newest = conn.execute(
            select(func.max(VERDICTS.c.id)).where(VERDICTS.c.evalset_name == "faq")
        ).scalar()
        conn.execute(delete(VERDICTS).where(VERDICTS.c.id == newest))
        conn.execute(delete(FINDINGS).where(FINDINGS.c.model_id == b))  # every finding of a series
    verdicts, _ = assert_agree(store)
    assert newest not in verdicts
    assert b not in {f.model_id for f, _ in store.latest_findings()}
    with store.engine.begin() as conn:
        conn.execute(delete(VERDICTS))
        conn.execute(delete(FINDINGS))
    assert assert_agree(store) == (set(), set())
    with store.engine.connect() as conn:  # an emptied series leaves no row behind
        assert conn.execute(select(func.count()).select_from(_table(store, "latest_verdicts"))).scalar() == 0


def _table(store: Store, name: str) -> Any:
    from sqlalchemy import MetaData, Table

    return Table(name, MetaData(), autoload_with=store.engine)


def test_the_migration_fills_the_roll_ups_from_the_rows_already_there(store: Store) -> None:
    run = start(store, job="nightly")
    assert run.id is not None
    model = add_model(store, "other-bot").id
    assert model is not None
    for metric in ("acc", "acc", "f1"):
        store.add_verdicts([verdict(run.id, run.model_id, metric=metric)])
    store.add_findings([finding(run.model_id), finding(run.model_id), finding(model, "input", "log")])
    expected = assert_agree(store)
    cfg = alembic_config(store.engine)
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0011")
    assert "latest_verdicts" not in store.schema_tables()
    with store.engine.begin() as conn:  # written by a monitor before the roll-ups
        conn.execute(
            insert(VERDICTS).values(
                run_id=run.id, model_id=model, evalset_name="faq", strategy="zero-shot", metric="acc",
                mode="paired", state="ok", tolerance=0.0, alpha=0.05, significant_drop=False,
                consecutive=0, details={}, created_at=utcnow(),
            )
        )  # fmt: skip
    migrate(store.engine)
    verdicts, findings = assert_agree(store)
    assert len(verdicts) == len(expected[0]) + 1 and findings == expected[1]
    assert {v.evalset_name for v in store.latest_verdicts(model)} == {"faq"}


def test_the_newest_per_series_is_read_from_the_roll_up(store: Store) -> None:
    """The reads join the roll-up: a series the roll-up does not list is not read."""
    run = start(store)
    assert run.id is not None
    store.add_verdicts([verdict(run.id, run.model_id), verdict(run.id, run.model_id, metric="f1")])
    latest = _table(store, "latest_verdicts")
    with store.engine.begin() as conn:
        conn.execute(delete(latest).where(latest.c.metric == "f1"))
    assert [v.metric for v in store.latest_verdicts()] == ["acc"]
