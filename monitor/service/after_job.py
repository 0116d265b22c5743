"""After every run: regression verdicts, behaviour drift and integrity canaries against the baseline.

Nothing here may break a run: the caller logs what raises and goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from monitor import events
from monitor.analysis.baselines import Baseline, baseline_path, load_baseline
from monitor.analysis.behaviour import (
    ItemOutcome,
    adapter_not_applied,
    behaviour_drift,
    fingerprint_changed,
    stack_changed,
)
from monitor.analysis.judge import check_judges
from monitor.analysis.regression import RegressionPolicy, assess_run, comparability
from monitor.config import MonitorConfig, RegressionConfig
from monitor.errors import NotFoundError
from monitor.events import Event, Notify
from monitor.store import ItemResultRecord, RunRecord, Store, utcnow
from monitor.store.tables import DriftRecord, VerdictRecord


@dataclass(frozen=True)
class AnalysisPolicy:
    """Thresholds for everything checked after a run."""

    regression: RegressionPolicy = field(default_factory=RegressionPolicy)
    behaviour_alpha: float = 0.01
    min_agreement: float = 0.9


def analysis_policy(regression: RegressionConfig) -> AnalysisPolicy:
    """The thresholds of the after-run analysis, from ``regression:``."""
    return AnalysisPolicy(
        regression=RegressionPolicy(
            tolerance=regression.tolerance,
            alpha=regression.alpha,
            confirmations=regression.confirmations,
            n_resamples=regression.bootstrap_resamples,
            seed=regression.seed,
            sequential=regression.sequential,
            power=regression.power,
            prior_discordance=regression.prior_discordance,
            design_runs=regression.design_runs,
            slice_by=regression.slice_by,
            max_slices=regression.max_slices,
            min_slice_items=regression.min_slice_items,
        ),
        behaviour_alpha=regression.behaviour_alpha,
        min_agreement=regression.min_agreement,
    )


@dataclass(frozen=True)
class RunAnalysis:
    """What the analysis of one run found."""

    run_id: int
    baseline_run_id: int | None
    verdicts: tuple[VerdictRecord, ...] = ()
    findings: tuple[DriftRecord, ...] = ()
    note: str | None = None


def analyze_run(
    store: Store,
    run_id: int,
    baselines_root: Path,
    policy: AnalysisPolicy | None = None,
    notify: Notify | None = None,
) -> RunAnalysis:
    """Compare a finished run with its model's baseline on that eval set and store what was found."""
    policy = policy or AnalysisPolicy()
    run = store.get_run(run_id)
    model_name = store.model_name(run.model_id)
    findings: list[DriftRecord] = []
    adapter = _adapter_canary(store, run)
    if adapter is not None:
        findings.append(adapter)
    path = baseline_path(baselines_root, model_name, run.evalset_name)
    baseline = load_baseline(path) if run.status == "succeeded" and path.exists() else None
    stack = _stack_canary(store, run, model_name, baseline)
    if stack is not None:
        findings.append(stack)
    if baseline is None:
        _store_findings(store, findings, notify)
        _confirm_stack_change(store, run, stack)
        return RunAnalysis(
            run_id,
            None,
            findings=tuple(findings),
            note="no baseline" if run.status == "succeeded" else run.status,
        )
    if baseline.strategy != run.strategy:
        _store_findings(store, findings, notify)
        _confirm_stack_change(store, run, stack)
        return RunAnalysis(
            run_id, baseline.run_id, findings=tuple(findings), note="the baseline has another strategy"
        )
    verdicts = assess_run(store, run_id, baseline, policy.regression, notify)
    findings.append(_fingerprint_canary(run, baseline))
    behaviour = _behaviour(store, run, baseline, policy)
    if behaviour is not None:
        findings.append(behaviour)
    _store_findings(store, findings, notify)
    _confirm_stack_change(store, run, stack)
    return RunAnalysis(run_id, baseline.run_id, tuple(verdicts), tuple(findings))


def _store_findings(store: Store, findings: list[DriftRecord], notify: Notify | None = None) -> None:
    """Store findings; one that newly detects drift or an integrity problem is an event, in the same transaction."""
    if not findings:
        return
    found = []
    for f in findings:
        previous = store.previous_finding(f.model_id, f.kind, f.source)
        if f.drifted and notify is not None and (previous is None or not previous.drifted):
            model = store.model_by_id(f.model_id)
            found.append(
                events.drift_detected(
                    model=model.name if model else "?",
                    kind=f.kind,
                    source=f.source,
                    score=f.score,
                    p_value=f.p_value,
                    summary=f.reason,
                    run=f.run_id,
                )
            )
    store.add_findings(findings, found, notify)


