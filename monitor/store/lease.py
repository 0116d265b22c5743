"""The daemon's single-instance lease."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, delete, update
from sqlmodel import Session, col

from monitor.errors import StoreError
from monitor.store._mixin import StoreMixin
from monitor.store.tables import DaemonLease, aware, utcnow


class LeaseMixin(StoreMixin):
    """Takes, renews and releases the lease that keeps one daemon per database."""

    def acquire_lease(
        self,
        holder: str,
        *,
        host: str,
        pid: int,
        ttl_s: float,
        is_alive: Callable[[int], bool] | None = None,
        now: datetime | None = None,
    ) -> DaemonLease | None:
        """Take the daemon lease, or return the live lease that another holder keeps.

        The lease is free when absent, expired, already ours, or held by a process
        on this host that no longer exists (``is_alive(pid)`` is false), so a
        daemon killed with ``kill -9`` does not lock its successor out for a whole TTL.
        The take-over is a compare-and-swap on the old holder, safe on any database.
        """
        from datetime import timedelta

        from sqlalchemy.exc import IntegrityError

        now = now or utcnow()
        expires = now + timedelta(seconds=ttl_s)
        fields: dict[str, Any] = {
            "holder": holder,
            "host": host,
            "pid": pid,
            "heartbeat_at": now,
            "expires_at": expires,
        }
        for _ in range(3):
            with Session(self.engine, expire_on_commit=False) as s:
                current = s.get(DaemonLease, "daemon")
                if current is None:
                    s.add(DaemonLease(name="daemon", acquired_at=now, **fields))
                    try:
                        s.commit()
                        return None
                    except IntegrityError:
                        s.rollback()
                        continue
                free = (
                    current.holder == holder
                    or aware(current.expires_at) <= now
                    or (current.host == host and is_alive is not None and not is_alive(current.pid))
                )
                if not free:
                    return current
                result = cast(
                    "CursorResult[Any]",
                    s.execute(
                        update(DaemonLease)
                        .where(col(DaemonLease.name) == "daemon", col(DaemonLease.holder) == current.holder)
                        .values(acquired_at=now, **fields)
                    ),
                )
                s.commit()
                if result.rowcount == 1:
                    return None
        raise StoreError("could not settle the daemon lease after 3 attempts")

    def renew_lease(self, holder: str, ttl_s: float, now: datetime | None = None) -> bool:
        """Extend our lease; false when someone else took it (we must stop)."""
        from datetime import timedelta

        now = now or utcnow()
        with self.session() as s:
            result = cast(
                "CursorResult[Any]",
                s.execute(
                    update(DaemonLease)
                    .where(col(DaemonLease.name) == "daemon", col(DaemonLease.holder) == holder)
                    .values(heartbeat_at=now, expires_at=now + timedelta(seconds=ttl_s))
                ),
            )
            return bool(result.rowcount == 1)

    def release_lease(self, holder: str) -> None:
        with self.session() as s:
            s.execute(
                delete(DaemonLease).where(
                    col(DaemonLease.name) == "daemon", col(DaemonLease.holder) == holder
                )
            )

    def current_lease(self) -> DaemonLease | None:
        with self.session() as s:
            return s.get(DaemonLease, "daemon")
