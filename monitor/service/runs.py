"""Recorded runs: load (or reuse) a model, evaluate, and keep everything in the store.

A model that fails to load, a run that fails, an item that fails: each is
stored with its reason, because history keeps failures.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from monitor.analysis.judge import calibration_record
from monitor.backends import Backend, ModelSpec
from monitor.backends.base import ProgressCallback
from monitor.config import MonitorConfig
from monitor.errors import LeaseLostError, NotFoundError, StoreError, reason_of
from monitor.evals.evalset import EvalSet, chat_template_change, strategy_name
from monitor.evals.judge import JudgeModels, JudgeScorer
from monitor.evals.loop import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_ERROR_RATE,
    chat_settings,
    evaluate,
    run_verdict,
)
from monitor.evals.results import draw_spread
from monitor.evals.scorers import ScorerContext
from monitor.evals.scoring import aggregate
from monitor.service.after_job import after_job, analyze_safely, make_notifier
from monitor.service.plan import RunPlan, model_spec, plan_runs
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
    judge_specs: JudgeSpecs | None = None,
) -> RunRecord:
    """Make one run and record it, whatever happens; returns the finished run.

    The exceptions: a storage fault (:class:`~monitor.errors.StoreError`) and a lost
    lease (:class:`~monitor.errors.LeaseLostError`) propagate, because the run cannot
    be recorded; the daemon leaves such a run resumable.  ``judge_specs`` gives the
    models of the eval set's ``judge`` metrics (:func:`judge_specs`).
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
        judge_specs=judge_specs,
    )


#: A configured model name -> its spec (a judge's); raises NotFoundError for an unknown name.
JudgeSpecs = Callable[[str], ModelSpec]


def judge_specs(cfg: MonitorConfig) -> JudgeSpecs:
    """The specs of the configuration's models, by name, for the judges of a run."""

    def spec(name: str) -> ModelSpec:
        if name not in cfg.models:
            raise NotFoundError(
                f"the judge model {name!r} is not configured; configured models: {', '.join(cfg.models) or 'none'}"
            )
        return model_spec(cfg, name)

    return spec


def judge_keys(evalset: EvalSet) -> list[str]:
    """The keys of the eval set's ``judge`` metrics."""
    if evalset.task != "generate":
        return []
    return [m.key for m in evalset.metric_specs if m.name == "judge"]


def judge_models(evalset: EvalSet) -> set[str]:
    """The configured model names the eval set's judges use."""
    if evalset.task != "generate":
        return set()
    return {str(m.options.get("model")) for m in evalset.metric_specs if m.name == "judge"}


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
    judge_specs: JudgeSpecs | None = None,
) -> RunRecord:
    """Evaluate what run ``run_id`` has not stored yet, then close it (used to start and to resume).

    The model (and the eval set's judges) stay pinned in the pool while the run uses them.
    """
    with contextlib.ExitStack() as pins:
        pin(pool, pins, plan.spec)
        return _continue_run(
            store, pool, plan, run_id, pins, chunk_size, max_error_rate, progress, should_stop, judge_specs
        )


def pin(pool: ModelPool, pins: contextlib.ExitStack, spec: ModelSpec) -> None:
    """Keep ``spec``'s model loaded until ``pins`` closes (a pool without pins: nothing to do)."""
    pinned = getattr(pool, "pinned", None)
    if pinned is not None:
        pins.enter_context(pinned(spec))


def _continue_run(
    store: Store,
    pool: ModelPool,
    plan: RunPlan,
    run_id: int,
    pins: contextlib.ExitStack,
    chunk_size: int,
    max_error_rate: float,
    progress: ProgressCallback | None,
    should_stop: Callable[[], bool] | None,
    judge_specs: JudgeSpecs | None,
) -> RunRecord:
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
    earlier = dict(store.get_run(run_id).backend_info or {})
    try:
        judges = judge_run(pool, pins, plan.evalset, judge_specs)
        mixed = record_judge_settings(store, run_id, plan.evalset, judges) if judges else None
    except (StoreError, LeaseLostError):
        raise
    except Exception as exc:
        return store.finish_run(
            run_id, status="failed", error=f"judge failed to load: {_reason(exc)}", backend_info=info
        )
    if mixed is not None:
        return store.finish_run(run_id, status="failed", error=mixed, backend_info=info)
    scorer_context = ScorerContext(plan.evalset.path, backend_for=judges.models) if judges else None
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
            scorer_context=scorer_context,
        )
    except (StoreError, LeaseLostError):
        raise  # the run cannot be recorded: not the model's failure (the daemon leaves it resumable)
    except Exception as exc:
        return store.finish_run(run_id, status="failed", error=f"run failed: {_reason(exc)}")
    stored = store.item_results(run_id)
    complete = not (stopped and len(stored) < len(plan.evalset.items))
    if judges:
        info |= judges.record(earlier, calibrate=complete)
    seeds = plan.evalset.draw_seeds(plan.fewshot_k)
    if len(seeds) > 1:
        info["fewshot_draws"] = draw_spread(store.item_details(run_id).values(), plan.evalset.metrics, seeds)
    metrics = aggregate((r.scores for r in stored if not r.error), plan.evalset.metrics)
    metric_dict = {name: value.to_dict() for name, value in metrics.items()}
    if not complete:
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
    """What decides the comparability of two runs: prompt, few-shot setting, decoding, and the
    scorers' own settings (``scorers``, by metric key, when any scorer has settings: a judge's
    model, rubric and scale)."""
    spec = evalset.spec
    scorers = evalset.scorer_settings() if evalset.task == "generate" else {}
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
        **({"scorers": scorers} if scorers else {}),
    }


