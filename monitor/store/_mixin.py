"""What every group of store methods relies on: the engine and a transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from sqlalchemy import Engine
    from sqlmodel import Session

    from monitor.events import Event, Notify

R = TypeVar("R")


class StoreMixin:
    """The base of the store's method groups; :class:`monitor.store.db.Store` supplies both."""

    if TYPE_CHECKING:
        engine: Engine

        def session(self) -> AbstractContextManager[Session]: ...

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
