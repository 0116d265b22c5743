"""Schedules: ``every: 6h`` intervals and ``cron:`` expressions.

This is the only module that imports APScheduler, so that a change of its API
stays behind one door.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_INTERVAL = re.compile(r"^(?:(\d+)([smhdw]))+$")
_PART = re.compile(r"(\d+)([smhdw])")


def parse_interval(text: str) -> timedelta:
    """Parse ``30s``, ``5m``, ``6h``, ``1d``, ``1h30m`` into a positive timedelta.

    Raises:
        ValueError: not an interval, or zero.
    """
    cleaned = text.strip().lower()
    if not _INTERVAL.match(cleaned):
        raise ValueError(
            f"{text!r} is not an interval; use a number and a unit (s, m, h, d, w), like 30s, 6h or 1h30m"
        )
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(cleaned))
    if seconds <= 0:
        raise ValueError(f"interval {text!r} must be longer than zero")
    return timedelta(seconds=seconds)


class Duration(timedelta):
    """A :class:`timedelta` that remembers how it was written (``24h`` stays ``24h``, not ``1 day``).

    It compares, hashes and computes as a timedelta; ``str()`` gives the text back, so
    messages and stored labels read as the configuration does.
    """

    text: str

    def __new__(cls, text: str) -> Duration:
        value = parse_interval(text)
        self = super().__new__(cls, seconds=value.total_seconds())
        self.text = text.strip()
        return self

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Duration({self.text!r})"

    def __reduce__(self) -> tuple[type[Duration], tuple[str]]:
        return (Duration, (self.text,))


def format_interval(value: timedelta) -> str:
    """An interval as text :func:`parse_interval` reads back: as written for a :class:`Duration`."""
    if isinstance(value, Duration):
        return value.text
    seconds = int(value.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def cron_trigger(expression: str, timezone: str = "UTC") -> Any:
    """An APScheduler cron trigger for a five-field crontab expression in ``timezone``.

    Raises:
        ValueError: the expression or the time zone is invalid.
    """
    from apscheduler.triggers.cron import CronTrigger

    try:
        return CronTrigger.from_crontab(expression, timezone=timezone)
    except (ValueError, LookupError) as exc:
        raise ValueError(f"invalid cron expression {expression!r}: {exc}") from exc
    except Exception as exc:  # zoneinfo raises its own error types for unknown zones
        raise ValueError(f"invalid cron schedule {expression!r} in time zone {timezone!r}: {exc}") from exc


def make_trigger(
    *,
    every: timedelta | None = None,
    cron: str | None = None,
    timezone: str = "UTC",
    anchor: datetime | None = None,
) -> Any:
    """A trigger for a cron expression, or an interval whose phase is kept from ``anchor`` (the last fire).

    Without an anchor an interval first fires one interval from now.
    """
    if cron is not None:
        return cron_trigger(cron, timezone)
    from apscheduler.triggers.interval import IntervalTrigger

    assert every is not None
    start = anchor + every if anchor is not None else None
    return IntervalTrigger(seconds=every.total_seconds(), start_date=start, timezone=timezone)


def latest_missed_fire(
    trigger: Any, last_fire: datetime, now: datetime, limit: int = 100_000
) -> datetime | None:
    """The newest fire time after ``last_fire`` and not after ``now``; ``None`` when none was missed.

    Missed fires coalesce: however many there were, only the newest one matters.
    """
    missed = None
    fire = trigger.get_next_fire_time(last_fire, now)
    for _ in range(limit):
        if fire is None or fire > now:
            break
        if fire > last_fire:
            missed = fire
        following = trigger.get_next_fire_time(fire, now)
        if following is None or following <= fire:
            break
        fire = following
    return missed


def typical_interval(trigger: Any, now: datetime) -> float:
    """Seconds between the next two fires (for a cron schedule, the gap that staleness is judged by)."""
    first = trigger.get_next_fire_time(None, now)
    if first is None:
        return 0.0
    second = trigger.get_next_fire_time(first, first)
    return (second - first).total_seconds() if second is not None else 0.0


FireCallback = Callable[[str, datetime], None]


class JobTimer:
    """Keeps time for the daemon's jobs with APScheduler; running the work is the caller's business.

    Each job is registered under an explicit id, so a restart replaces rather than
    duplicates it and a job removed from the configuration is gone.  Missed fires
    coalesce into one, within ``grace``.  On each fire, ``on_fire(job, scheduled_time)``
    is called with the time the fire was due (the newest, when fires coalesced).
    """

    def __init__(self, on_fire: FireCallback, *, manual: bool = False, timezone: str = "UTC") -> None:
        from apscheduler.events import EVENT_JOB_EXECUTED, JobExecutionEvent
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.schedulers.base import BaseScheduler

        self._on_fire = on_fire
        executors: dict[str, Any] = {"default": ThreadPoolExecutor(1)}
        if manual:
            from apscheduler.executors.debug import DebugExecutor

            class _ManualScheduler(BaseScheduler):
                """A scheduler that only looks at the clock when told to (tests drive the clock)."""

                def shutdown(self, *args: Any, **kwargs: Any) -> None:  # abstract in BaseScheduler
                    super().shutdown(*args, **kwargs)

                def wakeup(self) -> None:
                    pass

            executors = {"default": DebugExecutor()}
            self._scheduler: Any = _ManualScheduler(timezone=timezone, executors=executors)
        else:
            self._scheduler = BackgroundScheduler(timezone=timezone, executors=executors)

        def executed(event: JobExecutionEvent) -> None:
            # Only fires that APScheduler let through (within the misfire grace, coalesced) get here.
            job = self._scheduler.get_job(event.job_id)
            if job is not None:
                self._on_fire(job.name, event.scheduled_run_time)

        self._scheduler.add_listener(executed, EVENT_JOB_EXECUTED)

    def add(self, job: str, trigger: Any, *, grace: timedelta) -> None:
        """Register (or replace) ``job`` under the id ``job:<name>``."""
        self._scheduler.add_job(
            _noop,
            trigger=trigger,
            id=f"job:{job}",
            name=job,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=max(1, int(grace.total_seconds())),
            replace_existing=True,
        )

    def start(self) -> None:
        self._scheduler.start()

    def tick(self) -> None:
        """Process due jobs now (manual mode, for tests driving a controlled clock)."""
        self._scheduler._process_jobs()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    def jobs(self) -> dict[str, datetime | None]:
        """Registered jobs and their next fire times."""
        return {job.name: job.next_run_time for job in self._scheduler.get_jobs()}


def _noop() -> None:
    # The fire itself is handled by the execution listener, which knows the scheduled time.
    return None
