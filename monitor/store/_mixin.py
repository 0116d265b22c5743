"""What every group of store methods relies on: the engine and a transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from sqlalchemy import Engine
    from sqlmodel import Session


class StoreMixin:
    """The base of the store's method groups; :class:`monitor.store.db.Store` supplies both."""

    if TYPE_CHECKING:
        engine: Engine

        def session(self) -> AbstractContextManager[Session]: ...
