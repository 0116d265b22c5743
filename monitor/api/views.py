"""Plain-data views of the store shared by the CLI, the HTTP API and the demo (one shape for all),
and the text tables the CLI and the demo print from them."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
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


def recommendation_to_dict(record: Any, model_name: str) -> dict[str, Any]:
    """A stored recommendation as the API returns it: the action, its reasons and the cost case exactly as
    recorded (:meth:`monitor.analysis.costs.CostCase.to_dict`), so that its monthly figures are the ones the
    memo, the CLI and ``monitor_option_cost_per_month`` show."""
    from monitor.store import as_utc

    return clean(
        {
            "model": model_name,
            "action": record.action,
            "previous_action": record.previous_action,
            "summary": record.summary,
            "reasons": list(record.reasons or []),
            "costs": record.costs,
            "created_at": as_utc(record.created_at),
        }
    )


def status_entries(store: Store, *, flaky_window: int = 10) -> list[dict[str, Any]]:
    """The latest run per model, eval set and strategy, with the change from the previous succeeded run,
    the verdict against the baseline, the items newly broken since it and the flaky items."""
    from monitor.analysis.behaviour import run_identity
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
        # a flip counts only between runs of the same weights and settings (a deploy is not flakiness);
        # the flips are counted in the store, which returns only the flaky items
        identities: dict[tuple[str | None, str | None], int] = {}
        window = [
            (
                run.id,
                identities.setdefault(
                    run_identity(run.model_fingerprint, run.settings_digest), len(identities)
                ),
            )
            for run in reversed(recent)
            if run.id is not None
        ]
        flaky = store.item_flips(window)
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
                    # slices (tags, slice_by values) whose own verdict is suspect or regressed
                    "slices": {
                        str(sv.get("slice")): sv.get("state")
                        for sv in ((verdict.details or {}).get("slices") or [] if verdict else [])
                        if sv.get("metric") == metric and sv.get("state") in ("suspect", "regressed")
                    }
                    or None,
                    "detectable": verdict.details.get("detectable") if verdict else None,
                    "flaky": len(flaky),
                }
            )
        )
    return out


# --- text tables -----------------------------------------------------------------------------------


def is_terminal() -> bool:
    """Whether stdout is a terminal that can show rich tables."""
    return sys.stdout.isatty() and os.environ.get("TERM") != "dumb"


def format_metric(value: dict[str, Any] | None) -> str:
    """A metric as ``value ± stderr`` (``-`` when missing or NaN)."""
    if not value or value.get("value") is None or _isnan(value["value"]):
        return "-"
    stderr = value.get("stderr")
    if stderr is None or _isnan(stderr):
        return f"{value['value']:.4f}"
    return f"{value['value']:.4f} ± {stderr:.4f}"


def _isnan(x: Any) -> bool:
    return isinstance(x, float) and math.isnan(x)


def print_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    wide: bool = False,
    console: Any = None,
) -> None:
    """A rich table on a terminal, tab-separated lines otherwise (for scripts and logs).

    A cell is never cut: on a narrow terminal long cells wrap between words (a word is split only
    when it is longer than :data:`WHOLE_WORD`), and ``wide=True`` draws the table as wide as its
    longest cells need, unwrapped (the terminal, or ``less -S``, takes it from there).  ``console``:
    draw on this rich console instead of stdout (tests).
    """
    if console is None and not is_terminal():
        print("\t".join(columns))
        for row in rows:
            print("\t".join(row))
        return
    from rich.console import Console
    from rich.table import Table

    def build() -> Any:
        table = Table(title=title)
        for i, column in enumerate(columns):
            words = [w for row in rows for w in str(row[i]).split()] + column.split()
            longest = max((len(w) for w in words), default=1)
            table.add_column(column, overflow="fold", min_width=min(longest, WHOLE_WORD), no_wrap=wide)
        for row in rows:
            table.add_row(*row)
        return table

    console = console or Console()
    table = build()
    if wide:
        needed = console.measure(table, options=console.options.update_width(1_000_000)).maximum
        if needed > console.width:
            console = Console(
                file=console.file,
                width=needed,
                force_terminal=console.is_terminal,
                color_system=console.color_system,
            )
    console.print(table, crop=False)


WHOLE_WORD = 24
"""The longest word a table keeps on one line when it wraps a cell (longer ones fold)."""


def print_status(entries: Sequence[dict[str, Any]], *, wide: bool = False) -> None:
    """The status table (rich on a terminal, tab-separated otherwise)."""
    if not entries:
        print("no runs recorded yet")
        return
    rows = []
    for entry in entries:
        when = entry["finished_at"] or entry["started_at"]
        rows.append(
            [
                entry["model"],
                entry["evalset"],
                entry["strategy"],
                entry["status"],
                entry["metric"],
                format_metric(entry["value"]),
                "-" if entry["change"] is None else f"{entry['change']:+.4f}",
                _verdict_text(entry),
                "-" if entry["newly_broken"] is None else str(entry["newly_broken"]),
                str(entry["flaky"]),
                when.strftime("%Y-%m-%d %H:%M") if when else "-",
            ]
        )
    print_table(
        "status",
        [
            "model",
            "evalset",
            "strategy",
            "status",
            "metric",
            "value ± stderr",
            "change",
            "vs baseline",
            "newly broken",
            "flaky",
            "when (UTC)",
        ],
        rows,
        wide=wide,
    )


def _verdict_text(entry: dict[str, Any]) -> str:
    if entry["verdict"] is None:
        return "-"
    delta = entry["vs_baseline"]
    text = entry["verdict"] if delta is None else f"{entry['verdict']} ({delta:+.3f})"
    slices = entry.get("slices") or {}
    return f"{text}; slices {', '.join(f'{k} {v}' for k, v in slices.items())}" if slices else text


class EventLines:
    """The daemon's console: one line per event, instead of the whole status table after every run.

    Called with the status entries after every finished run (``run_daemon``'s ``on_status``): a line
    for each series whose newest run is new (its status, score and verdict, or its error), and, read
    from the store at ``database_url`` (read-only), a line when a fine-tune's recommendation changes
    or a base release is found. The state it starts from is the store's, so a restart prints only what
    happens after it.
    """

    def __init__(self, database_url: str | None = None, *, out: Any = None) -> None:
        self._url = database_url
        self._out = out
        self._runs: dict[tuple[str, str, str], Any] | None = None
        self._actions: dict[str, str] | None = None
        self._releases: set[str] | None = None

    def say(self, line: str) -> None:
        from datetime import datetime, timezone

        stamp = datetime.now(timezone.utc).strftime("%H:%M:%S")
        print(f"{stamp} {line}", file=self._out or sys.stdout, flush=True)

    def started(self, plan: Any, run_id: int, resumed: bool) -> None:
        """A run made or resumed: ``run 8 ticket-router ticket-routing zero-shot: started (180 items)``."""
        what = "resumed" if resumed else "started"
        self.say(
            f"run {run_id} {plan.model_name} {plan.evalset.name} {plan.strategy}: {what} "
            f"({len(plan.evalset.items)} items)"
        )

    def prime(self, entries: Sequence[dict[str, Any]]) -> None:
        """Take what is already recorded as seen (nothing is printed for it)."""
        self._runs = {(e["model"], e["evalset"], e["strategy"]): e["run"] for e in entries}
        self._actions, self._releases = self._read_store()

    def __call__(self, entries: Sequence[dict[str, Any]]) -> None:
        if self._runs is None:
            self._runs = {}
        for entry in entries:
            key = (entry["model"], entry["evalset"], entry["strategy"])
            if self._runs.get(key) == entry["run"]:
                continue
            self._runs[key] = entry["run"]
            self.say(run_line(entry))
        actions, releases = self._read_store()
        if self._actions is not None:
            for name, (action, reason) in actions.items():
                before = self._actions.get(name)
                if before is None or before[0] != action:
                    was = f"{before[0]} -> " if before else ""
                    self.say(f"recommendation for {name}: {was}{action}: {reason}")
        if self._releases is not None:
            for release in sorted(releases - self._releases):
                self.say(f"release found: {release}")
        self._actions, self._releases = actions, releases

    def _read_store(self) -> tuple[dict[str, Any], set[str]]:
        if self._url is None:
            return {}, set()
        from monitor.store import Store

        try:
            with Store.open(self._url, create=False, migrate_schema=False) as store:
                actions = {
                    name: (r.action, (list(r.reasons or []) or [r.summary])[0])
                    for r, name in store.latest_recommendations()
                }
                releases = {r.name for r in store.releases()}
        except Exception:  # the console is best-effort: a busy or changing database never stops the daemon
            return {}, set()
        return actions, releases


def run_line(entry: dict[str, Any]) -> str:
    """One status entry as a console line: ``run 7 ticket-router ticket-routing zero-shot: succeeded,
    acc 0.7389 ± 0.0328, regressed (-0.256)``."""
    head = f"run {entry['run']} {entry['model']} {entry['evalset']} {entry['strategy']}: {entry['status']}"
    if entry["status"] != "succeeded":
        return f"{head}: {entry['error']}" if entry.get("error") else head
    verdict = "" if entry["verdict"] is None else f", {_verdict_text(entry)}"
    return f"{head}, {entry['metric']} {format_metric(entry['value'])}{verdict}"


def count_repeats(problems: Sequence[str]) -> list[str]:
    """Problems with one message each counted once: ``800 lines: lacks 'timestamp' (first at log.jsonl:3)``.

    A problem reads ``FILE:LINE: message`` (or just a message); the same message on many lines is one
    entry with its count and first location, in the order first seen.
    """
    import re

    groups: dict[str, list[str]] = {}
    for problem in problems:
        match = re.match(r"^(.*?:\d+): (.*)$", problem)
        where, message = (match.group(1), match.group(2)) if match else ("", problem)
        groups.setdefault(message, []).append(where)
    out = []
    for message, places in groups.items():
        if len(places) == 1:
            out.append(f"{places[0]}: {message}" if places[0] else message)
        else:
            first = next((p for p in places if p), "")
            out.append(f"{len(places)} lines: {message}" + (f" (first at {first})" if first else ""))
    return out
