"""Recorded runs: load (or reuse) a model, evaluate, and keep everything in the store.

A model that fails to load, a run that fails, an item that fails: each is
stored with its reason, because history keeps failures.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from monitor.backends import Backend
from monitor.backends.base import ProgressCallback
from monitor.config import MonitorConfig
from monitor.errors import LeaseLostError, StoreError
from monitor.evals.evalset import EvalSet, chat_template_change, strategy_name
from monitor.evals.loop import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_ERROR_RATE,
    chat_settings,
    evaluate,
    run_verdict,
)
from monitor.evals.scoring import aggregate
from monitor.service.after_job import after_job, analyze_safely, make_notifier
from monitor.service.plan import RunPlan, plan_runs
from monitor.service.pool import ModelPool
from monitor.store import RunRecord, Store


def execute_run(
    store: Store,
    pool: ModelPool,
    plan: RunPlan,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    fire_id: int | None = None,
) -> RunRecord:
    """Make one run and record it, whatever happens; returns the finished run.

    The exceptions: a storage fault (:class:`~monitor.errors.StoreError`) and a lost
    lease (:class:`~monitor.errors.LeaseLostError`) propagate, because the run cannot
    be recorded; the daemon leaves such a run resumable.
    """
    run_id = open_run(store, plan, fire_id=fire_id)
    return continue_run(
        store,
        pool,
        plan,
        run_id,
        chunk_size=chunk_size,
        max_error_rate=max_error_rate,
        progress=progress,
        should_stop=should_stop,
    )


def open_run(store: Store, plan: RunPlan, *, fire_id: int | None = None) -> int:
    """Record a new ``running`` run for ``plan`` (in ``fire_id``); returns its id."""
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
        fire_id=fire_id,
    )
    assert run.id is not None
    return run.id


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
    except (StoreError, LeaseLostError):
        raise
    except Exception as exc:
        return store.finish_run(run_id, status="failed", error=f"model failed to load: {_reason(exc)}")
    store.update_run(run_id, model_fingerprint=fingerprint.digest, load_s=load_s)
    # the serving stack around the weights (tokenizer, special tokens, chat template, generation
    # config; a server's version): "stack changed" is told apart from "weights changed"
    info = dict(backend.describe())
    if fingerprint.stack:
        info |= {"stack_digest": fingerprint.stack_digest, "stack": dict(fingerprint.stack)}
    mixed = record_chat_settings(store, run_id, backend, plan.evalset) or record_mc_method(
        store, run_id, backend, plan.evalset
    )
    if mixed is not None:
        return store.finish_run(run_id, status="failed", error=mixed, backend_info=info)
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
    except (StoreError, LeaseLostError):
        raise  # the run cannot be recorded: not the model's failure (the daemon leaves it resumable)
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
            backend_info=info,
        )
    failed = [r for r in stored if r.error]
    status, error = run_verdict(len(stored), len(failed), max_error_rate, failed[0].error if failed else None)
    return store.finish_run(run_id, status=status, metrics=metric_dict, error=error, backend_info=info)


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
        **evalset.comparison_settings(fewshot_k),
    }


def record_chat_settings(store: Store, run_id: int, backend: Backend, evalset: EvalSet) -> str | None:
    """Put the chat template the model renders with (its hash, source, system-prompt handling) into
    the run's settings and digest, so a run under another template is never paired with this one.
    Returns why the run cannot go on when a resumed run would mix templates."""
    extra = chat_settings(backend, evalset)
    if not extra:
        return None
    run = store.get_run(run_id)
    settings = dict(run.settings or {})
    before = settings.get("chat_template_sha256")
    if before == extra["chat_template_sha256"]:
        return None
    if before is not None and store.completed_item_ids(run_id):
        return f"{chat_template_change(settings, extra)} during the run; its items would mix templates"
    settings.update(extra)
    digest = evalset.settings_digest(run.fewshot_k, chat_template_sha256=extra["chat_template_sha256"])
    store.update_run(run_id, settings=settings, settings_digest=digest)
    return None


def _base_digest(run: RunRecord, evalset: EvalSet) -> str:
    sha = (run.settings or {}).get("chat_template_sha256")
    return evalset.settings_digest(run.fewshot_k, chat_template_sha256=sha)


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
    digest = _base_digest(run, evalset)
    if wanted is not None:
        digest = hashlib.sha256(f"{digest}|mc_method={wanted}".encode()).hexdigest()[:16]
    store.update_run(run_id, settings=settings, settings_digest=digest)
    return None


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
    from monitor.service.releases.challengers import mark_evaluated

    plans = plan_runs(cfg, jobs, trigger=trigger)
    notify = make_notifier(cfg)
    finished: list[tuple[RunRecord, str]] = []
    # A pool of our own is closed here; a caller's pool stays open for the caller.
    with ModelPool(max_models=1) if pool is None else contextlib.nullcontext(pool) as pool:
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
        after_job(store, cfg, sorted({plan.model_name for plan in plans}), notify, pool=pool)
        for job in jobs or list(cfg.jobs):
            mark_evaluated(store, cfg, job)
    return finished
