"""Models, eval set versions, runs, their item results, and run-now requests."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import (
    CursorResult,
    case,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from monitor.errors import NotFoundError, StoreError
from monitor.evals.results import ItemResult, item_details
from monitor.store._mixin import StoreMixin
from monitor.store.tables import (
    RUN_COUNTERS,
    RUN_DURATION_BOUNDS,
    EvalSetVersionRecord,
    ItemResultRecord,
    ItemTextRecord,
    ModelRecord,
    RunRecord,
    RunRequest,
    as_utc,
    aware,
    bucket_column,
    utcnow,
)


class RunsMixin(StoreMixin):
    """Reads and writes models, eval set versions, runs and run-now requests."""

    # --- models and eval set versions --------------------------------------------------------------

    def upsert_model(
        self, name: str, *, kind: str, base: str, adapter: str | None, fingerprint: str | None = None
    ) -> ModelRecord:
        """Create or update the model called ``name``; a known fingerprint is kept when none is given.

        Two processes creating the same model at once (two ``--slot`` claimants): the one whose
        insert loses to the other's reads the row it made and updates it.
        """
        return _once_more_on_conflict(
            lambda: self._upsert_model(name, kind=kind, base=base, adapter=adapter, fingerprint=fingerprint)
        )

    def _upsert_model(
        self, name: str, *, kind: str, base: str, adapter: str | None, fingerprint: str | None
    ) -> ModelRecord:
        now = utcnow()
        with self.session() as s:
            record = s.execute(select(ModelRecord).where(col(ModelRecord.name) == name)).scalar_one_or_none()
            if record is None:
                record = ModelRecord(
                    name=name,
                    kind=kind,
                    base=base,
                    adapter=adapter,
                    fingerprint=fingerprint,
                    created_at=now,
                    updated_at=now,
                )
            else:
                record.kind, record.base, record.adapter = kind, base, adapter
                if fingerprint is not None:
                    record.fingerprint = fingerprint
                record.updated_at = now
            s.add(record)
            s.flush()
            s.refresh(record)
            return record

    def get_model(self, name: str) -> ModelRecord:
        with self.session() as s:
            record = s.execute(select(ModelRecord).where(col(ModelRecord.name) == name)).scalar_one_or_none()
        if record is None:
            raise NotFoundError(f"no model named {name!r} in the store")
        return record

    def model_name(self, model_id: int) -> str:
        """The name of the model with ``model_id``."""
        with self.session() as s:
            record = s.get(ModelRecord, model_id)
        if record is None:
            raise NotFoundError(f"no model with id {model_id}")
        return record.name

    def models(self) -> list[ModelRecord]:
        """Every model the store knows."""
        with self.session() as s:
            return list(s.execute(select(ModelRecord)).scalars())

    def model_by_id(self, model_id: int) -> ModelRecord | None:
        """The model with ``model_id``, or None."""
        with self.session() as s:
            return s.get(ModelRecord, model_id)

    def evalset_version(self, version_id: int) -> EvalSetVersionRecord | None:
        """The eval set version with ``version_id``, or None."""
        with self.session() as s:
            return s.get(EvalSetVersionRecord, version_id)

    def ensure_evalset_version(
        self, name: str, version: str, *, task: str, path: str, item_count: int
    ) -> EvalSetVersionRecord:
        """The row for this exact eval set version, created on first use (by whichever process is first)."""
        return _once_more_on_conflict(
            lambda: self._ensure_evalset_version(name, version, task=task, path=path, item_count=item_count)
        )

    def _ensure_evalset_version(
        self, name: str, version: str, *, task: str, path: str, item_count: int
    ) -> EvalSetVersionRecord:
        with self.session() as s:
            query = select(EvalSetVersionRecord).where(
                col(EvalSetVersionRecord.name) == name, col(EvalSetVersionRecord.version) == version
            )
            record = s.execute(query).scalar_one_or_none()
            if record is None:
                record = EvalSetVersionRecord(
                    name=name,
                    version=version,
                    task=task,
                    path=path,
                    item_count=item_count,
                    created_at=utcnow(),
                )
                s.add(record)
                s.flush()
                s.refresh(record)
            return record

    # --- runs ----------------------------------------------------------------------------------------

    def start_run(
        self,
        *,
        model: ModelRecord,
        evalset: EvalSetVersionRecord,
        strategy: str,
        fewshot_k: int,
        settings_digest: str,
        settings: dict[str, Any],
        trigger: str,
        job: str | None = None,
        items_total: int = 0,
        model_fingerprint: str | None = None,
        scheduled_for: datetime | None = None,
        model_version: str | None = None,
        fire_id: int | None = None,
    ) -> RunRecord:
        """Record a run as ``running`` and return it (with its id)."""
        assert model.id is not None and evalset.id is not None
        now = utcnow()
        with self.session() as s:
            self._check_fence(s)
            run = RunRecord(
                model_id=model.id,
                evalset_version_id=evalset.id,
                evalset_name=evalset.name,
                job=job,
                status="running",
                trigger=trigger,
                strategy=strategy,
                fewshot_k=fewshot_k,
                settings_digest=settings_digest,
                settings=settings,
                model_fingerprint=model_fingerprint,
                evalset_version=evalset.version,
                started_at=now,
                segment_started_at=now,
                scheduled_for=scheduled_for,
                model_version=model_version,
                items_total=items_total,
                fire_id=fire_id,
            )
            s.add(run)
            s.flush()
            s.refresh(run)
            return run

    def add_item_results(self, run_id: int, results: Sequence[ItemResult]) -> None:
        """Store a batch of item results in one transaction and advance the run's counters."""
        if not results:
            return
        with self.session() as s:
            self._check_fence(s)
            texts: dict[str, str] = {}
            details = [_stored_details(r, texts) for r in results]
            if texts:
                known = set(
                    s.execute(
                        select(col(ItemTextRecord.sha256)).where(col(ItemTextRecord.sha256).in_(list(texts)))
                    ).scalars()
                )
                new = [{"sha256": k, "text": v} for k, v in texts.items() if k not in known]
                if new:
                    s.execute(_insert_ignoring_duplicates(s, new))
            s.add_all(
                ItemResultRecord(
                    run_id=run_id,
                    item_id=r.item_id,
                    prediction=r.prediction,
                    target=r.target,
                    correct=r.correct,
                    score=r.score,
                    scores=r.scores or {},
                    loglikelihoods=r.loglikelihoods,
                    prompt_tokens=r.prompt_tokens,
                    completion_tokens=r.completion_tokens,
                    error=r.error,
                    details=detail,
                )
                for r, detail in zip(results, details, strict=True)
            )
            s.execute(
                update(RunRecord)
                .where(col(RunRecord.id) == run_id)
                .values(
                    progress_at=utcnow(),
                    items_done=col(RunRecord.items_done) + len(results),
                    items_failed=col(RunRecord.items_failed) + sum(1 for r in results if r.error),
                    prompt_tokens=col(RunRecord.prompt_tokens) + sum(r.prompt_tokens for r in results),
                    completion_tokens=col(RunRecord.completion_tokens)
                    + sum(r.completion_tokens for r in results),
                )
            )

    def update_run(self, run_id: int, **values: Any) -> None:
        """Set fields of a run (fingerprint, load time, ...)."""
        with self.session() as s:
            self._check_fence(s)
            s.execute(update(RunRecord).where(col(RunRecord.id) == run_id).values(**values))

    def finish_run(
        self,
        run_id: int,
        *,
        status: str,
        metrics: dict[str, Any] | None = None,
        error: str | None = None,
        backend_info: dict[str, Any] | None = None,
    ) -> RunRecord:
        """Close a run with its final status, metrics and error text.

        ``error`` replaces any earlier error: a resumed run that succeeds keeps no
        error from its interruption.  Metrics and backend facts are kept when not given.
        ``duration_s`` counts the time the run worked: the stretches between its start
        or resumptions and its interruptions, not the downtime between them.
        """
        with self.session() as s:
            self._check_fence(s)
            run = s.get(RunRecord, run_id)
            if run is None:
                raise NotFoundError(f"no run {run_id}")
            now = utcnow()
            if run.status == "running":
                run.duration_s = _worked(run, now)
            run.status = status
            run.finished_at = now
            if metrics is not None:
                run.metrics = metrics
            run.error = error
            if backend_info is not None:
                run.backend_info = backend_info
            s.add(run)
            s.flush()
            s.refresh(run)
            return run

    def get_run(self, run_id: int) -> RunRecord:
        with self.session() as s:
            run = s.get(RunRecord, run_id)
        if run is None:
            raise NotFoundError(f"no run with id {run_id}")
        return run

    def item_results(self, run_id: int) -> list[ItemResultRecord]:
        """Every stored item result of a run, in storage order."""
        with self.session() as s:
            query = (
                select(ItemResultRecord)
                .where(col(ItemResultRecord.run_id) == run_id)
                .order_by(col(ItemResultRecord.id))
            )
            return list(s.execute(query).scalars())

    def item_details(self, run_id: int) -> dict[str, dict[str, Any]]:
        """``{item id: details}`` of a run's stored items: the exact prompt scored (``prompt``), the
        conversation sent (``messages``), every sample, filtered outputs and per-metric errors."""
        with self.session() as s:
            rows = s.execute(
                select(col(ItemResultRecord.item_id), col(ItemResultRecord.details))
                .where(col(ItemResultRecord.run_id) == run_id)
                .order_by(col(ItemResultRecord.id))
            ).all()
            wanted = {
                digest
                for _, details in rows
                for key in _TEXT_FIELDS
                if details and (digest := details.get(f"{key}_sha256"))
            }
            texts = (
                dict(
                    s.execute(
                        select(col(ItemTextRecord.sha256), col(ItemTextRecord.text)).where(
                            col(ItemTextRecord.sha256).in_(list(wanted))
                        )
                    ).all()
                )
                if wanted
                else {}
            )
        out: dict[str, dict[str, Any]] = {}
        for item_id, details in rows:
            resolved = dict(details or {})
            for key in _TEXT_FIELDS:
                digest = resolved.pop(f"{key}_sha256", None)
                if digest is not None and digest in texts:
                    text = texts[digest]
                    resolved[key] = json.loads(text) if key == "messages" else text
            out[str(item_id)] = resolved
        return out

    def prune_item_results(
        self, finished_before: datetime, *, keep_runs: Collection[int] = (), batch_size: int = 2000
    ) -> int:
        """Delete one batch of the per-item results of runs finished before ``finished_before``
        (never of ``keep_runs``: the pinned baselines'); returns how many rows went (0: done).

        One small transaction per call, so a caller prunes between other writers' chunks.
        """
        with self.session() as s:
            old_runs = select(col(RunRecord.id)).where(
                col(RunRecord.finished_at) < finished_before,
                col(RunRecord.status).in_(("succeeded", "failed")),
            )
            if keep_runs:
                old_runs = old_runs.where(col(RunRecord.id).not_in(list(keep_runs)))
            ids = list(
                s.execute(
                    select(col(ItemResultRecord.id))
                    .where(col(ItemResultRecord.run_id).in_(old_runs))
                    .order_by(col(ItemResultRecord.id))
                    .limit(batch_size)
                ).scalars()
            )
            if ids:
                s.execute(delete(ItemResultRecord).where(col(ItemResultRecord.id).in_(ids)))
            return len(ids)

    def prune_item_texts(self, batch_size: int = 2000) -> int:
        """Delete one batch of stored prompts and conversations that no item result refers to any more
        (after :meth:`prune_item_results`); returns how many went (0: done)."""
        details: Any = ItemResultRecord.__table__.c.details  # type: ignore[attr-defined]
        with self.session() as s:
            used = [
                select(details[f"{key}_sha256"].as_string()).where(
                    details[f"{key}_sha256"].as_string().is_not(None)
                )
                for key in _TEXT_FIELDS
            ]
            orphans = list(
                s.execute(
                    select(col(ItemTextRecord.sha256))
                    .where(col(ItemTextRecord.sha256).not_in(used[0].union(*used[1:]).scalar_subquery()))
                    .limit(batch_size)
                ).scalars()
            )
            if orphans:
                s.execute(delete(ItemTextRecord).where(col(ItemTextRecord.sha256).in_(orphans)))
            return len(orphans)

    def item_outcomes(self, run_ids: Sequence[int]) -> dict[int, dict[str, bool | None]]:
        """``{run id: {item id: correct}}`` for several runs in one query (only the three columns)."""
        if not run_ids:
            return {}
        out: dict[int, dict[str, bool | None]] = {run_id: {} for run_id in run_ids}
        with self.session() as s:
            rows = s.execute(
                select(
                    col(ItemResultRecord.run_id), col(ItemResultRecord.item_id), col(ItemResultRecord.correct)
                )
                .where(col(ItemResultRecord.run_id).in_(list(run_ids)))
                .order_by(col(ItemResultRecord.id))
            ).all()
        for run_id, item_id, correct in rows:
            out[int(run_id)][str(item_id)] = correct
        return out

    def item_flips(self, runs: Sequence[tuple[int, int]], min_flips: int = 2) -> dict[str, int]:
        """Items whose correctness changed at least ``min_flips`` times across ``runs``, and how often.

        ``runs``: ``(run id, identity)``, oldest first; a change counts only against the previous
        run of the same identity that scored the item (unscored items are skipped), as
        :func:`monitor.analysis.behaviour.flaky_items` counts them.  Counted in the database with
        a window over the runs' item results, so only the flaky items come back.
        """
        if not runs:
            return {}
        position = case({run_id: k for k, (run_id, _) in enumerate(runs)}, value=col(ItemResultRecord.run_id))
        identity = case({run_id: key for run_id, key in runs}, value=col(ItemResultRecord.run_id))
        previous = (
            func.lag(col(ItemResultRecord.correct))
            .over(partition_by=(col(ItemResultRecord.item_id), identity), order_by=position)
            .label("previous")
        )
        outcomes = (
            select(
                col(ItemResultRecord.item_id).label("item_id"),
                col(ItemResultRecord.correct).label("correct"),
                previous,
            )
            .where(col(ItemResultRecord.run_id).in_([run_id for run_id, _ in runs]))
            .where(col(ItemResultRecord.correct).is_not(None))
            .subquery()
        )
        query = (
            select(outcomes.c.item_id, func.count())
            .where(outcomes.c.previous.is_not(None), outcomes.c.previous != outcomes.c.correct)
            .group_by(outcomes.c.item_id)
            .having(func.count() >= min_flips)
            .order_by(outcomes.c.item_id)
        )
        with self.session() as s:
            return {str(item): int(n) for item, n in s.execute(query).all()}

    def completed_item_ids(self, run_id: int) -> set[str]:
        """The ids of the items a run has already stored (what a resumed run skips)."""
        with self.session() as s:
            query = select(col(ItemResultRecord.item_id)).where(col(ItemResultRecord.run_id) == run_id)
            return set(s.execute(query).scalars())

    def runs(
        self,
        *,
        model: str | None = None,
        evalset: str | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[RunRecord, str]]:
        """Runs, newest first, each with its model's name."""
        with self.session() as s:
            query = select(RunRecord, col(ModelRecord.name)).join(
                ModelRecord, col(RunRecord.model_id) == col(ModelRecord.id)
            )
            if model is not None:
                query = query.where(col(ModelRecord.name) == model)
            if evalset is not None:
                query = query.where(col(RunRecord.evalset_name) == evalset)
            if status is not None:
                query = query.where(col(RunRecord.status) == status)
            query = query.order_by(col(RunRecord.started_at).desc(), col(RunRecord.id).desc())
            if limit is not None:
                query = query.limit(limit)
            return [(run, name) for run, name in s.execute(query).all()]

    def latest_per_series(self) -> list[SeriesStatus]:
        """For every (model, eval set, strategy): the newest run, and the newest succeeded run before it."""
        with self.session() as s:
            newest = (
                select(
                    col(RunRecord.model_id),
                    col(RunRecord.evalset_name),
                    col(RunRecord.strategy),
                    func.max(col(RunRecord.id)).label("last_id"),
                )
                .group_by(col(RunRecord.model_id), col(RunRecord.evalset_name), col(RunRecord.strategy))
                .subquery()
            )
            rows = s.execute(
                select(RunRecord, col(ModelRecord.name))
                .join(newest, col(RunRecord.id) == newest.c.last_id)
                .join(ModelRecord, col(RunRecord.model_id) == col(ModelRecord.id))
                .order_by(col(ModelRecord.name), col(RunRecord.evalset_name), col(RunRecord.strategy))
            ).all()
            out = []
            for run, name in rows:
                previous = s.execute(
                    select(RunRecord)
                    .where(
                        col(RunRecord.model_id) == run.model_id,
                        col(RunRecord.evalset_name) == run.evalset_name,
                        col(RunRecord.strategy) == run.strategy,
                        col(RunRecord.status) == "succeeded",
                        col(RunRecord.id) < run.id,
                    )
                    .order_by(col(RunRecord.id).desc())
                    .limit(1)
                ).scalar_one_or_none()
                out.append(SeriesStatus(name, run, previous))
            return out

    def latest_base_run(self, base: str, *, evalset_version: str, settings_digest: str) -> RunRecord | None:
        """The newest succeeded run of a model without an adapter on ``base``, under the same
        eval set version and settings (what an adapter's run is compared with)."""
        with self.session() as s:
            return s.execute(
                select(RunRecord)
                .join(ModelRecord, col(RunRecord.model_id) == col(ModelRecord.id))
                .where(
                    col(ModelRecord.base) == base,
                    col(ModelRecord.adapter).is_(None),
                    col(RunRecord.status) == "succeeded",
                    col(RunRecord.evalset_version) == evalset_version,
                    col(RunRecord.settings_digest) == settings_digest,
                )
                .order_by(col(RunRecord.id).desc())
                .limit(1)
            ).scalar_one_or_none()

    def run_summary(self, duration_buckets: Sequence[float] = (), *, scan: bool = False) -> RunSummary:
        """What the metrics export about runs, read in one transaction.

        The counters, the duration histogram (``duration_buckets``: upper bounds, seconds, each
        one of :data:`RUN_DURATION_BOUNDS`), each job's last success and newest scheduled run and
        each model's last load time come from ``run_counters``, the roll-up the triggers on
        ``runs`` keep (migrations 0010, 0011): a few hundred rows, however long the history.
        ``scan=True`` computes the same from every run instead (for checks and tests; also what
        other bounds get).
        """
        scan = scan or not set(duration_buckets) <= set(RUN_DURATION_BOUNDS)
        with self.session() as s:
            names = {
                int(i): str(n) for i, n in s.execute(select(col(ModelRecord.id), col(ModelRecord.name))).all()
            }
            newest = (
                select(func.max(col(RunRecord.id)).label("id"))
                .where(col(RunRecord.status) == "succeeded")
                .group_by(col(RunRecord.model_id), col(RunRecord.evalset_name), col(RunRecord.strategy))
                .subquery()
            )
            latest_ok = list(
                s.execute(select(RunRecord).join(newest, col(RunRecord.id) == newest.c.id)).scalars()
            )
            if scan:
                return self._scanned_summary(s, names, latest_ok, duration_buckets)
            rc = RUN_COUNTERS.c
            counts = s.execute(
                select(*(rc[c] for c in _COUNT_COLUMNS))
                .where(rc.runs > 0)
                .order_by(*RUN_COUNTERS.primary_key)
            ).all()
            durations = s.execute(
                select(
                    rc.job, func.sum(rc.timed_runs), func.sum(rc.duration_s_total),
                    *(func.sum(rc[bucket_column(bound)]) for bound in duration_buckets),
                )
                .where(rc.status.in_(("succeeded", "failed")))
                .group_by(rc.job)
                .having(func.sum(rc.timed_runs) > 0)
            ).all()  # fmt: skip
            last_success = s.execute(
                select(rc.job, func.max(rc.last_finished_at))
                .where(rc.status == "succeeded", rc.job != "")
                .group_by(rc.job)
            ).all()
            newest_load = select(func.max(rc.last_load_id)).group_by(rc.model_id).scalar_subquery()
            last_load = s.execute(
                select(col(RunRecord.model_id), col(RunRecord.load_s))
                .where(col(RunRecord.id).in_(newest_load))
                .order_by(col(RunRecord.id).desc())
            ).all()
            newest_scheduled = (
                select(func.max(rc.last_scheduled_id)).where(rc.job != "").group_by(rc.job).scalar_subquery()
            )
            lag_rows = s.execute(
                select(col(RunRecord.job), col(RunRecord.started_at), col(RunRecord.scheduled_for))
                .where(col(RunRecord.id).in_(newest_scheduled))
                .order_by(col(RunRecord.id).desc())
            ).all()
        return _summary(
            names,
            latest_ok,
            [_run_count(row) for row in counts],
            durations,
            last_success,
            last_load,
            lag_rows,
        )

    def _scanned_summary(
        self, s: Any, names: dict[int, str], latest_ok: list[RunRecord], duration_buckets: Sequence[float]
    ) -> RunSummary:
        """:meth:`run_summary` computed from every run (what the roll-up keeps)."""
        finished = (
            col(RunRecord.duration_s).is_not(None),
            col(RunRecord.status).in_(("succeeded", "failed")),
        )
        bucket_columns = [
            func.sum(case((col(RunRecord.duration_s) <= bound, 1), else_=0)) for bound in duration_buckets
        ]
        durations = s.execute(
            select(col(RunRecord.job), func.count(), func.sum(col(RunRecord.duration_s)), *bucket_columns)
            .where(*finished)
            .group_by(col(RunRecord.job))
        ).all()
        last_success = s.execute(
            select(col(RunRecord.job), func.max(col(RunRecord.finished_at)))
            .where(col(RunRecord.status) == "succeeded", col(RunRecord.job).is_not(None))
            .group_by(col(RunRecord.job))
        ).all()
        newest_load = (
            select(func.max(col(RunRecord.id)).label("id"))
            .where(col(RunRecord.load_s) > 0)
            .group_by(col(RunRecord.model_id))
            .subquery()
        )
        last_load = s.execute(
            select(col(RunRecord.model_id), col(RunRecord.load_s))
            .join(newest_load, col(RunRecord.id) == newest_load.c.id)
            .order_by(col(RunRecord.id).desc())
        ).all()
        newest_scheduled = (
            select(func.max(col(RunRecord.id)).label("id"))
            .where(col(RunRecord.scheduled_for).is_not(None), col(RunRecord.job).is_not(None))
            .group_by(col(RunRecord.job))
            .subquery()
        )
        lag_rows = s.execute(
            select(col(RunRecord.job), col(RunRecord.started_at), col(RunRecord.scheduled_for))
            .join(newest_scheduled, col(RunRecord.id) == newest_scheduled.c.id)
            .order_by(col(RunRecord.id).desc())
        ).all()
        return _summary(
            names, latest_ok, self.scanned_run_counts(), durations, last_success, last_load, lag_rows
        )

    def scanned_run_counts(self) -> list[RunCount]:
        """The run counters summed over every run: what ``run_counters`` rolls up (for checks and tests)."""
        job = func.coalesce(col(RunRecord.job), "")
        key = (col(RunRecord.model_id), col(RunRecord.evalset_name), job, col(RunRecord.status))
        with self.session() as s:
            rows = s.execute(
                select(
                    *key, func.count(), func.sum(col(RunRecord.items_done)), func.sum(col(RunRecord.items_failed)),
                    func.sum(col(RunRecord.prompt_tokens)), func.sum(col(RunRecord.completion_tokens)),
                )
                .group_by(*key)
                .order_by(*key)
            ).all()  # fmt: skip
        return [_run_count(row) for row in rows]

    def unfinished_runs(self) -> list[RunRecord]:
        """Runs left ``running`` (by a crash) or ``interrupted`` (by a shutdown), oldest first."""
        with self.session() as s:
            query = (
                select(RunRecord)
                .where(col(RunRecord.status).in_(("running", "interrupted")))
                .order_by(col(RunRecord.id))
            )
            return list(s.execute(query).scalars())

    def reopen_run(self, run_id: int) -> None:
        """Mark an interrupted run as running again before it is resumed (a new stretch of work)."""
        self.update_run(run_id, status="running", finished_at=None, segment_started_at=utcnow())

    def interrupt_crashed_run(self, run_id: int, reason: str) -> RunRecord:
        """Mark a run that a crash left ``running`` as ``interrupted``; its work counts up to its last chunk."""
        with self.session() as s:
            self._check_fence(s)
            run = s.get(RunRecord, run_id)
            if run is None:
                raise NotFoundError(f"no run {run_id}")
            if run.status == "running":
                last = as_utc(run.progress_at) or as_utc(run.segment_started_at) or aware(run.started_at)
                run.duration_s = _worked(run, last)
                run.status, run.error, run.finished_at = "interrupted", reason, utcnow()
                s.add(run)
                s.flush()
                s.refresh(run)
            return run

    def job_runs(self, job: str, *, model_id: int, evalset: str, limit: int) -> list[RunRecord]:
        """The newest finished runs (succeeded or failed) of one job on one model and eval set."""
        with self.session() as s:
            query = (
                select(RunRecord)
                .where(
                    col(RunRecord.job) == job,
                    col(RunRecord.model_id) == model_id,
                    col(RunRecord.evalset_name) == evalset,
                    col(RunRecord.status).in_(("succeeded", "failed")),
                )
                .order_by(col(RunRecord.id).desc())
                .limit(limit)
            )
            return list(s.execute(query).scalars())

    def last_scheduled_fire(self, job: str) -> datetime | None:
        """When the newest scheduled run of ``job`` was meant to start."""
        with self.session() as s:
            value = s.execute(
                select(func.max(col(RunRecord.scheduled_for))).where(col(RunRecord.job) == job)
            ).scalar_one_or_none()
        return as_utc(value)

    # --- run-now requests ------------------------------------------------------------------------------

    def request_run(self, job: str, requested_by: str = "") -> int:
        """Queue a request for the daemon to run ``job`` now."""
        with self.session() as s:
            request = RunRequest(job=job, requested_at=utcnow(), requested_by=requested_by)
            s.add(request)
            s.flush()
            assert request.id is not None
            return request.id

    def take_run_requests(self) -> list[RunRequest]:
        """Pending run-now requests, marked as picked so that each is served once."""
        with self.session() as s:
            pending = list(
                s.execute(
                    select(RunRequest).where(col(RunRequest.picked_at).is_(None)).order_by(col(RunRequest.id))
                ).scalars()
            )
            taken = []
            for request in pending:
                result = cast(
                    "CursorResult[Any]",
                    s.execute(
                        update(RunRequest)
                        .where(col(RunRequest.id) == request.id, col(RunRequest.picked_at).is_(None))
                        .values(picked_at=utcnow())
                    ),
                )
                if result.rowcount == 1:
                    taken.append(request)
            return taken


