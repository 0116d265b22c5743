"""run_counters also rolls up what the metrics read per job and model: durations, newest rows

``run_summary`` still scanned every run for the run-duration histogram (count, sum, buckets per
job), each job's last success, each model's last load time and each job's newest scheduled
run.  ``run_counters`` now carries, per (model, eval set, job, status):

* ``timed_runs``, ``duration_s_total`` and ``le_<bound>`` (runs with a duration at most each
  bound of :data:`monitor.store.runs.RUN_DURATION_BOUNDS`): added and taken off like the counters;
* ``last_finished_at``, ``last_load_id`` (the newest run with ``load_s > 0``) and
  ``last_scheduled_id`` (the newest run with ``scheduled_for``): the newest of the group's runs,
  raised by a run that comes in, and recomputed from that group's runs (an index range) only when
  the run that held it leaves the group, changes, or is deleted, so they stay exact.

The triggers of migration 0010 are replaced by ones that keep every column.  As there: a later
migration that rebuilds ``runs`` on SQLite must create the triggers again (:func:`create_triggers`).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

#: the duration buckets rolled up (seconds); the metrics' histogram uses these bounds
BOUNDS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
_SUMS = ("items_done", "items_failed", "prompt_tokens", "completion_tokens")
_WATCHED = (
    "model_id", "evalset_name", "job", "status", *_SUMS,
    "duration_s", "finished_at", "load_s", "scheduled_for",
)  # fmt: skip


def bucket_column(bound: float) -> str:
    return f"le_{bound:g}".replace(".", "_")


_BUCKETS = tuple(bucket_column(b) for b in BOUNDS)
#: columns added and taken off: (column, the run's contribution as SQL over row ``{r}``)
_ADDITIVE = (
    ("runs", "1"),
    *((c, f"COALESCE({{r}}.{c}, 0)") for c in _SUMS),
    ("timed_runs", "CASE WHEN {r}.duration_s IS NULL THEN 0 ELSE 1 END"),
    ("duration_s_total", "COALESCE({r}.duration_s, 0.0)"),
    *(
        (c, f"CASE WHEN {{r}}.duration_s <= {b!r} THEN 1 ELSE 0 END")
        for c, b in zip(_BUCKETS, BOUNDS, strict=True)
    ),
)
#: the newest of the group: (column, the run's value or NULL)
_NEWEST = (
    ("last_finished_at", "{r}.finished_at"),
    ("last_load_id", "CASE WHEN {r}.load_s > 0 THEN {r}.id END"),
    ("last_scheduled_id", "CASE WHEN {r}.scheduled_for IS NOT NULL THEN {r}.id END"),
)


def _group_of_runs(r: str) -> str:
    """The runs of ``{r}``'s group, as a condition on ``runs``."""
    return (
        f"runs.model_id = {r}.model_id AND runs.evalset_name = {r}.evalset_name"
        f" AND COALESCE(runs.job, '') = COALESCE({r}.job, '') AND runs.status = {r}.status"
    )


def _recompute(column: str, r: str) -> str:
    if column == "last_finished_at":
        return f"(SELECT MAX(runs.finished_at) FROM runs WHERE {_group_of_runs(r)})"
    if column == "last_load_id":
        return f"(SELECT MAX(runs.id) FROM runs WHERE runs.load_s > 0 AND {_group_of_runs(r)})"
    return f"(SELECT MAX(runs.id) FROM runs WHERE runs.scheduled_for IS NOT NULL AND {_group_of_runs(r)})"


def _newer(current: str, incoming: str) -> str:
    return f"CASE WHEN {incoming} IS NULL THEN {current} WHEN {current} IS NULL OR {incoming} > {current} THEN {incoming} ELSE {current} END"