class JudgeRun:
    """The judges of one run: their models (loaded through the pool, pinned, metered) and one scorer
    per ``judge`` metric, kept to record the judges' settings and to re-score their calibration files."""

    def __init__(self, models: JudgeModels, scorers: dict[str, JudgeScorer]) -> None:
        self.models = models
        self.scorers = scorers

    def record(self, earlier: dict[str, Any], *, calibrate: bool = True) -> dict[str, Any]:
        """What the run's ``backend_info`` keeps of its judges.

        ``judges``: per metric key the judge (model, fingerprint, rubric hash, scale) and,
        when ``calibrate`` (the run is complete), its agreement with people on its
        calibration file (:func:`monitor.analysis.judge.calibration_record`) and the tokens
        that cost.  ``judge_usage``: per judge model the requests and tokens of this run
        (scoring and calibration), added to those of its earlier stretches (a resumed run).
        """
        judges: dict[str, Any] = {}
        for key, scorer in self.scorers.items():
            entry = scorer.describe()
            entry.pop("tokens", None)
            if calibrate:
                entry |= _calibration(scorer)
            judges[key] = entry
        usage = self.models.usage()
        for model, before in (earlier.get("judge_usage") or {}).items():
            mine = usage.setdefault(model, {})
            for name, count in (before or {}).items():
                mine[name] = mine.get(name, 0) + int(count or 0)
        return {"judges": judges, "judge_usage": usage}


def _calibration(scorer: JudgeScorer) -> dict[str, Any]:
    """The judge's calibration entry: its agreement with people, or why it could not be measured."""
    before = (scorer.requests, scorer.prompt_tokens, scorer.completion_tokens)
    try:
        found = scorer.calibrate()
    except (StoreError, LeaseLostError):
        raise
    except Exception as exc:  # a judge that cannot calibrate is untrusted, not a failed run
        return {"calibration": {"error": _reason(exc), "min_agreement": scorer.min_agreement}}
    if found is None:
        return {}
    record = calibration_record(
        ids=found.ids,
        human=found.human,
        judge=found.judge,
        scale=scorer.scale,
        file=found.file,
        file_sha256=found.file_sha256,
        min_agreement=scorer.min_agreement,
        duplicates=found.duplicates,
    )
    if found.errors:
        record["errors"] = list(found.errors)
    return {
        "calibration": record,
        "calibration_tokens": {
            "requests": scorer.requests - before[0],
            "prompt_tokens": scorer.prompt_tokens - before[1],
            "completion_tokens": scorer.completion_tokens - before[2],
        },
    }


def judge_run(
    pool: ModelPool, pins: contextlib.ExitStack, evalset: EvalSet, specs: JudgeSpecs | None
) -> JudgeRun | None:
    """The judges of ``evalset`` (None when it has no ``judge`` metric), their models loaded now
    through ``pool`` and pinned there until ``pins`` closes.

    Raises:
        NotFoundError: a judge model is not configured (or no configuration was given).
        ValueError, MonitorError: a judge cannot be built or its model cannot be loaded.
    """
    from monitor.evals.scorers import make_scorer

    keys = judge_keys(evalset)
    if not keys:
        return None

    def load(name: str) -> Backend:
        if specs is None:
            raise NotFoundError(
                f"the judge model {name!r} cannot be loaded: this run was given no configured models"
            )
        spec = specs(name)
        pin(pool, pins, spec)
        return pool.get(spec)[0]

    models = JudgeModels(load)
    context = ScorerContext(evalset.path, backend_for=models)
    scorers: dict[str, JudgeScorer] = {}
    for metric in evalset.metric_specs:
        if metric.key in keys:
            scorer = make_scorer(metric.name, metric.options, context)
            assert isinstance(scorer, JudgeScorer)
            scorer.backend()  # load it now: a judge that cannot load fails the run before any item
            scorers[metric.key] = scorer
    return JudgeRun(models, scorers)


def record_judge_settings(store: Store, run_id: int, evalset: EvalSet, judges: JudgeRun) -> str | None:
    """Put each judge's settings, with its model's fingerprint now that it is loaded, into the run's
    settings (``judges``) and digest, so that a run under another judge never pairs with this one.
    Returns why the run cannot go on when a resumed run would mix judges."""
    extra = {key: scorer.settings() for key, scorer in judges.scorers.items()}
    run = store.get_run(run_id)
    settings = dict(run.settings or {})
    before = settings.get("judges")
    if before == extra:
        return None
    if before is not None and store.completed_item_ids(run_id):
        changed = sorted(k for k in set(before) | set(extra) if before.get(k) != extra.get(k))
        return f"the judge of {', '.join(changed)} changed during the run; its items would mix judges"
    settings["judges"] = extra
    payload = json.dumps(extra, sort_keys=True)
    digest = hashlib.sha256(f"{_base_digest(run, evalset)}|judges={payload}".encode()).hexdigest()[:16]
    store.update_run(run_id, settings=settings, settings_digest=digest)
    return None


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
    return reason_of(exc)


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
    # room for the judges beside the model under test (a pool without pins evicts the least recent)
    room = 1 + len(set().union(*(judge_models(plan.evalset) for plan in plans)))
    # A pool of our own is closed here; a caller's pool stays open for the caller.
    with ModelPool(max_models=room) if pool is None else contextlib.nullcontext(pool) as pool:
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
                    judge_specs=judge_specs(cfg),
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
