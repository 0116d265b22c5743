"""Regression verdicts: read what the next verdict builds on, write verdicts with their events."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlmodel import col

from monitor.events import Event, Notify
from monitor.store._mixin import StoreMixin
from monitor.store.tables import LATEST_VERDICTS, VerdictRecord


class VerdictsMixin(StoreMixin):
    """Reads and writes ``verdicts``."""

    def previous_verdict(
        self, model_id: int, evalset: str, strategy: str, metric: str, *, before_run: int
    ) -> VerdictRecord | None:
        """The newest verdict of one series and metric from a run other than ``before_run``."""
        with self.session() as s:
            return s.execute(
                select(VerdictRecord)
                .where(
                    col(VerdictRecord.model_id) == model_id,
                    col(VerdictRecord.evalset_name) == evalset,
                    col(VerdictRecord.strategy) == strategy,
                    col(VerdictRecord.metric) == metric,
                    col(VerdictRecord.run_id) != before_run,
                )
                .order_by(col(VerdictRecord.id).desc())
                .limit(1)
            ).scalar_one_or_none()

    def other_series_p_values(self, model_id: int, evalset: str, strategy: str) -> list[float]:
        """The newest raw p-value of every other series of the model: the rest of Holm's family."""
        with self.session() as s:
            newest = (
                select(func.max(col(VerdictRecord.id)).label("id"))
                .where(col(VerdictRecord.model_id) == model_id, col(VerdictRecord.p_value).is_not(None))
                .group_by(
                    col(VerdictRecord.evalset_name), col(VerdictRecord.strategy), col(VerdictRecord.metric)
                )
                .subquery()
            )
            rows = s.execute(
                select(VerdictRecord).join(newest, col(VerdictRecord.id) == newest.c.id)
            ).scalars()
            return [
                float(v.p_value)
                for v in rows
                if not (v.evalset_name == evalset and v.strategy == strategy) and v.p_value is not None
            ]

    def add_verdicts(
        self,
        records: Sequence[VerdictRecord],
        events: Sequence[Event] = (),
        notify: Notify | None = None,
    ) -> list[VerdictRecord]:
        """Store verdicts; ``notify(session, event)`` writes each event in the same transaction."""
        return self._add_with_events(records, events, notify)

    def latest_verdicts(self, model_id: int | None = None) -> list[VerdictRecord]:
        """The newest verdict of every (model, eval set, strategy, metric), from the roll-up
        ``latest_verdicts`` (one row per series, however long the history)."""
        query = select(VerdictRecord).join(
            LATEST_VERDICTS, col(VerdictRecord.id) == LATEST_VERDICTS.c.verdict_id
        )
        if model_id is not None:
            query = query.where(LATEST_VERDICTS.c.model_id == model_id)
        with self.session() as s:
            return list(s.execute(query).scalars())

    def verdicts(self, model_id: int) -> list[VerdictRecord]:
        """Every verdict of a model, oldest first."""
        with self.session() as s:
            return list(
                s.execute(
                    select(VerdictRecord)
                    .where(col(VerdictRecord.model_id) == model_id)
                    .order_by(col(VerdictRecord.id))
                ).scalars()
            )
