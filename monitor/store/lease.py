"""The daemon's single-instance lease."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, update
from sqlmodel import Session, col

from monitor.errors import StoreError
from monitor.store._mixin import Fence, StoreMixin
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
        The take-over is a compare-and-swap on the old holder, safe on any database,
        and grows the lease's epoch: from then on this store fences its run and fire
        writes with it (:attr:`fence`), so a holder that was paused past its lease
        and taken over writes nothing when it wakes.

        Raises:
            StoreError: the database cannot be written (read-only, full): one line.
        """
        from sqlalchemy.exc import SQLAlchemyError

        from monitor.store._errors import describe_db_error, redact_url

        try:
            return self._acquire_lease(holder, host=host, pid=pid, ttl_s=ttl_s, is_alive=is_alive, now=now)
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot take the daemon lease in {redact_url(str(self.engine.url))}: {describe_db_error(exc)}"
            ) from exc

    def _acquire_lease(
        self,
        holder: str,
        *,
        host: str,
        pid: int,
        ttl_s: float,
        is_alive: Callable[[int], bool] | None,
        now: datetime | None,
    ) -> DaemonLease | None:
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
                    s.add(DaemonLease(name="daemon", acquired_at=now, epoch=1, **fields))
                    try:
                        s.commit()
                        self.fence = Fence(holder, 1)
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
                epoch = (current.epoch or 0) + 1
                result = cast(
                    "CursorResult[Any]",
                    s.execute(
                        update(DaemonLease)
                        .where(
                            col(DaemonLease.name) == "daemon",
                            col(DaemonLease.holder) == current.holder,
                            col(DaemonLease.epoch) == current.epoch,
                        )
                        .values(acquired_at=now, epoch=epoch, **fields)
                    ),
                )
                s.commit()
                if result.rowcount == 1:
                    self.fence = Fence(holder, epoch)
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
        """Hand the lease back (a successor takes it at once); a no-op when it is no longer ours.

        The row is kept, with its epoch, and only made free: epochs never repeat.
        """
        with self.session() as s:
            s.execute(
                update(DaemonLease)
                .where(col(DaemonLease.name) == "daemon", col(DaemonLease.holder) == holder)
                .values(holder="", expires_at=utcnow() - timedelta(seconds=1))
            )
        if self.fence is not None and self.fence.holder == holder:
            self.fence = None

    def current_lease(self) -> DaemonLease | None:
        with self.session() as s:
            return s.get(DaemonLease, "daemon")