def _task(store: Store, run: RunRecord) -> str:
    version = store.evalset_version(run.evalset_version_id)
    return version.task if version is not None else "multiple_choice"


def _outcomes(rows: list[ItemResultRecord]) -> list[ItemOutcome]:
    return [ItemOutcome(r.item_id, r.prediction, r.correct, r.error) for r in rows]


def _behaviour(
    store: Store, run: RunRecord, baseline: Baseline, policy: AnalysisPolicy
) -> DriftRecord | None:
    mode, _ = comparability(run, baseline)
    if mode != "paired":
        return None
    assert run.id is not None
    current = _outcomes(store.item_results(run.id))
    base = [ItemOutcome(i.id, i.prediction, i.correct) for i in baseline.items]
    drift = behaviour_drift(
        base,
        current,
        task=_task(store, run),
        alpha=policy.behaviour_alpha,
        min_agreement=policy.min_agreement,
    )
    return DriftRecord(
        model_id=run.model_id,
        kind="behaviour",
        source=run.evalset_name,
        run_id=run.id,
        score=drift.agreement,
        p_value=drift.p_value,
        threshold=policy.min_agreement,
        drifted=drift.drifted,
        state="drifted" if drift.drifted else "ok",
        reason="; ".join(drift.reasons) or None,
        details={"test": drift.test, "n": drift.n, **drift.details},
        created_at=utcnow(),
    )


def _fingerprint_canary(run: RunRecord, baseline: Baseline) -> DriftRecord:
    finding = fingerprint_changed(
        baseline.model_fingerprint, run.model_fingerprint, baseline.model_version, run.model_version
    )
    return DriftRecord(
        model_id=run.model_id,
        kind="canary",
        source="fingerprint",
        run_id=run.id,
        score=1.0 if finding else 0.0,
        drifted=finding is not None,
        state="problem" if finding else "ok",
        reason=finding.message if finding else None,
        details={"baseline": baseline.model_fingerprint, "current": run.model_fingerprint},
        created_at=utcnow(),
    )


def _stack_canary(
    store: Store, run: RunRecord, model_name: str, baseline: Baseline | None
) -> DriftRecord | None:
    """Did the serving stack around the weights change (tokenizer, special tokens, chat template,
    generation config, the server's version)?  Compared with the baseline run's stack where the
    baseline run is stored with one, else with the model's previous succeeded run."""
    current = _stack_of(run)
    if run.status != "succeeded" or run.id is None or current is None:
        return None
    reference: RunRecord | None = None
    if baseline is not None:
        try:
            reference = store.get_run(baseline.run_id)
        except NotFoundError:
            reference = None
        label = f"the baseline run {baseline.run_id}"
    if reference is None or _stack_of(reference) is None:
        earlier = [
            r
            for r, _ in store.runs(model=model_name, status="succeeded", limit=50)
            if r.id is not None and r.id < run.id
        ]
        reference = next((r for r in earlier if _stack_of(r) is not None), None)
        label = f"the previous run {reference.id}" if reference is not None else ""
    if reference is None:
        return None
    finding = stack_changed(_stack_of(reference), current, label)
    previous = store.previous_finding(run.model_id, "canary", "stack")
    return DriftRecord(
        model_id=run.model_id,
        kind="canary",
        source="stack",
        run_id=run.id,
        score=1.0 if finding else 0.0,
        drifted=finding is not None,
        state="problem" if finding else "ok",
        reason=finding.message if finding else None,
        details={
            "reference_run": reference.id,
            "reference": (reference.backend_info or {}).get("stack_digest"),
            "current": (run.backend_info or {}).get("stack_digest"),
            # the change is new with this run (the previous stack finding was clear, or there was none)
            "new": finding is not None and (previous is None or not previous.drifted),
        },
        created_at=utcnow(),
    )


def _stack_of(run: RunRecord) -> dict[str, str] | None:
    stack = (run.backend_info or {}).get("stack")
    return {str(k): str(v) for k, v in stack.items()} if isinstance(stack, dict) and stack else None


