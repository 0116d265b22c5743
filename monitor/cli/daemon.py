"""Processes: ``monitor daemon``, ``monitor serve-openai`` and ``monitor demo``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from monitor.api.views import print_status
from monitor.cli.options import DEFAULT_CONFIG, ConfigOption
from monitor.cli.output import err, handle_errors


@handle_errors
def daemon_command(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    host: Annotated[str | None, typer.Option(help="Listen address (default: daemon.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (default: daemon.port; 0 picks one).")] = None,
    show_status: Annotated[
        bool, typer.Option(help="Print the whole status table after every run (default: one line per event).")
    ] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the configured jobs on their schedules and serve /metrics, health checks and the API."""
    from monitor.api.app import run_daemon

    on_status: Any = print_status if show_status else console_events(config)
    run_daemon(config, host=host, port=port, on_status=on_status, log_level=log_level)


def console_events(config: Path) -> Any:
    """One line per event on the console, primed with what the store already holds."""
    from monitor.api.views import EventLines, status_entries
    from monitor.cli.options import load_config_file
    from monitor.errors import MonitorError
    from monitor.store import Store

    try:
        url = load_config_file(config).database_url()
    except MonitorError:
        return EventLines()  # run_daemon reports the configuration's problems itself
    lines = EventLines(url)
    try:
        # read only, never migrating: the daemon's own start-up opens, migrates and judges the database
        with Store.open(url, create=False, migrate_schema=False) as store:
            lines.prime(status_entries(store))
    except Exception:  # a new, old-schema or unreadable database: the console starts from nothing
        lines.prime([])
    return lines


@handle_errors
def serve_openai_command(
    models: Annotated[
        list[str],
        typer.Option("--model", help="NAME=BASE or NAME=BASE:ADAPTER (local folders); repeat for more."),
    ],
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key_env: Annotated[
        str | None, typer.Option("--api-key-env", help="Require the key in this environment variable.")
    ] = None,
    latency: Annotated[float, typer.Option(min=0.0, help="Seconds added to every inference request.")] = 0.0,
    fail_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of inference requests answered with HTTP 500.")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the fault draws.")] = 0,
    memoize: Annotated[
        bool, typer.Option(help="Answer a repeated request from memory (greedy answers never change).")
    ] = False,
) -> None:
    """Serve local HF models and LoRA adapters over an OpenAI-compatible API (tests, demos, benchmarks)."""
    import threading

    from monitor.errors import InputError
    from monitor.testing.openai_server import FaultPlan, FaultRule, OpenAIServer, load_served_model

    served = []
    for value in models:
        name, sep, source = value.partition("=")
        if not sep or not name or not source:
            raise InputError(f"--model {value!r}: use NAME=BASE or NAME=BASE:ADAPTER")
        base, _, adapter = source.partition(":")
        served.append(load_served_model(name, base, adapter or None))
    key = None
    if api_key_env is not None:
        key = os.environ.get(api_key_env)
        if not key:
            raise InputError(f"--api-key-env: environment variable {api_key_env} is not set")
    rules = (FaultRule("status", status=500, probability=fail_rate),) if fail_rate else ()
    server = OpenAIServer(
        served,
        host=host,
        port=port,
        api_key=key,
        faults=FaultPlan(latency_s=latency, rules=rules, seed=seed),
        memoize=memoize,
    )
    with server:
        err(f"serving {', '.join(m.name for m in served)} at {server.url} (Ctrl-C stops)")
        threading.Event().wait()


@handle_errors
def demo_command(
    workdir: Annotated[
        Path, typer.Option(help="Where the demo keeps its models, config and database.")
    ] = Path("demo-output"),
    rebuild: Annotated[bool, typer.Option(help="Rebuild the demo models even if cached.")] = False,
    once: Annotated[bool, typer.Option(help="Run every job once, show the status and exit.")] = False,
    port: Annotated[int, typer.Option(help="Port of the daemon's /metrics.")] = 9464,
) -> None:
    """Build the demo's small models (cached) and run the daemon on them with a fast schedule."""
    from monitor.demo.run import run_demo

    run_demo(workdir, rebuild=rebuild, once=once, port=port)
