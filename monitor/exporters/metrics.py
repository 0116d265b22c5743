"""Prometheus metrics, read from the store at scrape time.

The :class:`StoreCollector` builds fresh metric families on every scrape from
what the database holds, so a restarted daemon exports the same values at once
and two processes reading one database agree.  Counters come from row counts,
which only grow because history is never deleted.  Labels are bounded: model,
eval set, strategy, metric, job, status — never a run id or an item id.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from monitor._version import __version__
from monitor.store import RunRecord, Store
from monitor.store.runs import DurationCounts, RunCount
from monitor.store.tables import aware

#: Run duration buckets in seconds: from a tiny golden set to a long nightly suite.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)


@dataclass(frozen=True)
class BaselineValue:
    """A pinned baseline's value of one metric (exported next to the latest score)."""

    model: str
    evalset: str
    strategy: str
    metric: str
    value: float
    stderr: float | None = None


BaselineSource = Callable[[], Iterable[BaselineValue]]


def baseline_values(baselines: Iterable[Any]) -> list[BaselineValue]:
    """Flatten pinned baselines (``monitor.analysis.baselines.Baseline``) into one value per metric."""
    values = []
    for b in baselines:
        for metric, v in sorted(b.metrics.items()):
            if _finite(v.get("value")):
                stderr = v.get("stderr")
                values.append(
                    BaselineValue(
                        b.model,
                        b.evalset,
                        b.strategy,
                        metric,
                        float(v["value"]),
                        stderr if _finite(stderr) else None,
                    )
                )
    return values


