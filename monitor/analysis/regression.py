"""Regression verdicts: a run against its pinned baseline, fairly or not at all.

A comparison is *paired* (item by item) when the eval set version and every
prompt and decoding setting match the baseline's; *unpaired* when only the eval
set's content changed (and the verdict says so); *refused*, with the reason,
when the prompt, the few-shot setting or the decoding differ, because then a
difference says nothing about the model.

A regression is declared for a metric only when the drop exceeds the
configured tolerance, is significant at ``alpha`` after Holm's correction
across all the metrics and eval sets of the model, and has been seen in
``confirmations`` consecutive runs: one bad run makes it ``suspect``, not
``regressed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from monitor import events
from monitor.analysis.baselines import Baseline
from monitor.analysis.stats import (
    TestResult,
    holm,
    mcnemar_exact,
    minimum_detectable_difference,
    paired_bootstrap,
    regression_decision,
    unpaired_means,
    unpaired_proportions,
)
from monitor.events import Notify
from monitor.store import RunRecord, Store, utcnow
from monitor.store.tables import VerdictRecord

#: Settings whose difference makes a comparison meaningless (``mc_method``: multiple choice
#: picked by generation rather than by log-likelihoods, set only then).
COMPARED_SETTINGS = ("prompt", "target_delimiter", "fewshot_k", "fewshot_separator", "decoding", "mc_method")


@dataclass(frozen=True)
class RegressionPolicy:
    """How sure the monitor must be before it calls a drop a regression."""

    tolerance: float = 0.02
    alpha: float = 0.05
    confirmations: int = 2
    n_resamples: int = 5000
    seed: int = 0


@dataclass(frozen=True)
class Comparison:
    """One metric of one run against the baseline."""

    evalset: str
    strategy: str
    metric: str
    mode: str
    reason: str | None
    result: TestResult | None = None
    min_detectable: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


def comparability(run: RunRecord, baseline: Baseline) -> tuple[str, str | None]:
    """``paired``, ``unpaired`` or ``refused``, and why when not paired."""
    differing = [
        key
        for key in COMPARED_SETTINGS
        if (run.settings or {}).get(key) != (baseline.settings or {}).get(key)
    ]
    if run.strategy != baseline.strategy and "fewshot_k" not in differing:
        differing.append("strategy")
    if differing:
        return "refused", (
            f"not comparable with the baseline (run {baseline.run_id}): {', '.join(differing)} differ; "
            "pin a new baseline for the new settings"
        )
    if run.evalset_version != baseline.evalset_version:
        return "unpaired", (
            f"the eval set changed since the baseline ({baseline.evalset_version[:10]} -> "
            f"{run.evalset_version[:10]}): compared unpaired, on all items of each"
        )
    return "paired", None


def _is_binary(values: Sequence[float]) -> bool:
    return all(v in (0.0, 1.0) for v in values)


def compare_run(
    run: RunRecord, items: Sequence[Any], baseline: Baseline, policy: RegressionPolicy
) -> list[Comparison]:
    """Compare every metric the run and its baseline share."""
    mode, reason = comparability(run, baseline)
    metrics = [m for m in run.metrics if m in baseline.metrics]
    if mode == "refused":
        return [Comparison(run.evalset_name, run.strategy, m, mode, reason) for m in metrics]
    current = {r.item_id: r.scores or {} for r in items if not r.error}
    base = {i.id: i.scores for i in baseline.items}
    out = []
    for metric in metrics:
        if mode == "paired":
            ids = [i for i in base if i in current and metric in base[i] and metric in current[i]]
            b = [float(base[i][metric]) for i in ids]
            c = [float(current[i][metric]) for i in ids]
        else:
            b = [float(s[metric]) for s in base.values() if metric in s]
            c = [float(s[metric]) for s in current.values() if metric in s]
        if len(b) < 2 or len(c) < 2:
            out.append(
                Comparison(run.evalset_name, run.strategy, metric, "refused", "too few items to compare")
            )
            continue
        binary = _is_binary(b) and _is_binary(c)
        result = _test(mode, binary, b, c, policy)
        out.append(
            Comparison(
                run.evalset_name,
                run.strategy,
                metric,
                mode,
                reason,
                result,
                _min_detectable(result, binary, b, policy),
                {"binary": binary},
            )
        )
    return out


def _test(mode: str, binary: bool, b: list[float], c: list[float], policy: RegressionPolicy) -> TestResult:
    if mode == "paired" and binary:
        return mcnemar_exact([x == 1.0 for x in b], [x == 1.0 for x in c], alpha=policy.alpha)
    if mode == "paired":
        return paired_bootstrap(b, c, alpha=policy.alpha, n_resamples=policy.n_resamples, seed=policy.seed)
    if binary:
        return unpaired_proportions([x == 1.0 for x in b], [x == 1.0 for x in c], alpha=policy.alpha)
    return unpaired_means(b, c, alpha=policy.alpha)


def _min_detectable(
    result: TestResult, binary: bool, b: list[float], policy: RegressionPolicy
) -> float | None:
    import numpy as np

    try:
        if binary:
            discordance = None
            if (
                result.paired
                and result.pass_to_fail is not None
                and result.fail_to_pass is not None
                and result.n
            ):
                discordance = max((result.pass_to_fail + result.fail_to_pass) / result.n, 1.0 / result.n)
            return minimum_detectable_difference(
                result.n,
                baseline_rate=result.baseline_mean,
                alpha=policy.alpha,
                paired=result.paired,
                discordance=discordance,
                n_current=result.n_current,
            )
        sd = float(np.std(b, ddof=1)) if len(b) > 1 else None
        return minimum_detectable_difference(
            result.n, sd=sd, alpha=policy.alpha, paired=result.paired, n_current=result.n_current
        )
    except (ValueError, ZeroDivisionError):
        return None


def assess_run(
    store: Store, run_id: int, baseline: Baseline, policy: RegressionPolicy, notify: Notify | None = None
) -> list[VerdictRecord]:
    """Compare a succeeded run with its baseline, correct across the model's series, store the verdicts."""
    run = store.get_run(run_id)
    if run.status != "succeeded" or run.strategy != baseline.strategy:
        return []
    items = store.item_results(run_id)
    comparisons = compare_run(run, items, baseline, policy)
    broken = _newly_broken(items, baseline)
    tested = [c for c in comparisons if c.result is not None]
    others = store.other_series_p_values(run.model_id, run.evalset_name, run.strategy)
    adjusted = holm([c.result.p_value for c in tested if c.result is not None] + others)[: len(tested)]
    adjusted_by_metric = {c.metric: p for c, p in zip(tested, adjusted, strict=True)}
    records = []
    confirmed = []
    for c in comparisons:
        previous = store.previous_verdict(
            run.model_id, run.evalset_name, run.strategy, c.metric, before_run=run_id
        )
        record = _verdict(run, baseline, c, adjusted_by_metric.get(c.metric), previous, policy)
        if c.mode == "paired":
            record.details = {
                **record.details,
                "newly_broken": len(broken),
                "newly_broken_ids": broken[:50],
            }
        records.append(record)
        if record.state == "regressed" and (previous is None or previous.state != "regressed"):
            confirmed.append(
                events.regression_confirmed(
                    model=store.model_name(run.model_id),
                    evalset=run.evalset_name,
                    strategy=run.strategy,
                    metric=c.metric,
                    delta=record.delta,
                    ci_low=record.ci_low,
                    ci_high=record.ci_high,
                    p_value=record.adjusted_p,
                    run=run_id,
                    baseline_run=baseline.run_id,
                    consecutive=record.consecutive,
                )
            )
    # the events are written in the verdicts' transaction: both exist, or neither
    return store.add_verdicts(records, confirmed, notify)


