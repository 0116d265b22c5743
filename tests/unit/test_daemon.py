"""The daemon: scheduling on a controlled clock, coalescing, the lease, run-now, shutdown and resume.

The backend here is a real implementation of the Backend protocol with
deterministic answers (injected through ModelPool), so that these tests are
about the daemon, not about inference; the subprocess tests further down use
real tiny transformers models.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import time_machine

from monitor.backends import ModelSpec
from monitor.backends.base import (
    GenerationRequest,
    GenerationResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    ModelFingerprint,
)
from monitor.config import MonitorConfig
from monitor.errors import LeaseHeldError, ModelLoadError
from monitor.schedule import latest_missed_fire, make_trigger
from monitor.service.daemon import Daemon, WorkItem
from monitor.service.runs import ModelPool
from monitor.store import Store

T0 = datetime(2026, 1, 5, 12, 0, 0, tzinfo=timezone.utc)
CHOICES = ["billing", "technical", "account", "shipping"]


class ScriptedBackend:
    """Answers multiple choice by a fixed rule; counts the items it was asked; can be slow or fail."""

    def __init__(self, delay: float = 0.0, fail_ids: Sequence[str] = ()) -> None:
        self.delay = delay
        self.fail_ids = set(fail_ids)
        self.items_seen: list[str] = []
        self.lock = threading.Lock()

    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], *, progress: Any = None
    ) -> list[LoglikelihoodResult]:
        time.sleep(self.delay)
        out = []
        for r in requests:
            item_id = r.context.rsplit("#", 1)[-1].split("\n")[0]
            with self.lock:
                self.items_seen.append(item_id)
            if item_id in self.fail_ids:
                raise RuntimeError(f"cannot score {item_id}")
            n = len(r.continuations)
            # prefers the first choice: deterministic, and right for a quarter of the items
            out.append(LoglikelihoodResult(tuple(-float(i) for i in range(n)), (False,) * n, 7, (1,) * n))
        return out

    def generate(
        self, requests: Sequence[GenerationRequest], *, progress: Any = None
    ) -> list[GenerationResult]:
        return [GenerationResult("billing", 5, 1) for _ in requests]

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def fingerprint(self) -> ModelFingerprint:
        return ModelFingerprint(digest="f" * 64, base="scripted")

    def describe(self) -> dict[str, Any]:
        return {"backend": "scripted"}

    def close(self) -> None:
        pass


def make_evalset(root: Path, n: int, name: str = "routing") -> Path:
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "evalset.yaml").write_text(
        f'name: {name}\ntask: multiple_choice\nprompt: "Ticket #{{id}}\\nCategory:"\nchoices: {json.dumps(CHOICES)}\n'
    )
    (path / "data.jsonl").write_text(
        "".join(json.dumps({"id": f"i{k}", "target": CHOICES[k % 4]}) + "\n" for k in range(n))
    )
    return path


def make_config(
    tmp_path: Path, jobs: dict[str, Any], *, items: int = 8, chunk: int = 4, **daemon: Any
) -> MonitorConfig:
    es = make_evalset(tmp_path / "evals", items)
    (tmp_path / "model").mkdir(exist_ok=True)
    return MonitorConfig.model_validate(
        {
            "database": f"sqlite:///{tmp_path / 'monitor.db'}",
            "models": {
                "router": {"base": str(tmp_path / "model")},
                "ghost": {"base": str(tmp_path / "gone")},
            },
            "evalsets": {"routing": str(es)},
            "jobs": jobs,
            "daemon": {"chunk_size": chunk, "lease_ttl": "3s", "poll_interval": "1s", **daemon},
            "root": tmp_path,
        }
    )


def pool_for(backend: ScriptedBackend) -> ModelPool:
    def load(spec: ModelSpec) -> ScriptedBackend:
        if not Path(spec.base).exists():
            raise ModelLoadError(f"model {spec.base} not found")
        return backend

    return ModelPool(loader=load)  # type: ignore[arg-type]


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{tmp_path / 'monitor.db'}")
    yield s
    s.close()


def scheduled_runs(store: Store) -> list[tuple[str, str, datetime | None]]:
    from monitor.store import as_utc

    return sorted(
        ((run.job or "", run.trigger, as_utc(run.scheduled_for)) for run, _ in store.runs()),
        key=lambda r: (r[2] or T0, r[0]),
    )


def test_schedule_fires_on_a_controlled_clock_and_missed_fires_coalesce(tmp_path: Path, store: Store) -> None:
    cfg = make_config(
        tmp_path,
        {
            "hourly": {
                "models": ["router"],
                "evalsets": ["routing"],
                "schedule": {"every": "1h", "grace": "6h"},
            }
        },
    )
    backend = ScriptedBackend()
    with time_machine.travel(T0, tick=False) as clock:
        daemon = Daemon(cfg, store, pool=pool_for(backend), manual_timer=True)
        daemon.start()
        try:
            assert daemon.timer.jobs() == {"hourly": T0 + timedelta(hours=1)}
            clock.move_to(T0 + timedelta(minutes=59))
            daemon.timer.tick()
            assert daemon.wait_idle(10) and scheduled_runs(store) == []
            clock.move_to(T0 + timedelta(hours=1, seconds=2))
            daemon.timer.tick()
            assert daemon.wait_idle(10)
            assert scheduled_runs(store) == [("hourly", "schedule", T0 + timedelta(hours=1))]
            # four fires missed (2h..5h): one run, for the newest of them
            clock.move_to(T0 + timedelta(hours=5, minutes=30))
            daemon.timer.tick()
            assert daemon.wait_idle(10)
            assert scheduled_runs(store)[1:] == [("hourly", "schedule", T0 + timedelta(hours=5))]
            assert daemon.timer.jobs() == {"hourly": T0 + timedelta(hours=6)}
        finally:
            daemon.shutdown()
    runs = store.runs()
    assert [r.status for r, _ in runs] == ["succeeded", "succeeded"]
    assert all(r.items_done == 8 for r, _ in runs)


def test_fires_past_the_grace_are_skipped(tmp_path: Path, store: Store) -> None:
    cfg = make_config(
        tmp_path,
        {
            "hourly": {
                "models": ["router"],
                "evalsets": ["routing"],
                "schedule": {"every": "1h", "grace": "10m"},
            }
        },
    )
    with time_machine.travel(T0, tick=False) as clock:
        daemon = Daemon(cfg, store, pool=pool_for(ScriptedBackend()), manual_timer=True)
        daemon.start()
        try:
            clock.move_to(T0 + timedelta(hours=1, minutes=30))
            daemon.timer.tick()
            assert daemon.wait_idle(10)
            assert scheduled_runs(store) == []
        finally:
            daemon.shutdown()


def test_missed_fire_arithmetic_for_interval_and_cron() -> None:
    every = make_trigger(every=timedelta(hours=6), anchor=T0)
    assert latest_missed_fire(every, T0, T0 + timedelta(hours=5)) is None
    assert latest_missed_fire(every, T0, T0 + timedelta(hours=20)) == T0 + timedelta(hours=18)
    cron = make_trigger(cron="0 3 * * *", timezone="Europe/Berlin")
    last = datetime(2026, 1, 5, 2, 0, tzinfo=timezone.utc)  # 03:00 in Berlin (UTC+1)
    missed = latest_missed_fire(cron, last, last + timedelta(days=3, hours=1))
    assert missed == datetime(2026, 1, 8, 2, 0, tzinfo=timezone.utc)


def test_catch_up_after_downtime_queues_one_run(tmp_path: Path, store: Store) -> None:
    jobs = {
        "sixhourly": {
            "models": ["router"],
            "evalsets": ["routing"],
            "schedule": {"every": "6h", "grace": "2h"},
        }
    }
    cfg = make_config(tmp_path, jobs)
    with time_machine.travel(T0, tick=False) as clock:
        first = Daemon(cfg, store, pool=pool_for(ScriptedBackend()), manual_timer=True)
        first.start()
        first.enqueue(WorkItem("sixhourly", "schedule", T0))
        assert first.wait_idle(10)
        first.shutdown()
        # down for 19 hours: fires at 6h, 12h and 18h were missed; 18h is within the 2h grace
        clock.move_to(T0 + timedelta(hours=19))
        second = Daemon(cfg, store, pool=pool_for(ScriptedBackend()), manual_timer=True)
        second.start()
        try:
            assert second.wait_idle(10)
            assert scheduled_runs(store) == [
                ("sixhourly", "schedule", T0),
                ("sixhourly", "catch-up", T0 + timedelta(hours=18)),
            ]
            # the interval keeps its phase across restarts
            assert second.timer.jobs() == {"sixhourly": T0 + timedelta(hours=24)}
        finally:
            second.shutdown()
        clock.move_to(T0 + timedelta(hours=18 + 6 + 5))  # 5 h after a missed fire: beyond grace
        third = Daemon(cfg, store, pool=pool_for(ScriptedBackend()), manual_timer=True)
        third.start()
        try:
            assert third.catch_up(T0 + timedelta(hours=29)) == []
        finally:
            third.shutdown()


def test_jobs_come_from_the_config_at_every_start(tmp_path: Path, store: Store) -> None:
    sched = {"every": "1h"}
    a = make_config(
        tmp_path,
        {
            "x": {"models": ["router"], "evalsets": ["routing"], "schedule": sched},
            "y": {"models": ["router"], "evalsets": ["routing"], "schedule": sched},
            "adhoc": {"models": ["router"], "evalsets": ["routing"]},
        },
    )
    first = Daemon(a, store, pool=pool_for(ScriptedBackend()), manual_timer=True)
    first.start()
    assert set(first.timer.jobs()) == {"x", "y"}
    first.shutdown()
    b = make_config(
        tmp_path,
        {
            "y": {"models": ["router"], "evalsets": ["routing"], "schedule": sched},
            "z": {"models": ["router"], "evalsets": ["routing"], "schedule": {"cron": "*/5 * * * *"}},
        },
    )
    second = Daemon(b, store, pool=pool_for(ScriptedBackend()), manual_timer=True)
    second.start()
    try:
        assert set(second.timer.jobs()) == {"y", "z"}
        assert second.job_intervals == {"y": 3600.0, "z": 300.0}
    finally:
        second.shutdown()


def test_one_run_at_a_time_per_job(tmp_path: Path, store: Store) -> None:
    cfg = make_config(tmp_path, {"j": {"models": ["router"], "evalsets": ["routing"]}})
    daemon = Daemon(cfg, store, pool=pool_for(ScriptedBackend(delay=0.2)), manual_timer=True)
    daemon.start()
    try:
        assert daemon.enqueue(WorkItem("j", "manual"))
        assert not daemon.enqueue(WorkItem("j", "manual"))  # queued or running: not twice
        assert daemon.wait_idle(20)
        assert daemon.enqueue(WorkItem("j", "manual"))
        assert daemon.wait_idle(20)
    finally:
        daemon.shutdown()
    assert len(store.runs()) == 2


def test_a_job_that_cannot_succeed_fails_its_runs_and_others_go_on(tmp_path: Path, store: Store) -> None:
    cfg = make_config(
        tmp_path,
        {
            "broken": {"models": ["ghost"], "evalsets": ["routing"]},
            "fine": {"models": ["router"], "evalsets": ["routing"]},
        },
    )
    daemon = Daemon(cfg, store, pool=pool_for(ScriptedBackend()), manual_timer=True)
    daemon.start()
    try:
        for _ in range(2):
            daemon.enqueue(WorkItem("broken", "manual"))
            daemon.enqueue(WorkItem("fine", "manual"))
            assert daemon.wait_idle(20)
    finally:
        daemon.shutdown()
    by_job: dict[str, list[Any]] = {}
    for run, _ in store.runs():
        by_job.setdefault(run.job or "", []).append(run)
    assert [r.status for r in by_job["broken"]] == ["failed", "failed"]
    assert all(
        "model failed to load" in (r.error or "") and "gone" in (r.error or "") for r in by_job["broken"]
    )
    assert [r.status for r in by_job["fine"]] == ["succeeded", "succeeded"]


def test_second_daemon_is_refused_until_the_first_stops(tmp_path: Path, store: Store) -> None:
    cfg = make_config(tmp_path, {"j": {"models": ["router"], "evalsets": ["routing"]}})
    first = Daemon(cfg, store, pool=pool_for(ScriptedBackend()), manual_timer=True)
    first.start()
    other = Store.open(cfg.database_url())
    try:
        second = Daemon(cfg, other, pool=pool_for(ScriptedBackend()), manual_timer=True, pid=first.pid)
        with pytest.raises(LeaseHeldError, match="another monitor daemon is running against this database"):
            second.start()
        first.shutdown()
        third = Daemon(cfg, other, pool=pool_for(ScriptedBackend()), manual_timer=True)
        third.start()
        third.shutdown()
    finally:
        other.close()


def test_lease_of_a_dead_process_or_expired_is_taken_over(tmp_path: Path, store: Store) -> None:
    assert store.acquire_lease("h:1:a", host="h", pid=999_999_999, ttl_s=60) is None
    alive = store.acquire_lease("h:2:b", host="h", pid=2, ttl_s=60, is_alive=lambda pid: True)
    assert alive is not None and alive.holder == "h:1:a"
    assert store.acquire_lease("h:2:b", host="h", pid=2, ttl_s=60, is_alive=lambda pid: False) is None
    assert (
        store.acquire_lease(
            "other:3:c", host="other", pid=3, ttl_s=60, now=datetime.now(timezone.utc) + timedelta(seconds=61)
        )
        is None
    )
    assert not store.renew_lease("h:2:b", 60)  # lost it
    assert store.renew_lease("other:3:c", 60)


def test_run_now_requests_are_served_once(tmp_path: Path, store: Store) -> None:
    cfg = make_config(tmp_path, {"j": {"models": ["router"], "evalsets": ["routing"]}})
    daemon = Daemon(cfg, store, pool=pool_for(ScriptedBackend()), manual_timer=True)
    daemon.start()
    try:
        store.request_run("j", "test")
        store.request_run("nope", "test")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not store.runs():
            time.sleep(0.1)
        assert daemon.wait_idle(15)
    finally:
        daemon.shutdown()
    runs = store.runs()
    assert [(r.job, r.trigger, r.status) for r, _ in runs] == [("j", "manual", "succeeded")]
    assert store.take_run_requests() == []


def test_stop_mid_run_interrupts_and_the_next_start_resumes_without_recomputing(
    tmp_path: Path, store: Store
) -> None:
    cfg = make_config(tmp_path, {"j": {"models": ["router"], "evalsets": ["routing"]}}, items=40, chunk=4)
    slow = ScriptedBackend(delay=0.15)
    daemon = Daemon(cfg, store, pool=pool_for(slow), manual_timer=True)
    daemon.start()
    daemon.enqueue(WorkItem("j", "manual"))
    while len(slow.items_seen) < 12:
        time.sleep(0.02)
    started = time.monotonic()
    assert daemon.shutdown()
    assert time.monotonic() - started < 2.0
    ((run, _),) = store.runs()
    assert run.status == "interrupted" and 12 <= run.items_done < 40
    done_before = store.completed_item_ids(run.id)  # type: ignore[arg-type]
    assert len(done_before) == run.items_done
    fresh = ScriptedBackend()
    second = Daemon(cfg, store, pool=pool_for(fresh), manual_timer=True)
    second.start()
    try:
        assert second.wait_idle(20)
    finally:
        second.shutdown()
    ((resumed, _),) = store.runs()
    assert resumed.id == run.id and resumed.status == "succeeded" and resumed.error is None
    assert resumed.items_done == 40
    assert not set(fresh.items_seen) & done_before
    assert sorted(fresh.items_seen + sorted(done_before)) == sorted(f"i{k}" for k in range(40))
    assert resumed.metrics["acc"]["n"] == 40 and resumed.metrics["acc"]["value"] == pytest.approx(0.25)


def test_retention_prunes_old_item_results_but_keeps_runs_and_the_pinned_baseline(
    tmp_path: Path, store: Store
) -> None:
    from monitor.analysis.baselines import pin_baseline

    cfg = make_config(tmp_path, {"j": {"models": ["router"], "evalsets": ["routing"]}}, items=8)
    cfg = cfg.model_copy(
        update={
            "retention": cfg.retention.model_copy(
                update={"item_results": timedelta(days=30), "batch_size": 10}
            )
        }
    )
    with time_machine.travel(T0, tick=False) as clock:
        daemon = Daemon(cfg, store, pool=pool_for(ScriptedBackend()), manual_timer=True)
        daemon.start()
        try:
            for _ in range(3):
                assert daemon.enqueue(WorkItem("j", "manual"))
                assert daemon.wait_idle(20)
            first, second, third = sorted(run.id for run, _ in store.runs())  # type: ignore[type-var]
            pin_baseline(store, cfg.baselines_dir(), "router", "routing", first)
            clock.move_to(T0 + timedelta(days=20))
            assert daemon.prune() == 0  # nothing is 30 days old yet
            assert daemon.enqueue(WorkItem("j", "manual"))
            assert daemon.wait_idle(20)
            clock.move_to(T0 + timedelta(days=40))
            assert daemon.prune() == 16  # the second and third runs' items, in batches of 10
        finally:
            daemon.shutdown()
    runs = {run.id: run for run, _ in store.runs()}
    assert len(runs) == 4 and all(
        run.metrics["acc"]["n"] == 8 for run in runs.values()
    )  # runs and metrics kept
    assert len(store.item_results(first)) == 8  # the baseline's items stay
    assert store.item_results(second) == [] and store.item_results(third) == []
    newest = max(runs)
    assert len(store.item_results(newest)) == 8  # 20 days old: kept