class StoreCollector(Collector):
    """Exports the monitor's state from the store on every scrape."""

    def __init__(
        self,
        store: Store,
        *,
        job_intervals: Mapping[str, float] | None = None,
        baselines: BaselineSource | None = None,
        clock: Callable[[], float] = time.time,
        models: Callable[[], Collection[str]] | None = None,
    ) -> None:
        """``models`` (the daemon's configured models, read at every scrape) limits the state series
        (scores, baselines, verdicts, findings, recommendations) to models still configured, so that a
        removed model stops alerting; counters keep the whole history.  Unset: every stored model."""
        self._store = store
        self._models = models
        # Kept by reference: the daemon fills it in when it registers its schedules.
        self._job_intervals = job_intervals if job_intervals is not None else {}
        self._baselines = baselines
        self._clock = clock

    def _shown(self, model: str | None) -> bool:
        return self._models is None or model in self._models()

    def describe(self) -> list[Metric]:
        # Returning nothing keeps registration from running a scrape (and a query) at import time.
        return []

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "monitor_build_info", "Version of the monitor that exports these metrics.", labels=["version"]
        )
        info.add_metric([__version__], 1.0)
        yield info
        store_up = GaugeMetricFamily(
            "monitor_store_up",
            "1 when this scrape could read the store and the store's last write succeeded, else 0.",
        )
        try:
            families = list(self._collect_from_store())
        except Exception:  # a scrape must answer even when the database does not
            store_up.add_metric([], 0.0)
            yield store_up
            return
        # A read-only or full database still answers reads: the last write's outcome tells.
        store_up.add_metric([], 1.0 if self._store.write_error is None else 0.0)
        yield store_up
        yield from families
        yield from self._collect_config()

    def _collect_config(self) -> Iterator[Metric]:
        interval = GaugeMetricFamily(
            "monitor_job_interval_seconds",
            "Configured interval between scheduled runs of a job (for cron: the gap to the fire after next).",
            labels=["job"],
        )
        for job, seconds in sorted(self._job_intervals.items()):
            interval.add_metric([job], seconds)
        yield interval

    def _collect_from_store(self) -> Iterator[Metric]:
        summary = self._store.run_summary(DURATION_BUCKETS)
        names = summary.model_names
        yield from self._recommendations()
        yield from self._releases()
        yield from self._verdicts(names)
        yield from self._drift(names)
        yield from self._scores(summary.latest_succeeded, names)
        yield from self._baseline_scores()
        yield from self._run_counters(summary.counts, names)
        yield _duration_histogram(summary.durations)
        ts = GaugeMetricFamily(
            "monitor_last_success_timestamp_seconds",
            "Unix time of the job's last succeeded run.",
            labels=["job"],
        )
        for job, finished in sorted(summary.last_success, key=lambda r: r[0]):
            ts.add_metric([job], finished.timestamp())
        yield ts
        load = GaugeMetricFamily(
            "monitor_model_load_seconds",
            "Seconds the model took to load the last time it was loaded.",
            labels=["model"],
        )
        seen: set[int] = set()
        for model_id, seconds in summary.last_load:
            if model_id not in seen:
                seen.add(model_id)
                load.add_metric([names.get(model_id, "?")], float(seconds))
        yield load
        lag = GaugeMetricFamily(
            "monitor_job_schedule_lag_seconds",
            "Seconds between a job's scheduled fire time and the start of its latest scheduled run.",
            labels=["job"],
        )
        seen_jobs: set[str] = set()
        for job, started, scheduled in summary.schedule_lags:
            if job not in seen_jobs:
                seen_jobs.add(job)
                lag.add_metric([job], max(0.0, (started - scheduled).total_seconds()))
        yield lag

    def _scores(self, runs: list[RunRecord], names: Mapping[int, str]) -> Iterator[Metric]:
        labels = ["model", "evalset", "strategy", "metric"]
        score = GaugeMetricFamily("monitor_score", "Latest succeeded run's value of a metric.", labels=labels)
        stderr = GaugeMetricFamily("monitor_score_stderr", "Standard error of monitor_score.", labels=labels)
        items = GaugeMetricFamily("monitor_score_items", "Items scored for monitor_score.", labels=labels)
        when = GaugeMetricFamily(
            "monitor_score_timestamp_seconds",
            "Unix time the run behind monitor_score finished.",
            labels=["model", "evalset", "strategy"],
        )
        for run in sorted(runs, key=lambda r: (names.get(r.model_id, ""), r.evalset_name, r.strategy)):
            model = names.get(run.model_id, "?")
            if not self._shown(model):
                continue
            for metric, value in sorted(run.metrics.items()):
                key = [model, run.evalset_name, run.strategy, metric]
                if _finite(value.get("value")):
                    score.add_metric(key, float(value["value"]))
                if _finite(value.get("stderr")):
                    stderr.add_metric(key, float(value["stderr"]))
                items.add_metric(key, float(value.get("n") or 0))
            if run.finished_at is not None:
                when.add_metric([model, run.evalset_name, run.strategy], aware(run.finished_at).timestamp())
        yield from (score, stderr, items, when)
        yield from self._judges_and_draws(runs, names)

    def _judges_and_draws(self, runs: list[RunRecord], names: Mapping[int, str]) -> Iterator[Metric]:
        """The calibrated judges' agreement with people, and the spread of scores over few-shot draws,
        of each series' latest succeeded run."""
        labels = ["model", "evalset", "strategy", "metric", "judge"]
        agreement = GaugeMetricFamily(
            "monitor_judge_agreement",
            "Share of the calibration file's items on which the judge agrees with people (latest run).",
            labels=labels,
        )
        kappa = GaugeMetricFamily(
            "monitor_judge_kappa",
            "Cohen's kappa of the judge against people's labels (latest run).",
            labels=labels,
        )
        draw_labels = ["model", "evalset", "strategy", "metric"]
        draw_sd = GaugeMetricFamily(
            "monitor_score_draws_stddev",
            "Standard deviation of the score over the run's few-shot draws (fewshot.draws).",
            labels=draw_labels,
        )
        draw_range = GaugeMetricFamily(
            "monitor_score_draws_range",
            "Highest minus lowest score over the run's few-shot draws (fewshot.draws).",
            labels=draw_labels,
        )
        for run in sorted(runs, key=lambda r: (names.get(r.model_id, ""), r.evalset_name, r.strategy)):
            model = names.get(run.model_id, "?")
            if not self._shown(model):
                continue
            info = run.backend_info or {}
            for metric, judge in sorted((info.get("judges") or {}).items()):
                calibration = judge.get("calibration") if isinstance(judge, Mapping) else None
                if not isinstance(calibration, Mapping):
                    continue
                key = [model, run.evalset_name, run.strategy, metric, str(judge.get("model") or "")]
                if _finite(calibration.get("accuracy")):
                    agreement.add_metric(key, float(calibration["accuracy"]))
                if _finite(calibration.get("kappa")):
                    kappa.add_metric(key, float(calibration["kappa"]))
            spread = (info.get("fewshot_draws") or {}).get("metrics") or {}
            for metric, found in sorted(spread.items()):
                key = [model, run.evalset_name, run.strategy, metric]
                if _finite(found.get("sd")):
                    draw_sd.add_metric(key, float(found["sd"]))
                if _finite(found.get("max")) and _finite(found.get("min")):
                    draw_range.add_metric(key, float(found["max"]) - float(found["min"]))
        yield from (agreement, kappa, draw_sd, draw_range)

    def _recommendations(self) -> Iterator[Metric]:
        from monitor.analysis.recommend import ACTIONS

        current = GaugeMetricFamily(
            "monitor_recommendation",
            "1 for the current recommendation for a fine-tune (keep, rollback, retrain, rebase, retire), 0 for the "
            "others.",
            labels=["model", "action"],
        )
        since = GaugeMetricFamily(
            "monitor_recommendation_timestamp_seconds",
            "When the current recommendation was last made (every assessment makes it again).",
            labels=["model"],
        )
        standing = GaugeMetricFamily(
            "monitor_recommendation_since_timestamp_seconds",
            "When the current action was first recommended (the recommendation may be made again since).",
            labels=["model"],
        )
        records = [(r, m) for r, m in self._store.latest_recommendations() if self._shown(m)]
        began = self._store.recommendations_since() if records else {}
        for record, model in records:
            for action in ACTIONS:
                current.add_metric([model, action], 1.0 if record.action == action else 0.0)
            since.add_metric([model], aware(record.created_at).timestamp())
            first = began.get(record.model_id, record.created_at)
            standing.add_metric([model], aware(first).timestamp())
        yield from (current, since, standing)
        yield from _challenger_metrics(records)
        yield from _cost_metrics(records)

    def _releases(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "monitor_release_info",
            "1 for every base-model release found by a watcher or listed under families.",
            labels=["family", "release", "source"],
        )
        found = GaugeMetricFamily(
            "monitor_release_discovered_timestamp_seconds",
            "When the release was found.",
            labels=["family", "release"],
        )
        evaluated = GaugeMetricFamily(
            "monitor_release_evaluated",
            "1 once the release's challenger evaluation has run, 0 while it is pending.",
            labels=["family", "release"],
        )
        for r in self._store.releases():
            info.add_metric([r.family, r.name, r.source], 1.0)
            found.add_metric([r.family, r.name], aware(r.discovered_at).timestamp())
            evaluated.add_metric([r.family, r.name], 0.0 if r.evaluated_at is None else 1.0)
        yield from (info, found, evaluated)

    def _verdicts(self, names: Mapping[int, str]) -> Iterator[Metric]:
        labels = ["model", "evalset", "strategy", "metric"]
        delta = GaugeMetricFamily(
            "monitor_regression_delta", "Latest run minus baseline on a metric.", labels=labels
        )
        low = GaugeMetricFamily(
            "monitor_regression_ci_low", "Lower bound of the delta's confidence interval.", labels=labels
        )
        high = GaugeMetricFamily(
            "monitor_regression_ci_high", "Upper bound of the delta's confidence interval.", labels=labels
        )
        p_value = GaugeMetricFamily(
            "monitor_regression_p_value",
            "p-value of the drop, Holm-adjusted across the model's series.",
            labels=labels,
        )
        mdd = GaugeMetricFamily(
            "monitor_regression_min_detectable",
            "Smallest drop the eval set can detect at its size.",
            labels=labels,
        )
        state = GaugeMetricFamily(
            "monitor_regression_state",
            "1 for the current verdict against the baseline (ok, suspect, regressed, refused), 0 for the others.",
            labels=[*labels, "state"],
        )
        slice_delta = GaugeMetricFamily(
            "monitor_regression_slice_delta",
            "A slice's change against the baseline (items sharing a tag or a slice_by value).",
            labels=[*labels, "slice"],
        )
        slice_state = GaugeMetricFamily(
            "monitor_regression_slice_state",
            "1 for a slice's current verdict (ok, suspect, regressed; Holm across slices), 0 for the others.",
            labels=[*labels, "slice", "state"],
        )
        for v in sorted(
            self._store.latest_verdicts(), key=lambda v: (v.model_id, v.evalset_name, v.strategy, v.metric)
        ):
            key = [names.get(v.model_id, "?"), v.evalset_name, v.strategy, v.metric]
            if not self._shown(key[0]):
                continue
            for family, value in (
                (delta, v.delta),
                (low, v.ci_low),
                (high, v.ci_high),
                (p_value, v.adjusted_p),
                (mdd, v.min_detectable),
            ):
                if _finite(value):
                    family.add_metric(key, float(value))  # type: ignore[arg-type]
            for name in ("ok", "suspect", "regressed", "refused"):
                state.add_metric([*key, name], 1.0 if v.state == name else 0.0)
            # slices: at most regression.max_slices per verdict (the analysis bounds the label set)
            for sv in (v.details or {}).get("slices") or []:
                if sv.get("metric") != v.metric:
                    continue
                slice_key = [*key, str(sv.get("slice"))]
                if _finite(sv.get("delta")):
                    slice_delta.add_metric(slice_key, float(sv["delta"]))
                for name in ("ok", "suspect", "regressed"):
                    slice_state.add_metric([*slice_key, name], 1.0 if sv.get("state") == name else 0.0)
        yield from (delta, low, high, p_value, mdd, state, slice_delta, slice_state)

    def _drift(self, names: Mapping[int, str]) -> Iterator[Metric]:
        labels = ["model", "kind", "source"]
        score = GaugeMetricFamily(
            "monitor_drift_score",
            "Latest drift score: agreement with the baseline (behaviour), 1 for an integrity problem (canary), "
            "the drift score (input).",
            labels=labels,
        )
        p_value = GaugeMetricFamily(
            "monitor_drift_p_value", "p-value of the latest drift test.", labels=labels
        )
        detected = GaugeMetricFamily(
            "monitor_drift_detected",
            "1 when the latest analysis found drift or an integrity problem.",
            labels=labels,
        )
        estimate_labels = ["model", "evalset", "source"]
        estimated = GaugeMetricFamily(
            "monitor_estimated_accuracy",
            "Estimated accuracy on sampled production inputs without labels (choice probabilities "
            "calibrated on the golden set).",
            labels=estimate_labels,
        )
        estimated_low = GaugeMetricFamily(
            "monitor_estimated_accuracy_low", "Lower bound of monitor_estimated_accuracy's interval.",
            labels=estimate_labels,
        )  # fmt: skip
        estimated_high = GaugeMetricFamily(
            "monitor_estimated_accuracy_high", "Upper bound of monitor_estimated_accuracy's interval.",
            labels=estimate_labels,
        )  # fmt: skip
        for record, model in self._store.latest_findings():
            if not self._shown(model):
                continue
            if record.kind == "estimate":
                details = record.details or {}
                where = [model, str(details.get("evalset", record.source)), record.source]
                if record.state != "error" and _finite(record.score):
                    estimated.add_metric(where, float(record.score))  # type: ignore[arg-type]
                    for family, bound in ((estimated_low, "low"), (estimated_high, "high")):
                        if _finite(details.get(bound)):
                            family.add_metric(where, float(details[bound]))
                continue
            key = [model, record.kind, record.source]
            if _finite(record.score):
                score.add_metric(key, float(record.score))  # type: ignore[arg-type]
            if _finite(record.p_value):
                p_value.add_metric(key, float(record.p_value))  # type: ignore[arg-type]
            detected.add_metric(key, 1.0 if record.drifted else 0.0)
        yield from (score, p_value, detected, estimated, estimated_low, estimated_high)

    def _baseline_scores(self) -> Iterator[Metric]:
        labels = ["model", "evalset", "strategy", "metric"]
        value = GaugeMetricFamily(
            "monitor_baseline_score", "Pinned baseline value of a metric.", labels=labels
        )
        stderr = GaugeMetricFamily(
            "monitor_baseline_score_stderr", "Standard error of the baseline value.", labels=labels
        )
        if self._baselines is not None:
            for b in self._baselines():
                if not self._shown(b.model):
                    continue
                key = [b.model, b.evalset, b.strategy, b.metric]
                value.add_metric(key, b.value)
                if b.stderr is not None and _finite(b.stderr):
                    stderr.add_metric(key, b.stderr)
        yield value
        yield stderr

    @staticmethod
    def _run_counters(rows: Iterable[RunCount], names: Mapping[int, str]) -> Iterator[Metric]:
        runs = CounterMetricFamily(
            "monitor_runs",
            "Finished runs by final status (succeeded or failed; both always present, so the first failure counts).",
            labels=["model", "evalset", "job", "status"],
        )
        items = CounterMetricFamily(
            "monitor_items_evaluated", "Items evaluated.", labels=["model", "evalset", "job"]
        )
        failed = CounterMetricFamily(
            "monitor_item_errors",
            "Items whose evaluation failed (not scored).",
            labels=["model", "evalset", "job"],
        )
        tokens = CounterMetricFamily(
            "monitor_tokens", "Tokens processed by evaluations.", labels=["model", "evalset", "job", "kind"]
        )
        in_progress = GaugeMetricFamily("monitor_runs_in_progress", "Runs now running.", labels=["job"])
        interrupted = GaugeMetricFamily(
            "monitor_runs_interrupted",
            "Runs interrupted by a stop or crash, waiting to be resumed.",
            labels=["job"],
        )
        per_series: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0] * 6)
        # running and interrupted runs are states, not events: they become succeeded or failed later
        # and would make a counter go down, so they are gauges.
        state: dict[str, dict[str, float]] = defaultdict(lambda: {"running": 0.0, "interrupted": 0.0})
        for row in rows:
            model, job_label = names.get(row.model_id, "?"), row.job or ""
            acc = per_series[(model, row.evalset, job_label)]
            acc[0] += float(row.items_done or 0)
            acc[1] += float(row.items_failed or 0)
            acc[2] += float(row.prompt_tokens or 0)
            acc[3] += float(row.completion_tokens or 0)
            if row.status == "succeeded":
                acc[4] += float(row.count)
            elif row.status == "failed":
                acc[5] += float(row.count)
            state[job_label][row.status] = state[job_label].get(row.status, 0.0) + float(row.count)
        for (model, evalset, job_label), (done, errors, prompt, completion, ok, bad) in sorted(
            per_series.items()
        ):
            runs.add_metric([model, evalset, job_label, "succeeded"], ok)
            runs.add_metric([model, evalset, job_label, "failed"], bad)
            items.add_metric([model, evalset, job_label], done)
            failed.add_metric([model, evalset, job_label], errors)
            tokens.add_metric([model, evalset, job_label, "prompt"], prompt)
            tokens.add_metric([model, evalset, job_label, "completion"], completion)
        for job_label, counts in sorted(state.items()):
            in_progress.add_metric([job_label], counts["running"])
            interrupted.add_metric([job_label], counts["interrupted"])
        yield from (runs, items, failed, tokens, in_progress, interrupted)


