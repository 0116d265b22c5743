"""The daemon: scheduled runs, crash recovery, run-now requests and a graceful stop.

Threads and their jobs:

- APScheduler (behind :class:`~monitor.schedule.JobTimer`) only keeps time: a
  fire puts the job on the work queue.
- ``daemon.max_concurrent_runs`` workers execute the queue, a fire each; a job
  already queued or running is not queued twice.  A fire's runs against
  OpenAI-compatible endpoints go out at once, at most ``max_concurrent_runs``
  runs in flight across all fires (one :class:`~monitor.service.fires.RunSlots`
  for the process), each endpoint bounded by its ``max_concurrency`` across every
  job (:class:`~monitor.backends.openai.EndpointGate`); in-process (``hf``) runs
  take their device's lock, one at a time per device, so models and CPU are never
  contended.  With ``max_concurrent_runs: 1`` the daemon is the serial worker:
  one fire, one run at a time.
- A heartbeat renews the single-instance lease; a poller turns run-now requests
  from the database into queue entries.
- A release watcher scans the watched base-model families when due; a new
  release is stored and its challenger job queued (:mod:`monitor.service.releases.watch`).
- With ``retention.item_results`` set, a pruner deletes old per-item results in
  small batches (never a pinned baseline's run).

Every fire the daemon takes (scheduled, catch-up, run-now, release) is recorded
before its runs (:mod:`monitor.store.fires`), so that a restart completes it: the
interrupted run resumes, the runs not made yet are made, then the after-job work
(input drift, recommendations) runs once and the fire is closed.  A fire already
done is never redone.

Runs commit their items in chunks.  A run found ``running`` at start was
interrupted by a crash; it is marked so and resumed, skipping the items already
stored.  On SIGTERM/SIGINT every run in flight stops after the chunk in hand and
is marked ``interrupted`` (and resumed at the next start), its fire stays open,
and the daemon exits within the configured shutdown timeout.

Faults: every run and fire write checks the lease's epoch in its own transaction
(fencing), so a daemon paused past its lease and taken over writes nothing when
it wakes: it stops (:attr:`Daemon.lost_lease`).  A write that fails (a read-only
or full database) makes readiness false until one succeeds; the run in hand is
left ``interrupted`` with the reason once the database takes writes again, and
its fire is resumed.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from monitor.config import JobConfig, MonitorConfig
from monitor.errors import LeaseHeldError, LeaseLostError, MonitorError, StoreError
from monitor.evals.evalset import load_evalset
from monitor.schedule import JobTimer, latest_missed_fire, make_trigger, typical_interval
from monitor.service.after_job import make_notifier
from monitor.service.fires import FireRunner, RunSlots, resumable
from monitor.service.plan import RunPlan, plan_runs
from monitor.service.pool import ModelPool
from monitor.service.releases.challengers import pending_challenger_jobs, stale_challenger_jobs
from monitor.service.releases.effective import effective_config
from monitor.service.releases.sources import ReleaseSource
from monitor.service.releases.watch import ReleaseWatcher
from monitor.store import FireRecord, RunRecord, Store, as_utc, fire_key, utcnow

log = logging.getLogger("monitor.service.daemon")
Clock = Callable[[], datetime]


#: Seconds between attempts to record a run after a storage fault (doubling up to the last).
STORAGE_RETRY_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class WorkItem:
    """One entry of the work queue: a fire of a job (recorded when queued), or one stored run to resume
    (a run from before fires were recorded)."""

    job: str
    trigger: str
    scheduled_for: datetime | None = None
    resume_run_id: int | None = None
    fire_id: int | None = None

    @property
    def key(self) -> str:
        """What the queue coalesces on: one fire per job at a time."""
        return self.job if self.resume_run_id is None else f"resume:{self.resume_run_id}"


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Daemon:
    """Runs the configured jobs on their schedules until stopped."""

    def __init__(
        self,
        config: MonitorConfig,
        store: Store,
        *,
        pool: ModelPool | None = None,
        clock: Clock = utcnow,
        manual_timer: bool = False,
        host: str | None = None,
        pid: int | None = None,
        release_sources: dict[str, ReleaseSource] | None = None,
    ) -> None:
        #: The configuration as written; ``config`` adds the releases found so far (see ``monitor.service.releases.watch``).
        self.declared_config = config
        self.config = config
        self.store = store
        settings = config.daemon
        self.pool = pool if pool is not None else ModelPool(max_models=settings.max_loaded_models)
        self.clock = clock
        self.host = host or socket.gethostname()
        self.pid = pid or os.getpid()
        self.holder = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self.lease_ttl_s = settings.lease_ttl.total_seconds()
        self.poll_s = settings.poll_interval.total_seconds()
        self.shutdown_timeout_s = settings.shutdown_timeout.total_seconds()
        self.timer = JobTimer(self._on_fire, manual=manual_timer)
        self._manual = manual_timer
        self.started_at: datetime | None = None
        self.job_intervals: dict[str, float] = {}
        self.plan_errors: dict[str, int] = {}
        self.on_run_finished: Callable[[RunRecord], None] | None = None
        #: Called when a run is made or resumed: ``(plan, run_id, resumed)``.
        self.on_run_started: Callable[[RunPlan, int, bool], None] | None = None
        #: Writes webhook events into the outbox in the caller's transaction (None: no endpoints).
        self.notify = make_notifier(config)
        #: Called after anything may have written an event (the webhook sender's wake-up).
        self.on_events: Callable[[], None] | None = None
        self._queue: queue.Queue[WorkItem | None] = queue.Queue()
        self._pending: set[str] = set()
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._idle = threading.Event()
        self._idle.set()
        #: The jobs whose fires the workers have in hand.
        self._running: set[str] = set()
        self.workers = settings.max_concurrent_runs
        #: The bound on runs in flight and the devices' locks, shared by every worker's fire.
        self.slots = RunSlots(settings.max_concurrent_runs)
        self.watcher = ReleaseWatcher(store, config, sources=release_sources, notify=self.notify)
        #: Set when another daemon took the lease over while this one worked: it stopped, fenced.
        self.lost_lease: str | None = None
        self._holds_lease = False
        self._storage_faults = 0
        #: Completes fires (shared with ``monitor run --slot``).
        self.fires = FireRunner(
            store,
            lambda: self.config,
            self.pool,
            notify=self.notify,
            should_stop=self._stop.is_set,
            on_finished=self._on_run_finished,
            on_started=self._on_run_started,
            wake=self._wake_sender,
            clock=self.clock,
            slots=self.slots,
        )

    # --- lifecycle -------------------------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the single-instance lease (the first step of :meth:`start`; the process binds its port after).

        Raises:
            LeaseHeldError: another daemon is running against the same database.
            StoreError: the database cannot be written (read-only, full).
        """
        if self._holds_lease:
            return
        holder = self.store.acquire_lease(
            self.holder, host=self.host, pid=self.pid, ttl_s=self.lease_ttl_s, is_alive=pid_alive
        )
        if holder is not None:
            raise LeaseHeldError(
                f"another monitor daemon is running against this database ({holder.holder}, "
                f"last heartbeat {as_utc(holder.heartbeat_at):%Y-%m-%d %H:%M:%S} UTC, "
                f"lease until {as_utc(holder.expires_at):%H:%M:%S} UTC); stop it first or use another database"
            )
        self._holds_lease = True

    def release(self) -> None:
        """Hand the lease back (after :meth:`acquire` when the process cannot go on, e.g. its port is taken)."""
        if self._holds_lease:
            self._holds_lease = False
            self.store.release_lease(self.holder)

    def start(self) -> None:
        """Take the lease, recover interrupted fires and runs, register the schedules and start working.

        Raises:
            LeaseHeldError: another daemon is running against the same database.
            StoreError: the database cannot be written (read-only, full).
        """
        self.acquire()
        self.started_at = self.clock()
        self.watcher.register_configured()
        self.refresh_releases()
        self.recover()
        self.register_jobs()
        self.catch_up(self.clock())
        self.queue_release_evaluations()
        self.timer.start()
        workers = [(f"worker-{i}" if i else "worker", self._work) for i in range(self.workers)]
        threads: list[tuple[str, Callable[[], None]]] = [
            *workers,
            ("heartbeat", self._heartbeat),
            ("requests", self._poll),
        ]
        if self.watcher.sources and not self._manual:
            # With a manual timer (tests drive time) the caller scans with scan_releases().
            threads.append(("releases", self._watch))
        if self.config.retention.item_results is not None and not self._manual:
            threads.append(("retention", self._retain))
        for name, target in threads:
            thread = threading.Thread(target=target, name=f"monitor-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("daemon started (%s), %d scheduled jobs", self.holder, len(self.job_intervals))

    def request_stop(self) -> None:
        """Stop taking new work; the run in hand stops after its current chunk."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def current_job(self) -> str | None:
        """The job(s) whose fires are in hand, comma-separated (None when the workers are idle)."""
        with self._pending_lock:
            return ", ".join(sorted(self._running)) or None

    def shutdown(self) -> bool:
        """Stop, wait up to the shutdown timeout for the worker, release the lease; true if clean.

        False: the worker is still inside a chunk or a model load; its run was recorded
        ``interrupted`` and the lease released, and the caller must exit at once with
        ``os._exit`` (never through interpreter shutdown, which aborts around native threads).
        """
        self.request_stop()
        self.timer.shutdown()
        for _ in range(self.workers):
            self._queue.put(None)
        deadline = time.monotonic() + self.shutdown_timeout_s
        clean = True
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
            clean = clean and not thread.is_alive()
        if clean:
            self.pool.close()
            if self.lost_lease is None:
                try:
                    self.release()
                except StoreError as exc:  # the lease expires; the next start takes it over
                    log.warning("could not release the lease: %s", exc)
            return True
        # The chunk or model load in hand is inside native code and cannot be interrupted safely.
        # Record the run as interrupted and hand the lease back through the database, so that the
        # next start resumes at once; the caller then exits without waiting for the native code
        # (an interpreter shutdown around a thread inside torch ends in SIGABRT).
        reason = (
            f"the daemon stopped after its shutdown timeout ({self.config.daemon.shutdown_timeout}) "
            "before the chunk or model load in hand reached a safe point"
        )
        try:
            if self.lost_lease is None:
                for run in self.store.unfinished_runs():
                    if run.id is not None and run.status == "running":
                        self.store.finish_run(run.id, status="interrupted", error=reason)
                self.release()
        except Exception as exc:  # a storage fault: the lease expires and the next start recovers
            log.warning("could not record the interrupted run: %s", exc)
        log.warning("shutdown timed out with a run in progress; it will be resumed at the next start")
        return False

    # --- scheduling ----------------------------------------------------------------------------------

    def register_jobs(self) -> None:
        """Register every scheduled job from the configuration under its explicit id."""
        now = self.clock()
        for name, job in self.config.jobs.items():
            if job.schedule is None:
                continue
            trigger = self._trigger(name, job)
            self.timer.add(name, trigger, grace=job.schedule.grace)
            self.job_intervals[name] = typical_interval(trigger, now)

    def _trigger(self, name: str, job: JobConfig) -> object:
        schedule = job.schedule
        assert schedule is not None
        every = schedule.every
        anchor = self.store.last_fire_time(name) if every else None
        if anchor is not None and anchor > self.clock():
            anchor = None  # a clock that went backwards: start afresh
        return make_trigger(every=every, cron=schedule.cron, timezone=schedule.timezone, anchor=anchor)

    def catch_up(self, now: datetime) -> list[WorkItem]:
        """Queue one run per job whose fires were missed while the daemon was down (within grace)."""
        queued: list[WorkItem] = []
        for name, job in self.config.jobs.items():
            if job.schedule is None:
                continue
            last = self.store.last_fire_time(name)
            if last is None:
                if job.schedule.run_at_start:
                    queued.append(WorkItem(name, "schedule", now))
                continue
            trigger = make_trigger(
                every=job.schedule.every,
                cron=job.schedule.cron,
                timezone=job.schedule.timezone,
                anchor=last,
            )
            missed = latest_missed_fire(trigger, last, now)
            if missed is None:
                continue
            if now - missed > job.schedule.grace:
                log.info("job %s missed its run at %s, beyond the grace; waiting for the next", name, missed)
                continue
            queued.append(WorkItem(name, "catch-up", missed))
        return [item for item in queued if self.enqueue(item)]

    def _on_fire(self, job: str, scheduled_for: datetime) -> None:
        if not self.enqueue(WorkItem(job, "schedule", scheduled_for)):
            log.info("job %s fired while still queued or running; fires coalesce", job)

    def enqueue(self, item: WorkItem, *, token: str | None = None) -> bool:
        """Take a fire of ``item.job`` and queue it, unless the job has a fire queued or running
        (fires of a busy job coalesce) or this very fire was taken before (exactly-once).

        A new fire is recorded first (``token`` names it when it is not a scheduled
        time: a run-now request, a release); an item with a ``fire_id`` (a fire
        recovered at start) or a ``resume_run_id`` is queued as it is.
        """
        if self._stop.is_set():
            return False
        with self._pending_lock:
            if item.key in self._pending:
                return False
            self._pending.add(item.key)
        if item.fire_id is None and item.resume_run_id is None:
            try:
                fire = self.store.open_fire(
                    item.job,
                    trigger=item.trigger,
                    scheduled_for=item.scheduled_for,
                    key=fire_key(item.job, item.trigger, item.scheduled_for, token or uuid.uuid4().hex),
                )
            except MonitorError as exc:
                log.error("cannot record a fire of job %s: %s", item.job, exc)
                fire = None
            if fire is None:
                with self._pending_lock:
                    self._pending.discard(item.key)
                return False
            item = WorkItem(item.job, item.trigger, item.scheduled_for, fire_id=fire.id)
        self._idle.clear()
        self._queue.put(item)
        return True

    def wait_idle(self, timeout: float) -> bool:
        """Block until the queue is drained (tests and the demo)."""
        return self._idle.wait(timeout)

    def queued_jobs(self) -> list[str]:
        with self._pending_lock:
            return sorted(self._pending)

    # --- releases ------------------------------------------------------------------------------------

    def refresh_releases(self) -> None:
        """Fold the stored releases into the effective configuration (and schedule new challenger jobs)."""
        known = set(self.config.jobs)
        self.config = effective_config(self.declared_config, self.store.releases())
        if self.started_at is None or not self.timer.running:
            return  # at start, register_jobs() schedules them all
        now = self.clock()
        for name, job in self.config.jobs.items():
            if name not in known and job.schedule is not None:
                trigger = self._trigger(name, job)
                self.timer.add(name, trigger, grace=job.schedule.grace)
                self.job_intervals[name] = typical_interval(trigger, now)

    def queue_release_evaluations(self) -> list[str]:
        """Queue the challenger job of every release not evaluated yet."""
        queued = []
        for job in pending_challenger_jobs(self.config, self.store.releases()):
            if self.enqueue(WorkItem(job, "release", self.clock())):
                log.info("queued the challenger evaluation %s", job)
                queued.append(job)
        return queued

    def scan_releases(self) -> list[str]:
        """Scan the watched families that are due; queue the evaluations of new releases."""
        new = self.watcher.scan_due(self.clock())
        if not new:
            return []
        self.refresh_releases()
        self._wake_sender()
        return self.queue_release_evaluations()

    def _watch(self) -> None:
        interval = min(self.poll_s, 1.0)
        while not self._stop.wait(interval):
            try:
                self.scan_releases()
            except MonitorError as exc:
                log.warning("release watcher: %s", exc)
            except Exception:  # the watcher must never take the daemon down
                log.exception("release watcher failed")

    # --- retention -----------------------------------------------------------------------------------

    def prune(self, now: datetime | None = None) -> int:
        """Delete per-item results older than ``retention.item_results`` (never a pinned baseline's run),
        in small transactions with a pause between them, so runs in progress are never held up;
        returns the rows deleted."""
        from monitor.analysis.baselines import BaselineFiles

        retention = self.config.retention
        if retention.item_results is None:
            return 0
        cutoff = (now or self.clock()) - retention.item_results
        keep = {b.run_id for b in BaselineFiles(self.config.baselines_dir()).current()}
        deleted = 0
        while not self._stop.is_set():
            batch = self.store.prune_item_results(cutoff, keep_runs=keep, batch_size=retention.batch_size)
            deleted += batch
            if batch < retention.batch_size:
                break
            self._stop.wait(0.05)
        texts = 0
        while deleted and not self._stop.is_set():  # then the prompts no item refers to any more
            batch = self.store.prune_item_texts(batch_size=retention.batch_size)
            texts += batch
            if batch < retention.batch_size:
                break
            self._stop.wait(0.05)
        if deleted:
            log.info(
                "retention: pruned %d item results of runs finished before %s, and %d stored prompts",
                deleted,
                cutoff,
                texts,
            )
        return deleted

    def _retain(self) -> None:
        every = self.config.retention.every.total_seconds()
        while not self._stop.is_set():
            try:
                self.prune()
            except MonitorError as exc:
                log.warning("retention: %s", exc)
            except Exception:
                log.exception("retention failed")
            if self._stop.wait(every):
                return

    # --- recovery ------------------------------------------------------------------------------------

    def recover(self) -> list[int]:
        """Mark runs left by a crash as interrupted; queue every open fire to be completed (and every
        interrupted run from before fires were recorded to be resumed).  Returns the runs to resume."""
        resumed = []
        open_fires = {fire.id: fire for fire in self.store.open_fires()}
        for run in self.store.unfinished_runs():
            assert run.id is not None
            if run.status == "running":
                self.store.interrupt_crashed_run(run.id, "the daemon stopped during the run")
            if run.fire_id is not None and run.fire_id in open_fires:
                resumed.append(run.id)
                continue  # its fire resumes it
            if run.job is None or run.job not in self.config.jobs:
                self.store.finish_run(
                    run.id,
                    status="failed",
                    error="interrupted run cannot be resumed: its job is no longer configured",
                )
                continue
            self.enqueue(WorkItem(run.job, "resume", as_utc(run.scheduled_for), resume_run_id=run.id))
            resumed.append(run.id)
        for fire in open_fires.values():
            assert fire.id is not None
            log.info("fire %d of job %s was not finished: completing it", fire.id, fire.job)
            self.enqueue(WorkItem(fire.job, fire.trigger, as_utc(fire.scheduled_for), fire_id=fire.id))
        return resumed

    def _resume_plan(self, run_id: int) -> RunPlan | None:
        run = self.store.get_run(run_id)
        model_name = self.store.model_name(run.model_id)
        assert run.job is not None
        if run.evalset_name in self.config.evalsets:
            try:
                load_evalset(self.config.resolve(self.config.evalsets[run.evalset_name]))
            except MonitorError as exc:
                self.store.finish_run(run_id, status="failed", error=f"not resumed: {exc}")
                return None
        try:
            plans = plan_runs(
                self.config, [run.job], trigger=run.trigger, scheduled_for=as_utc(run.scheduled_for)
            )
        except MonitorError as exc:
            self.store.finish_run(run_id, status="failed", error=f"not resumed: {exc}")
            return None
        found = resumable(self.config, run, model_name, plans)
        if isinstance(found, str):
            self.store.finish_run(run_id, status="failed", error=found)
            return None
        return found

    # --- threads -------------------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                self._mark_idle()
                continue
            if item is None:
                break
            requeued = False
            try:
                with self._pending_lock:
                    self._running.add(item.job)
                requeued = self._execute(item)
            except LeaseLostError as exc:
                self._lose_lease(str(exc))
            except Exception:  # one bad job must never stop the others
                log.exception("job %s failed outside any run", item.job)
            finally:
                with self._pending_lock:
                    self._running.discard(item.job)
                    if not requeued:  # a queued item keeps its place: its job is not queued twice
                        self._pending.discard(item.key)
                self._mark_idle()

    def _lose_lease(self, why: str) -> None:
        """Another daemon took the lease over: stop at once, writing nothing more (fenced)."""
        if self.lost_lease is None:
            log.error("%s; stopping without touching the run in hand (the new holder resumes it)", why)
        self.lost_lease = why
        self.request_stop()

    def _mark_idle(self) -> None:
        with self._pending_lock:
            if not self._pending and self._queue.empty():
                self._idle.set()

    def _execute(self, item: WorkItem) -> bool:
        """Do ``item``; true when it was queued again (after a storage fault)."""
        if item.resume_run_id is not None:
            plan = self._resume_plan(item.resume_run_id)
            if plan is None:
                return False
            log.info("resuming run %d of job %s", item.resume_run_id, item.job)
            return self._guarded(item, lambda: self._continue(plan, item.resume_run_id))  # type: ignore[arg-type]
        assert item.fire_id is not None
        return self._guarded(item, lambda: self._run_fire(self.store.get_fire(item.fire_id)))  # type: ignore[arg-type]

    def _guarded(self, item: WorkItem, work: Callable[[], object]) -> bool:
        """Do ``work``; on a storage fault, leave the run in hand resumable once the database takes
        writes again, and queue the item again (true; a lost lease propagates: the daemon stops).

        The item goes back on the queue still counted as pending, so that no other fire of its
        job is queued meanwhile and the daemon is never idle with it waiting.
        """
        try:
            work()
            self._storage_faults = 0
            return False
        except StoreError as exc:
            log.error(
                "job %s: the database refused a write (%s); will resume when it takes writes", item.job, exc
            )
            if not self._await_storage(str(exc), item):
                return False
            # The fault may come back at once (a disk still nearly full): back off between attempts.
            delay = STORAGE_RETRY_S[min(self._storage_faults, len(STORAGE_RETRY_S) - 1)]
            self._storage_faults += 1
            if self._stop.wait(delay):
                return False
            self._idle.clear()
            self._queue.put(item)
            return True

    def _await_storage(self, reason: str, item: WorkItem) -> bool:
        """Retry, with backoff, a real write (the lease's heartbeat) and then marking the running runs
        of ``item`` (its fire's, or the run it resumes) ``interrupted`` with the storage fault's reason;
        true once both succeeded (false: stopping first, or the lease was lost meanwhile).  Other
        workers' runs in flight are theirs to handle."""
        attempt = 0
        while not self._stop.is_set():
            try:
                if not self.store.renew_lease(self.holder, self.lease_ttl_s):
                    self._lose_lease("another daemon took this daemon's lease over during a storage fault")
                    return False
                for run in self.store.unfinished_runs():
                    ours = run.id == item.resume_run_id or (
                        item.fire_id is not None and run.fire_id == item.fire_id
                    )
                    if run.id is not None and run.status == "running" and ours:
                        self.store.finish_run(
                            run.id,
                            status="interrupted",
                            error=f"storage fault, resumed when writes succeed: {reason}",
                        )
                log.info("the database takes writes again: resuming")
                return True
            except StoreError as exc:
                reason = str(exc)
            self._stop.wait(STORAGE_RETRY_S[min(attempt, len(STORAGE_RETRY_S) - 1)])
            attempt += 1
        return False

    def _continue(self, plan: RunPlan, run_id: int) -> RunRecord:
        return self.fires.continue_run(plan, run_id)

    def _run_fire(self, fire: FireRecord) -> None:
        try:
            closed = self.fires.run_fire(fire)
        except (StoreError, LeaseHeldError):
            raise  # a storage fault or a lost lease: handled by the worker (_guarded, _work)
        except MonitorError:  # its eval sets do not load (abandoned, with the reason); counted
            self.plan_errors[fire.job] = self.plan_errors.get(fire.job, 0) + 1
            return
        if closed and not self._stop.is_set():
            for job in stale_challenger_jobs(self.store, self.config):
                if self.enqueue(WorkItem(job, "evalset-changed", self.clock())):
                    log.info("a golden set changed since %s last ran: queued again", job)

    def _on_run_started(self, plan: RunPlan, run_id: int, resumed: bool) -> None:
        if self.on_run_started is not None:
            self.on_run_started(plan, run_id, resumed)

    def _on_run_finished(self, run: RunRecord) -> None:
        if self.on_run_finished is not None:
            self.on_run_finished(run)

    def _wake_sender(self) -> None:
        if self.on_events is not None:
            try:
                self.on_events()
            except Exception:
                log.exception("could not wake the webhook sender")

    def _heartbeat(self) -> None:
        interval = max(0.2, self.lease_ttl_s / 3)
        while not self._stop.wait(interval):
            try:
                if not self.store.renew_lease(self.holder, self.lease_ttl_s):
                    self._lose_lease("another daemon took this daemon's lease over")
            except MonitorError as exc:
                log.warning("could not renew the lease: %s", exc)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.take_run_requests()
            except LeaseLostError as exc:
                self._lose_lease(str(exc))
            except MonitorError as exc:
                log.warning("could not read run-now requests: %s", exc)

    def take_run_requests(self) -> list[int]:
        """Turn pending run-now requests into fires (in one transaction with their pick-up); queue them."""
        with self._pending_lock:
            busy = set(self._pending)
        jobs = {job for job in self.config.jobs if job not in busy}
        queued = []
        for request, fire in self.store.claim_run_requests(jobs):
            if fire is not None and fire.id is not None:
                log.info("run-now request %s for job %s", request.id, request.job)
                if self.enqueue(WorkItem(request.job, "manual", None, fire_id=fire.id)):
                    queued.append(fire.id)
            elif request.job in self.config.jobs:
                log.info(
                    "run-now request %s for job %s: the job is queued or running; it coalesces",
                    request.id,
                    request.job,
                )
            else:
                log.warning("run-now request %s names unknown job %s", request.id, request.job)
        return queued

    # --- state for readiness and metrics -------------------------------------------------------------

    def ready(self) -> tuple[bool, dict[str, bool]]:
        """Readiness: the store answers and takes writes (its last write succeeded) and the scheduler runs."""
        checks = {"store": self.store.ping(), "scheduler": self.timer.running and not self._stop.is_set()}
        return all(checks.values()), checks

    def uptime(self) -> timedelta:
        return self.clock() - self.started_at if self.started_at else timedelta(0)