_COUNT_COLUMNS = (
    "model_id",
    "evalset_name",
    "job",
    "status",
    "runs",
    "items_done",
    "items_failed",
    "prompt_tokens",
    "completion_tokens",
)


def _summary(
    names: dict[int, str],
    latest_ok: list[RunRecord],
    counts: list[RunCount],
    durations: Sequence[Any],
    last_success: Sequence[Any],
    last_load: Sequence[Any],
    lag_rows: Sequence[Any],
) -> RunSummary:
    return RunSummary(
        model_names=names,
        latest_succeeded=latest_ok,
        counts=counts,
        durations=[
            DurationCounts(job or None, int(count), float(total or 0.0), tuple(int(b or 0) for b in buckets))
            for job, count, total, *buckets in durations
        ],
        last_success=[(str(job), aware(when)) for job, when in last_success if when is not None],
        last_load=[(int(m), float(secs)) for m, secs in last_load],
        schedule_lags=[(str(job), aware(started), aware(sched)) for job, started, sched in lag_rows],
    )


def _run_count(row: Any) -> RunCount:
    model_id, evalset, job, status, runs, done, failed, prompt, completion = row
    return RunCount(
        int(model_id), str(evalset), str(job) or None, str(status), int(runs),
        int(done or 0), int(failed or 0), int(prompt or 0), int(completion or 0),
    )  # fmt: skip