def _duration_histogram(rows: Iterable[DurationCounts]) -> HistogramMetricFamily:
    histogram = HistogramMetricFamily(
        "monitor_run_duration_seconds", "Wall time of finished runs.", labels=["job"]
    )
    per_job: dict[str, list[DurationCounts]] = defaultdict(list)
    for row in rows:
        per_job[row.job or ""].append(row)
    for job, counts in sorted(per_job.items()):
        buckets = [
            (_bucket_label(b), float(sum(c.buckets[i] for c in counts)))
            for i, b in enumerate(DURATION_BUCKETS)
        ]
        buckets.append(("+Inf", float(sum(c.count for c in counts))))
        histogram.add_metric([job], buckets, sum_value=math.fsum(c.total_s for c in counts))
    return histogram


def _bucket_label(bound: float) -> str:
    return str(bound)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


class DaemonCollector(Collector):
    """The daemon process's own state: start time, scheduler, queue, jobs that cannot be planned."""

    def __init__(self, daemon: Any) -> None:
        self._daemon = daemon

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        d = self._daemon
        start = GaugeMetricFamily("monitor_daemon_start_time_seconds", "Unix time the daemon started.")
        if d.started_at is not None:
            start.add_metric([], d.started_at.timestamp())
        yield start
        up = GaugeMetricFamily(
            "monitor_scheduler_running", "1 while the scheduler is running and taking work."
        )
        up.add_metric([], 1.0 if d.timer.running and not d.stopping else 0.0)
        yield up
        queued = GaugeMetricFamily("monitor_jobs_queued", "Jobs waiting for or in the worker.")
        queued.add_metric([], float(len(d.queued_jobs())))
        yield queued
        errors = CounterMetricFamily(
            "monitor_job_plan_errors",
            "Fires of a job that could not even be planned (bad eval set).",
            labels=["job"],
        )
        for job in sorted(d.config.jobs):
            errors.add_metric([job], float(d.plan_errors.get(job, 0)))
        yield errors
        yield from _watcher_metrics(d.watcher)


