"""Input drift: ``monitor drift`` and ``monitor report drift`` (on the report group of :mod:`.report`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from monitor.api.views import clean, count_repeats
from monitor.cli.options import DEFAULT_CONFIG, ConfigOption, load_config_file
from monitor.cli.output import (
    WideOption,
    handle_errors,
    print_table,
)
from monitor.cli.report import report_app
from monitor.errors import InputError, NotFoundError


@handle_errors
def drift_command(
    model: Annotated[
        str | None, typer.Argument(help="One model (default: every model with drift: configured).")
    ] = None,
    config: ConfigOption = Path(DEFAULT_CONFIG),
    as_json: Annotated[bool, typer.Option("--json")] = False,
    wide: WideOption = False,
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
                "triggered_by": (r.details or {}).get("triggered_by"),
                "repetition": _repetition(r.details or {}),
            }
        )
        for n, r in results
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(
            "input drift",
            ["model", "source", "state", "score", "threshold", "repeated rows (ref / cur)", "reason"],
            [
                [
                    r["model"],
                    r["source"],
                    r["state"],
                    "-" if r["score"] is None else f"{r['score']:.3f}",
                    "-" if r["threshold"] is None else f"{r['threshold']:.3f}",
                    _repeated_cell(r.get("repetition")),
                    r["reason"] or "",
                ]
                for r in rows
            ],
            wide=wide,
        )
        for name, record in results:
            for line in describe_checks(record.details or {}):
                print(f"{name}: {line}")
    if any(r.state == "error" for _, r in results):
        raise typer.Exit(1)


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
    if not output.parent.is_dir():
        raise InputError(f"--output {output}: folder {output.parent} does not exist")
    drift = cfg.models[model].drift
    check = check_input_drift(drift, now=utcnow(), base_dir=cfg.root, report_path=output)
    verdict = "drifted" if check.analysis.drifted else "no drift"
    _add_header(output, model, check, drift)
    for line in count_repeats(check.problems):
        print(f"{model}: left out of the window: {line}")
    print(f"{model}: {verdict} (score {check.analysis.score:.3f}); report written to {output}")
    for line in describe_checks(check.analysis.to_dict()):
        print(f"{model}: {line}")
    print(
        f"{model}: the HTML report is Evidently's view of each side's distinct texts; its drift flags assume"
        " independent rows, the verdict above is calibrated for repetition"
    )


def _add_header(path: Path, model: str, check: Any, drift: Any) -> None:
    """Put what the page covers above Evidently's own report: the model, the window, the reference, the
    sizes and the calibrated verdict (Evidently's "score" columns are its own p-values and statistics)."""
    import html

    details = check.analysis.to_dict()
    sizes = []
    for key, label in (("reference_repetition", "reference"), ("current_repetition", "current window")):
        side = details.get(key) or (details.get("domain_classifier") or {}).get(key)
        if isinstance(side, dict):
            sizes.append(f"{label}: {side.get('rows')} rows, {side.get('distinct')} distinct texts")
    window = check.window
    verdict = "drifted" if check.analysis.drifted else "no drift"
    header = (
        '<div style="font-family: system-ui, sans-serif; padding: 12px 20px; border-bottom: 1px solid #ccc">'
        f"<h1>Input drift: {html.escape(model)}</h1>"
        f"<p><b>Verdict: {verdict}</b> (score {check.analysis.score:.3f}, the domain classifier's ROC AUC; "
        "calibrated for repeated rows, see docs/drift.md)</p>"
        f"<p>Window: {window.start:%Y-%m-%d %H:%M} to {window.end:%Y-%m-%d %H:%M} UTC (the last "
        f"{html.escape(str(window.length or drift.window))}) from {html.escape(str(drift.source.kind))}; "
        f"reference: {html.escape(str(drift.reference.kind))} {html.escape(str(getattr(drift.reference, 'path', '')))}</p>"
        f"<p>{html.escape('; '.join(sizes))}</p>"
        "<p>Below is Evidently's report of each side's distinct texts: where it says \"score\" for a text "
        "column it shows its own test's p-value or statistic, which assumes independent rows.</p></div>"
    )
    text = path.read_text(encoding="utf-8")
    at = text.find("<body")
    at = text.find(">", at) + 1 if at >= 0 else 0
    path.write_text(text[:at] + header + text[at:], encoding="utf-8")


def _percent(share: float) -> str:
    return f"{100 * share:.0f}%" if share == 0 or share >= 0.01 else "<1%"


def _repetition(details: dict[str, Any]) -> dict[str, Any] | None:
    reference, current = details.get("reference_repetition"), details.get("current_repetition")
    if not isinstance(reference, dict) or not isinstance(current, dict):
        return None  # an error, or a finding stored before repetition was measured
    return {"reference": reference, "current": current}


def _repeated_cell(repetition: dict[str, Any] | None) -> str:
    if not repetition:
        return "-"
    return (
        f"{_percent(repetition['reference']['repeated_share'])} / "
        f"{_percent(repetition['current']['repeated_share'])}"
    )


def _sides(check: dict[str, Any]) -> str:
    parts = []
    for side, label in (("reference_repetition", "reference"), ("current_repetition", "current")):
        r = check.get(side)
        if isinstance(r, dict):
            parts.append(f"{label} {_percent(r['repeated_share'])} of {r['rows']} ({r['distinct']} distinct)")
    return "repeated rows: " + ", ".join(parts) if parts else ""


def describe_checks(details: dict[str, Any]) -> list[str]:
    """One line per component of an input drift finding (its ``details``): statistic, bar, p-value, repetition."""
    if not details.get("domain_classifier"):
        return []
    lines = []
    alpha = details.get("component_alpha")
    at = f" at alpha {alpha:.3g}" if isinstance(alpha, float) else ""
    for key, label in (("domain_classifier", "domain classifier"), ("embeddings", "embeddings")):
        check = details.get(key)
        if not isinstance(check, dict):
            continue
        verdict = "drifted" if check.get("drifted") else "ok"
        line = f"{label} {verdict}: AUC {check['roc_auc']:.3f} (bar {check['threshold']:.3f}), p {check['p_value']:.3g}{at}"
        sides = _sides(check)
        lines.append(f"{line}; {sides}" if sides else line)
    descriptors = details.get("descriptors") or []
    if descriptors:
        drifted = [d["name"] for d in descriptors if d.get("drifted")]
        verdict = "drifted" if "descriptors" in (details.get("triggered_by") or ()) else "ok"
        p_value = details.get("descriptors_p_value")
        tail = f", p {p_value:.3g}{at}" if isinstance(p_value, float) else ""
        names = f" ({', '.join(drifted)})" if drifted else ""
        line = f"descriptors {verdict}: {len(drifted)} of {len(descriptors)} drifted{names}{tail}"
        sides = _sides(details["domain_classifier"])  # the descriptors measure the classifier's sample
        lines.append(f"{line}; {sides}" if sides else line)
    return lines