def _confirm_stack_change(store: Store, run: RunRecord, finding: DriftRecord | None) -> None:
    """A stack newly changed: queue a run of the job now, so that a verdict on the new stack gets its
    confirming look without waiting for the next scheduled fire.  Once per change: a stack that stays
    changed (or flaps from run to run) queues nothing more."""
    if finding is None or not (finding.details or {}).get("new") or not run.job:
        return
    store.request_run(run.job, requested_by=f"stack canary: confirm run {run.id}")


def _adapter_canary(store: Store, run: RunRecord) -> DriftRecord | None:
    """For a model with an adapter: does it score exactly like its base model? Then the adapter is not applied."""
    if run.status != "succeeded" or run.id is None:
        return None
    model = store.model_by_id(run.model_id)
    if model is None or not model.adapter:
        return None
    base_run = store.latest_base_run(
        model.base, evalset_version=run.evalset_version, settings_digest=run.settings_digest
    )
    if base_run is None or base_run.id is None:
        return None
    mine = {r.item_id: r.loglikelihoods for r in store.item_results(run.id) if not r.error}
    theirs = {r.item_id: r.loglikelihoods for r in store.item_results(base_run.id) if not r.error}
    finding = adapter_not_applied(mine, theirs)
    return DriftRecord(
        model_id=run.model_id,
        kind="canary",
        source="adapter",
        run_id=run.id,
        score=1.0 if finding else 0.0,
        drifted=finding is not None,
        state="problem" if finding else "ok",
        reason=finding.message if finding else None,
        details={"base_run": base_run.id},
        created_at=utcnow(),
    )


def latest_findings(store: Store) -> list[tuple[DriftRecord, str]]:
    """The newest drift or canary record of every (model, kind, source), with the model's name
    (:meth:`Store.latest_findings`)."""
    return store.latest_findings()


def check_repeated_failures(store: Store, run: RunRecord, notify: Notify | None, threshold: int = 3) -> bool:
    """One event when a job's runs of a model on an eval set have failed ``threshold`` times in a row
    (once per streak), and one when the first run after such a streak succeeds.

    Only the job's own runs count: several jobs on the same model and eval set keep
    their own streaks.  Returns whether an event was recorded.
    """
    if notify is None or run.job is None or run.id is None or run.status not in ("succeeded", "failed"):
        return False
    recent = store.job_runs(run.job, model_id=run.model_id, evalset=run.evalset_name, limit=STREAK_LOOKBACK)
    if not recent or recent[0].id != run.id:
        return False  # an older run finishing late (a resumed one) says nothing about the streak
    model = store.model_name(run.model_id)
    if run.status == "failed":
        streak = next((i for i, r in enumerate(recent) if r.status != "failed"), len(recent))
        if streak != threshold:
            return False
        event = events.run_failed_repeatedly(
            model=model, evalset=run.evalset_name, job=run.job, failures=streak, error=run.error, run=run.id
        )
    else:
        before = recent[1:]
        streak = next((i for i, r in enumerate(before) if r.status != "failed"), len(before))
        if streak < threshold:
            return False
        event = events.run_recovered(
            model=model, evalset=run.evalset_name, job=run.job, failures=streak, run=run.id
        )
    store.record_event(event, notify)
    return True


#: How many of a job's newest runs a failure streak is counted over.
STREAK_LOOKBACK = 200


def record_input_drift(
    store: Store,
    model_name: str,
    config: Any,
    *,
    base_dir: Path,
    now: datetime,
    notify: Notify | None = None,
    report_path: Path | None = None,
) -> DriftRecord:
    """Check the model's production inputs for drift and store the finding (an error is stored as one too)."""
    from monitor.analysis.drift.evidently import check_input_drift
    from monitor.errors import MonitorError

    model_id = store.get_model(model_name).id
    assert model_id is not None
    source = f"{config.source.kind}:{config.window}"
    try:
        check = check_input_drift(config, now=now, base_dir=base_dir, report_path=report_path)
    except MonitorError as exc:
        record = DriftRecord(
            model_id=model_id,
            kind="input",
            source=source,
            drifted=False,
            state="error",
            reason=str(exc).replace("\n", "; ")[:2000],
            details={},
            created_at=utcnow(),
        )
        _store_findings(store, [record])
        return record
    analysis = check.analysis
    classifier = analysis.domain_classifier
    record = DriftRecord(
        model_id=model_id,
        kind="input",
        source=source,
        score=analysis.score,
        p_value=getattr(classifier, "p_value", None),
        threshold=getattr(classifier, "threshold", None),
        drifted=analysis.drifted,
        state="drifted" if analysis.drifted else "ok",
        reason=analysis.summary() if analysis.drifted else None,
        details=analysis.to_dict(),
        created_at=utcnow(),
    )
    _store_findings(store, [record], notify)
    return record


