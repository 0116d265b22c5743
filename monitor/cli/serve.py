"""``monitor serve``: the API, /metrics, release watchers and webhooks, with the fires run elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from monitor.cli.options import DEFAULT_CONFIG, ConfigOption
from monitor.cli.output import handle_errors


@handle_errors
def serve_command(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    host: Annotated[str | None, typer.Option(help="Listen address (default: daemon.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (default: daemon.port; 0 picks one).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve /metrics, health checks, the API, release watchers and webhooks without running jobs
    (for fires run by `monitor run JOB --slot` from CronJobs, Airflow or systemd timers)."""
    from monitor.api.app import run_server

    run_server(config, host=host, port=port, log_level=log_level)
