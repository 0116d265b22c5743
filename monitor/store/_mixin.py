"""What every group of store methods relies on: the engine and a transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from sqlalchemy import Engine
    from sqlmodel import Session

    from monitor.events import Event, Notify

R = TypeVar("R")


@dataclass(frozen=True)
class Fence:
    """What this process holds: the daemon lease, or (``fire_id``) the claim of one fire by
    ``monitor run --slot``; every write of a run or a fire checks it in its own transaction."""

    holder: str
    epoch: int
    fire_id: int | None = None


def claim_held(fence: Fence) -> tuple[Any, ...]:
    """The conditions that the fire claimed in ``fence`` is still this holder's, under its epoch."""
    from sqlmodel import col

    from monitor.store.tables import FireRecord

    return (
        col(FireRecord.id) == fence.fire_id,
        col(FireRecord.claimed_by) == fence.holder,
        col(FireRecord.claim_epoch) == fence.epoch,
    )


class StoreMixin:
    """The base of the store's method groups; :class:`monitor.store.db.Store` supplies both."""

    #: Set while this store's process holds the daemon lease (:meth:`LeaseMixin.acquire_lease`).
    fence: Fence | None = None

    if TYPE_CHECKING:
        engine: Engine

        def session(self) -> AbstractContextManager[Session]: ...

    def _check_fence(self, s: Session) -> None:
        """Fail the transaction unless this store still holds the lease it took (fencing).

        The check is an ``UPDATE`` of the lease row, the transaction's first write: a
        take-over (which rewrites that row) and this write are serialised by the
        database, so a holder paused past its lease, then woken, finds the new epoch
        and writes nothing (:class:`~monitor.errors.LeaseLostError`).
        """
        fence = self.fence
        if fence is None:
            return
        from sqlalchemy import CursorResult, update
        from sqlmodel import col

        from monitor.errors import LeaseLostError
        from monitor.store.tables import DaemonLease, FireRecord

        if fence.fire_id is not None:
            result = cast(
                "CursorResult[Any]",
                s.execute(update(FireRecord).where(*claim_held(fence)).values(claim_epoch=fence.epoch)),
            )
            if result.rowcount != 1:
                fire = s.get(FireRecord, fence.fire_id)
                now = f"now held by {fire.claimed_by} (epoch {fire.claim_epoch})" if fire else "gone"
                raise LeaseLostError(
                    f"this process lost its claim of fire {fence.fire_id} (epoch {fence.epoch}) while it "
                    f"worked; the claim is {now}. Nothing was written"
                )
            return
        result = cast(
            "CursorResult[Any]",
            s.execute(
                update(DaemonLease)
                .where(
                    col(DaemonLease.name) == "daemon",
                    col(DaemonLease.holder) == fence.holder,
                    col(DaemonLease.epoch) == fence.epoch,
                )
                .values(epoch=fence.epoch)
            ),
        )
        if result.rowcount != 1:
            current = s.get(DaemonLease, "daemon")
            now = f"now held by {current.holder} (epoch {current.epoch})" if current else "now free"
            raise LeaseLostError(
                f"this daemon lost its lease (epoch {fence.epoch}) while it worked; the lease is {now}. "
                "Nothing was written"
            )

    def _add_with_events(
        self, records: Sequence[R], events: Sequence[Event], notify: Notify | None
    ) -> list[R]:
        """Insert ``records`` and hand each event to ``notify`` in one transaction: both exist, or neither."""
        with self.session() as s:
            s.add_all(records)
            if notify is not None:
                for event in events:
                    notify(s, event)
            s.flush()
            for record in records:
                s.refresh(record)
        return list(records)
