"""The run counters' roll-up (``run_counters``, kept by triggers on ``runs``, migration 0010).

On SQLite and PostgreSQL: after every kind of write to ``runs`` (the store's methods, a bulk
insert, a direct update or delete, pruning) the roll-up equals the scan over every run, the
migration fills it from the runs already there, and the metrics built from it are those the
scan gives.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from sqlalchemy import delete, insert, select, update

from monitor.exporters.metrics import DURATION_BUCKETS, StoreCollector
from monitor.store import RunRecord, Store, utcnow
from monitor.store.db import MIGRATIONS, alembic_config, migrate
from monitor.store.runs import RunCount
from monitor.store.tables import RUN_DURATION_BOUNDS, ItemResultRecord
from tests.helpers.pg import (  # noqa: F401  (fixtures)
    postgres_server,
    postgres_url,
    sqlite_or_postgres_store,
)
from tests.unit.test_store import add_evalset, add_model, result, start

RUNS: Any = RunRecord.__table__  # type: ignore[attr-defined]


def rolled_up(store: Store) -> list[RunCount]:
    return sorted(store.run_summary().counts, key=_key)


def scanned(store: Store) -> list[RunCount]:
    return sorted(store.scanned_run_counts(), key=_key)


def _key(c: RunCount) -> tuple[int, str, str, str]:
    return (c.model_id, c.evalset, c.job or "", c.status)


def assert_agree(store: Store) -> list[RunCount]:
    """Every part of the metrics' run summary read from the roll-up equals the scan over every run."""
    counts = rolled_up(store)
    assert counts == scanned(store)
    fast, scan = store.run_summary(DURATION_BUCKETS), store.run_summary(DURATION_BUCKETS, scan=True)
    assert sorted(fast.counts, key=_key) == sorted(scan.counts, key=_key) == counts
    durations = sorted(fast.durations, key=lambda d: d.job or "")
    expected = sorted(scan.durations, key=lambda d: d.job or "")
    assert [(d.job, d.count, d.buckets) for d in durations] == [(d.job, d.count, d.buckets) for d in expected]
    assert [d.total_s for d in durations] == pytest.approx([d.total_s for d in expected])
    assert sorted(fast.last_success) == sorted(scan.last_success)
    assert fast.last_load == scan.last_load
    assert fast.schedule_lags == scan.schedule_lags
    assert {r.id for r in fast.latest_succeeded} == {r.id for r in scan.latest_succeeded}
    return counts


