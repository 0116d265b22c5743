"""The events the monitor sends, and the one-method protocol that takes them.

Events are built by the typed functions here, never as string literals at the
call site, and handed to a :class:`Notify`: the webhook outbox in production
(``enqueue_event`` inside the caller's transaction), a list in tests.  This
module imports nothing of the monitor, so every layer may raise events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

RECOMMENDATION_CHANGED = "recommendation.changed"
REGRESSION_CONFIRMED = "regression.confirmed"
DRIFT_DETECTED = "drift.detected"
RUN_FAILED_REPEATEDLY = "run.failed_repeatedly"
RUN_RECOVERED = "run.recovered"
RELEASE_DISCOVERED = "release.discovered"
JUDGE_DRIFTED = "judge.drifted"
#: The event types the monitor sends; an endpoint subscribes to all of them unless it lists some.
EVENT_TYPES = (
    RECOMMENDATION_CHANGED,
    REGRESSION_CONFIRMED,
    DRIFT_DETECTED,
    RUN_FAILED_REPEATEDLY,
    RUN_RECOVERED,
    RELEASE_DISCOVERED,
    JUDGE_DRIFTED,
)


@dataclass(frozen=True)
class Event:
    """One event: its type (one of :data:`EVENT_TYPES`) and its data (the envelope's ``data``)."""

    type: str
    data: dict[str, Any]


class Notify(Protocol):
    """Takes an event inside the caller's transaction, so that the event exists if and only if
    its cause (a verdict, a finding, a recommendation) is committed."""

    def __call__(self, session: Any, event: Event, /) -> None: ...


def regression_confirmed(
    *,
    model: str,
    evalset: str,
    strategy: str,
    metric: str,
    delta: float | None,
    ci_low: float | None,
    ci_high: float | None,
    p_value: float | None,
    run: int | None,
    baseline_run: int | None,
    consecutive: int,
    slice: str | None = None,
    regressed_slices: list[str] | None = None,
    unreliable: str | None = None,
) -> Event:
    """A drop against the baseline was confirmed (the verdict turned ``regressed``): of the whole
    eval set, or (``slice``) of one slice of it; ``regressed_slices`` names the slices regressed.
    ``unreliable`` (a judged metric whose judge agrees with people below its floor) says why the
    verdict cannot be trusted."""
    data: dict[str, Any] = {
        "model": model,
        "evalset": evalset,
        "strategy": strategy,
        "metric": metric,
        "delta": delta,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "p_value": p_value,
        "run": run,
        "baseline_run": baseline_run,
        "consecutive": consecutive,
    }
    if slice is not None:
        data["slice"] = slice
    if regressed_slices:
        data["regressed_slices"] = regressed_slices
    if unreliable:
        data["unreliable"] = unreliable
    return Event(REGRESSION_CONFIRMED, data)


def drift_detected(
    *,
    model: str,
    kind: str,
    source: str,
    score: float | None,
    p_value: float | None,
    summary: str | None,
    run: int | None,
) -> Event:
    """A finding (input drift, behaviour drift, a canary) turned drifted."""
    return Event(
        DRIFT_DETECTED,
        {
            "model": model,
            "kind": kind,
            "source": source,
            "score": score,
            "p_value": p_value,
            "summary": summary,
            "run": run,
        },
    )


def run_failed_repeatedly(
    *, model: str, evalset: str, job: str | None, failures: int, error: str | None, run: int | None
) -> Event:
    """A job's runs of a model on an eval set failed ``failures`` times in a row."""
    return Event(
        RUN_FAILED_REPEATEDLY,
        {"model": model, "evalset": evalset, "job": job, "failures": failures, "error": error, "run": run},
    )


def run_recovered(*, model: str, evalset: str, job: str | None, failures: int, run: int | None) -> Event:
    """A job's run of a model on an eval set succeeded after ``failures`` failed runs in a row."""
    return Event(
        RUN_RECOVERED, {"model": model, "evalset": evalset, "job": job, "failures": failures, "run": run}
    )


def recommendation_changed(
    *,
    model: str,
    finetune: str,
    action: str,
    previous_action: str | None,
    summary: str,
    reasons: Any,
    costs: Any,
) -> Event:
    """A fine-tune's recommended action changed (keep, rollback, retrain, rebase, retire)."""
    return Event(
        RECOMMENDATION_CHANGED,
        {
            "model": model,
            "finetune": finetune,
            "action": action,
            "previous_action": previous_action,
            "summary": summary,
            "reasons": reasons,
            "costs": costs,
        },
    )


def release_discovered(
    *,
    family: str,
    release: str,
    source: str,
    location: str,
    revision: str | None,
    finetunes: list[str],
) -> Event:
    """A watcher found a new release of a base-model family."""
    return Event(
        RELEASE_DISCOVERED,
        {
            "family": family,
            "release": release,
            "source": source,
            "location": location,
            "revision": revision,
            "finetunes": finetunes,
        },
    )


def judge_drifted(
    *,
    model: str,
    evalset: str,
    metric: str,
    judge: str | None,
    kappa: float | None,
    accuracy: float | None,
    min_agreement: float,
    previous_kappa: float | None,
    p_value: float | None,
    n: int,
    summary: str | None,
    run: int | None,
) -> Event:
    """The judge of a judged metric stopped agreeing with people: its calibration kappa fell below
    ``min_agreement``, or its agreement dropped significantly against the previous run's."""
    return Event(
        JUDGE_DRIFTED,
        {
            "model": model,
            "evalset": evalset,
            "metric": metric,
            "judge": judge,
            "kappa": kappa,
            "accuracy": accuracy,
            "min_agreement": min_agreement,
            "previous_kappa": previous_kappa,
            "p_value": p_value,
            "n": n,
            "summary": summary,
            "run": run,
        },
    )
