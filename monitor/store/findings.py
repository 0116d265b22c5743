"""Drift and integrity findings (``drift_analyses``): the newest per series, and new ones with their events."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlmodel import col

from monitor.events import Event, Notify
from monitor.store._mixin import StoreMixin
from monitor.store.tables import LATEST_FINDINGS, DriftRecord, ModelRecord


class FindingsMixin(StoreMixin):
    """Reads and writes drift and canary findings."""

    def previous_finding(self, model_id: int, kind: str, source: str) -> DriftRecord | None:
        """The newest finding of one model, kind and source."""
        with self.session() as s:
            return s.execute(
                select(DriftRecord)
                .where(
                    col(DriftRecord.model_id) == model_id,
                    col(DriftRecord.kind) == kind,
                    col(DriftRecord.source) == source,
                )
                .order_by(col(DriftRecord.id).desc())
                .limit(1)
            ).scalar_one_or_none()

    def add_findings(
        self,
        findings: Sequence[DriftRecord],
        events: Sequence[Event] = (),
        notify: Notify | None = None,
    ) -> list[DriftRecord]:
        """Store findings; ``notify(session, event)`` writes each event in the same transaction."""
        if not findings:
            return []
        return self._add_with_events(findings, events, notify)

    def latest_findings(self) -> list[tuple[DriftRecord, str]]:
        """The newest drift or canary record of every (model, kind, source), with the model's name,
        from the roll-up ``latest_findings`` (one row per series, however long the history)."""
        with self.session() as s:
            rows = s.execute(
                select(DriftRecord, col(ModelRecord.name))
                .join(LATEST_FINDINGS, col(DriftRecord.id) == LATEST_FINDINGS.c.finding_id)
                .join(ModelRecord, col(DriftRecord.model_id) == col(ModelRecord.id))
                .order_by(col(ModelRecord.name), col(DriftRecord.kind), col(DriftRecord.source))
            ).all()
            return [(record, name) for record, name in rows]

    def findings(self, model_id: int, kind: str | None = None) -> list[DriftRecord]:
        """Every finding of a model (of one ``kind``: input, behaviour, canary), oldest first."""
        query = select(DriftRecord).where(col(DriftRecord.model_id) == model_id)
        if kind is not None:
            query = query.where(col(DriftRecord.kind) == kind)
        with self.session() as s:
            return list(s.execute(query.order_by(col(DriftRecord.id))).scalars())
