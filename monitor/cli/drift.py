"""Input drift: ``monitor drift`` and ``monitor report drift``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from monitor.api.views import clean
from monitor.cli.options import DEFAULT_CONFIG, ConfigOption, load_config_file
from monitor.cli.output import (
    handle_errors,
    print_table,
)
from monitor.errors import NotFoundError


@handle_errors
def drift_command(
    model: Annotated[
        str | None, typer.Argument(help="One model (default: every model with drift: configured).")
    ] = None,
    config: ConfigOption = Path(DEFAULT_CONFIG),
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check production inputs for drift against the reference, now, and record the result."""
    from monitor.service.after_job import make_notifier, record_input_drift
    from monitor.store import Store, utcnow

    cfg = load_config_file(config)
    names = [model] if model else [n for n, m in cfg.models.items() if m.drift is not None]
    missing = [n for n in names if n not in cfg.models or cfg.models[n].drift is None]
    if missing or not names:
        raise NotFoundError(
            f"no drift: section for model {', '.join(missing)}"
            if missing
            else "no model has a drift: section"
        )
    with Store.open(cfg.database_url()) as store:
        results = []
        for name in names:
            if not any(m.name == name for m in store.models()):
                base, adapter = cfg.model_source(name)
                store.upsert_model(name, kind=cfg.models[name].backend, base=base, adapter=adapter)
            record = record_input_drift(
                store,
                name,
                cfg.models[name].drift,
                base_dir=cfg.root,
                now=utcnow(),
                notify=make_notifier(cfg),
            )
            results.append((name, record))
    rows = [
        clean(
            {
                "model": n,
                "source": r.source,
                "state": r.state,
                "drifted": r.drifted,
                "score": r.score,
                "p_value": r.p_value,
                "threshold": r.threshold,
                "reason": r.reason,
            }
        )
        for n, r in results
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(
            "input drift",
            ["model", "source", "state", "score", "threshold", "reason"],
            [
                [
                    r["model"],
                    r["source"],
                    r["state"],
                    "-" if r["score"] is None else f"{r['score']:.3f}",
                    "-" if r["threshold"] is None else f"{r['threshold']:.3f}",
                    (r["reason"] or "")[:80],
                ]
                for r in rows
            ],
        )
    if any(r.state == "error" for _, r in results):
        raise typer.Exit(1)


report_app = typer.Typer(help="Reports: Evidently's HTML drift report.")


@report_app.command("drift")
@handle_errors
def report_drift_command(
    model: Annotated[str, typer.Argument(help="The model whose production inputs to report on.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the HTML report.")] = Path(
        "drift-report.html"
    ),
    config: ConfigOption = Path(DEFAULT_CONFIG),
) -> None:
    """Write Evidently's HTML report of the model's production inputs against its reference."""
    from monitor.analysis.drift.evidently import check_input_drift
    from monitor.store import utcnow

    cfg = load_config_file(config)
    if model not in cfg.models or cfg.models[model].drift is None:
        raise NotFoundError(f"no drift: section for model {model!r}")
    check = check_input_drift(cfg.models[model].drift, now=utcnow(), base_dir=cfg.root, report_path=output)
    verdict = "drifted" if check.analysis.drifted else "no drift"
    print(f"{model}: {verdict} (score {check.analysis.score:.3f}); report written to {output}")
