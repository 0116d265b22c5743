"""Job fires: each fire a daemon takes is recorded before its runs, so that a restart completes it.

A fire's ``key`` makes it exactly-once: the same scheduled time, or the same
run-now request, is never taken twice; and a job has at most one open fire
(fires of a busy job coalesce, as its schedule's fires always did).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from monitor.errors import NotFoundError
from monitor.store._mixin import Fence, StoreMixin, claim_held
from monitor.store.tables import DaemonLease, FireRecord, ModelRecord, RunRecord, RunRequest, as_utc, utcnow


def fire_key(job: str, trigger: str, scheduled_for: datetime | None, token: str | None = None) -> str:
    """The key that makes a fire exactly-once: ``job@time`` for a scheduled (or caught-up) fire,
    ``job#token`` otherwise (a run-now request, a release evaluation)."""
    if trigger in ("schedule", "catch-up") and scheduled_for is not None:
        return f"{job}@{as_utc(scheduled_for):%Y-%m-%dT%H:%M:%S%z}"
    return f"{job}#{token or trigger}"


@dataclass(frozen=True)
class Claim:
    """What :meth:`FiresMixin.claim_fire` found: ``claimed`` (a new fire, ours), ``resumed`` (an
    open fire whose claimant died, taken over: ours), ``done`` (finished before) or ``held``
    (another live claimant, or the daemon, is on it)."""

    outcome: str
    fire: FireRecord
    holder: str | None = None

    @property
    def ours(self) -> bool:
        return self.outcome in ("claimed", "resumed")


class FiresMixin(StoreMixin):
    """Records, completes and lists job fires, and the claims of ``monitor run --slot``."""

    def claim_fire(
        self,
        job: str,
        *,
        key: str,
        trigger: str,
        scheduled_for: datetime | None,
        holder: str,
        host: str,
        ttl_s: float,
        is_alive: Callable[[int], bool] | None = None,
        now: datetime | None = None,
    ) -> Claim:
        """Claim the fire ``key`` of ``job`` for ``holder``, atomically, on any database.

        A new fire is inserted under its unique key (two claimants racing: one
        insert wins, the other finds the fire); an open fire is taken over by a
        compare-and-swap on its claim epoch when its claimant is gone (the claim
        expired, or its process on this host no longer exists) or, for a fire the
        daemon opened, when no daemon holds the lease.  A claim held makes this
        store fence its writes with the fire's epoch (:attr:`fence`).
        """
        for _ in range(3):
            now_ = now or utcnow()
            expires = now_ + timedelta(seconds=ttl_s)
            with self.session() as s:
                fire = s.execute(select(FireRecord).where(col(FireRecord.key) == key)).scalar_one_or_none()
                if fire is None:
                    fire = FireRecord(
                        key=key,
                        job=job,
                        trigger=trigger,
                        scheduled_for=scheduled_for,
                        status="open",
                        created_at=now_,
                        claimed_by=holder,
                        claim_epoch=1,
                        claim_expires_at=expires,
                    )
                    s.add(fire)
                    try:
                        s.flush()
                    except IntegrityError:
                        s.rollback()
                        continue
                    s.refresh(fire)
                    self.fence = Fence(holder, 1, fire.id)
                    return Claim("claimed", fire)
                if fire.status != "open":
                    return Claim("done", fire)
                if not self._claimable(s, fire, host, now_, is_alive):
                    return Claim("held", fire, fire.claimed_by or "the daemon")
                epoch = (fire.claim_epoch or 0) + 1
                result = cast(
                    "CursorResult[Any]",
                    s.execute(
                        update(FireRecord)
                        .where(col(FireRecord.id) == fire.id, col(FireRecord.claim_epoch) == fire.claim_epoch)
                        .values(claimed_by=holder, claim_epoch=epoch, claim_expires_at=expires)
                    ),
                )
                if result.rowcount != 1:
                    continue  # another claimant took it over a moment ago: look again
                s.flush()
                s.refresh(fire)
            self.fence = Fence(holder, epoch, fire.id)
            return Claim("resumed", fire)
        fire = self.get_fire_by_key(key)
        return Claim("held", fire, fire.claimed_by)

    def _claimable(
        self, s: Session, fire: FireRecord, host: str, now: datetime, is_alive: Callable[[int], bool] | None
    ) -> bool:
        if fire.claimed_by is None:  # opened by the daemon: it is the daemon's while a daemon holds the lease
            lease = s.get(DaemonLease, "daemon")
            return lease is None or not lease.holder or as_utc(lease.expires_at) <= now  # type: ignore[operator]
        expires = as_utc(fire.claim_expires_at)
        if expires is None or expires <= now:
            return True
        claim_host, _, rest = fire.claimed_by.partition(":")
        pid = rest.partition(":")[0]
        return claim_host == host and is_alive is not None and pid.isdigit() and not is_alive(int(pid))

    def renew_claim(self, ttl_s: float) -> bool:
        """Extend this store's claim (:attr:`fence`) by ``ttl_s``; false when it was taken over."""
        fence = self.fence
        if fence is None or fence.fire_id is None:
            return False
        with self.session() as s:
            result = cast(
                "CursorResult[Any]",
                s.execute(
                    update(FireRecord)
                    .where(*claim_held(fence))
                    .values(claim_expires_at=utcnow() + timedelta(seconds=ttl_s))
                ),
            )
            return bool(result.rowcount == 1)

    def release_claim(self) -> None:
        """Give up this store's claim (a stopped claimant: the next one resumes at once)."""
        fence = self.fence
        if fence is None or fence.fire_id is None:
            return
        with self.session() as s:
            s.execute(
                update(FireRecord)
                .where(*claim_held(fence))
                .values(claim_expires_at=utcnow() - timedelta(seconds=1))
            )
        self.fence = None

    def stale_open_fires(self, job: str, *, exclude_key: str | None = None) -> list[FireRecord]:
        """Open fires of ``job`` other than ``exclude_key``, oldest first (a claimant completes them)."""
        with self.session() as s:
            query = (
                select(FireRecord)
                .where(col(FireRecord.job) == job, col(FireRecord.status) == "open")
                .order_by(col(FireRecord.id))
            )
            return [f for f in s.execute(query).scalars() if f.key != exclude_key]

    def get_fire_by_key(self, key: str) -> FireRecord:
        with self.session() as s:
            fire = s.execute(select(FireRecord).where(col(FireRecord.key) == key)).scalar_one_or_none()
        if fire is None:
            raise NotFoundError(f"no fire {key!r}")
        return fire

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
