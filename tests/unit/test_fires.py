"""Fires as units of record, lease fencing, work time without downtime, storage health, failure streaks.

On SQLite and on a real PostgreSQL (the ``postgres`` mark), each through the store's public methods.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import time_machine

from monitor.errors import LeaseLostError, StoreError
from monitor.evals.results import ItemResult
from monitor.events import RUN_FAILED_REPEATEDLY, RUN_RECOVERED, Event
from monitor.service.after_job import check_repeated_failures
from monitor.store import Store, fire_key
from tests.helpers.pg import free_port, postgres_server, postgres_url  # noqa: F401  (fixtures)

T0 = datetime(2026, 3, 1, 2, 0, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitor.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture()
def store(db_url: str) -> Iterator[Store]:
    with Store.open(db_url) as s:
        yield s


def new_run(store: Store, *, job: str = "nightly", fire_id: int | None = None, model: str = "router") -> int:
    m = store.upsert_model(model, kind="hf", base="b", adapter=None)
    v = store.ensure_evalset_version("routing", "v1", task="multiple_choice", path="p", item_count=4)
    run = store.start_run(
        model=m,
        evalset=v,
        strategy="zero-shot",
        fewshot_k=0,
        settings_digest="d",
        settings={},
        trigger="schedule",
        job=job,
        items_total=4,
        fire_id=fire_id,
    )
    assert run.id is not None
    return run.id


def items(*ids: str) -> list[ItemResult]:
    return [ItemResult(item_id=i, prediction="a", target="a", correct=True, score=1.0) for i in ids]


def test_a_fire_is_taken_once_and_a_job_has_one_open_fire(store: Store) -> None:
    key = fire_key("nightly", "schedule", T0)
    assert key == "nightly@2026-03-01T02:00:00+0000"
    assert fire_key("nightly", "catch-up", T0) == key  # a catch-up of a taken fire is the same fire
    first = store.open_fire("nightly", trigger="schedule", scheduled_for=T0, key=key)
    assert first is not None and first.status == "open"
    assert store.open_fire("nightly", trigger="catch-up", scheduled_for=T0, key=key) is None
    later = fire_key("nightly", "schedule", T0 + timedelta(days=1))
    assert (
        store.open_fire("nightly", trigger="schedule", scheduled_for=T0 + timedelta(days=1), key=later)
        is None
    )
    assert store.open_fire("smoke", trigger="manual", scheduled_for=None, key="smoke#x") is not None
    assert first.id is not None
    store.start_fire(first.id, ["router/routing/zero-shot"])
    store.start_fire(first.id, ["changed/later"])  # the plan is recorded once, when the fire starts
    assert store.get_fire(first.id).planned == ["router/routing/zero-shot"]
    store.finish_fire(first.id)
    done = store.get_fire(first.id)
    assert done.status == "done" and done.after_job_at is not None
    # finished: the same fire is never taken again, the next one is
    assert store.open_fire("nightly", trigger="schedule", scheduled_for=T0, key=key) is None
    assert store.open_fire("nightly", trigger="schedule", scheduled_for=T0 + timedelta(days=1), key=later)
    assert store.last_fire_time("nightly") == T0 + timedelta(days=1)


def test_run_now_requests_become_fires_in_the_same_transaction(store: Store) -> None:
    a = store.request_run("nightly")
    store.request_run("unknown-job")
    b = store.request_run("nightly")  # while the first is open: it coalesces
    taken = store.claim_run_requests({"nightly"})
    assert [(r.id, f is not None) for r, f in taken] == [(a, True), (a + 1, False), (b, False)]
    assert taken[0][1] is not None and taken[0][1].key == f"nightly#request-{a}"
    assert store.claim_run_requests({"nightly"}) == []  # each request is served once


def test_a_holder_taken_over_is_fenced_and_writes_nothing(db_url: str) -> None:
    with Store.open(db_url) as first, Store.open(db_url) as second:
        assert first.acquire_lease("h:1:a", host="h", pid=1, ttl_s=1, is_alive=lambda pid: True) is None
        assert first.fence is not None and first.fence.epoch == 1
        fire = first.open_fire("nightly", trigger="manual", scheduled_for=None, key="nightly#1")
        assert fire is not None and fire.id is not None
        run_id = new_run(first, fire_id=fire.id)
        first.add_item_results(run_id, items("i0", "i1"))
        # the first holder is paused past its lease; the second takes over with the next epoch
        later = datetime.now(timezone.utc) + timedelta(seconds=5)
        assert second.acquire_lease("h:2:b", host="h", pid=2, ttl_s=60, now=later) is None
        assert second.fence is not None and second.fence.epoch == 2
        with pytest.raises(LeaseLostError, match=r"lost its lease \(epoch 1\).*held by h:2:b \(epoch 2\)"):
            first.add_item_results(run_id, items("i2", "i3"))
        for write in (
            lambda: first.finish_run(run_id, status="failed", error="unique constraint"),
            lambda: first.update_run(run_id, load_s=1.0),
            lambda: first.finish_fire(fire.id),  # type: ignore[arg-type]
            lambda: new_run(first),
        ):
            with pytest.raises(LeaseLostError):
                write()
        run = second.get_run(run_id)
        assert (
            run.status == "running"
            and run.items_done == 2
            and second.completed_item_ids(run_id) == {"i0", "i1"}
        )
        assert second.get_fire(fire.id).status == "open"
        second.add_item_results(run_id, items("i2", "i3"))  # the new holder goes on
        assert second.finish_run(run_id, status="succeeded").items_done == 4
        # a release keeps the epoch: the next holder gets epoch 3, never a repeat
        second.release_lease("h:2:b")
        assert second.fence is None
        assert first.acquire_lease("h:1:c", host="h", pid=1, ttl_s=60) is None
        assert first.fence is not None and first.fence.epoch == 3


def test_a_takeover_waits_for_a_write_in_flight_and_then_fences_the_old_holder(db_url: str) -> None:
    # The fence check is the transaction's first write: a take-over either commits before it
    # (the write is refused) or after it (the write is in, and the new holder's recovery sees it).
    with Store.open(db_url) as first, Store.open(db_url) as second:
        first.acquire_lease("h:1:a", host="h", pid=1, ttl_s=60)
        run_id = new_run(first)
        results: dict[int, str] = {}

        def write(k: int) -> None:
            try:
                first.add_item_results(run_id, items(f"w{k}"))
                results[k] = "ok"
            except LeaseLostError:
                results[k] = "fenced"

        threads = [threading.Thread(target=write, args=(k,)) for k in range(8)]
        for t in threads[:4]:
            t.start()
        later = datetime.now(timezone.utc) + timedelta(seconds=120)
        assert second.acquire_lease("h:2:b", host="h", pid=2, ttl_s=60, now=later) is None
        for t in threads[4:]:
            t.start()
        for t in threads:
            t.join(30)
        assert [results[k] for k in range(4, 8)] == ["fenced"] * 4  # after the take-over: all refused
        stored = second.completed_item_ids(run_id)
        ok = {f"w{k}" for k, outcome in results.items() if outcome == "ok"}
        assert stored == ok and second.get_run(run_id).items_done == len(ok)


def test_the_duration_of_a_resumed_run_counts_work_not_downtime(store: Store) -> None:
    with time_machine.travel(T0, tick=False) as clock:
        run_id = new_run(store)
        clock.move_to(T0 + timedelta(seconds=30))
        store.add_item_results(run_id, items("i0"))
        clock.move_to(T0 + timedelta(seconds=40))  # killed here: the last chunk was at 30 s
        store.interrupt_crashed_run(run_id, "the daemon stopped during the run")
        assert store.get_run(run_id).duration_s == pytest.approx(30)
        clock.move_to(T0 + timedelta(hours=5))  # down for five hours
        store.reopen_run(run_id)
        clock.move_to(T0 + timedelta(hours=5, seconds=20))
        store.finish_run(run_id, status="interrupted", error="stopped")  # a clean stop counts to the stop
        clock.move_to(T0 + timedelta(hours=6))
        store.reopen_run(run_id)
        clock.move_to(T0 + timedelta(hours=6, seconds=10))
        run = store.finish_run(run_id, status="succeeded")
    assert run.duration_s == pytest.approx(30 + 20 + 10)


def test_storage_health_follows_the_last_write(tmp_path: Path) -> None:
    import sqlite3

    from sqlalchemy import text

    db = tmp_path / "monitor.db"
    with Store.open(f"sqlite:///{db}") as store:
        run_id = new_run(store)
        assert store.ping() and store.write_error is None
        lock = sqlite3.connect(db, timeout=0)
        lock.execute("BEGIN EXCLUSIVE")  # another writer holds the database: writes fail, reads do not
        try:
            with pytest.raises(StoreError, match="database is locked"), store.session() as s:
                s.connection().exec_driver_sql("PRAGMA busy_timeout=50")
                s.execute(text("UPDATE runs SET load_s = 1 WHERE id = :id"), {"id": run_id})
            assert store.write_error is not None and "locked" in store.write_error
            assert not store.ping()  # the database answers, but its last write failed: not healthy
        finally:
            lock.rollback()
            lock.close()
        store.get_run(run_id)  # a read does not make it healthy again
        assert not store.ping()
        store.update_run(run_id, load_s=2.0)  # a write that succeeds does
        assert store.ping() and store.write_error is None


def test_failure_streaks_count_each_jobs_own_runs_and_recovery_is_told_once(store: Store) -> None:
    sent: list[Event] = []

    def notify(_session: Any, event: Event) -> None:
        sent.append(event)

    def finish(job: str, status: str) -> bool:
        run_id = new_run(store, job=job)
        run = store.finish_run(run_id, status=status, error="boom" if status == "failed" else None)
        return check_repeated_failures(store, run, notify)

    # six jobs share one broken model and eval set, their runs interleaved
    jobs = [f"job{k}" for k in range(6)]
    for _ in range(5):
        for job in jobs:
            finish(job, "failed")
    failed = [e for e in sent if e.type == RUN_FAILED_REPEATEDLY]
    assert sorted(e.data["job"] for e in failed) == jobs  # one event per job's streak, none twice
    assert all(e.data["failures"] == 3 for e in failed)
    finish("job0", "succeeded")
    finish("job0", "succeeded")
    recovered = [e for e in sent if e.type == RUN_RECOVERED]
    assert [(e.data["job"], e.data["failures"]) for e in recovered] == [("job0", 5)]
    # a short streak (under the threshold) recovers silently
    finish("job0", "failed")
    assert not finish("job0", "succeeded")


def test_claims_of_one_fire_by_several_processes_and_the_takeover_of_a_dead_claimant(db_url: str) -> None:
    key = fire_key("nightly", "slot", None, "slot-2026-03-01")
    with Store.open(db_url) as a, Store.open(db_url) as b, Store.open(db_url) as c:
        first = a.claim_fire(
            "nightly", key=key, trigger="slot", scheduled_for=None, holder="h:100:a", host="h", ttl_s=60,
            is_alive=lambda pid: True,
        )  # fmt: skip
        assert first.outcome == "claimed" and a.fence is not None and a.fence.fire_id == first.fire.id
        held = b.claim_fire(
            "nightly", key=key, trigger="slot", scheduled_for=None, holder="h:200:b", host="h", ttl_s=60,
            is_alive=lambda pid: True,
        )  # fmt: skip
        assert held.outcome == "held" and held.holder == "h:100:a" and b.fence is None
        run_id = new_run(a, fire_id=first.fire.id)
        a.add_item_results(run_id, items("i0"))
        # the first claimant's process dies: the next one takes the fire over with the next epoch
        taken = c.claim_fire(
            "nightly", key=key, trigger="slot", scheduled_for=None, holder="h:300:c", host="h", ttl_s=60,
            is_alive=lambda pid: pid != 100,
        )  # fmt: skip
        assert taken.outcome == "resumed" and c.fence is not None and c.fence.epoch == 2
        with pytest.raises(LeaseLostError, match="lost its claim of fire"):
            a.add_item_results(run_id, items("i1"))  # the old claimant, had it only been paused
        c.add_item_results(run_id, items("i1"))
        c.finish_run(run_id, status="succeeded")
        assert taken.fire.id is not None
        c.finish_fire(taken.fire.id)
        again = b.claim_fire(
            "nightly", key=key, trigger="slot", scheduled_for=None, holder="h:200:b", host="h", ttl_s=60
        )
        assert again.outcome == "done"
        assert c.completed_item_ids(run_id) == {"i0", "i1"}
