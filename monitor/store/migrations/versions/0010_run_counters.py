"""run_counters: the runs' cumulative counters rolled up per model, eval set, job and status

The metrics' run counters (``monitor_runs``, ``monitor_items_evaluated``, ``monitor_item_errors``,
``monitor_tokens``, the in-progress and interrupted gauges) were a ``GROUP BY`` over every run
ever made on each scrape.  This table holds those sums, one row per (model, eval set, job,
status), kept by triggers on ``runs`` in the same transaction as every insert, update and delete
of a run, whichever code writes it; a scrape reads a few hundred rows however long the history.
``job`` is ``''`` for runs without a job (a unique key treats NULLs as distinct).

A later migration that rebuilds ``runs`` on SQLite (``batch_alter_table`` in recreate mode drops
the table's triggers) must call :func:`create_triggers` again after it.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_KEY = ("model_id", "evalset_name", "job", "status")
_SUMS = ("items_done", "items_failed", "prompt_tokens", "completion_tokens")
#: the columns of ``runs`` whose change moves a run's contribution
_WATCHED = ("model_id", "evalset_name", "job", "status", *_SUMS)


def upgrade() -> None:
    op.create_table(
        "run_counters",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("evalset_name", sa.String(length=200), nullable=False),
        sa.Column("job", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("runs", sa.BigInteger(), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in _SUMS),
        sa.PrimaryKeyConstraint(*_KEY),
    )
    create_triggers()
    op.execute(
        "INSERT INTO run_counters (model_id, evalset_name, job, status, runs, "
        + ", ".join(_SUMS)
        + ") SELECT model_id, evalset_name, COALESCE(job, ''), status, COUNT(*), "
        + ", ".join(f"COALESCE(SUM({c}), 0)" for c in _SUMS)
        + " FROM runs GROUP BY model_id, evalset_name, COALESCE(job, ''), status"
    )


def downgrade() -> None:
    drop_triggers()
    op.drop_table("run_counters")


def _values(row: str) -> str:
    return f"{row}.model_id, {row}.evalset_name, COALESCE({row}.job, ''), {row}.status, 1, " + ", ".join(
        f"COALESCE({row}.{c}, 0)" for c in _SUMS
    )


def _add(row: str, table: str) -> str:
    """One run's contribution added to its roll-up row (created when missing)."""
    return (
        "INSERT INTO run_counters (model_id, evalset_name, job, status, runs, "
        + ", ".join(_SUMS)
        + f") VALUES ({_values(row)}) ON CONFLICT (model_id, evalset_name, job, status) DO UPDATE SET "
        + f"runs = {table}.runs + 1, "
        + ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in _SUMS)
    )


def _subtract(row: str) -> str:
    """One run's contribution taken off its roll-up row (which it was added to)."""
    return (
        "UPDATE run_counters SET runs = runs - 1, "
        + ", ".join(f"{c} = {c} - COALESCE({row}.{c}, 0)" for c in _SUMS)
        + f" WHERE model_id = {row}.model_id AND evalset_name = {row}.evalset_name"
        + f" AND job = COALESCE({row}.job, '') AND status = {row}.status"
    )


def _changed() -> str:
    return " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in _WATCHED)


def create_triggers() -> None:
    """The triggers on ``runs`` that keep ``run_counters`` (SQLite or PostgreSQL)."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"""
            CREATE OR REPLACE FUNCTION run_counters_apply() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'INSERT' THEN
                    {_add("NEW", "run_counters")};
                ELSIF TG_OP = 'DELETE' THEN
                    {_subtract("OLD")};
                ELSIF ROW(OLD.model_id, OLD.evalset_name, COALESCE(OLD.job, ''), OLD.status)
                      <= ROW(NEW.model_id, NEW.evalset_name, COALESCE(NEW.job, ''), NEW.status) THEN
                    -- the two rows locked in key order, so that two runs moving between the
                    -- same statuses in opposite directions cannot deadlock
                    {_subtract("OLD")};
                    {_add("NEW", "run_counters")};
                ELSE
                    {_add("NEW", "run_counters")};
                    {_subtract("OLD")};
                END IF;
                RETURN NULL;
            END $$
            """
        )
        op.execute(
            "CREATE TRIGGER runs_counters_insert_delete AFTER INSERT OR DELETE ON runs "
            "FOR EACH ROW EXECUTE FUNCTION run_counters_apply()"
        )
        op.execute(
            f"CREATE TRIGGER runs_counters_update AFTER UPDATE OF {', '.join(_WATCHED)} ON runs "
            f"FOR EACH ROW WHEN ({_changed()}) EXECUTE FUNCTION run_counters_apply()"
        )
        return
    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in _WATCHED)
    op.execute(
        f"CREATE TRIGGER runs_counters_insert AFTER INSERT ON runs BEGIN {_add('NEW', 'run_counters')}; END"
    )
    op.execute(f"CREATE TRIGGER runs_counters_delete AFTER DELETE ON runs BEGIN {_subtract('OLD')}; END")
    op.execute(
        f"CREATE TRIGGER runs_counters_update AFTER UPDATE OF {', '.join(_WATCHED)} ON runs "
        f"WHEN {changed} BEGIN {_subtract('OLD')}; {_add('NEW', 'run_counters')}; END"
    )


def drop_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS runs_counters_update ON runs")
        op.execute("DROP TRIGGER IF EXISTS runs_counters_insert_delete ON runs")
        op.execute("DROP FUNCTION IF EXISTS run_counters_apply()")
        return
    for name in ("runs_counters_insert", "runs_counters_delete", "runs_counters_update"):
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
