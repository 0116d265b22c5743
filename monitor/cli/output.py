"""What the CLI prints: tables (rich on a terminal, tab-separated otherwise), progress bars, errors.

Every :class:`~monitor.errors.MonitorError` becomes a message on stderr (one
line per problem) and its exit code; tracebacks are left for bugs.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import typer

from monitor.api.views import primary_metric
from monitor.errors import MonitorError, Problem

F = TypeVar("F", bound=Callable[..., Any])


def err(message: str) -> None:
    """One line on stderr, flushed (messages for people, apart from the output on stdout)."""
    print(message, file=sys.stderr, flush=True)


def handle_errors(func: F) -> F:
    """Turn our errors into one line per problem on stderr and the error's exit code."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MonitorError as exc:
            problems = getattr(exc, "problems", None) or [Problem("", str(exc))]
            for problem in problems:
                err(f"error: {problem}")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def is_terminal() -> bool:
    """Whether stdout is a terminal that can show rich tables."""
    return sys.stdout.isatty() and os.environ.get("TERM") != "dumb"


@contextmanager
def progress_bar(total: int, label: str, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr when it is a terminal: yields ``advance(n)``, else None."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


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


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table on a terminal, tab-separated lines otherwise (for scripts and logs)."""
    if is_terminal():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    print("\t".join(columns))
    for row in rows:
        print("\t".join(row))


def print_runs(runs: Sequence[tuple[Any, str]]) -> None:
    """The runs table: one row per (run, model name)."""
    rows = []
    for run, name in runs:
        metric, value = primary_metric(run)
        rows.append(
            [
                str(run.id),
                name,
                run.evalset_name,
                run.strategy,
                run.status,
                metric,
                format_metric(value),
                f"{run.duration_s:.1f}s" if run.duration_s is not None else "-",
                (run.error or "")[:80],
            ]
        )
    print_table(
        "runs",
        ["run", "model", "evalset", "strategy", "status", "metric", "value ± stderr", "time", "error"],
        rows,
    )


def print_status(entries: Sequence[dict[str, Any]]) -> None:
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
    )


def _verdict_text(entry: dict[str, Any]) -> str:
    if entry["verdict"] is None:
        return "-"
    delta = entry["vs_baseline"]
    return entry["verdict"] if delta is None else f"{entry['verdict']} ({delta:+.3f})"
