"""Recorded runs: load (or reuse) a model, evaluate, and keep everything in the store.

A model that fails to load, a run that fails, an item that fails: each is
stored with its reason, because history keeps failures.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from monitor.backends import Backend, EndpointSpec, ModelSpec, load_backend
from monitor.backends.base import ProgressCallback
from monitor.config import EndpointConfig, MonitorConfig
from monitor.errors import EvalSetError, NotFoundError, Problem
from monitor.evalsets import EvalSet, load_evalset, parse_strategy, strategy_name
from monitor.runner import DEFAULT_CHUNK_SIZE, DEFAULT_MAX_ERROR_RATE, evaluate, run_verdict
from monitor.schedule import parse_interval
from monitor.scoring import aggregate
from monitor.store import RunRecord, Store


class ModelPool:
    """Loaded models kept between runs; past ``max_models`` the least recently used is closed."""

    def __init__(self, loader: Callable[[ModelSpec], Backend] = load_backend, max_models: int = 1) -> None:
        self._loader = loader
        self._max = max(1, max_models)
        self._loaded: OrderedDict[ModelSpec, Backend] = OrderedDict()

    def get(self, spec: ModelSpec) -> tuple[Backend, float]:
        """The backend for ``spec`` and how long loading it took (0.0 when it was already loaded)."""
        if spec in self._loaded:
            self._loaded.move_to_end(spec)
            return self._loaded[spec], 0.0
        while len(self._loaded) >= self._max:
            _, evicted = self._loaded.popitem(last=False)
            evicted.close()
        started = time.perf_counter()
        backend = self._loader(spec)
        self._loaded[spec] = backend
        return backend, time.perf_counter() - started

    def close(self) -> None:
        while self._loaded:
            _, backend = self._loaded.popitem()
            backend.close()

    def __len__(self) -> int:
        return len(self._loaded)


@dataclass(frozen=True)
class RunPlan:
    """One run to make: a named model under a spec, an eval set, a shot count."""

    model_name: str
    spec: ModelSpec
    evalset: EvalSet
    fewshot_k: int
    trigger: str = "cli"
    job: str | None = None
    scheduled_for: datetime | None = None
    model_version: str | None = None


def execute_run(
    store: Store,
    pool: ModelPool,
    plan: RunPlan,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunRecord:
    """Make one run and record it, whatever happens; returns the finished run."""
    evalset = plan.evalset
    model = store.upsert_model(
        plan.model_name, kind=plan.spec.backend, base=plan.spec.base, adapter=plan.spec.adapter
    )
    version = store.ensure_evalset_version(
        evalset.name,
        evalset.version,
        task=evalset.task,
        path=str(evalset.path),
        item_count=len(evalset.items),
    )
    run = store.start_run(
        model=model,
        evalset=version,
        strategy=strategy_name(plan.fewshot_k),
        fewshot_k=plan.fewshot_k,
        settings_digest=evalset.settings_digest(plan.fewshot_k),
        settings=run_settings(evalset, plan.fewshot_k),
        trigger=plan.trigger,
        job=plan.job,
        items_total=len(evalset.items),
        scheduled_for=plan.scheduled_for,
        model_version=plan.model_version,
    )
    assert run.id is not None
    return continue_run(
        store,
        pool,
        plan,
        run.id,
        chunk_size=chunk_size,
        max_error_rate=max_error_rate,
        progress=progress,
        should_stop=should_stop,
    )


def continue_run(
    store: Store,
    pool: ModelPool,
    plan: RunPlan,
    run_id: int,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunRecord:
    """Evaluate what run ``run_id`` has not stored yet, then close it (used to start and to resume)."""
    store.reopen_run(run_id)
    try:
        backend, load_s = pool.get(plan.spec)
        fingerprint = backend.fingerprint()
    except Exception as exc:
        return store.finish_run(run_id, status="failed", error=f"model failed to load: {_reason(exc)}")
    store.update_run(run_id, model_fingerprint=fingerprint.digest, load_s=load_s)
    mixed = record_mc_method(store, run_id, backend, plan.evalset)
    if mixed is not None:
        return store.finish_run(run_id, status="failed", error=mixed, backend_info=backend.describe())
    store.upsert_model(
        plan.model_name,
        kind=plan.spec.backend,
        base=plan.spec.base,
        adapter=plan.spec.adapter,
        fingerprint=fingerprint.digest,
    )
    done = store.completed_item_ids(run_id)
    stopped = False

    def stop_requested() -> bool:
        nonlocal stopped
        stopped = stopped or bool(should_stop and should_stop())
        return stopped

    try:
        evaluate(
            backend,
            plan.evalset,
            fewshot_k=plan.fewshot_k,
            chunk_size=chunk_size,
            skip=done,
            sink=lambda results: store.add_item_results(run_id, results),
            progress=progress,
            should_stop=stop_requested,
        )
    except Exception as exc:
        return store.finish_run(run_id, status="failed", error=f"run failed: {_reason(exc)}")
    stored = store.item_results(run_id)
    metrics = aggregate((r.scores for r in stored if not r.error), plan.evalset.metrics)
    metric_dict = {name: value.to_dict() for name, value in metrics.items()}
    if stopped and len(stored) < len(plan.evalset.items):
        return store.finish_run(
            run_id,
            status="interrupted",
            metrics=metric_dict,
            error=f"stopped after {len(stored)} of {len(plan.evalset.items)} items",
            backend_info=backend.describe(),
        )
    failed = [r for r in stored if r.error]
    status, error = run_verdict(len(stored), len(failed), max_error_rate, failed[0].error if failed else None)
    return store.finish_run(
        run_id, status=status, metrics=metric_dict, error=error, backend_info=backend.describe()
    )


def run_settings(evalset: EvalSet, fewshot_k: int) -> dict[str, object]:
    """What decides the comparability of two runs: prompt, few-shot setting, decoding."""
    spec = evalset.spec
    return {
        "prompt": spec.prompt,
        "target_delimiter": spec.target_delimiter,
        "fewshot_k": fewshot_k,
        "fewshot_separator": spec.fewshot.separator if spec.fewshot else None,
        "metrics": list(evalset.metrics),
        "decoding": {"greedy": True, "max_new_tokens": spec.max_new_tokens, "stop": list(spec.stop)}
        if evalset.task == "generate"
        else None,
    }


def record_mc_method(store: Store, run_id: int, backend: Backend, evalset: EvalSet) -> str | None:
    """Put a multiple-choice method other than log-likelihoods into the run's settings and digest.

    Choices picked by generation (the ``openai`` backend without prompt
    log-probabilities) are another measurement than scored choices, so such
    runs are never paired with scored ones.  Scored runs keep their settings
    unchanged: served and in-process log-likelihoods of the same weights agree.
    Returns why the run cannot go on when a resumed run would mix methods.
    """
    if evalset.task != "multiple_choice":
        return None
    method = backend.describe().get("mc_method")
    wanted = method if method == "generate" else None
    run = store.get_run(run_id)
    settings = dict(run.settings or {})
    if settings.get("mc_method") == wanted:
        return None
    if store.completed_item_ids(run_id):
        return (
            f"multiple-choice method changed from {settings.get('mc_method') or 'logprobs'} to "
            f"{wanted or 'logprobs'} during the run; its items would mix methods"
        )
    settings["mc_method"] = wanted
    digest = evalset.settings_digest(run.fewshot_k)
    if wanted is not None:
        digest = hashlib.sha256(f"{digest}|mc_method={wanted}".encode()).hexdigest()[:16]
    store.update_run(run_id, settings=settings, settings_digest=digest)
    return None


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def plan_runs(
    cfg: MonitorConfig, jobs: Sequence[str], trigger: str, scheduled_for: datetime | None = None
) -> list[RunPlan]:
    """The runs that ``jobs`` (all jobs when empty) ask for, eval sets loaded and validated first."""
    unknown = [j for j in jobs if j not in cfg.jobs]
    if unknown:
        raise NotFoundError(
            f"unknown job(s) {', '.join(unknown)}; configured: {', '.join(cfg.jobs) or 'none'}"
        )
    names = list(jobs) or list(cfg.jobs)
    evalsets: dict[str, EvalSet] = {}
    problems: list[Problem] = []
    for job_name in names:
        for es_name in cfg.jobs[job_name].evalsets:
            if es_name not in evalsets:
                try:
                    evalsets[es_name] = load_evalset(cfg.resolve(cfg.evalsets[es_name]))
                except EvalSetError as exc:
                    problems.extend(exc.problems)
    if problems:
        raise EvalSetError(problems)
    plans = []
    for job_name in names:
        job = cfg.jobs[job_name]
        for model_name in job.models:
            model = cfg.models[model_name]
            base, adapter = cfg.model_source(model_name)
            spec = ModelSpec(
                model.backend,
                base,
                adapter,
                revision=model.revision,
                device=model.device,
                dtype=model.dtype,
                batch_tokens=model.batch_tokens,
                endpoint=endpoint_spec(model.endpoint) if model.endpoint else None,
            )
            for es_name in job.evalsets:
                es = evalsets[es_name]
                for strategy in job.strategies or (model.strategy,):
                    k = parse_strategy(strategy, es)
                    es.render_fewshot_prefix(k)
                    plans.append(
                        RunPlan(
                            model_name,
                            spec,
                            es,
                            k,
                            trigger=trigger,
                            job=job_name,
                            scheduled_for=scheduled_for,
                            model_version=model.version,
                        )
                    )
    return plans


def endpoint_spec(endpoint: EndpointConfig) -> EndpointSpec:
    """The ``openai`` backend's connection settings from a model's ``endpoint:`` block."""
    return EndpointSpec(
        base_url=endpoint.base_url,
        api_key_env=endpoint.api_key_env,
        api=endpoint.api,
        headers=tuple(sorted(endpoint.headers.items())),
        timeout_s=parse_interval(endpoint.timeout).total_seconds(),
        max_concurrency=endpoint.max_concurrency,
        requests_per_minute=endpoint.requests_per_minute,
        tokens_per_minute=endpoint.tokens_per_minute,
        max_retries=endpoint.max_retries,
        mc_method=endpoint.mc_method,
    )


def make_notifier(cfg: MonitorConfig) -> Any:
    """``notify(session, type, payload)``: an outbox event in the caller's transaction, or None when no endpoint."""
    if not cfg.webhooks.endpoints:
        return None
    from monitor.exporters.webhooks import enqueue_event

    def notify(session: Any, event_type: str, payload: dict[str, Any]) -> None:
        endpoints = cfg.webhooks.endpoints_for(event_type)
        if endpoints:
            enqueue_event(session, event_type, payload, endpoints)

    return notify


