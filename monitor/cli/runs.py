"""Runs: ``monitor run``, ``run-now``, ``status``, ``history`` and ``diff``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from monitor.api.views import clean, json_default, primary_metric, print_status, run_to_dict, status_entries
from monitor.cli.options import DEFAULT_CONFIG, ConfigOption, DbOption, load_config_file, store_for
from monitor.cli.output import (
    WideOption,
    err,
    format_metric,
    handle_errors,
    print_runs,
    print_table,
    progress_bar,
)
from monitor.errors import MonitorError, NotFoundError
from monitor.evals.evalset import strategy_name


@handle_errors
def run_command(
    jobs: Annotated[list[str] | None, typer.Argument(help="Jobs to run (default: all).")] = None,
    config: ConfigOption = Path(DEFAULT_CONFIG),
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")] = False,
    slot: Annotated[
        str | None,
        typer.Option(
            "--slot",
            help="Run one job's fire for this slot, claimed in the database so that schedulers on several "
            "hosts run each fire once (a dead claimant's fire is resumed); 'auto': the job's newest "
            "scheduled time.",
        ),
    ] = None,
) -> None:
    """Run the configured jobs once and record every run (challenger jobs of found releases too)."""
    from monitor.service.releases.effective import effective_config
    from monitor.store import Store

    declared = load_config_file(config)
    if slot is not None:
        if len(jobs or []) != 1:
            raise MonitorError("--slot runs one job's fire: name exactly one job")
        _run_slot(declared, (jobs or [""])[0], slot, as_json=as_json)
        return
    with Store.open(declared.database_url()) as store:
        cfg = effective_config(declared, store.releases())
        finished = run_jobs_here(store, cfg, jobs or [], as_json=as_json)
    failed = [(run, name) for run, name in finished if run.status != "succeeded"]
    if failed:
        # one line on stderr too, so that a script reading the JSON on stdout still sees why it exits 1
        run, name = failed[0]
        first = f": run {run.id} ({name} on {run.evalset_name}): {run.error}" if run.error else ""
        err(f"error: {len(failed)} of {len(finished)} runs did not succeed{first}")
        raise typer.Exit(1)


def _run_slot(declared: Any, job: str, slot: str, *, as_json: bool) -> None:
    """``monitor run JOB --slot SLOT``: claim the fire, complete it, say what happened; SIGTERM stops
    after the chunk in hand and leaves the fire to the next claimant."""
    import signal
    import threading

    from monitor.service.releases.effective import effective_config
    from monitor.service.slots import run_slot
    from monitor.store import Store

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        err(
            f"received {signal.Signals(signum).name}: finishing the chunk in hand, then leaving the fire open"
        )
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with Store.open(declared.database_url()) as store:
        cfg = effective_config(declared, store.releases())
        outcome = run_slot(store, cfg, job, slot, stop=stop)
        runs = [(run, store.model_name(run.model_id)) for run in outcome.runs]
    for key in outcome.resumed:
        err(f"completed fire {key}, left open by a claimant that died")
    if outcome.claim == "resumed":
        err(f"resumed fire {outcome.key}, left open by a claimant that died")
    if as_json:
        body = {
            "fire": outcome.key,
            "outcome": outcome.outcome,
            "claim": outcome.claim,
            "holder": outcome.holder,
            "resumed": outcome.resumed,
            "runs": [clean(run_to_dict(r, n)) for r, n in runs],
        }
        print(json.dumps(body, default=json_default, indent=2))
    elif outcome.outcome == "done":
        err(f"fire {outcome.key} was completed before: nothing to do")
    elif outcome.outcome == "held":
        err(f"fire {outcome.key} is being run by {outcome.holder}: nothing to do")
    elif outcome.outcome == "stopped":
        err(f"stopped: fire {outcome.key} stays open; the next claimant resumes it")
    if runs and not as_json:
        print_runs(runs)
    if any(run.status != "succeeded" for run, _ in runs):
        raise typer.Exit(1)


def run_jobs_here(store: Any, cfg: Any, jobs: Sequence[str], *, as_json: bool) -> list[tuple[Any, str]]:
    """Run ``jobs`` (all when empty) in this process with progress bars, then print the runs."""
    from monitor.service.runs import run_jobs

    def label(plan: Any) -> str:
        return f"{plan.model_name} on {plan.evalset.name} ({strategy_name(plan.fewshot_k)})"

    def report(plan: Any, run: Any) -> None:
        if not as_json:
            err(f"{label(plan)}: {run.status}" + (f" ({run.error})" if run.error else ""))

    finished = run_jobs(
        store,
        cfg,
        jobs,
        trigger="cli",
        progress_for=lambda plan: progress_bar(len(plan.evalset.items), label(plan), not as_json),
        on_run=report,
    )
    if as_json:
        print(json.dumps([clean(run_to_dict(r, n)) for r, n in finished], default=json_default, indent=2))
    else:
        print_runs(finished)
    return finished


@handle_errors
def status_command(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    wide: WideOption = False,
) -> None:
    """The latest result per model, eval set and strategy, with the change from the previous run."""
    with store_for(config, db) as store:
        entries = status_entries(store)
    if as_json:
        print(json.dumps(entries, default=json_default, indent=2))
        return
    print_status(entries, wide=wide)


@handle_errors
def history_command(
    model: Annotated[str, typer.Argument(help="Model name.")],
    evalset: Annotated[str, typer.Argument(help="Eval set name.")],
    config: ConfigOption = Path(DEFAULT_CONFIG),
    db: DbOption = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    wide: WideOption = False,
) -> None:
    """The runs of one model on one eval set over time, newest first."""
    with store_for(config, db) as store:
        runs = store.runs(model=model, evalset=evalset, limit=limit)
    if not runs:
        raise NotFoundError(f"no runs of model {model!r} on eval set {evalset!r}")
    if as_json:
        print(json.dumps([clean(run_to_dict(r, n)) for r, n in runs], default=json_default, indent=2))
        return
    from monitor.analysis.recommend import short_fingerprint

    rows = []
    for run, _ in runs:
        metric, value = primary_metric(run)
        rows.append(
            [
                str(run.id),
                run.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                run.strategy,
                run.status,
                metric,
                format_metric(value),
                run.evalset_version[:10],
                (run.model_fingerprint or "unknown") if wide else short_fingerprint(run.model_fingerprint),
                run.error or "",
            ]
        )
    print_table(
        f"{model} on {evalset}",
        [
            "run",
            "started (UTC)",
            "strategy",
            "status",
            "metric",
            "value ± stderr",
            "evalset version",
            "model",
            "error",
        ],
        rows,
        wide=wide,
    )


@handle_errors
def run_now_command(
    job: Annotated[str, typer.Argument(help="The job to run.")],
    config: ConfigOption = Path(DEFAULT_CONFIG),
    wait: Annotated[bool, typer.Option(help="Wait until the job's runs have finished.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 3600.0,
) -> None:
    """Ask the running daemon to run a job now."""
    import socket

    from monitor.service.plan import plan_runs
    from monitor.store import Store, as_utc, utcnow

    cfg = load_config_file(config)
    if job not in cfg.jobs:
        raise NotFoundError(f"unknown job {job!r}; configured: {', '.join(cfg.jobs) or 'none'}")
    expected = len(plan_runs(cfg, [job], trigger="manual"))
    with Store.open(cfg.database_url()) as store:
        lease = store.current_lease()
        if lease is None or as_utc(lease.expires_at) < utcnow():  # type: ignore[operator]
            raise MonitorError(
                "no monitor daemon is running against this database; start one with `monitor daemon`, "
                f"or run the job here with `monitor run {job}`"
            )
        asked_at = utcnow()
        request_id = store.request_run(job, requested_by=f"{socket.gethostname()}:{os.getpid()}")
        print(f"asked the daemon ({lease.holder}) to run job {job} now (request {request_id})")
        if wait:
            runs = _wait_for_manual_runs(store, job, asked_at, expected, timeout)
            print_runs(runs)
            if any(run.status != "succeeded" for run, _ in runs):
                raise typer.Exit(1)


def _wait_for_manual_runs(store: Any, job: str, since: Any, expected: int, timeout: float) -> list[Any]:
    from monitor.store import as_utc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [
            (run, name)
            for run, name in store.runs(limit=max(50, expected * 4))
            if run.job == job and run.trigger == "manual" and as_utc(run.started_at) >= since
        ]
        if len(runs) >= expected and all(run.status != "running" for run, _ in runs):
            return runs
        time.sleep(0.5)
    raise MonitorError(f"job {job} did not finish within {timeout:.0f} s")


@handle_errors
def diff_command(
    run_a: Annotated[int, typer.Argument(help="The earlier run (for example the baseline's run).")],
    run_b: Annotated[int, typer.Argument(help="The later run.")],
    config: ConfigOption = Path(DEFAULT_CONFIG),
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    limit: Annotated[int, typer.Option(help="Item ids listed per group.")] = 20,
) -> None:
    """Item by item: what newly fails, what newly passes and which predictions changed from RUN_A to RUN_B."""
    from monitor.analysis.behaviour import ItemOutcome, diff_outcomes

    with store_for(config, db) as store:
        runs = [store.get_run(run_a), store.get_run(run_b)]
        outcomes = [
            [ItemOutcome(r.item_id, r.prediction, r.correct, r.error) for r in store.item_results(run.id)]  # type: ignore[arg-type]
            for run in runs
        ]
    diff = diff_outcomes(*outcomes)
    payload = {
        "run_a": run_a,
        "run_b": run_b,
        "evalset_a": runs[0].evalset_name,
        "evalset_b": runs[1].evalset_name,
        "same_evalset_version": runs[0].evalset_version == runs[1].evalset_version,
        "common": diff.common,
        "agreement": diff.agreement,
        "newly_broken": list(diff.newly_broken),
        "newly_fixed": list(diff.newly_fixed),
        "changed_predictions": list(diff.changed_predictions),
        "only_in_a": list(diff.only_in_a),
        "only_in_b": list(diff.only_in_b),
        "failed_in_b": list(diff.failed_in_b),
    }
    if as_json:
        print(json.dumps(payload, indent=2))
        return
    agreement = "-" if diff.agreement is None else f"{diff.agreement:.1%}"
    print(f"run {run_a} -> run {run_b}: {diff.common} common items, {agreement} identical predictions")
    if not payload["same_evalset_version"]:
        print("note: the runs used different versions of the eval set")
    for key in (
        "newly_broken",
        "newly_fixed",
        "changed_predictions",
        "only_in_a",
        "only_in_b",
        "failed_in_b",
    ):
        ids = payload[key]
        if ids:
            more = f" ... and {len(ids) - limit} more" if len(ids) > limit else ""
            print(f"{key.replace('_', ' ')} ({len(ids)}): {', '.join(ids[:limit])}{more}")