def _newly_broken(items: Sequence[Any], baseline: Baseline) -> list[str]:
    """Items the baseline got right and this run gets wrong."""
    passed = {i.id for i in baseline.items if i.correct}
    return [r.item_id for r in items if not r.error and r.correct is False and r.item_id in passed]


def _verdict(
    run: RunRecord,
    baseline: Baseline,
    c: Comparison,
    adjusted_p: float | None,
    previous: VerdictRecord | None,
    policy: RegressionPolicy,
) -> VerdictRecord:
    assert run.id is not None
    r = c.result
    significant = bool(
        r is not None
        and regression_decision(r, tolerance=policy.tolerance, alpha=policy.alpha, adjusted_p=adjusted_p)
    )
    consecutive = ((previous.consecutive if previous is not None else 0) + 1) if significant else 0
    if c.mode == "refused":
        state = "refused"
    elif significant and consecutive >= policy.confirmations:
        state = "regressed"
    elif significant:
        state = "suspect"
    else:
        state = "ok"
    details: dict[str, Any] = dict(c.details)
    if r is not None:
        details.update(
            baseline_mean=r.baseline_mean,
            current_mean=r.current_mean,
            n_baseline=r.n_baseline,
            n_current=r.n_current,
            pass_to_fail=r.pass_to_fail,
            fail_to_pass=r.fail_to_pass,
        )
    return VerdictRecord(
        run_id=run.id,
        model_id=run.model_id,
        evalset_name=run.evalset_name,
        strategy=run.strategy,
        metric=c.metric,
        baseline_run_id=baseline.run_id,
        mode=c.mode,
        method=r.method if r else None,
        delta=r.delta if r else None,
        ci_low=r.ci_low if r else None,
        ci_high=r.ci_high if r else None,
        p_value=r.p_value if r else None,
        adjusted_p=adjusted_p,
        min_detectable=c.min_detectable,
        tolerance=policy.tolerance,
        alpha=policy.alpha,
        significant_drop=significant,
        consecutive=consecutive,
        state=state,
        reason=c.reason,
        details=details,
        created_at=utcnow(),
    )


def latest_verdicts(store: Store, model_id: int | None = None) -> list[VerdictRecord]:
    """The newest verdict of every (model, eval set, strategy, metric) (:meth:`Store.latest_verdicts`)."""
    return store.latest_verdicts(model_id)