def make_notifier(cfg: MonitorConfig) -> Notify | None:
    """``notify(session, event)``: an outbox event in the caller's transaction, or None when no endpoint."""
    if not cfg.webhooks.endpoints:
        return None
    from monitor.exporters.webhooks import enqueue_event

    def notify(session: Any, event: Event) -> None:
        endpoints = cfg.webhooks.endpoints_for(event.type)
        if endpoints:
            enqueue_event(session, event.type, event.data, endpoints)

    return notify


def analyze_safely(store: Store, run_id: int, cfg: MonitorConfig, notify: Notify | None = None) -> Any:
    """Regression, behaviour and canary checks after a run, and the repeated-failure event;
    a failure is logged, never raised."""
    import logging

    try:
        check_repeated_failures(store, store.get_run(run_id), notify)
        analysis = analyze_run(store, run_id, cfg.baselines_dir(), analysis_policy(cfg.regression), notify)
        check_judges(store, run_id, notify)  # the judge-drifted canary of every calibrated judge
        return analysis
    except Exception as exc:
        logging.getLogger("monitor.analysis").warning("analysis of run %s failed: %s", run_id, exc)
        return None


def record_accuracy_estimates(
    store: Store, cfg: MonitorConfig, model: str, estimate: Any, *, notify: Notify | None, pool: Any
) -> None:
    """The label-free accuracy estimate of ``model`` on each configured golden set (one finding each,
    kind ``estimate``); failures are logged, never raised."""
    import logging

    from monitor.service.label_free import record_production_accuracy

    log = logging.getLogger("monitor.analysis")
    if pool is None:
        log.warning("accuracy estimate of %s skipped: no model pool to score production inputs with", model)
        return
    for evalset in estimate.evalsets:
        try:
            record_production_accuracy(
                store,
                cfg,
                model,
                evalset,
                pool=pool,
                notify=notify,
                max_items=estimate.max_items,
                method=estimate.method,
                level=estimate.level,
                bootstrap=estimate.bootstrap,
            )
        except Exception as exc:  # a model that fails to load raises what its loader raises
            log.warning("accuracy estimate of %s on %s failed: %s", model, evalset, exc)


def after_job(
    store: Store, cfg: MonitorConfig, models: Sequence[str], notify: Notify | None = None, pool: Any = None
) -> None:
    """After a job: input drift for its models that watch production, then the recommendations of the
    fine-tunes that involve them.  Failures are logged, never raised."""
    import logging

    from monitor.analysis.recommend import assess_finetune, record_recommendation
    from monitor.store import utcnow

    log = logging.getLogger("monitor.analysis")
    for name in models:
        drift = cfg.models[name].drift
        if drift is None:
            continue
        try:
            record_input_drift(store, name, drift, base_dir=cfg.root, now=utcnow(), notify=notify)
        except Exception as exc:
            log.warning("input drift check of %s failed: %s", name, exc)
        if drift.accuracy_estimate is not None:
            record_accuracy_estimates(store, cfg, name, drift.accuracy_estimate, notify=notify, pool=pool)
    for ft_name, ft in cfg.finetunes.items():
        if not ({ft.model, ft.base_model, *ft.challengers} & set(models)):
            continue
        try:
            found = assess_finetune(store, cfg, ft_name)
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
                    events.recommendation_changed(
                        model=m,
                        finetune=n,
                        action=r.action,
                        previous_action=r.previous_action,
                        summary=r.summary,
                        reasons=r.reasons,
                        costs=r.costs,
                    ),
                ),
            )
        except NotFoundError:
            log.info("no recommendation for %s yet: the fine-tune has never been evaluated", ft_name)
        except Exception as exc:
            log.warning("recommendation for %s failed: %s", ft_name, exc)