def upgrade() -> None:
    _load_0010().drop_triggers()
    with op.batch_alter_table("run_counters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("timed_runs", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("duration_s_total", sa.Float(), nullable=False, server_default="0"))
        for name in _BUCKETS:
            batch_op.add_column(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("last_finished_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_load_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("last_scheduled_id", sa.Integer(), nullable=True))
    create_triggers()
    refill()


def downgrade() -> None:
    drop_triggers()
    with op.batch_alter_table("run_counters", schema=None) as batch_op:
        for name in ("last_scheduled_id", "last_load_id", "last_finished_at", *reversed(_BUCKETS)):
            batch_op.drop_column(name)
        batch_op.drop_column("duration_s_total")
        batch_op.drop_column("timed_runs")
    _load_0010().create_triggers()


def refill() -> None:
    """``run_counters`` computed again from every run (in the migration's transaction)."""
    op.execute("DELETE FROM run_counters")
    additive = ", ".join(f"SUM({expr.format(r='runs')})" for _, expr in _ADDITIVE)
    newest = ", ".join(f"MAX({expr.format(r='runs')})" for _, expr in _NEWEST)
    op.execute(
        "INSERT INTO run_counters (model_id, evalset_name, job, status, "
        + ", ".join(c for c, _ in _ADDITIVE)
        + ", "
        + ", ".join(c for c, _ in _NEWEST)
        + f") SELECT model_id, evalset_name, COALESCE(job, ''), status, {additive}, {newest}"
        + " FROM runs GROUP BY model_id, evalset_name, COALESCE(job, ''), status"
    )


def _add(r: str) -> str:
    """Run ``r``'s contribution added to its group's row (created when missing)."""
    columns = [c for c, _ in _ADDITIVE] + [c for c, _ in _NEWEST]
    values = [expr.format(r=r) for _, expr in _ADDITIVE] + [expr.format(r=r) for _, expr in _NEWEST]
    updates = [f"{c} = run_counters.{c} + excluded.{c}" for c, _ in _ADDITIVE] + [
        f"{c} = {_newer(f'run_counters.{c}', f'excluded.{c}')}" for c, _ in _NEWEST
    ]
    return (
        f"INSERT INTO run_counters (model_id, evalset_name, job, status, {', '.join(columns)})"
        f" VALUES ({r}.model_id, {r}.evalset_name, COALESCE({r}.job, ''), {r}.status, {', '.join(values)})"
        f" ON CONFLICT (model_id, evalset_name, job, status) DO UPDATE SET {', '.join(updates)}"
    )


def _subtract(r: str) -> str:
    """Run ``r``'s contribution taken off its group's row; a newest value it held is recomputed
    from the group's runs as they are now (after the update or delete)."""
    updates = [f"{c} = {c} - ({expr.format(r=r)})" for c, expr in _ADDITIVE] + [
        f"{c} = CASE WHEN {c} = {expr.format(r=r)} THEN {_recompute(c, r)} ELSE {c} END"
        for c, expr in _NEWEST
    ]
    return (
        f"UPDATE run_counters SET {', '.join(updates)} WHERE model_id = {r}.model_id"
        f" AND evalset_name = {r}.evalset_name AND job = COALESCE({r}.job, '') AND status = {r}.status"
    )


def create_triggers() -> None:
    """The triggers on ``runs`` that keep ``run_counters`` (SQLite or PostgreSQL)."""
    watched = ", ".join(_WATCHED)
    if op.get_bind().dialect.name == "postgresql":
        changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in _WATCHED)
        op.execute(
            f"""
            CREATE OR REPLACE FUNCTION run_counters_apply() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'INSERT' THEN
                    {_add("NEW")};
                ELSIF TG_OP = 'DELETE' THEN
                    {_subtract("OLD")};
                ELSIF ROW(OLD.model_id, OLD.evalset_name, COALESCE(OLD.job, ''), OLD.status)
                      <= ROW(NEW.model_id, NEW.evalset_name, COALESCE(NEW.job, ''), NEW.status) THEN
                    -- the two rows locked in key order, so that two runs moving between the
                    -- same statuses in opposite directions cannot deadlock
                    {_subtract("OLD")};
                    {_add("NEW")};
                ELSE
                    {_add("NEW")};
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
            f"CREATE TRIGGER runs_counters_update AFTER UPDATE OF {watched} ON runs "
            f"FOR EACH ROW WHEN ({changed}) EXECUTE FUNCTION run_counters_apply()"
        )
        return
    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in _WATCHED)
    op.execute(f"CREATE TRIGGER runs_counters_insert AFTER INSERT ON runs BEGIN {_add('NEW')}; END")
    op.execute(f"CREATE TRIGGER runs_counters_delete AFTER DELETE ON runs BEGIN {_subtract('OLD')}; END")
    op.execute(
        f"CREATE TRIGGER runs_counters_update AFTER UPDATE OF {watched} ON runs "
        f"WHEN {changed} BEGIN {_subtract('OLD')}; {_add('NEW')}; END"
    )


def drop_triggers() -> None:
    _load_0010().drop_triggers()


def _load_0010() -> ModuleType:
    path = Path(__file__).with_name("0010_run_counters.py")
    spec = importlib.util.spec_from_file_location("monitor_migration_0010", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