def analyze_safely(store: Store, run_id: int, cfg: MonitorConfig, notify: Any = None) -> Any:
    """Regression, behaviour and canary checks after a run, and the repeated-failure event;
    a failure is logged, never raised."""
    import logging

    from monitor.analysis.assess import analyze_run, check_repeated_failures

    try:
        check_repeated_failures(store, store.get_run(run_id), notify)
        return analyze_run(store, run_id, cfg.baselines_dir(), cfg.analysis_policy(), notify)
    except Exception as exc:
        logging.getLogger("monitor.analysis").warning("analysis of run %s failed: %s", run_id, exc)
        return None


def after_job(store: Store, cfg: MonitorConfig, models: Sequence[str], notify: Any = None) -> None:
    """After a job: input drift for its models that watch production, then the recommendations of the
    fine-tunes that involve them.  Failures are logged, never raised."""
    import logging

    from monitor.analysis.assess import run_input_drift
    from monitor.analysis.recommend import assess, record_recommendation
    from monitor.store import utcnow

    log = logging.getLogger("monitor.analysis")
    for name in models:
        drift = cfg.models[name].drift
        if drift is None:
            continue
        try:
            run_input_drift(store, name, drift, base_dir=cfg.root, now=utcnow(), notify=notify)
        except Exception as exc:
            log.warning("input drift check of %s failed: %s", name, exc)
    for ft_name, ft in cfg.finetunes.items():
        if not ({ft.model, ft.base_model, *ft.challengers} & set(models)):
            continue
        try:
            found = assess(store, cfg, ft_name)
            record_recommendation(
                store,
                ft.model,
                found.decision,
                found.evidence,
                found.costs.to_dict() if found.costs else None,
                on_change=None
                if notify is None
                else lambda s, r, n=ft_name, m=ft.model: notify(
                    s,
                    "recommendation.changed",
                    {
                        "model": m,
                        "finetune": n,
                        "action": r.action,
                        "previous_action": r.previous_action,
                        "summary": r.summary,
                        "reasons": r.reasons,
                        "costs": r.costs,
                    },
                ),
            )
        except NotFoundError:
            log.info("no recommendation for %s yet: the fine-tune has never been evaluated", ft_name)
        except Exception as exc:
            log.warning("recommendation for %s failed: %s", ft_name, exc)


