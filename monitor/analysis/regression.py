"""Regression verdicts: a run against its pinned baseline, fairly or not at all.

A comparison is *paired* (item by item) when the eval set version and every
prompt and decoding setting match the baseline's; *unpaired* when only the eval
set's content changed (and the verdict says so); *refused*, with the reason,
when the prompt, the few-shot setting or the decoding differ, because then a
difference says nothing about the model.

A regression is declared for a metric only when the drop exceeds the
configured tolerance, is significant after Holm's correction across all the
metrics and eval sets of the model, and has been seen in ``confirmations``
consecutive runs: one bad run makes it ``suspect``, not ``regressed``.

"Significant" is judged at the level the look may spend: the ``k``-th run
compared with one baseline is tested at ``look_alpha(alpha, k) = alpha * 6 /
(pi**2 k**2)``, so a baseline compared every night for a year (or for ever)
raises a false alarm with probability at most ``alpha`` in all (see
:func:`monitor.analysis.stats.look_alpha` and ``benchmarks/bench_calibration.py``).

The minimum detectable difference of a verdict is a property of the design, not
of the run: it comes from the number of items, the baseline's pass rate and the
share of items on which runs of the baseline's own model (same fingerprint, same
settings) disagree with the baseline run (:class:`DesignNoise`), never from the
run being judged, so it does not grow when a drop is present.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from monitor import events
from monitor.analysis.baselines import Baseline
from monitor.analysis.judge import unreliable_reason
from monitor.analysis.stats import (
    TestResult,
    holm,
    look_alpha,
    mcnemar_exact,
    minimum_detectable_difference,
    paired_bootstrap,
    regression_decision,
    unpaired_means,
    unpaired_proportions,
)
from monitor.evals.evalset import CHAT_COMPARED_SETTINGS, chat_template_change
from monitor.events import Notify
from monitor.store import RunRecord, Store, utcnow
from monitor.store.tables import VerdictRecord

#: Settings whose difference makes a comparison meaningless (``mc_method``: multiple choice
#: picked by generation rather than by log-likelihoods, set only then; ``scorers``: the scorers'
#: own settings, such as a judge's model, rubric and scale; ``judges``: each judge with its model's
#: fingerprint once loaded: a changed judge never pairs).
COMPARED_SETTINGS = (
    "prompt",
    "target_delimiter",
    "fewshot_k",
    "fewshot_separator",
    "decoding",
    "mc_method",
    *CHAT_COMPARED_SETTINGS,
    "scorers",
    "judges",
)


@dataclass(frozen=True)
class RegressionPolicy:
    """How sure the monitor must be before it calls a drop a regression.

    Attributes:
        tolerance: drops up to this (in the metric's units) are tolerated.
        alpha: the chance of any false alarm over all the looks at one baseline.
        confirmations: consecutive significant looks before ``regressed``.
        sequential: spend ``alpha`` over the looks (:func:`look_alpha`); false tests
            every look at ``alpha`` (one-off comparisons, such as a CI gate).
        power: the power the minimum detectable difference is stated at.
        prior_discordance: the share of items two runs of the unchanged model are
            expected to disagree on, used while the baseline's model has no run other
            than the baseline; None assumes the two runs independent (conservative).
        design_runs: at most this many of the newest runs of the baseline's model
            estimate the discordance.
        slice_by: an item field whose values name slices (besides items' ``tags``).
        max_slices: at most this many slices are judged (the largest; a bounded label set).
        min_slice_items: slices with fewer items are not judged.
    """

    tolerance: float = 0.02
    alpha: float = 0.05
    confirmations: int = 2
    n_resamples: int = 5000
    seed: int = 0
    sequential: bool = True
    power: float = 0.8
    prior_discordance: float | None = None
    design_runs: int = 10
    slice_by: str | None = None
    max_slices: int = 20
    min_slice_items: int = 20


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


@dataclass(frozen=True)
class DesignNoise:
    """How much runs of the baseline's own model disagree with the baseline run, per metric.

    Estimated from *baseline-era* runs: succeeded runs with the baseline's model
    fingerprint, settings digest, strategy and eval set version, other than the
    baseline run and the run being judged.  Each such run gives, per metric, the
    share of common items whose pass/fail outcome differs from the baseline's and
    the standard deviation of the per-item score differences; the median over the
    runs is kept, so one odd run moves nothing.

    Attributes:
        runs: how many baseline-era runs were read (0: none; priors apply).
        discordance: per pass/fail metric, the median share of discordant items.
        sd_difference: per graded metric, the median sd of the per-item differences.
    """

    runs: int = 0
    discordance: dict[str, float] = field(default_factory=dict)
    sd_difference: dict[str, float] = field(default_factory=dict)


def baseline_era_runs(
    store: Store, baseline: Baseline, *, exclude: Sequence[int] = (), limit: int = 10
) -> list[RunRecord]:
    """The newest succeeded runs that repeat the baseline run: same fingerprint, settings, strategy, eval set version."""
    if not baseline.model_fingerprint:
        return []
    skip = {baseline.run_id, *exclude}
    found = []
    # the newest runs of the series are scanned (a bounded read however long the history)
    scanned = store.runs(model=baseline.model, evalset=baseline.evalset, status="succeeded", limit=50 * limit)
    for run, _ in scanned:
        if (
            run.id not in skip
            and run.model_fingerprint == baseline.model_fingerprint
            and run.settings_digest == baseline.settings_digest
            and run.strategy == baseline.strategy
            and run.evalset_version == baseline.evalset_version
        ):
            found.append(run)
            if len(found) >= limit:
                break
    return found


def design_noise(baseline: Baseline, repeats: Sequence[Sequence[Any]]) -> DesignNoise:
    """The :class:`DesignNoise` of a baseline from the item results of runs that repeat it.

    ``repeats`` holds one sequence of item results (``item_id``, ``scores``,
    ``error``) per baseline-era run.
    """
    base = {i.id: i.scores for i in baseline.items}
    shares: dict[str, list[float]] = {}
    spreads: dict[str, list[float]] = {}
    for items in repeats:
        current = {r.item_id: r.scores or {} for r in items if not r.error}
        for metric in baseline.metrics:
            ids = [i for i in base if i in current and metric in base[i] and metric in current[i]]
            if len(ids) < 2:
                continue
            b = [float(base[i][metric]) for i in ids]
            c = [float(current[i][metric]) for i in ids]
            if _is_binary(b) and _is_binary(c):
                shares.setdefault(metric, []).append(
                    sum(x != y for x, y in zip(b, c, strict=True)) / len(ids)
                )
            else:
                spreads.setdefault(metric, []).append(
                    statistics.stdev(y - x for x, y in zip(b, c, strict=True))
                )
    return DesignNoise(
        runs=len(repeats),
        discordance={m: statistics.median(v) for m, v in shares.items()},
        sd_difference={m: statistics.median(v) for m, v in spreads.items()},
    )


def detectable_sentence(min_detectable: float | None, power: float = 0.8) -> str:
    """``this set can detect a drop of 6.1 points (80% power)``, or why it cannot say."""
    if min_detectable is None:
        return "the smallest detectable drop is unknown for this comparison"
    if math.isinf(min_detectable):
        return f"this set cannot detect any drop with {power:.0%} power"
    return f"this set can detect a drop of {100 * min_detectable:.1f} points ({power:.0%} power)"


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
    changed = chat_template_change(baseline.settings, run.settings)
    if changed:
        return "unpaired", f"{changed}: compared unpaired, on all items of each"
    if run.evalset_version != baseline.evalset_version:
        return "unpaired", (
            f"the eval set changed since the baseline ({baseline.evalset_version[:10]} -> "
            f"{run.evalset_version[:10]}): compared unpaired, on all items of each"
        )
    return "paired", None


def _is_binary(values: Sequence[float]) -> bool:
    return all(v in (0.0, 1.0) for v in values)


def duplicate_groups(evalset: Any) -> dict[str, str]:
    """Items that ask the model the same thing: item id to a key shared by its duplicates.

    Two items are duplicates when their rendered prompt (a chat item: its messages),
    choices and target are the same.  Only items with a duplicate are listed.  Golden
    sets drawn from production traffic repeat prompts; the copies are answered alike,
    so they are one observation, not several (counting them as several makes every
    test overconfident: ``benchmarks/bench_calibration.py``'s duplicated year).
    """
    keys: dict[str, str] = {}
    for item in evalset.items:
        messages = getattr(item, "messages", None)
        asked = repr(tuple(messages)) if messages else evalset.render_prompt(item)
        keys[item.id] = repr((asked, tuple(item.choices), item.target_text))
    sizes: dict[str, int] = {}
    for key in keys.values():
        sizes[key] = sizes.get(key, 0) + 1
    return {item: key for item, key in keys.items() if sizes[key] > 1}


def collapse_duplicates(
    ids: Sequence[str], scores: Sequence[Sequence[float]], groups: dict[str, str]
) -> tuple[list[str], list[list[float]]]:
    """Per-item scores (one sequence per run, aligned with ``ids``) with each group of duplicates
    replaced by its mean, so that a repeated prompt counts once.  Returns the units' ids and scores."""
    order: dict[str, list[int]] = {}
    for index, item in enumerate(ids):
        order.setdefault(groups.get(item, item), []).append(index)
    units = list(order)
    collapsed = [[sum(run[i] for i in order[u]) / len(order[u]) for u in units] for run in scores]
    return units, collapsed


def compare_run(
    run: RunRecord,
    items: Sequence[Any],
    baseline: Baseline,
    policy: RegressionPolicy,
    noise: DesignNoise | None = None,
    duplicates: dict[str, str] | None = None,
) -> list[Comparison]:
    """Compare every metric the run and its baseline share.

    ``noise`` (from :func:`design_noise`) gives the minimum detectable difference;
    without it the priors of ``policy`` apply.  ``duplicates`` (:func:`duplicate_groups`)
    makes each group of duplicated items count once, by its mean score.
    """
    noise = noise or DesignNoise()
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
            if duplicates:
                _, (b, c) = collapse_duplicates(ids, [b, c], duplicates)
        else:
            base_ids = [i for i in base if metric in base[i]]
            current_ids = [i for i in current if metric in current[i]]
            b = [float(base[i][metric]) for i in base_ids]
            c = [float(current[i][metric]) for i in current_ids]
            if duplicates:
                _, (b,) = collapse_duplicates(base_ids, [b], duplicates)
                _, (c,) = collapse_duplicates(current_ids, [c], duplicates)
        if len(b) < 2 or len(c) < 2:
            out.append(
                Comparison(run.evalset_name, run.strategy, metric, "refused", "too few items to compare")
            )
            continue
        binary = _is_binary(b) and _is_binary(c)
        result = _test(mode, binary, b, c, policy)
        mdd, design = design_min_detectable(metric, mode == "paired", binary, b, len(c), noise, policy)
        out.append(
            Comparison(
                run.evalset_name,
                run.strategy,
                metric,
                mode,
                reason,
                result,
                mdd,
                {"binary": binary, "design": design, **({"units": len(c)} if duplicates else {})},
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


def design_min_detectable(
    metric: str,
    paired: bool,
    binary: bool,
    baseline_scores: Sequence[float],
    n_current: int,
    noise: DesignNoise,
    policy: RegressionPolicy,
) -> tuple[float | None, dict[str, Any]]:
    """The smallest drop the comparison detects with ``policy.power``, and what it was computed from.

    Only the design enters: the baseline's scores (its pass rate, its items), the
    number of items compared and the run-to-run noise of the baseline's model
    (``noise``, else ``policy.prior_discordance``, else independent runs), never
    the outcomes of the run being judged.  A single look at ``policy.alpha``.
    """
    n = len(baseline_scores)
    details: dict[str, Any] = {"power": policy.power, "runs": noise.runs}
    try:
        if not binary:
            if paired and metric in noise.sd_difference:
                sd = noise.sd_difference[metric]
                details.update(source="baseline-era runs", sd_difference=sd)
            else:
                sd = statistics.stdev(baseline_scores) * (math.sqrt(2.0) if paired else 1.0)
                details.update(source="assumed: independent runs", sd_difference=sd if paired else None)
            value = minimum_detectable_difference(
                n, sd=sd, alpha=policy.alpha, power=policy.power, paired=paired, n_current=n_current
            )
            return value, details
        rate = sum(baseline_scores) / n
        discordance: float | None = None
        if paired:
            if metric in noise.discordance:
                discordance = noise.discordance[metric]
                details["source"] = "baseline-era runs"
            elif policy.prior_discordance is not None:
                discordance = policy.prior_discordance
                details["source"] = "configured prior"
            else:
                details["source"] = "assumed: independent runs"
            details["discordance"] = discordance
        else:
            details["source"] = "unpaired: the eval set changed"
        value = minimum_detectable_difference(
            n,
            baseline_rate=rate,
            alpha=policy.alpha,
            power=policy.power,
            paired=paired,
            discordance=discordance,
            n_current=n_current,
        )
        return value, details
    except (ValueError, ZeroDivisionError, statistics.StatisticsError):
        return None, details


# --- slices ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceVerdict:
    """One slice of an eval set (items sharing a tag or a field's value) against the baseline, one metric."""

    slice: str
    metric: str
    n: int
    mode: str
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    adjusted_p: float | None
    min_detectable: float | None
    significant: bool
    consecutive: int
    state: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (an infinite minimum detectable difference is None: JSON has no infinity)."""
        data = dict(self.__dict__)
        if data["min_detectable"] is not None and math.isinf(data["min_detectable"]):
            data["min_detectable"] = None
        return data


def item_slices(items: Sequence[Any], slice_by: str | None = None) -> dict[str, tuple[str, ...]]:
    """The slices of each item: its ``tags`` (a string or a list of them) and ``FIELD=value`` for ``slice_by``.

    ``items`` are eval set items (``id`` and ``fields``).
    """
    out: dict[str, tuple[str, ...]] = {}
    for item in items:
        fields = getattr(item, "fields", {}) or {}
        tags = fields.get("tags")
        labels = [tags] if isinstance(tags, str) else [str(t) for t in tags or () if isinstance(t, str | int)]
        if slice_by is not None and fields.get(slice_by) is not None:
            labels.append(f"{slice_by}={fields[slice_by]}")
        if labels:
            out[item.id] = tuple(dict.fromkeys(labels))
    return out


def compare_slices(
    run: RunRecord,
    items: Sequence[Any],
    baseline: Baseline,
    policy: RegressionPolicy,
    slices: dict[str, tuple[str, ...]],
    *,
    noise: DesignNoise | None = None,
    level: float | None = None,
    previous: dict[str, dict[str, Any]] | None = None,
    duplicates: dict[str, str] | None = None,
) -> list[SliceVerdict]:
    """Every slice with at least ``policy.min_slice_items`` items, for every metric, Holm across them all.

    The largest ``policy.max_slices`` slices are judged (ties by name), so the set of labels
    stays bounded whatever the items carry.  A slice's drop is significant when it is beyond
    the tolerance, its Holm-adjusted p-value (across every slice and metric of the run) is
    below ``level`` (the look's level; default ``policy.alpha``) and its interval lies below 0;
    ``previous`` (the last verdict's slices, by ``slice/metric``) carries the consecutive count.
    Its minimum detectable difference is that of its own items.
    """
    sizes: dict[str, int] = {}
    for labels in slices.values():
        for label in labels:
            sizes[label] = sizes.get(label, 0) + 1
    kept = sorted(
        (label for label, size in sizes.items() if size >= policy.min_slice_items),
        key=lambda label: (-sizes[label], label),
    )[: policy.max_slices]
    pending: list[tuple[str, Comparison]] = []
    for label in sorted(kept):
        ids = {item for item, labels in slices.items() if label in labels}
        part = replace(baseline, items=tuple(i for i in baseline.items if i.id in ids))
        mine = [r for r in items if r.item_id in ids]
        pending.extend((label, c) for c in compare_run(run, mine, part, policy, noise, duplicates))
    tested = [c.result.p_value for _, c in pending if c.result is not None]
    adjusted = iter(holm(tested))
    level = policy.alpha if level is None else level
    out = []
    for label, c in pending:
        r = c.result
        p = next(adjusted) if r is not None else None
        significant = bool(
            r is not None and regression_decision(r, tolerance=policy.tolerance, alpha=level, adjusted_p=p)
        )
        before = int(((previous or {}).get(f"{label}/{c.metric}") or {}).get("consecutive") or 0)
        consecutive = before + 1 if significant else 0
        if c.mode == "refused":
            state = "refused"
        elif significant:
            state = "regressed" if consecutive >= policy.confirmations else "suspect"
        else:
            state = "ok"
        out.append(
            SliceVerdict(
                slice=label,
                metric=c.metric,
                n=r.n if r is not None else 0,
                mode=c.mode,
                delta=r.delta if r else None,
                ci_low=r.ci_low if r else None,
                ci_high=r.ci_high if r else None,
                p_value=r.p_value if r else None,
                adjusted_p=p,
                min_detectable=c.min_detectable,
                significant=significant,
                consecutive=consecutive,
                state=state,
            )
        )
    return out


def assess_run(
    store: Store,
    run_id: int,
    baseline: Baseline,
    policy: RegressionPolicy,
    notify: Notify | None = None,
    slices: dict[str, tuple[str, ...]] | None = None,
) -> list[VerdictRecord]:
    """Compare a succeeded run with its baseline, correct across the model's series, store the verdicts.

    ``slices`` (item id to slice labels, :func:`item_slices`) defaults to the tags and the
    ``policy.slice_by`` field of the run's eval set, read from where its version was
    recorded when it is still that version there; each verdict's details carry its slices.
    """
    run = store.get_run(run_id)
    if run.status != "succeeded" or run.strategy != baseline.strategy:
        return []
    items = store.item_results(run_id)
    repeats = baseline_era_runs(store, baseline, exclude=[run_id], limit=policy.design_runs)
    noise = design_noise(baseline, [store.item_results(r.id) for r in repeats if r.id is not None])
    evalset = _recorded_evalset(store, run)
    duplicates = duplicate_groups(evalset) if evalset is not None else {}
    comparisons = compare_run(run, items, baseline, policy, noise, duplicates)
    if slices is None:
        slices = item_slices(evalset.items, policy.slice_by) if evalset is not None else {}
    broken = _newly_broken(items, baseline)
    tested = [c for c in comparisons if c.result is not None]
    others = store.other_series_p_values(run.model_id, run.evalset_name, run.strategy)
    adjusted = holm([c.result.p_value for c in tested if c.result is not None] + others)[: len(tested)]
    adjusted_by_metric = {c.metric: p for c, p in zip(tested, adjusted, strict=True)}
    previous_by_metric = {
        c.metric: store.previous_verdict(
            run.model_id, run.evalset_name, run.strategy, c.metric, before_run=run_id
        )
        for c in comparisons
    }
    by_metric = _slice_verdicts(
        run, items, baseline, policy, slices, noise, comparisons, previous_by_metric, duplicates
    )
    records = []
    confirmed = []
    for c in comparisons:
        previous = previous_by_metric[c.metric]
        record = _verdict(run, baseline, c, adjusted_by_metric.get(c.metric), previous, policy)
        if c.mode == "paired":
            record.details = {
                **record.details,
                "newly_broken": len(broken),
                "newly_broken_ids": broken[:50],
            }
        if c.metric in by_metric:
            record.details = {**record.details, "slices": [v.to_dict() for v in by_metric[c.metric]]}
        records.append(record)
        slice_verdicts = by_metric.get(c.metric, [])
        regressed_slices = [v.slice for v in slice_verdicts if v.state == "regressed"]

        unreliable = (record.details or {}).get("judge", {}).get("reason")

        def event(
            found: Any, metric: str = c.metric, unreliable: str | None = unreliable, **extra: Any
        ) -> events.Event:
            return events.regression_confirmed(
                unreliable=unreliable,
                model=store.model_name(run.model_id),
                evalset=run.evalset_name,
                strategy=run.strategy,
                metric=metric,
                delta=found.delta,
                ci_low=found.ci_low,
                ci_high=found.ci_high,
                p_value=found.adjusted_p,
                run=run_id,
                baseline_run=baseline.run_id,
                consecutive=found.consecutive,
                **extra,
            )

        if record.state == "regressed" and (previous is None or previous.state != "regressed"):
            confirmed.append(event(record, regressed_slices=regressed_slices))
        elif record.state != "regressed":
            # a slice that regressed while the whole set did not: its own event, once per streak
            before = {
                (v.get("slice"), v.get("metric")): v.get("state")
                for v in ((previous.details or {}).get("slices") or [] if previous is not None else [])
            }
            for v in slice_verdicts:
                if v.state == "regressed" and before.get((v.slice, v.metric)) != "regressed":
                    confirmed.append(event(v, slice=v.slice))
    # the events are written in the verdicts' transaction: both exist, or neither
    return store.add_verdicts(records, confirmed, notify)


def _slice_verdicts(
    run: RunRecord,
    items: Sequence[Any],
    baseline: Baseline,
    policy: RegressionPolicy,
    slices: dict[str, tuple[str, ...]],
    noise: DesignNoise,
    comparisons: Sequence[Comparison],
    previous_by_metric: dict[str, VerdictRecord | None],
    duplicates: dict[str, str],
) -> dict[str, list[SliceVerdict]]:
    """The slices' verdicts by metric, at the level of this look (the first compared metric's)."""
    compared = [c for c in comparisons if c.mode != "refused"]
    if not slices or not compared:
        return {}
    earlier: dict[str, dict[str, Any]] = {}
    for previous in previous_by_metric.values():
        if previous is not None and previous.baseline_run_id == baseline.run_id:
            for v in (previous.details or {}).get("slices") or []:
                earlier[f"{v['slice']}/{v['metric']}"] = v
    look = next_look(previous_by_metric[compared[0].metric], baseline, compared[0].mode)
    level = look_alpha(policy.alpha, look) if policy.sequential else policy.alpha
    verdicts = compare_slices(
        run, items, baseline, policy, slices, noise=noise, level=level, previous=earlier
    )
    out: dict[str, list[SliceVerdict]] = {}
    for v in verdicts:
        out.setdefault(v.metric, []).append(v)
    return out


def _recorded_evalset(store: Store, run: RunRecord) -> Any:
    """The run's eval set, when its recorded folder still holds that version (else None)."""
    from monitor.errors import EvalSetError
    from monitor.evals.evalset import load_evalset

    version = store.evalset_version(run.evalset_version_id)
    if version is None:
        return None
    try:
        evalset = load_evalset(version.path)
    except (EvalSetError, OSError):
        return None
    return evalset if evalset.version == run.evalset_version else None


def _newly_broken(items: Sequence[Any], baseline: Baseline) -> list[str]:
    """Items the baseline got right and this run gets wrong."""
    passed = {i.id for i in baseline.items if i.correct}
    return [r.item_id for r in items if not r.error and r.correct is False and r.item_id in passed]


@dataclass(frozen=True)
class LookDecision:
    """What one look at a baseline decides for one metric."""

    look: int
    #: the level this look is tested at (``look_alpha(alpha, look)``, or ``alpha`` when not sequential)
    level: float
    significant: bool
    consecutive: int
    state: str


def decide_look(
    result: TestResult | None,
    *,
    adjusted_p: float | None,
    mode: str,
    look: int,
    previous_consecutive: int,
    policy: RegressionPolicy,
) -> LookDecision:
    """The state after the ``look``-th comparison with a baseline (a pure function; the rule in one place).

    Significant: a drop beyond ``policy.tolerance`` whose (Holm-adjusted) p-value is
    below this look's level and whose interval lies below 0.  ``confirmations``
    significant looks in a row make ``regressed``; fewer, ``suspect``.
    """
    level = look_alpha(policy.alpha, max(look, 1)) if policy.sequential else policy.alpha
    significant = bool(
        result is not None
        and mode != "refused"
        and regression_decision(result, tolerance=policy.tolerance, alpha=level, adjusted_p=adjusted_p)
    )
    consecutive = previous_consecutive + 1 if significant else 0
    if mode == "refused":
        state = "refused"
    elif significant and consecutive >= policy.confirmations:
        state = "regressed"
    elif significant:
        state = "suspect"
    else:
        state = "ok"
    return LookDecision(look, level, significant, consecutive, state)


def next_look(previous: VerdictRecord | None, baseline: Baseline, mode: str) -> int:
    """Which look at ``baseline`` this comparison is: 1 + the looks stored with the previous verdict on it."""
    earlier = 0
    if previous is not None and previous.baseline_run_id == baseline.run_id:
        earlier = int((previous.details or {}).get("look") or 0)
    return earlier if mode == "refused" else earlier + 1


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
    look = next_look(previous, baseline, c.mode)
    decision = decide_look(
        r,
        adjusted_p=adjusted_p,
        mode=c.mode,
        look=look,
        previous_consecutive=previous.consecutive if previous is not None else 0,
        policy=policy,
    )
    details: dict[str, Any] = dict(c.details)
    details.update(look=look, look_alpha=decision.level)
    if r is not None:
        details.update(
            baseline_mean=r.baseline_mean,
            current_mean=r.current_mean,
            n_baseline=r.n_baseline,
            n_current=r.n_current,
            pass_to_fail=r.pass_to_fail,
            fail_to_pass=r.fail_to_pass,
        )
    if c.min_detectable is not None:
        details["detectable"] = detectable_sentence(c.min_detectable, policy.power)
    reason = c.reason
    judge = judge_reliability(run, c.metric)
    if judge is not None:
        details["judge"] = judge
        if judge["unreliable"]:
            reason = "; ".join(part for part in (reason, judge["reason"]) if part)
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
        significant_drop=decision.significant,
        consecutive=decision.consecutive,
        state=decision.state,
        reason=reason,
        details=details,
        created_at=utcnow(),
    )


def judge_reliability(run: RunRecord, metric: str) -> dict[str, Any] | None:
    """For a judged metric, how far its verdict can be trusted (None for other metrics).

    Read from the judge's calibration in the run's ``backend_info["judges"]``: the
    verdict is ``unreliable`` when the judge agrees with people below its
    ``min_agreement`` (:func:`monitor.analysis.judge.unreliable_reason`); ``reason``
    then says so, and the verdict's reason carries it.
    """
    judges = (run.backend_info or {}).get("judges")
    if not isinstance(judges, dict) or not isinstance(judges.get(metric), dict):
        return None
    judge = judges[metric]
    calibration = judge.get("calibration") if isinstance(judge.get("calibration"), dict) else None
    why = unreliable_reason(judge)
    return {
        "model": judge.get("model"),
        "calibrated": calibration is not None and "kappa" in calibration,
        "kappa": (calibration or {}).get("kappa"),
        "accuracy": (calibration or {}).get("accuracy"),
        "n": (calibration or {}).get("n"),
        "min_agreement": (calibration or {}).get("min_agreement"),
        "unreliable": why is not None,
        "reason": why,
    }


def latest_verdicts(store: Store, model_id: int | None = None) -> list[VerdictRecord]:
    """The newest verdict of every (model, eval set, strategy, metric) (:meth:`Store.latest_verdicts`)."""
    return store.latest_verdicts(model_id)