def test_the_roll_up_keeps_the_buckets_the_metrics_use() -> None:
    assert set(DURATION_BUCKETS) <= set(RUN_DURATION_BOUNDS)
    path = MIGRATIONS / "versions" / "0011_run_rollup.py"
    spec = importlib.util.spec_from_file_location("migration_0011", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.BOUNDS == RUN_DURATION_BOUNDS


def test_every_write_to_runs_keeps_the_roll_up_equal_to_the_scan(store: Store) -> None:
    assert rolled_up(store) == []
    a = start(store, job="nightly")
    assert_agree(store)
    store.add_item_results(a.id, [result("q1"), result("q2", correct=False), result("q3", error="boom")])
    counts = assert_agree(store)
    assert [(c.status, c.count, c.items_done, c.items_failed) for c in counts] == [("running", 1, 3, 1)]
    store.finish_run(a.id, status="succeeded", metrics={"acc": {"value": 0.5}})
    counts = assert_agree(store)
    assert [(c.status, c.count, c.items_done) for c in counts] == [("succeeded", 1, 3)]

    b = start(store, job="nightly")  # same series: a second run, then interrupted and resumed
    store.add_item_results(b.id, [result("q1")])
    store.interrupt_crashed_run(b.id, "killed")
    assert_agree(store)
    store.reopen_run(b.id)
    store.add_item_results(b.id, [result("q2")])
    store.finish_run(b.id, status="failed", error="CUDA out of memory")
    store.update_run(b.id, load_s=0.0)  # the newest load time moves back to the run before
    assert_agree(store)
    store.update_run(a.id, load_s=3.5, scheduled_for=utcnow())
    assert_agree(store)
    store.finish_run(a.id, status="failed")  # finished again: the last success is recomputed
    assert_agree(store)
    store.finish_run(a.id, status="succeeded")
    c = start(store, model="other-bot", evalset="faq")  # no job
    store.update_run(c.id, status="interrupted", prompt_tokens=99)
    counts = assert_agree(store)
    assert {(c.job, c.status): c.count for c in counts} == {
        ("nightly", "succeeded"): 1,
        ("nightly", "failed"): 1,
        (None, "interrupted"): 1,
    }
    # writes that bypass the store's methods: a bulk insert, a direct update, a delete
    model, evalset = add_model(store), add_evalset(store)
    now = utcnow()
    row = {
        "model_id": model.id, "evalset_version_id": evalset.id, "evalset_name": evalset.name,
        "job": "nightly", "status": "succeeded", "trigger": "schedule", "strategy": "zero-shot",
        "settings_digest": "0" * 16, "settings": {}, "evalset_version": "v1", "started_at": now,
        "metrics": {}, "backend_info": {}, "items_done": 400, "prompt_tokens": 1200,
        "finished_at": now, "duration_s": 330.5, "load_s": 12.0, "scheduled_for": now,
    }  # fmt: skip
    with store.engine.begin() as conn:
        conn.execute(
            insert(RUNS),
            [row, {**row, "duration_s": 9000.0}, {**row, "job": None, "status": "failed", "duration_s": 0.5}],
        )
    assert_agree(store)
    with store.engine.begin() as conn:
        conn.execute(update(RUNS).where(RUNS.c.id == a.id).values(job="weekly", completion_tokens=5))
        conn.execute(update(RUNS).where(RUNS.c.job == "nightly").values(duration_s=1.0))
    assert_agree(store)
    with store.engine.begin() as conn:
        conn.execute(delete(ItemResultRecord).where(ItemResultRecord.run_id == b.id))  # type: ignore[arg-type]
        conn.execute(delete(RUNS).where(RUNS.c.id == b.id))
    counts = assert_agree(store)
    assert ("nightly", "failed") not in {(c.job, c.status) for c in counts}  # an emptied row is not read


def test_pruning_item_results_leaves_the_counters(store: Store) -> None:
    run = start(store, job="nightly")
    store.add_item_results(run.id, [result(f"q{i}") for i in range(5)])
    store.finish_run(run.id, status="succeeded")
    before = assert_agree(store)
    while store.prune_item_results(utcnow(), batch_size=2):
        pass
    assert store.item_results(run.id) == []
    assert assert_agree(store) == before


def test_the_migration_fills_the_roll_up_from_the_runs_already_there(store: Store) -> None:
    for job, status in (
        ("nightly", "succeeded"),
        ("nightly", "succeeded"),
        (None, "failed"),
        ("w", "running"),
    ):
        run = start(store, job=job)
        store.add_item_results(run.id, [result("q1"), result("q2", error="x")])
        if status != "running":
            store.finish_run(run.id, status=status)
    expected = assert_agree(store)
    cfg = alembic_config(store.engine)
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0009")
    assert "run_counters" not in store.schema_tables()
    late = start(store, job="nightly")  # a run written by a monitor before the roll-up
    migrate(store.engine)
    assert late.id is not None
    assert len(rolled_up(store)) == len(expected) + 1
    assert_agree(store)


def test_the_metrics_from_the_roll_up_are_those_of_the_scan(store: Store) -> None:
    for model, job, status in (
        ("a", "nightly", "succeeded"), ("a", "nightly", "failed"), ("b", None, "succeeded"),
        ("b", "weekly", "running"), ("c", "weekly", "interrupted"),
    ):  # fmt: skip
        run = start(store, model=model, job=job)
        store.add_item_results(run.id, [result("q1"), result("q2", correct=False), result("q3", error="e")])
        if status in ("succeeded", "failed"):
            store.finish_run(run.id, status=status)
        elif status == "interrupted":
            store.interrupt_crashed_run(run.id, "killed")

    def exposition(counts: list[RunCount]) -> bytes:
        registry = CollectorRegistry()

        class Counters:
            def collect(self) -> Iterator[Metric]:
                yield from StoreCollector._run_counters(counts, store.run_summary().model_names)

        registry.register(Counters())  # type: ignore[arg-type]
        return generate_latest(registry)

    rolled, scan = exposition(store.run_summary().counts), exposition(store.scanned_run_counts())
    assert rolled == scan
    # the whole exposition, from the roll-up and from the scan
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    from_roll_up = generate_latest(registry)
    store.run_summary = lambda buckets=(): Store.run_summary(store, buckets, scan=True)  # type: ignore[method-assign]
    assert generate_latest(registry) == from_roll_up
    text = rolled.decode()
    assert 'monitor_runs_total{evalset="tickets",job="nightly",model="a",status="failed"} 1.0' in text
    assert 'monitor_items_evaluated_total{evalset="tickets",job="",model="b"} 3.0' in text
    assert 'monitor_runs_in_progress{job="weekly"} 1.0' in text
    assert 'monitor_runs_interrupted{job="weekly"} 1.0' in text
    with store.engine.connect() as conn:
        assert conn.execute(select(RUNS.c.id)).all()
