"""Job fires: each fire a daemon takes is recorded before its runs, so that a restart completes it.

A fire's ``key`` makes it exactly-once: the same scheduled time, or the same
run-now request, is never taken twice; and a job has at most one open fire
(fires of a busy job coalesce, as its schedule's fires always did).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from monitor.errors import NotFoundError
from monitor.store._mixin import StoreMixin
from monitor.store.tables import FireRecord, ModelRecord, RunRecord, RunRequest, as_utc, utcnow


def fire_key(job: str, trigger: str, scheduled_for: datetime | None, token: str | None = None) -> str:
    """The key that makes a fire exactly-once: ``job@time`` for a scheduled (or caught-up) fire,
    ``job#token`` otherwise (a run-now request, a release evaluation)."""
    if trigger in ("schedule", "catch-up") and scheduled_for is not None:
        return f"{job}@{as_utc(scheduled_for):%Y-%m-%dT%H:%M:%S%z}"
    return f"{job}#{token or trigger}"


class FiresMixin(StoreMixin):
    """Records, completes and lists job fires."""

    def open_fire(
        self, job: str, *, trigger: str, scheduled_for: datetime | None, key: str
    ) -> FireRecord | None:
        """Record a new open fire of ``job``; None when this fire was taken before or ``job`` has one open."""
        from monitor.errors import StoreError

        for _ in range(2):
            try:
                with self.session() as s:
                    self._check_fence(s)
                    return self._open_fire(s, job, trigger=trigger, scheduled_for=scheduled_for, key=key)
            except StoreError as exc:
                if not isinstance(exc.__cause__, IntegrityError):
                    raise
                # the same key, taken by another process a moment ago: look again
        return None

    def _open_fire(
        self, s: Session, job: str, *, trigger: str, scheduled_for: datetime | None, key: str
    ) -> FireRecord | None:
        taken = s.execute(
            select(func.count())
            .select_from(FireRecord)
            .where(
                (col(FireRecord.key) == key)
                | ((col(FireRecord.job) == job) & (col(FireRecord.status) == "open"))
            )
        ).scalar_one()
        if taken:
            return None
        fire = FireRecord(
            key=key, job=job, trigger=trigger, scheduled_for=scheduled_for, status="open", created_at=utcnow()
        )
        s.add(fire)
        s.flush()
        s.refresh(fire)
        return fire

    def claim_run_requests(self, jobs: Collection[str]) -> list[tuple[RunRequest, FireRecord | None]]:
        """Take the pending run-now requests and, in the same transaction, open a fire for each
        request of a known job (None: an unknown job, or one whose fire is open: it coalesces)."""
        with self.session() as s:
            self._check_fence(s)
            pending = list(
                s.execute(
                    select(RunRequest).where(col(RunRequest.picked_at).is_(None)).order_by(col(RunRequest.id))
                ).scalars()
            )
            taken: list[tuple[RunRequest, FireRecord | None]] = []
            for request in pending:
                result = cast(
                    "CursorResult[Any]",
                    s.execute(
                        update(RunRequest)
                        .where(col(RunRequest.id) == request.id, col(RunRequest.picked_at).is_(None))
                        .values(picked_at=utcnow())
                    ),
                )
                if result.rowcount != 1:
                    continue
                fire = None
                if request.job in jobs:
                    fire = self._open_fire(
                        s,
                        request.job,
                        trigger="manual",
                        scheduled_for=None,
                        key=fire_key(request.job, "manual", None, f"request-{request.id}"),
                    )
                taken.append((request, fire))
            return taken

    def get_fire(self, fire_id: int) -> FireRecord:
        with self.session() as s:
            fire = s.get(FireRecord, fire_id)
        if fire is None:
            raise NotFoundError(f"no fire with id {fire_id}")
        return fire

    def open_fires(self) -> list[FireRecord]:
        """Fires taken and not finished (a restart completes them), oldest first."""
        with self.session() as s:
            query = select(FireRecord).where(col(FireRecord.status) == "open").order_by(col(FireRecord.id))
            return list(s.execute(query).scalars())

    def fires(self, *, job: str | None = None, limit: int | None = None) -> list[FireRecord]:
        """Fires, newest first."""
        with self.session() as s:
            query = select(FireRecord).order_by(col(FireRecord.id).desc())
            if job is not None:
                query = query.where(col(FireRecord.job) == job)
            if limit is not None:
                query = query.limit(limit)
            return list(s.execute(query).scalars())

    def start_fire(self, fire_id: int, planned: Sequence[str]) -> FireRecord:
        """Record the runs the fire makes (the first time it starts) and when it started."""
        with self.session() as s:
            self._check_fence(s)
            fire = s.get(FireRecord, fire_id)
            if fire is None:
                raise NotFoundError(f"no fire with id {fire_id}")
            if fire.planned is None:
                fire.planned = list(planned)
            if fire.started_at is None:
                fire.started_at = utcnow()
            s.add(fire)
            s.flush()
            s.refresh(fire)
            return fire

    def fire_runs(self, fire_id: int) -> list[tuple[RunRecord, str]]:
        """The runs a fire made so far, oldest first, each with its model's name."""
        with self.session() as s:
            query = (
                select(RunRecord, col(ModelRecord.name))
                .join(ModelRecord, col(RunRecord.model_id) == col(ModelRecord.id))
                .where(col(RunRecord.fire_id) == fire_id)
                .order_by(col(RunRecord.id))
            )
            return [(run, name) for run, name in s.execute(query).all()]

    def finish_fire(
        self,
        fire_id: int,
        *,
        status: str = "done",
        error: str | None = None,
        after_job: Callable[[Session], None] | None = None,
    ) -> None:
        """Close a fire (``done`` or ``abandoned``); ``after_job(session)`` may add its writes to the
        same transaction."""
        with self.session() as s:
            self._check_fence(s)
            fire = s.get(FireRecord, fire_id)
            if fire is None:
                raise NotFoundError(f"no fire with id {fire_id}")
            if after_job is not None:
                after_job(s)
            now = utcnow()
            fire.status, fire.error, fire.finished_at = status, error, now
            if status == "done":
                fire.after_job_at = now
            s.add(fire)

    def last_fire_time(self, job: str) -> datetime | None:
        """When the newest recorded scheduled fire of ``job`` was due (fires and runs both count)."""
        with self.session() as s:
            fired = s.execute(
                select(func.max(col(FireRecord.scheduled_for))).where(col(FireRecord.job) == job)
            ).scalar_one_or_none()
            ran = s.execute(
                select(func.max(col(RunRecord.scheduled_for))).where(col(RunRecord.job) == job)
            ).scalar_one_or_none()
        times = [as_utc(t) for t in (fired, ran) if t is not None]
        return max(t for t in times if t is not None) if times else None
