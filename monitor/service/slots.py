"""``monitor run JOB --slot SLOT``: one fire, claimed in the database, for schedulers that already run.

Kubernetes CronJobs, Airflow or systemd timers on several hosts may start the
same job for the same slot; the database decides who runs it
(:meth:`~monitor.store.fires.FiresMixin.claim_fire`): each fire is made exactly
once, and a claimant that died is taken over by the next one, which resumes its
interrupted run and makes the rest (the same :class:`~monitor.service.fires.FireRunner`
the daemon uses).  While it works the claimant renews its claim; every write of
a run or the fire checks the claim's epoch, so a claimant that was paused past
its claim and taken over writes nothing when it wakes.

``--slot auto`` is the job's newest scheduled time not after now, so a CronJob
and a daemon on the same schedule name the same fire (``job@time``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from monitor.config import MonitorConfig
from monitor.errors import InputError, LeaseLostError, NotFoundError
from monitor.schedule import latest_missed_fire, make_trigger, typical_interval
from monitor.service.after_job import make_notifier
from monitor.service.daemon import pid_alive
from monitor.service.fires import FireRunner, RunSlots
from monitor.service.pool import ModelPool
from monitor.store import FireRecord, RunRecord, Store, fire_key, utcnow

log = logging.getLogger("monitor.service.slots")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass
class SlotOutcome:
    """What a claimant did: ``ran`` (completed the fire), ``done`` (finished before), ``held``
    (another claimant is on it), ``stopped`` (asked to stop: the fire stays open for the next)."""

    outcome: str
    key: str
    holder: str | None = None
    #: ``claimed`` (a new fire) or ``resumed`` (taken over from a claimant that died), when ours.
    claim: str | None = None
    #: Earlier fires of the job whose claimant had died, completed first.
    resumed: list[str] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)


def slot_time(cfg: MonitorConfig, job: str, now: datetime) -> datetime:
    """``--slot auto``: the job's newest scheduled time not after ``now``.

    A cron schedule's own fire times; an ``every`` schedule's multiples of the
    interval since the Unix epoch (the same on every host, with no anchor to share).
    """
    schedule = cfg.jobs[job].schedule
    if schedule is None:
        raise InputError(f"--slot auto needs a schedule, and job {job!r} has none; name the slot instead")
    if schedule.every is not None:
        step = schedule.every.total_seconds()
        return EPOCH + timedelta(seconds=step * ((now - EPOCH).total_seconds() // step))
    trigger = make_trigger(cron=schedule.cron, timezone=schedule.timezone)
    span = max(typical_interval(trigger, now), 60.0)
    fired = latest_missed_fire(trigger, now - timedelta(seconds=2 * span + 1), now)
    if fired is None:
        raise InputError(f"job {job!r}: no scheduled time in the last {2 * span:.0f} s to take as the slot")
    return fired


def slot_key(cfg: MonitorConfig, job: str, slot: str, now: datetime) -> tuple[str, str, datetime | None]:
    """The fire's key, trigger and scheduled time for ``slot`` (``auto`` or a name of the caller's)."""
    if slot == "auto":
        when = slot_time(cfg, job, now)
        return fire_key(job, "schedule", when), "schedule", when
    if not slot or len(slot) > 200 or any(c.isspace() for c in slot):
        raise InputError(f"--slot {slot!r}: a slot is 'auto' or a name of 1-200 characters without spaces")
    return fire_key(job, "slot", None, f"slot-{slot}"), "slot", None


def run_slot(
    store: Store,
    cfg: MonitorConfig,
    job: str,
    slot: str,
    *,
    pool: ModelPool | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], datetime] = utcnow,
    on_finished: Callable[[RunRecord], None] | None = None,
    slots: RunSlots | None = None,
) -> SlotOutcome:
    """Claim the fire of ``job`` for ``slot`` and complete it (after any earlier fire of the job
    whose claimant died).  Raises :class:`~monitor.errors.LeaseLostError` when a claim was
    taken over while this process worked (it wrote nothing after that).

    The fire's served runs go out at once as the daemon's do, bounded by ``slots`` (one
    :class:`~monitor.service.fires.RunSlots` for every fire of this call, or the caller's,
    shared with its other fires)."""
    if job not in cfg.jobs:
        raise NotFoundError(f"unknown job {job!r}; configured: {', '.join(cfg.jobs) or 'none'}")
    key, trigger, scheduled_for = slot_key(cfg, job, slot, clock())
    host = socket.gethostname()
    holder = f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    ttl_s = cfg.daemon.lease_ttl.total_seconds()
    stop = stop or threading.Event()
    outcome = SlotOutcome("ran", key)
    own_pool = pool is None
    pool = pool or ModelPool(max_models=cfg.daemon.max_loaded_models)

    def finished(run: RunRecord) -> None:
        outcome.runs.append(run)
        if on_finished is not None:
            on_finished(run)

    runner = FireRunner(
        store,
        lambda: cfg,
        pool,
        notify=make_notifier(cfg),
        should_stop=stop.is_set,
        on_finished=finished,
        clock=clock,
        slots=slots or RunSlots(cfg.daemon.max_concurrent_runs),
    )
    try:
        for earlier in store.stale_open_fires(job, exclude_key=key):
            claim = store.claim_fire(
                job,
                key=earlier.key,
                trigger=earlier.trigger,
                scheduled_for=earlier.scheduled_for,
                holder=holder,
                host=host,
                ttl_s=ttl_s,
                is_alive=pid_alive,
            )
            if claim.ours:
                log.info(
                    "fire %s of job %s was left open by a claimant that died: completing it", earlier.key, job
                )
                if not _work(store, runner, claim.fire, ttl_s, stop):
                    outcome.outcome = "stopped"
                    return outcome
                outcome.resumed.append(earlier.key)
        claim = store.claim_fire(
            job,
            key=key,
            trigger=trigger,
            scheduled_for=scheduled_for,
            holder=holder,
            host=host,
            ttl_s=ttl_s,
            is_alive=pid_alive,
        )
        if not claim.ours:
            outcome.outcome, outcome.holder = claim.outcome, claim.holder
            return outcome
        outcome.claim = claim.outcome
        if claim.outcome == "resumed":
            log.info("fire %s was left open by a claimant that died: resuming it", key)
        if not _work(store, runner, claim.fire, ttl_s, stop):
            outcome.outcome = "stopped"
        return outcome
    finally:
        if own_pool:
            pool.close()


def _work(store: Store, runner: FireRunner, fire: FireRecord, ttl_s: float, stop: threading.Event) -> bool:
    """Complete ``fire`` while a thread renews the claim; true when the fire was closed."""
    lost: list[str] = []
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(max(0.2, ttl_s / 3)):
            try:
                if not store.renew_claim(ttl_s):
                    lost.append("the claim was taken over")
                    stop.set()
                    return
            except Exception as exc:  # a storage fault: the writes will say so
                log.warning("could not renew the claim of %s: %s", fire.key, exc)

    thread = threading.Thread(target=heartbeat, name="monitor-claim", daemon=True)
    thread.start()
    try:
        closed = runner.run_fire(fire)
    finally:
        done.set()
        thread.join(5)
    if lost:
        raise LeaseLostError(
            f"this process lost its claim of fire {fire.key}: {lost[0]}; nothing more was written"
        )
    if closed:
        store.fence = None
    else:
        store.release_claim()  # stopped: the next claimant resumes at once
    return closed
