"""Recommendations for fine-tunes: a new one (and its event when the action changed), the newest per model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from monitor.store._mixin import StoreMixin
from monitor.store.tables import ModelRecord, RecommendationRecord, utcnow

#: ``on_change(session, record)``: runs in the transaction that stores a changed recommendation.
OnChange = Callable[[Session, RecommendationRecord], None]


class RecommendationsMixin(StoreMixin):
    """Reads and writes ``recommendations``."""

    def add_recommendation(
        self,
        model_id: int,
        *,
        action: str,
        summary: str,
        reasons: Sequence[str],
        evidence: dict[str, Any],
        costs: dict[str, Any] | None = None,
        on_change: OnChange | None = None,
    ) -> RecommendationRecord:
        """Store a recommendation, marked ``changed`` when its action differs from the previous one's.

        ``on_change(session, record)`` runs inside the same transaction as the new
        row (the webhook outbox writes its event there), so the event exists if and
        only if the recommendation does.
        """
        with self.session() as s:
            previous = s.execute(
                select(RecommendationRecord)
                .where(col(RecommendationRecord.model_id) == model_id)
                .order_by(col(RecommendationRecord.id).desc())
                .limit(1)
            ).scalar_one_or_none()
            previous_action = previous.action if previous is not None else None
            record = RecommendationRecord(
                model_id=model_id,
                action=action,
                previous_action=previous_action,
                changed=previous_action != action,
                summary=summary,
                reasons=list(reasons),
                evidence=evidence,
                costs=costs or {},
                created_at=utcnow(),
            )
            s.add(record)
            s.flush()
            if record.changed and on_change is not None:
                on_change(s, record)
            s.refresh(record)
            return record

    def latest_recommendations(self) -> list[tuple[RecommendationRecord, str]]:
        """The newest recommendation of every model, with the model's name."""
        with self.session() as s:
            newest = (
                select(func.max(col(RecommendationRecord.id)).label("id"))
                .group_by(col(RecommendationRecord.model_id))
                .subquery()
            )
            rows = s.execute(
                select(RecommendationRecord, col(ModelRecord.name))
                .join(newest, col(RecommendationRecord.id) == newest.c.id)
                .join(ModelRecord, col(RecommendationRecord.model_id) == col(ModelRecord.id))
                .order_by(col(ModelRecord.name))
            ).all()
            return [(r, n) for r, n in rows]

    def recommendations_since(self) -> dict[int, Any]:
        """When each model's current action was first recommended: the newest change's time, by model id
        (a streak of the same action keeps the time it began; the first recommendation counts as a change)."""
        with self.session() as s:
            rows = s.execute(
                select(col(RecommendationRecord.model_id), func.max(col(RecommendationRecord.created_at)))
                .where(col(RecommendationRecord.changed))
                .group_by(col(RecommendationRecord.model_id))
            ).all()
            return {model_id: when for model_id, when in rows}
