"""Plain-data views of the store shared by the CLI and the HTTP API (one shape for both)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monitor.store import RunRecord, Store


def clean(value: Any) -> Any:
    """NaN is not JSON: replace it with null everywhere."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def json_default(value: Any) -> Any:
    """``json.dumps`` fallback: datetimes as ISO 8601, anything else as text."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def primary_metric(run: RunRecord) -> tuple[str, dict[str, Any] | None]:
    """The eval set's first metric and its value in ``run`` (the one tables show)."""
    if not run.metrics:
        return "-", None
    name = next(iter(run.metrics))
    return name, run.metrics[name]


def run_to_dict(run: RunRecord, model_name: str) -> dict[str, Any]:
    """A run as the CLI's ``--json`` and the API return it."""
    from monitor.store import as_utc

    return clean(
        {
            "id": run.id,
            "model": model_name,
            "evalset": run.evalset_name,
            "evalset_version": run.evalset_version,
            "strategy": run.strategy,
            "job": run.job,
            "trigger": run.trigger,
            "status": run.status,
            "metrics": run.metrics,
            "items_total": run.items_total,
            "items_done": run.items_done,
            "items_failed": run.items_failed,
            "prompt_tokens": run.prompt_tokens,
            "completion_tokens": run.completion_tokens,
            "model_fingerprint": run.model_fingerprint,
            "scheduled_for": as_utc(run.scheduled_for),
            "started_at": as_utc(run.started_at),
            "finished_at": as_utc(run.finished_at),
            "duration_s": run.duration_s,
            "load_s": run.load_s,
            "error": run.error,
        }
    )


def status_entries(store: Store, *, flaky_window: int = 10) -> list[dict[str, Any]]:
    """The latest run per model, eval set and strategy, with the change from the previous succeeded run,
    the verdict against the baseline, the items newly broken since it and the flaky items."""
    from monitor.analysis.behaviour import flaky_items
    from monitor.store import as_utc

    verdicts = {(v.model_id, v.evalset_name, v.strategy, v.metric): v for v in store.latest_verdicts()}
    out = []
    for series in store.latest_per_series():
        latest, previous = series.latest, series.previous
        metric, value = primary_metric(latest)
        prev_value = previous.metrics.get(metric) if previous is not None and metric != "-" else None
        delta = None
        if value and prev_value and value.get("value") is not None and prev_value.get("value") is not None:
            delta = value["value"] - prev_value["value"]
        verdict = verdicts.get((latest.model_id, latest.evalset_name, latest.strategy, metric))
        recent = [
            run
            for run, _ in store.runs(
                model=series.model, evalset=latest.evalset_name, status="succeeded", limit=flaky_window
            )
            if run.strategy == latest.strategy
        ]
        history = [{r.item_id: r.correct for r in store.item_results(run.id)} for run in reversed(recent)]  # type: ignore[arg-type]
        out.append(
            clean(
                {
                    "model": series.model,
                    "evalset": latest.evalset_name,
                    "strategy": latest.strategy,
                    "status": latest.status,
                    "run": latest.id,
                    "metric": metric,
                    "value": value,
                    "previous_run": previous.id if previous else None,
                    "change": delta,
                    "started_at": as_utc(latest.started_at),
                    "finished_at": as_utc(latest.finished_at),
                    "error": latest.error,
                    "verdict": verdict.state if verdict else None,
                    "vs_baseline": verdict.delta if verdict else None,
                    "newly_broken": verdict.details.get("newly_broken") if verdict else None,
                    "flaky": len(flaky_items(history)),
                }
            )
        )
    return out