def _worked(run: RunRecord, until: datetime) -> float:
    """The work seconds of a run up to ``until``: earlier stretches plus the current one."""
    segment = as_utc(run.segment_started_at) or aware(run.started_at)
    earlier = run.duration_s or 0.0 if run.segment_started_at is not None else 0.0
    return earlier + max(0.0, (until - segment).total_seconds())


@dataclass(frozen=True)
class SeriesStatus:
    """The newest run of one model on one eval set under one strategy, and the one before it."""

    model: str
    latest: RunRecord
    previous: RunRecord | None


@dataclass(frozen=True)
class RunCount:
    """Runs of one model, eval set, job and status, and their summed counters."""

    model_id: int
    evalset: str
    job: str | None
    status: str
    count: int
    items_done: int | None
    items_failed: int | None
    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass(frozen=True)
class DurationCounts:
    """One job's finished runs: how many, their summed seconds, and how many fit each bucket."""

    job: str | None
    count: int
    total_s: float
    #: runs with a duration at most each requested bucket bound, in the bounds' order
    buckets: tuple[int, ...]


@dataclass(frozen=True)
class RunSummary:
    """What :meth:`RunsMixin.run_summary` reads for the metrics, in plain values."""

    #: model id -> name
    model_names: dict[int, str]
    #: the newest succeeded run of every (model, eval set, strategy)
    latest_succeeded: list[RunRecord]
    counts: list[RunCount]
    #: per job: finished runs' durations counted into the requested buckets
    durations: list[DurationCounts]
    #: (job, finished at) of every job's newest succeeded run
    last_success: list[tuple[str, datetime]]
    #: (model id, load seconds), newest run first
    last_load: list[tuple[int, float]]
    #: (job, started at, scheduled for), newest run first
    schedule_lags: list[tuple[str, datetime, datetime]]