def _challenger_metrics(records: Sequence[tuple[Any, str]]) -> Iterator[Metric]:
    """Challenger scores against the fine-tune and the old base, from each recommendation's evidence."""
    labels = ["model", "release", "evalset", "strategy", "metric"]
    families = {
        "score": GaugeMetricFamily(
            "monitor_challenger_score",
            "A newer base release's score on a fine-tune's golden set.",
            labels=labels,
        ),
        "finetune": GaugeMetricFamily(
            "monitor_challenger_finetune_score", "The fine-tune's score it is weighed against.", labels=labels
        ),
    }
    intervals = {
        "vs_finetune": "challenger minus the fine-tune, paired on the same items",
        "vs_old_base": "challenger minus the old base under the same prompt, paired",
    }
    for key, words in intervals.items():
        for part in ("delta", "ci_low", "ci_high"):
            suffix = "" if part == "delta" else f"_{part}"
            name = f"monitor_challenger_{key.removeprefix('vs_')}_delta{suffix}"
            what = (
                "Difference"
                if part == "delta"
                else f"{'Lower' if part == 'ci_low' else 'Upper'} 95% bound of the difference"
            )
            families[f"{key}.{part}"] = GaugeMetricFamily(name, f"{what}: {words}.", labels=labels)
    for record, model in records:
        for c in (record.evidence or {}).get("challengers", []):
            series = [model, str(c["release"]), str(c["evalset"]), str(c["strategy"]), str(c["metric"])]
            if _finite(c.get("challenger_score")):
                families["score"].add_metric(series, float(c["challenger_score"]))
            if _finite(c.get("finetune_score")):
                families["finetune"].add_metric(series, float(c["finetune_score"]))
            for which in intervals:
                interval = c.get(which) or {}
                for part in ("delta", "ci_low", "ci_high"):
                    if _finite(interval.get(part)):
                        families[f"{which}.{part}"].add_metric(series, float(interval[part]))
    yield from families.values()


