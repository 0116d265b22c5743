"""The ``monitor`` command line: the typer app, ``--version`` and the entry point.

Each command group lives in its own module (:mod:`.eval`, :mod:`.check`,
:mod:`.runs`, :mod:`.verdicts`, :mod:`.drift`, :mod:`.baseline`,
:mod:`.releases`, :mod:`.webhooks`, :mod:`.daemon`, :mod:`.gate`, :mod:`.importer`); what they print is in :mod:`.output`.
Commands are added here in the order ``monitor --help`` lists them.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from monitor._version import __version__
from monitor.cli import (
    baseline,
    check,
    daemon,
    deploy,
    drift,
    gate,
    importer,
    releases,
    runs,
    serve,
    verdicts,
    webhooks,
)
from monitor.cli import eval as eval_

app = typer.Typer(
    name="monitor",
    help="Monitor fine-tuned language models as they age: golden evals, history, regressions, recommendations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.command("eval")(eval_.eval_command)
app.command("check-config")(check.check_config_command)
app.command("run")(runs.run_command)
app.command("status")(runs.status_command)
app.command("history")(runs.history_command)
app.command("daemon")(daemon.daemon_command)
app.command("serve")(serve.serve_command)
app.command("run-now")(runs.run_now_command)
app.command("diff")(runs.diff_command)
app.command("regressions")(verdicts.regressions_command)
app.command("recommend")(verdicts.recommend_command)
app.command("gate")(gate.gate_command)
app.command("drift")(drift.drift_command)
app.add_typer(drift.report_app, name="report")
app.add_typer(baseline.baseline_app, name="baseline")
app.add_typer(releases.releases_app, name="releases")
app.add_typer(webhooks.webhooks_app, name="webhooks")
app.add_typer(deploy.deploy_app, name="deploy")
app.add_typer(importer.import_app, name="import")
app.command("serve-openai")(daemon.serve_openai_command)
app.command("demo")(daemon.demo_command)


def version_callback(value: bool) -> None:
    if value:
        print(f"monitor {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Monitor fine-tuned language models as they age."""


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()
