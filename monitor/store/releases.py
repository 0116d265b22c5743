"""Base-model releases found by the release watcher."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy import CursorResult, delete, select, update
from sqlmodel import Session, col

from monitor.store._mixin import StoreMixin
from monitor.store.tables import ReleaseRecord, utcnow


class NewRelease(Protocol):
    """What :meth:`ReleasesMixin.add_release` reads of a release (the watcher's ``Release``)."""

    @property
    def family(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def location(self) -> str: ...
    @property
    def revision(self) -> str | None: ...
    @property
    def details(self) -> Mapping[str, Any]: ...


#: ``on_new(session, record)``: runs in the transaction that stores a new release.
OnNewRelease = Callable[[Session, ReleaseRecord], None]


class ReleasesMixin(StoreMixin):
    """Reads and writes ``releases``."""

    def add_release(
        self, release: NewRelease, on_new: OnNewRelease | None = None, *, evaluated: bool = False
    ) -> ReleaseRecord | None:
        """Store a release (anything with family, name, source, location, revision, details) unless known.

        Returns the new record, or None when a release of that name is already
        stored.  ``on_new(session, record)`` runs in the same transaction (the
        webhook outbox writes its event there).  ``evaluated``: there is nothing
        to evaluate (the release is a fine-tune's own base).
        """
        with self.session() as s:
            now = utcnow()
            known = s.execute(
                select(col(ReleaseRecord.id)).where(col(ReleaseRecord.name) == release.name)
            ).first()
            if known is not None:
                return None
            record = ReleaseRecord(
                family=release.family,
                name=release.name,
                source=release.source,
                location=release.location,
                revision=release.revision,
                details=dict(release.details),
                discovered_at=now,
                evaluated_at=now if evaluated else None,
            )
            s.add(record)
            s.flush()
            if on_new is not None:
                on_new(s, record)
            s.refresh(record)
            return record

    def releases(self, family: str | None = None) -> list[ReleaseRecord]:
        """Stored releases, oldest first."""
        query = select(ReleaseRecord).order_by(col(ReleaseRecord.id))
        if family is not None:
            query = query.where(col(ReleaseRecord.family) == family)
        with self.session() as s:
            return list(s.execute(query).scalars())

    def forget_release(self, name: str) -> bool:
        """Delete a release's row (its runs stay in the history); False when no such release."""
        with self.session() as s:
            result = cast(
                "CursorResult[Any]", s.execute(delete(ReleaseRecord).where(col(ReleaseRecord.name) == name))
            )
            return bool(result.rowcount)

    def mark_release_evaluated(self, release_id: int, when: datetime | None = None) -> None:
        with self.session() as s:
            s.execute(
                update(ReleaseRecord)
                .where(col(ReleaseRecord.id) == release_id)
                .values(evaluated_at=when or utcnow())
            )
