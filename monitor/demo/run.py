"""``monitor demo``: build the demo models (cached), tell the aging story, then run the daemon.

The story (:mod:`monitor.demo.story`) takes the fine-tune from deployment
through drift and a confirmed regression to a new base release and a re-base
recommendation, with webhooks landing in a local receiver.  Then the daemon
starts on the demo configuration with a fast schedule (the fine-tune every
minute, the releases folder watched), prints where ``/metrics`` is and shows
the status table as runs land, until Ctrl-C.  ``--once`` stops after the story
(what the tests and CI use).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monitor.demo.story import SECRET, SECRET_ENV, prepare_workdir, tell_story, write_demo_config

DEMO_PORT = 9464


def run_demo(workdir: Path, *, rebuild: bool = False, once: bool = False, port: int = DEMO_PORT) -> Path:
    """Build (or load) the demo models, tell the story, then run the daemon unless ``once``."""
    from monitor.api.app import run_daemon
    from monitor.demo.build import build_demo_models
    from monitor.demo.receiver import DemoReceiver

    workdir = workdir.resolve()
    started = time.perf_counter()
    print(f"demo: the demo models live under {workdir / 'models'} (built once, then cached)", flush=True)
    models = build_demo_models(
        workdir / "models", force=rebuild, progress=lambda line: print(f"demo: {line}", flush=True)
    )
    print(
        f"demo: models {'loaded from cache' if models.from_cache else 'built'} "
        f"in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    prepare_workdir(workdir)
    os.environ.setdefault(SECRET_ENV, SECRET)
    receiver = DemoReceiver(os.environ[SECRET_ENV], workdir / "webhooks.log").start()
    try:
        config_path = write_demo_config(workdir, models, port=port, receiver_url=receiver.url)
        print(f"demo: configuration written to {config_path}", flush=True)
        tell_story(
            workdir,
            config_path,
            models,
            receiver=receiver,
            say=lambda line: print(line, flush=True),
            show_table=print_status,
        )
        print(
            f"\ndemo: story told in {time.perf_counter() - started:.0f} s; database {workdir / 'monitor.db'}",
            file=sys.stderr,
            flush=True,
        )
        if once:
            return config_path
        print(
            "demo: starting the daemon on the demo configuration: the fine-tune runs every minute and "
            f"{workdir / 'releases'} is watched for new base models. Ctrl-C stops it.",
            flush=True,
        )
        run_daemon(config_path, on_status=print_status, log_level="warning")
    finally:
        receiver.stop()
    return config_path


_STATUS_COLUMNS = (
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
)


def print_status(entries: Sequence[dict[str, Any]]) -> None:
    """The status table of :func:`monitor.api.views.status_entries` (rich on a terminal, tab-separated otherwise).

    The demo's own renderer, the same table as ``monitor status``: the demo sits below the CLI.
    """
    if not entries:
        print("no runs recorded yet")
        return
    rows = [_status_row(entry) for entry in entries]
    if sys.stdout.isatty() and os.environ.get("TERM") != "dumb":
        from rich.console import Console
        from rich.table import Table

        table = Table(title="status")
        for column in _STATUS_COLUMNS:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    print("\t".join(_STATUS_COLUMNS))
    for row in rows:
        print("\t".join(row))


def _status_row(entry: dict[str, Any]) -> list[str]:
    when = entry["finished_at"] or entry["started_at"]
    verdict = entry["verdict"]
    if verdict is not None and entry["vs_baseline"] is not None:
        verdict = f"{verdict} ({entry['vs_baseline']:+.3f})"
    return [
        entry["model"],
        entry["evalset"],
        entry["strategy"],
        entry["status"],
        entry["metric"],
        _metric_text(entry["value"]),
        "-" if entry["change"] is None else f"{entry['change']:+.4f}",
        "-" if verdict is None else verdict,
        "-" if entry["newly_broken"] is None else str(entry["newly_broken"]),
        str(entry["flaky"]),
        when.strftime("%Y-%m-%d %H:%M") if when else "-",
    ]


def _metric_text(value: dict[str, Any] | None) -> str:
    def missing(x: Any) -> bool:
        return x is None or (isinstance(x, float) and math.isnan(x))

    if not value or missing(value.get("value")):
        return "-"
    if missing(value.get("stderr")):
        return f"{value['value']:.4f}"
    return f"{value['value']:.4f} ± {value['stderr']:.4f}"
