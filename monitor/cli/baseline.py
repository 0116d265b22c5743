"""``monitor baseline pin|show|list|unpin``: the pinned baselines (baselines/<model>/<evalset>.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from monitor.cli.options import DEFAULT_CONFIG, ConfigOption, DbOption, load_config_file, store_for
from monitor.cli.output import (
    format_metric,
    handle_errors,
    print_table,
)
from monitor.errors import NotFoundError

baseline_app = typer.Typer(help="Pin, show, list and unpin baselines (baselines/<model>/<evalset>.json).")


def _baselines_root(config: Path) -> Path:
    cfg = load_config_file(config)
    return cfg.baselines_dir()


@baseline_app.command("pin")
@handle_errors
def baseline_pin_command(
    model: Annotated[str, typer.Argument(help="Model name.")],
    evalset: Annotated[str, typer.Argument(help="Eval set name.")],
    run: Annotated[
        int | None, typer.Option("--run", help="Run id (default: the newest succeeded run).")
    ] = None,
    config: ConfigOption = Path(DEFAULT_CONFIG),
    db: DbOption = None,
) -> None:
    """Pin a succeeded run as the baseline of a model on an eval set."""
    from monitor.analysis.baselines import baseline_path, pin_baseline

    with store_for(config, db) as store:
        root = _baselines_root(config)
        baseline = pin_baseline(store, root, model, evalset, run)
    metric, value = next(iter(baseline.metrics.items()), ("-", None))
    print(
        f"pinned run {baseline.run_id} as the baseline of {model} on {evalset} "
        f"({baseline.strategy}, {metric} {format_metric(value)}): {baseline_path(root, model, evalset)}"
    )


@baseline_app.command("show")
@handle_errors
def baseline_show_command(
    model: Annotated[str, typer.Argument()],
    evalset: Annotated[str, typer.Argument()],
    config: ConfigOption = Path(DEFAULT_CONFIG),
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show a pinned baseline."""
    from monitor.analysis.baselines import baseline_path, load_baseline

    path = baseline_path(_baselines_root(config), model, evalset)
    if not path.exists():
        raise NotFoundError(f"no baseline pinned for model {model!r} on eval set {evalset!r} ({path})")
    baseline = load_baseline(path)
    if as_json:
        print(baseline.to_json(), end="")
        return
    print(f"{model} on {evalset}: run {baseline.run_id}, {baseline.strategy}, pinned {baseline.pinned_at}")
    print(
        f"eval set version {baseline.evalset_version[:12]}, model {str(baseline.model_fingerprint)[:12]}, {len(baseline.items)} items"
    )
    rows = [
        [name, format_metric(value), str(value.get("n", "-"))] for name, value in baseline.metrics.items()
    ]
    print_table("baseline", ["metric", "value ± stderr", "n"], rows)


@baseline_app.command("list")
@handle_errors
def baseline_list_command(config: ConfigOption = Path(DEFAULT_CONFIG)) -> None:
    """List pinned baselines (and report corrupt files, exit 2)."""
    from monitor.analysis.baselines import BaselineError, iter_baselines

    rows, problems = [], []
    for _path, found in iter_baselines(_baselines_root(config)):
        if isinstance(found, Exception):
            problems.extend(found.problems)  # type: ignore[attr-defined]
            continue
        metric, value = next(iter(found.metrics.items()), ("-", None))
        rows.append(
            [
                found.model,
                found.evalset,
                found.strategy,
                str(found.run_id),
                metric,
                format_metric(value),
                found.pinned_at[:16],
            ]
        )
    if rows:
        print_table(
            "baselines",
            ["model", "evalset", "strategy", "run", "metric", "value ± stderr", "pinned (UTC)"],
            rows,
        )
    elif not problems:
        print("no baselines pinned")
    if problems:
        raise BaselineError(problems)


@baseline_app.command("unpin")
@handle_errors
def baseline_unpin_command(
    model: Annotated[str, typer.Argument()],
    evalset: Annotated[str, typer.Argument()],
    config: ConfigOption = Path(DEFAULT_CONFIG),
) -> None:
    """Remove a pinned baseline."""
    from monitor.analysis.baselines import unpin_baseline

    path = unpin_baseline(_baselines_root(config), model, evalset)
    print(f"unpinned {path}")
