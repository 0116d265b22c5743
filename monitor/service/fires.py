"""Completing a job fire: its runs made or resumed, then its after-job work once, then closed.

One :class:`FireRunner` serves the daemon's worker and ``monitor run JOB --slot``
(:mod:`monitor.service.slots`), so that a fire started by either is finished the
same way by either.  A storage fault (:class:`~monitor.errors.StoreError`) and a
lost lease or claim (:class:`~monitor.errors.LeaseLostError`) propagate: the
caller leaves the fire open for whoever resumes it.

Concurrency: a fire's runs against OpenAI-compatible endpoints go out at once,
each on a thread of its own, at most ``daemon.max_concurrent_runs`` runs in
flight across every fire of the process (:class:`RunSlots`, shared by the
daemon's workers); each endpoint's own ``max_concurrency`` bounds its requests
across all of them (:class:`monitor.backends.openai.EndpointGate`).  In-process
(``hf``) runs take their device's lock first, so two never share a device.  A
fire is closed, and its after-job work done, only when all its runs are
finished; a stop or a fault leaves the runs in flight to end at their chunk
boundary, and the fire open.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

from monitor.backends import ModelSpec
from monitor.config import MonitorConfig
from monitor.errors import MonitorError
from monitor.evals.evalset import parse_strategy
from monitor.events import Notify
from monitor.service.after_job import after_job, analyze_safely
from monitor.service.plan import RunPlan, model_spec, plan_key, plan_runs
from monitor.service.releases.challengers import mark_evaluated
from monitor.service.runs import ModelPool, continue_run, judge_specs, open_run
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


def run_lanes(todo: list[tuple[RunPlan, RunRecord | None]]) -> list[list[tuple[RunPlan, RunRecord | None]]]:
    """The runs of a fire in lanes that may go at once: each served run its own, the in-process
    runs of one device one lane, in the plan's order."""
    lanes: dict[str, list[tuple[RunPlan, RunRecord | None]]] = {}
    for i, (plan, run) in enumerate(todo):
        key = f"served:{i}" if plan.spec.backend == "openai" else f"device:{plan.spec.device}"
        lanes.setdefault(key, []).append((plan, run))
    return list(lanes.values())


class RunSlots:
    """The process-wide bound on runs in flight (``daemon.max_concurrent_runs``) and the per-device
    locks of in-process models; one per process, shared by every :class:`FireRunner` in it.

    Locks are always taken in one order, a device's before a run slot, so a waiting
    in-process run holds no slot that a served run could use.
    """

    def __init__(self, max_runs: int) -> None:
        self.max_runs = max(1, max_runs)
        self._slots = threading.BoundedSemaphore(self.max_runs)
        self._devices: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        #: Held while a run is opened: two runs of one model (or eval set) starting at once would
        #: both insert its row (the store's upserts are read-then-write).
        self.opening = threading.Lock()
        #: Runs in flight now, and the most there ever were at once.
        self.in_flight = 0
        self.max_in_flight = 0

    def device_lock(self, spec: ModelSpec) -> threading.Lock | None:
        """The lock of ``spec``'s device for an in-process model (None for a served one)."""
        if spec.backend == "openai":
            return None
        with self._lock:
            return self._devices.setdefault(spec.device, threading.Lock())

    @contextlib.contextmanager
    def devices(self, specs: Iterable[ModelSpec]) -> Iterator[None]:
        """Hold the devices of the in-process models among ``specs`` (in a fixed order: no deadlock)."""
        locks = {id(lock): lock for lock in map(self.device_lock, specs) if lock is not None}
        with self._lock:
            names = {id(lock): name for name, lock in self._devices.items()}
        with contextlib.ExitStack() as held:
            for key in sorted(locks, key=lambda k: names.get(k, "")):
                held.enter_context(locks[key])
            yield

    def run(self, spec: ModelSpec, work: Callable[[], object]) -> None:
        """Do ``work`` holding the spec's device (in-process models) and one run slot."""
        with self.devices([spec]), self._slots:
            with self._lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                work()
            finally:
                with self._lock:
                    self.in_flight -= 1