def _cost_metrics(records: Sequence[tuple[Any, str]]) -> Iterator[Metric]:
    """Monthly cost of every option and the break-even of a re-train or re-base, from the cost cases."""
    monthly = GaugeMetricFamily(
        "monitor_option_cost_per_month",
        "Inference plus amortised upkeep of an option (keep the fine-tune, roll back, re-train, re-base, prompt "
        "a newer base), a month, in the configured currency: the figure every monthly difference in the memo "
        "compares.",
        labels=["model", "option", "currency"],
    )
    per_request = GaugeMetricFamily(
        "monitor_option_cost_per_request",
        "Inference cost of one request under an option, in the configured currency.",
        labels=["model", "option", "currency"],
    )
    qualifies = GaugeMetricFamily(
        "monitor_option_qualifies",
        "1 when an option meets its quality condition, 0 when it is ruled out (never called the cheapest).",
        labels=["model", "option"],
    )
    break_even = GaugeMetricFamily(
        "monitor_break_even_seconds",
        "Time until a re-train or re-base pays for itself against prompting the newer base (absent: never).",
        labels=["model", "option"],
    )
    for record, model in records:
        costs = record.costs or {}
        currency = str(costs.get("currency", ""))
        for option, cost in (costs.get("options") or {}).items():
            if _finite(cost.get("total_per_month")):
                monthly.add_metric([model, option, currency], float(cost["total_per_month"]))
            if _finite(cost.get("cost_per_request")):
                per_request.add_metric([model, option, currency], float(cost["cost_per_request"]))
            if isinstance(cost.get("qualifies"), bool):
                qualifies.add_metric([model, option], 1.0 if cost["qualifies"] else 0.0)
        for option in ("retrain", "rebase"):
            days = costs.get(f"{option}_break_even_days")
            if days is not None and _finite(days):
                break_even.add_metric([model, option], float(days) * 86400.0)
    yield from (monthly, per_request, qualifies, break_even)


def _watcher_metrics(watcher: Any) -> Iterator[Metric]:
    scans = CounterMetricFamily(
        "monitor_release_scans",
        "Scans of a family's release source, by outcome (ok, error).",
        labels=["family", "outcome"],
    )
    last = GaugeMetricFamily(
        "monitor_release_last_scan_timestamp_seconds",
        "When the family's source was last scanned.",
        labels=["family"],
    )
    up = GaugeMetricFamily(
        "monitor_release_watch_up",
        "1 when the family's last scan succeeded, 0 when it failed.",
        labels=["family"],
    )
    for family, state in sorted(watcher.state.items()):
        for outcome, count in sorted(state.scans.items()):
            scans.add_metric([family, outcome], float(count))
        if state.last_scan is not None:
            last.add_metric([family], state.last_scan.timestamp())
            up.add_metric([family], 0.0 if state.last_error else 1.0)
    yield from (scans, last, up)
