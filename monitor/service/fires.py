"""Completing a job fire: its runs made or resumed, then its after-job work once, then closed.

One :class:`FireRunner` serves the daemon's worker and ``monitor run JOB --slot``
(:mod:`monitor.service.slots`), so that a fire started by either is finished the
same way by either.  A storage fault (:class:`~monitor.errors.StoreError`) and a
lost lease or claim (:class:`~monitor.errors.LeaseLostError`) propagate: the
caller leaves the fire open for whoever resumes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from monitor.config import MonitorConfig
from monitor.errors import MonitorError
from monitor.evals.evalset import parse_strategy
from monitor.events import Notify
from monitor.service.after_job import after_job, analyze_safely
from monitor.service.plan import RunPlan, plan_key, plan_runs
from monitor.service.releases.challengers import mark_evaluated
from monitor.service.runs import ModelPool, continue_run, open_run
from monitor.store import FireRecord, RunRecord, Store, as_utc

log = logging.getLogger("monitor.service.fires")


def resumable(config: MonitorConfig, run: RunRecord, model_name: str, plans: list[RunPlan]) -> RunPlan | str:
    """The plan that resumes ``run``, or why it cannot be resumed."""
    assert run.job is not None
    job = config.jobs[run.job]
    if model_name not in job.models or run.evalset_name not in job.evalsets:
        return "not resumed: the job no longer runs this model or eval set"
    for plan in plans:
        same_series = plan.model_name == model_name and plan.evalset.name == run.evalset_name
        if same_series and parse_strategy(run.strategy, plan.evalset) == plan.fewshot_k:
            if plan.evalset.version != run.evalset_version:
                return "not resumed: the eval set changed since the run started"
            return plan
    return "not resumed: its strategy is no longer configured"


class FireRunner:
    """Makes the runs of fires and closes them; its collaborators come from the caller.

    ``config()`` is read at each step (the daemon's effective configuration grows
    with the releases it finds); ``should_stop()`` is checked between chunks and
    runs (a stopped fire stays open); ``on_finished(run)`` hears every finished
    run; ``wake()`` is called after anything may have written an event.
    """

    def __init__(
        self,
        store: Store,
        config: Callable[[], MonitorConfig],
        pool: ModelPool,
        *,
        notify: Notify | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        on_finished: Callable[[RunRecord], None] | None = None,
        wake: Callable[[], None] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.pool = pool
        self.notify = notify
        self.should_stop = should_stop
        self.on_finished = on_finished
        self.wake = wake
        self.clock = clock

    def run_fire(self, fire: FireRecord) -> bool:
        """Make (or finish) every run of ``fire``, then its after-job work, once; close it.

        Returns whether the fire was closed (false: stopped, it stays open).
        """
        assert fire.id is not None
        config = self.config()
        if fire.job not in config.jobs:
            self.abandon(fire, "its job is no longer configured")
            return True
        try:
            plans = plan_runs(
                config, [fire.job], trigger=fire.trigger, scheduled_for=as_utc(fire.scheduled_for)
            )
        except MonitorError as exc:
            log.error("job %s cannot run: %s", fire.job, str(exc).replace("\n", "; "))
            self.abandon(fire, f"cannot run: {exc}")
            raise
        fire_id = fire.id
        fire = self.store.start_fire(fire_id, [plan_key(plan) for plan in plans])
        made = {(name, run.evalset_name, run.strategy): run for run, name in self.store.fire_runs(fire_id)}
        for plan in plans:
            if self.should_stop():
                return False  # the fire stays open: whoever comes next completes it
            run = made.get((plan.model_name, plan.evalset.name, plan.strategy))
            if run is not None and run.status in ("succeeded", "failed"):
                continue
            if run is None:
                run_id = open_run(self.store, plan, fire_id=fire_id)
            else:
                assert run.id is not None
                found = resumable(config, run, plan.model_name, [plan])
                if isinstance(found, str):
                    self.finished(self.store.finish_run(run.id, status="failed", error=found))
                    continue
                log.info("resuming run %d of job %s", run.id, fire.job)
                run_id = run.id
            if self.continue_run(plan, run_id).status == "interrupted":
                return False
        if self.should_stop():
            return False
        self.after_fire(fire)
        return True

    def continue_run(self, plan: RunPlan, run_id: int) -> RunRecord:
        """Evaluate what run ``run_id`` has not stored yet, close it and analyse it."""
        settings = self.config().daemon
        run = continue_run(
            self.store,
            self.pool,
            plan,
            run_id,
            chunk_size=settings.chunk_size,
            max_error_rate=settings.max_item_error_rate,
            should_stop=self.should_stop,
        )
        self.finished(run)
        return run

    def after_fire(self, fire: FireRecord) -> None:
        """The fire's after-job work (input drift, recommendations, releases evaluated), then close it."""
        assert fire.id is not None
        config = self.config()
        after_job(self.store, config, list(config.jobs[fire.job].models), self.notify, pool=self.pool)
        if self.clock is not None:
            mark_evaluated(self.store, config, fire.job, self.clock())
        else:
            mark_evaluated(self.store, config, fire.job)
        self.store.finish_fire(fire.id)
        self._wake()

    def abandon(self, fire: FireRecord, reason: str) -> None:
        """Close a fire that cannot run (its job was removed, its eval sets do not load)."""
        assert fire.id is not None
        for run, _ in self.store.fire_runs(fire.id):
            if run.id is not None and run.status in ("running", "interrupted"):
                self.finished(self.store.finish_run(run.id, status="failed", error=f"not resumed: {reason}"))
        self.store.finish_fire(fire.id, status="abandoned", error=reason)

    def finished(self, run: RunRecord) -> None:
        """Log a finished run, analyse it (verdicts, canaries, failure streaks) and tell the hook."""
        log.info(
            "run %s: %s on %s (%s) %s%s",
            run.id,
            run.job,
            run.evalset_name,
            run.strategy,
            run.status,
            f": {run.error}" if run.error else "",
        )
        if run.id is not None:
            analyze_safely(self.store, run.id, self.config(), self.notify)
            self._wake()
        if self.on_finished is not None:
            try:
                self.on_finished(run)
            except Exception:
                log.exception("run-finished hook failed")

    def _wake(self) -> None:
        if self.wake is not None:
            try:
                self.wake()
            except Exception:
                log.exception("could not wake the webhook sender")