#: Item details kept once per distinct text (:class:`ItemTextRecord`), by hash.
_TEXT_FIELDS = ("prompt", "messages")


def _stored_details(result: ItemResult, texts: dict[str, str]) -> dict[str, Any] | None:
    """An item's details as stored: prompt and messages replaced by their hashes (``texts`` collects them)."""
    details = item_details(result)
    for key in _TEXT_FIELDS:
        if key in details:
            value = details.pop(key)
            text = value if key == "prompt" else json.dumps(value, ensure_ascii=False, sort_keys=True)
            digest = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
            texts[digest] = text
            details[f"{key}_sha256"] = digest
    return details or None


def _insert_ignoring_duplicates(session: Any, rows: list[dict[str, str]]) -> Any:
    """INSERT of item texts that skips a hash another writer stored meanwhile (same text by construction)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(ItemTextRecord).values(rows).on_conflict_do_nothing(index_elements=["sha256"])
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(ItemTextRecord).values(rows).on_conflict_do_nothing(index_elements=["sha256"])
    return insert(ItemTextRecord).values(rows)


R = TypeVar("R")


def _once_more_on_conflict(write: Callable[[], R]) -> R:
    """``write()``, and once more when its insert lost a race for a unique key to another writer
    (the second try finds the row the other made)."""
    try:
        return write()
    except StoreError as exc:
        if not isinstance(exc.__cause__, IntegrityError):
            raise
    return write()
