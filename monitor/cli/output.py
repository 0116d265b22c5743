"""What the CLI prints: tables (rich on a terminal, tab-separated otherwise), progress bars, errors.

Every :class:`~monitor.errors.MonitorError` becomes a message on stderr (one
line per problem) and its exit code; tracebacks are left for bugs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import typer

from monitor.api.views import format_metric, primary_metric, print_table
from monitor.errors import MonitorError, Problem

F = TypeVar("F", bound=Callable[..., Any])

WideOption = Annotated[
    bool,
    typer.Option(
        "--wide", help="Draw tables as wide as their cells need (nothing wrapped; full fingerprints)."
    ),
]


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
                run.error or "",
            ]
        )
    print_table(
        "runs",
        ["run", "model", "evalset", "strategy", "status", "metric", "value ± stderr", "time", "error"],
        rows,
    )
