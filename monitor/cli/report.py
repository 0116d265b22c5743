"""Reports: ``monitor report MODEL`` (one HTML page per fine-tune, with charts) and the ``report drift`` group member.

``monitor report MODEL`` and ``monitor report drift MODEL`` share one group: a first word that is not
a subcommand's name is taken as the model (the ``model`` subcommand), so ``monitor report
ticket-router`` needs no extra word.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from monitor.api.views import json_default
from monitor.cli.options import DEFAULT_CONFIG, ConfigOption, DbOption
from monitor.cli.output import handle_errors


class ModelByDefault(TyperGroup):
    """A group whose first argument, when no subcommand has that name, is the ``model`` subcommand's."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:  # click's types, as typer vendors them
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["model", *args]
        return super().resolve_command(ctx, args)


report_app = typer.Typer(
    cls=ModelByDefault,
    help="Reports: `monitor report MODEL` writes one HTML page with charts; `report drift` is Evidently's.",
    no_args_is_help=True,
)


@report_app.command("model")
@handle_errors
def report_model_command(
    model: Annotated[str, typer.Argument(help="The model (a fine-tune) to report on.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write the page (default: report-MODEL.html)."),
    ] = None,
    config: ConfigOption = Path(DEFAULT_CONFIG),
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Also print what the page shows, as JSON.")] = False,
) -> None:
    """Write one self-contained HTML page about MODEL: scores over time with their confidence bands and the
    baseline, verdicts, challengers, cost options, the recommendation, newly broken items and input drift."""
    from monitor.api.report import charts, write_report
    from monitor.store import utcnow

    cfg, store = _open(config, db)
    path = output if output is not None else Path(f"report-{model}.html")
    with store:
        report = write_report(store, cfg, model, path, now=utcnow())
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, default=json_default))
        return
    action = report.recommendation["action"] if report.recommendation else "none recorded"
    print(
        f"{model}: report written to {path} ({len(charts(report))} charts, {len(report.series)} series, "
        f"recommendation: {action})"
    )


def _open(config: Path, db: str | None) -> tuple[Any, Any]:
    """The configuration (when there is one) and the store, opened read-only (nothing is created)."""
    import os

    from monitor.cli.options import load_config_file
    from monitor.errors import ConfigError
    from monitor.store import Store

    cfg = load_config_file(config) if config.exists() else None
    url = db or os.environ.get("MONITOR_DATABASE_URL") or (cfg.database_url() if cfg is not None else None)
    if url is None:
        raise ConfigError("configuration file not found (or give --db URL)", str(config))
    return cfg, Store.open(url, create=False)
