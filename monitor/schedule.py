"""Schedules: ``every: 6h`` intervals and ``cron:`` expressions.

This is the only module that imports APScheduler, so that a change of its API
stays behind one door.
"""

from __future__ import annotations

import re
from datetime import timedelta
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


def cron_trigger(expression: str, timezone: str = "UTC") -> Any:
    """An APScheduler cron trigger for a five-field crontab expression in ``timezone``.

    Raises:
        ValueError: the expression or the time zone is invalid.
    """
    from apscheduler.triggers.cron import CronTrigger

    try:
        return CronTrigger.from_crontab(expression, timezone=timezone)
    except (ValueError, LookupError) as exc:
        raise ValueError(f"invalid cron expression {expression!r} (time zone {timezone}): {exc}") from exc
    except Exception as exc:  # zoneinfo raises its own error types for unknown zones
        raise ValueError(f"invalid cron schedule {expression!r} in time zone {timezone!r}: {exc}") from exc