def run_jobs(
    store: Store,
    cfg: MonitorConfig,
    jobs: Sequence[str],
    *,
    trigger: str,
    pool: ModelPool | None = None,
    progress_for: Callable[[RunPlan], Any] | None = None,
    on_run: Callable[[RunPlan, RunRecord], None] | None = None,
) -> list[tuple[RunRecord, str]]:
    """Run ``jobs`` (all when empty) once in this process, as the daemon would, without a schedule.

    Each run is analysed as it finishes; then the jobs' input drift checks and
    recommendations are redone, and the releases of challenger jobs marked
    evaluated.  ``progress_for(plan)`` may return a context manager that yields
    a progress callback; ``on_run(plan, run)`` hears of every finished run.
    """
    from monitor.releases import mark_evaluated

    plans = plan_runs(cfg, jobs, trigger=trigger)
    notify = make_notifier(cfg)
    own_pool = pool is None
    pool = pool if pool is not None else ModelPool(max_models=1)
    finished: list[tuple[RunRecord, str]] = []
    try:
        for plan in plans:
            context = progress_for(plan) if progress_for is not None else contextlib.nullcontext(None)
            with context as progress:
                run = execute_run(
                    store,
                    pool,
                    plan,
                    chunk_size=cfg.daemon.chunk_size,
                    max_error_rate=cfg.daemon.max_item_error_rate,
                    progress=progress,
                )
            assert run.id is not None
            analyze_safely(store, run.id, cfg, notify)
            finished.append((run, plan.model_name))
            if on_run is not None:
                on_run(plan, run)
        after_job(store, cfg, sorted({plan.model_name for plan in plans}), notify)
        for job in jobs or list(cfg.jobs):
            mark_evaluated(store, cfg, job)
    finally:
        if own_pool:
            pool.close()
    return finished
