"""latest_verdicts and latest_findings: the newest verdict and finding of every series, kept by triggers;
the runs listed newest first by an index

A scrape, the status page and the recommender read the newest verdict of every (model, eval set,
strategy, metric) and the newest drift or canary finding of every (model, kind, source).  Both
were a ``GROUP BY`` with ``MAX(id)`` over every row ever written, which grows with the history
(on PostgreSQL, 37 ms at one month to 160 ms at a year for the verdicts).  These two tables hold
the id of the newest row per series, kept by triggers on ``verdicts`` and ``drift_analyses`` in
the transaction of every insert, update and delete, whichever code writes it:

* an insert raises the series' id when it is newer;
* a delete (or an update that moves a row to another series) of the row that held it recomputes
  the series' newest id from its rows (an index range), and removes the series when none is left.

And ``ix_runs_started`` (``started_at``, ``id``): the runs listing (``monitor runs``, the API's runs
page) is newest first, which sorted every run before.

A later migration that rebuilds ``verdicts`` or ``drift_analyses`` on SQLite (``batch_alter_table``
in recreate mode drops the table's triggers) must call :func:`create_triggers` again after it.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from typing import Any, NamedTuple

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


class _Rollup(NamedTuple):  # not a dataclass: alembic loads this module outside sys.modules
    table: str  # the roll-up
    source: str  # the table it follows
    key: tuple[str, ...]  # the series
    newest: str  # the roll-up's column holding the newest row's id
    id_index: str  # the source's index that starts with the key and ends with the id


_ROLLUPS = (
    _Rollup(
        "latest_verdicts",
        "verdicts",
        ("model_id", "evalset_name", "strategy", "metric"),
        "verdict_id",
        "ix_verdicts_series_newest",
    ),
    _Rollup("latest_findings", "drift_analyses", ("model_id", "kind", "source"), "finding_id", ""),
)
_TYPES: dict[str, Any] = {
    "model_id": sa.Integer(),
    "evalset_name": sa.String(length=200),
    "strategy": sa.String(length=40),
    "metric": sa.String(length=80),
    "kind": sa.String(length=20),
    "source": sa.String(length=200),
}


def upgrade() -> None:
    for r in _ROLLUPS:
        op.create_table(
            r.table,
            *(sa.Column(c, _TYPES[c], nullable=False) for c in r.key),
            sa.Column(r.newest, sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint(*r.key),
        )
        if r.id_index:  # the verdicts' series index ends with run_id: the recompute wants the id
            op.create_index(r.id_index, r.source, [*r.key, "id"])
    op.create_index("ix_runs_started", "runs", ["started_at", "id"])
    create_triggers()
    refill()


def downgrade() -> None:
    drop_triggers()
    op.drop_index("ix_runs_started", table_name="runs")
    for r in _ROLLUPS:
        if r.id_index:
            op.drop_index(r.id_index, table_name=r.source)
        op.drop_table(r.table)


def refill() -> None:
    """Both roll-ups computed again from every row (in the migration's transaction)."""
    for r in _ROLLUPS:
        key = ", ".join(r.key)
        op.execute(f"DELETE FROM {r.table}")
        op.execute(
            f"INSERT INTO {r.table} ({key}, {r.newest}) SELECT {key}, MAX(id) FROM {r.source} GROUP BY {key}"
        )


def _same_series(r: _Rollup, left: str, row: str) -> str:
    return " AND ".join(f"{left}.{c} = {row}.{c}" for c in r.key)


def _raise(r: _Rollup, row: str) -> str:
    """Row ``row`` made its series' newest when it is newer than the one held (or the first)."""
    key = ", ".join(r.key)
    values = ", ".join(f"{row}.{c}" for c in r.key)
    held, incoming = f"{r.table}.{r.newest}", f"excluded.{r.newest}"
    return (
        f"INSERT INTO {r.table} ({key}, {r.newest}) VALUES ({values}, {row}.id)"
        f" ON CONFLICT ({key}) DO UPDATE SET {r.newest} ="
        f" CASE WHEN {incoming} > {held} THEN {incoming} ELSE {held} END"
    )


def _drop(r: _Rollup, row: str) -> list[str]:
    """Row ``row`` gone from its series: when it was the newest, the series' newest recomputed from
    its rows as they are now, and the series removed when none is left."""
    held = f"{r.table}.{r.newest}"
    where = f"{_same_series(r, r.table, row)} AND {held} = {row}.id"
    newest = f"(SELECT MAX(s.id) FROM {r.source} s WHERE {_same_series(r, 's', row)})"
    return [
        f"DELETE FROM {r.table} WHERE {where} AND NOT EXISTS"
        f" (SELECT 1 FROM {r.source} s WHERE {_same_series(r, 's', row)})",
        f"UPDATE {r.table} SET {r.newest} = {newest} WHERE {where}",
    ]


def create_triggers() -> None:
    """The triggers on ``verdicts`` and ``drift_analyses`` that keep the roll-ups (SQLite or PostgreSQL)."""
    for r in _ROLLUPS:
        watched = ", ".join((*r.key, "id"))
        if op.get_bind().dialect.name == "postgresql":
            changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in (*r.key, "id"))
            drop_old = ";\n                    ".join(_drop(r, "OLD"))
            op.execute(
                f"""
                CREATE OR REPLACE FUNCTION {r.table}_apply() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF TG_OP = 'INSERT' THEN
                        {_raise(r, "NEW")};
                    ELSIF TG_OP = 'DELETE' THEN
                        {drop_old};
                    ELSE
                        {drop_old};
                        {_raise(r, "NEW")};
                    END IF;
                    RETURN NULL;
                END $$
                """
            )
            op.execute(
                f"CREATE TRIGGER {r.source}_latest_insert_delete AFTER INSERT OR DELETE ON {r.source} "
                f"FOR EACH ROW EXECUTE FUNCTION {r.table}_apply()"
            )
            op.execute(
                f"CREATE TRIGGER {r.source}_latest_update AFTER UPDATE OF {watched} ON {r.source} "
                f"FOR EACH ROW WHEN ({changed}) EXECUTE FUNCTION {r.table}_apply()"
            )
            continue
        changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in (*r.key, "id"))
        drop_old = "; ".join(_drop(r, "OLD"))
        op.execute(
            f"CREATE TRIGGER {r.source}_latest_insert AFTER INSERT ON {r.source} BEGIN {_raise(r, 'NEW')}; END"
        )
        op.execute(
            f"CREATE TRIGGER {r.source}_latest_delete AFTER DELETE ON {r.source} BEGIN {drop_old}; END"
        )
        op.execute(
            f"CREATE TRIGGER {r.source}_latest_update AFTER UPDATE OF {watched} ON {r.source} "
            f"WHEN {changed} BEGIN {drop_old}; {_raise(r, 'NEW')}; END"
        )


def drop_triggers() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for r in _ROLLUPS:
        if postgres:
            op.execute(f"DROP TRIGGER IF EXISTS {r.source}_latest_insert_delete ON {r.source}")
            op.execute(f"DROP TRIGGER IF EXISTS {r.source}_latest_update ON {r.source}")
            op.execute(f"DROP FUNCTION IF EXISTS {r.table}_apply()")
        else:
            for suffix in ("insert", "delete", "update"):
                op.execute(f"DROP TRIGGER IF EXISTS {r.source}_latest_{suffix}")