class FireRunner:
    """Makes the runs of fires and closes them; its collaborators come from the caller.

    ``config()`` is read at each step (the daemon's effective configuration grows
    with the releases it finds); ``should_stop()`` is checked between chunks and
    runs (a stopped fire stays open); ``on_started(plan, run_id, resumed)`` hears every run
    made or resumed, ``on_finished(run)`` every finished run; ``wake()`` is called after
    anything may have written an event.
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
        on_started: Callable[[RunPlan, int, bool], None] | None = None,
        wake: Callable[[], None] | None = None,
        clock: Callable[[], datetime] | None = None,
        slots: RunSlots | None = None,
    ) -> None:
        self.store = store
        #: Shared with every other runner of the process (the daemon's workers); one of its own otherwise.
        self.slots = slots or RunSlots(config().daemon.max_concurrent_runs)
        self.config = config
        self.pool = pool
        self.notify = notify
        self.should_stop = should_stop
        self.on_finished = on_finished
        self.on_started = on_started
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
        todo: list[tuple[RunPlan, RunRecord | None]] = []
        for plan in plans:
            run = made.get((plan.model_name, plan.evalset.name, plan.strategy))
            if run is not None and run.status in ("succeeded", "failed"):
                continue
            todo.append((plan, run))
        interrupted = threading.Event()
        errors: list[BaseException] = []

        def halted() -> bool:
            """Stop at the next chunk: the runner stops, a sibling run was stopped, or one hit a fault."""
            return self.should_stop() or interrupted.is_set() or bool(errors)

        def one(plan: RunPlan, run: RunRecord | None) -> None:
            if halted():
                interrupted.set()  # not started: the fire stays open
                return
            if run is None:
                with self.slots.opening:  # the model's and eval set's first rows are made once
                    run_id = open_run(self.store, plan, fire_id=fire_id)
            else:
                assert run.id is not None
                found = resumable(config, run, plan.model_name, [plan])
                if isinstance(found, str):
                    self.finished(self.store.finish_run(run.id, status="failed", error=found))
                    return
                log.info("resuming run %d of job %s", run.id, fire.job)
                run_id = run.id
            self.started(plan, run_id, resumed=run is not None)
            if self.continue_run(plan, run_id, should_stop=halted).status == "interrupted":
                interrupted.set()

        def lane(runs: list[tuple[RunPlan, RunRecord | None]]) -> None:
            for plan, run in runs:
                if halted():
                    interrupted.set()
                    return
                try:
                    self.slots.run(plan.spec, functools.partial(one, plan, run))
                except BaseException as exc:  # a storage fault or a lost lease: re-raised once all ended
                    errors.append(exc)
                    return

        lanes = run_lanes(todo)
        if len(lanes) == 1 or self.slots.max_runs == 1:
            lane(todo)  # in the plan's order, on this thread (the serial worker)
        else:
            threads = [
                threading.Thread(target=lane, args=(runs,), name=f"monitor-run-{fire.job}-{i}", daemon=True)
                for i, runs in enumerate(lanes)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        if errors:
            raise errors[0]
        if interrupted.is_set() or self.should_stop():
            return False  # the fire stays open: whoever comes next completes it
        self.after_fire(fire)
        return True

    def continue_run(
        self, plan: RunPlan, run_id: int, *, should_stop: Callable[[], bool] | None = None
    ) -> RunRecord:
        """Evaluate what run ``run_id`` has not stored yet, close it and analyse it.

        The eval set's ``judge`` metrics are scored with the configured judge models, as
        ``monitor run`` scores them.
        """
        config = self.config()
        settings = config.daemon
        run = continue_run(
            self.store,
            self.pool,
            plan,
            run_id,
            chunk_size=settings.chunk_size,
            max_error_rate=settings.max_item_error_rate,
            should_stop=should_stop or self.should_stop,
            judge_specs=judge_specs(config),
        )
        self.finished(run)
        return run

    def after_fire(self, fire: FireRecord) -> None:
        """The fire's after-job work (input drift, recommendations, releases evaluated), then close it."""
        assert fire.id is not None
        config = self.config()
        models = list(config.jobs[fire.job].models)
        specs = [model_spec(config, name) for name in models if name in config.models]
        # The job's models stay loaded while its drift and label-free checks use them, and its
        # in-process models' devices are not shared with another fire's run meanwhile.
        with self.slots.devices(specs), contextlib.ExitStack() as pins:
            for spec in specs:
                pins.enter_context(self.pool.pinned(spec))
            after_job(self.store, config, models, self.notify, pool=self.pool)
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

    def started(self, plan: RunPlan, run_id: int, *, resumed: bool) -> None:
        """Tell ``on_started`` (a listener's failure is logged, never the run's)."""
        if self.on_started is not None:
            try:
                self.on_started(plan, run_id, resumed)
            except Exception:
                log.exception("the run-started listener failed")

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
