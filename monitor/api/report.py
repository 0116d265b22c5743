"""``monitor report MODEL``: one self-contained HTML page per fine-tune, with charts.

What the page shows, each read from the store (and the pinned baselines) and nothing computed anew
except the recommendation, which :func:`~monitor.analysis.recommend.assess_finetune` makes exactly as
``monitor recommend`` does (nothing is stored):

- the score over time of every (eval set, strategy) series, with its 95% confidence band
  (value ± 1.96 standard errors) and the pinned baseline's score as a line; each run's marker is
  coloured by its verdict;
- the newest verdict of every series and metric, with its interval, p-value and reason;
- the challengers (newer base releases) against the fine-tune, each difference with its interval;
- the cost options a month (inference plus upkeep), options ruled out on quality marked so;
- the recommendation and its reasons;
- the items newly broken since the baseline, with the baseline's output and today's;
- the input drift score over time, with the bar it is judged against.

The charts are drawn by Plotly, whose JavaScript is inlined in the page: it opens offline, from a
file, on a machine with no network. Each chart's ``<div>`` gets ``data-points`` once it has drawn
(the number of marks on it), which is what the headless-browser test reads.
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.api.views import clean, json_default, primary_metric
from monitor.errors import NotFoundError

if TYPE_CHECKING:
    from monitor.config import MonitorConfig
    from monitor.store import Store

#: The colour of each verdict state (and of runs without one).
STATE_COLOURS = {
    "ok": "#2e7d32",
    "suspect": "#f9a825",
    "regressed": "#c62828",
    "refused": "#757575",
    None: "#1565c0",
}
#: At most this many newly broken items are listed per series (the count says how many there are).
BROKEN_SHOWN = 25


@dataclass
class Chart:
    """One Plotly figure: its traces and layout, as Plotly's JSON takes them."""

    id: str
    title: str
    traces: list[dict[str, Any]]
    layout: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    """Everything the page shows about one model, as plain data (also what ``--json`` prints)."""

    model: str
    generated_at: datetime
    series: list[dict[str, Any]] = field(default_factory=list)
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    challengers: list[dict[str, Any]] = field(default_factory=list)
    costs: dict[str, Any] | None = None
    recommendation: dict[str, Any] | None = None
    broken: list[dict[str, Any]] = field(default_factory=list)
    drift: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return clean(
            {
                "model": self.model,
                "generated_at": self.generated_at,
                "series": self.series,
                "verdicts": self.verdicts,
                "challengers": self.challengers,
                "costs": self.costs,
                "recommendation": self.recommendation,
                "newly_broken": self.broken,
                "drift": self.drift,
            }
        )


# --- gathering ------------------------------------------------------------------------------------


def gather_report(store: Store, cfg: MonitorConfig | None, model: str, *, now: datetime) -> Report:
    """Read what the page shows about ``model`` (a configured model or one recorded in the store)."""
    names = {m.name: m for m in store.models()}
    if model not in names:
        known = ", ".join(sorted(names)) or "none"
        raise NotFoundError(f"no runs recorded for model {model!r} (recorded: {known})")
    record = names[model]
    report = Report(model=model, generated_at=now)
    runs = [run for run, _ in store.runs(model=model)]
    runs.reverse()  # oldest first
    verdict_history = _verdict_history(store, record.id)
    by_run: dict[int, dict[str, Any]] = {}
    for verdict in verdict_history:
        by_run.setdefault(verdict.run_id, {})[verdict.metric] = verdict
    baselines = _baselines(cfg, model)

    grouped: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for run in runs:
        grouped[(run.evalset_name, run.strategy)].append(run)
    for (evalset, strategy), series_runs in sorted(grouped.items()):
        points = []
        metric = "-"
        for run in series_runs:
            name, value = primary_metric(run)
            if name != "-":
                metric = name
            v = by_run.get(run.id or -1, {}).get(name)
            points.append(
                {
                    "run": run.id,
                    "at": run.finished_at or run.started_at,
                    "status": run.status,
                    "value": (value or {}).get("value"),
                    "stderr": (value or {}).get("stderr"),
                    "verdict": v.state if v is not None else None,
                    "fingerprint": run.model_fingerprint,
                    "error": run.error,
                }
            )
        baseline = baselines.get(evalset)
        baseline_value = None
        if baseline is not None and baseline.strategy == strategy:
            baseline_value = (baseline.metrics.get(metric) or {}).get("value")
        report.series.append(
            {
                "evalset": evalset,
                "strategy": strategy,
                "metric": metric,
                "baseline": baseline_value,
                "baseline_run": baseline.run_id if baseline is not None else None,
                "points": points,
            }
        )

    for verdict in sorted(
        _latest_verdicts(verdict_history), key=lambda v: (v.evalset_name, v.strategy, v.metric)
    ):
        report.verdicts.append(
            {
                "evalset": verdict.evalset_name,
                "strategy": verdict.strategy,
                "metric": verdict.metric,
                "state": verdict.state,
                "run": verdict.run_id,
                "baseline_run": verdict.baseline_run_id,
                "delta": verdict.delta,
                "ci_low": verdict.ci_low,
                "ci_high": verdict.ci_high,
                "p_value": verdict.adjusted_p if verdict.adjusted_p is not None else verdict.p_value,
                "consecutive": verdict.consecutive,
                "reason": verdict.reason,
                "newly_broken": (verdict.details or {}).get("newly_broken"),
            }
        )
        if verdict.baseline_run_id is not None:
            broken = _newly_broken(store, verdict.baseline_run_id, verdict.run_id)
            if broken:
                report.broken.append(
                    {
                        "evalset": verdict.evalset_name,
                        "strategy": verdict.strategy,
                        "run": verdict.run_id,
                        "baseline_run": verdict.baseline_run_id,
                        "count": len(broken),
                        "items": broken[:BROKEN_SHOWN],
                    }
                )

    _recommendation(store, cfg, model, report)
    report.drift = [
        {
            "source": f.source,
            "at": f.created_at,
            "state": f.state,
            "drifted": f.drifted,
            "score": f.score,
            "threshold": f.threshold,
            "p_value": f.p_value,
            "reason": f.reason,
        }
        for f in _drift_history(store, record.id)
    ]
    return report


def _baselines(cfg: MonitorConfig | None, model: str) -> dict[str, Any]:
    """The model's pinned baselines by eval set (those that load; a broken file is left out)."""
    from monitor.analysis.baselines import BaselineError, load_baseline

    if cfg is None:
        return {}
    folder = cfg.baselines_dir() / model
    found = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            baseline = load_baseline(path)
        except BaselineError:
            continue
        found[baseline.evalset] = baseline
    return found


def _recommendation(store: Store, cfg: MonitorConfig | None, model: str, report: Report) -> None:
    """The decision, its reasons, the challengers and the cost case: made now for a configured fine-tune
    (as ``monitor recommend`` makes it), else the newest stored recommendation."""
    from monitor.analysis.recommend import assess_finetune, latest_recommendations
    from monitor.service.releases.effective import effective_config

    if cfg is not None and model in cfg.finetunes:
        # with the discovered releases as challengers, as `monitor recommend` and the daemon see them
        assessment = assess_finetune(store, effective_config(cfg, store.releases()), model)
        report.recommendation = {
            "action": assessment.decision.action,
            "reasons": list(assessment.decision.reasons),
            "release": assessment.decision.release,
            "strategy": assessment.decision.strategy,
        }
        for c in assessment.evidence.challengers:
            report.challengers.append(
                {
                    "release": c.release,
                    "strategy": c.strategy,
                    "evalset": c.evalset,
                    "metric": c.metric,
                    "challenger_score": c.challenger_score,
                    "finetune_score": c.finetune_score,
                    "vs_finetune": None if c.vs_finetune is None else _interval(c.vs_finetune),
                    "vs_old_base": None if c.vs_old_base is None else _interval(c.vs_old_base),
                }
            )
        report.costs = assessment.costs.to_dict() if assessment.costs is not None else None
        return
    for record, name in latest_recommendations(store):
        if name == model:
            report.recommendation = {
                "action": record.action,
                "reasons": list(record.reasons or []),
                "release": None,
                "strategy": None,
            }
            report.costs = record.costs or None
            challengers = (record.evidence or {}).get("challengers") or []
            report.challengers = [dict(c) for c in challengers if isinstance(c, dict)]


def _interval(interval: Any) -> dict[str, Any]:
    return {
        "delta": interval.delta,
        "ci_low": interval.ci_low,
        "ci_high": interval.ci_high,
        "p_value": interval.p_value,
        "n": interval.n,
    }


def _newly_broken(store: Store, baseline_run: int, run: int) -> list[dict[str, Any]]:
    """Items right in the baseline run and wrong in ``run``, with both outputs."""
    before = {r.item_id: r for r in store.item_results(baseline_run)}
    out = []
    for item in store.item_results(run):
        old = before.get(item.item_id)
        if old is not None and old.correct is True and item.correct is False:
            out.append(
                {
                    "item": item.item_id,
                    "target": item.target,
                    "baseline_output": old.prediction,
                    "output": item.prediction,
                }
            )
    return out


def _latest_verdicts(history: list[Any]) -> list[Any]:
    newest: dict[tuple[str, str, str], Any] = {}
    for verdict in history:  # oldest first: the last one of each series wins
        newest[(verdict.evalset_name, verdict.strategy, verdict.metric)] = verdict
    return list(newest.values())


def _verdict_history(store: Store, model_id: int | None) -> list[Any]:
    """Every verdict of the model, oldest first."""
    return store.verdicts(model_id) if model_id is not None else []


def _drift_history(store: Store, model_id: int | None) -> list[Any]:
    """Every input drift finding of the model, oldest first."""
    return store.findings(model_id, "input") if model_id is not None else []


# --- charts ---------------------------------------------------------------------------------------


def _iso(value: Any) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else value


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not math.isnan(x) and not math.isinf(x)


def score_chart(index: int, series: dict[str, Any]) -> Chart:
    """A series' score over time: the band, the line, the baseline and a marker per run by verdict."""
    points = [p for p in series["points"] if _finite(p["value"])]
    x = [_iso(p["at"]) for p in points]
    y = [p["value"] for p in points]
    half = [1.96 * p["stderr"] if _finite(p["stderr"]) else 0.0 for p in points]
    # A share (accuracy and the like) cannot leave [0, 1]: neither does its band.
    low, high = (0.0, 1.0) if all(0.0 <= v <= 1.0 for v in y) else (-math.inf, math.inf)
    traces: list[dict[str, Any]] = [
        {
            "x": x,
            "y": [min(high, v + h) for v, h in zip(y, half, strict=True)],
            "mode": "lines",
            "line": {"width": 0},
            "hoverinfo": "skip",
            "showlegend": False,
            "type": "scatter",
        },
        {
            "x": x,
            "y": [max(low, v - h) for v, h in zip(y, half, strict=True)],
            "mode": "lines",
            "line": {"width": 0},
            "fill": "tonexty",
            "fillcolor": "rgba(21,101,192,0.15)",
            "name": "95% confidence band",
            "hoverinfo": "skip",
            "type": "scatter",
        },
        {
            "x": x,
            "y": y,
            "mode": "lines+markers",
            "name": series["metric"],
            "line": {"color": "#1565c0"},
            "marker": {
                "size": 10,
                "color": [STATE_COLOURS.get(p["verdict"], STATE_COLOURS[None]) for p in points],
            },
            "text": [
                f"run {p['run']}: {p['value']:.3f}" + (f", {p['verdict']}" if p["verdict"] else "")
                for p in points
            ],
            "hoverinfo": "text+x",
            "type": "scatter",
        },
    ]
    if _finite(series["baseline"]) and x:
        traces.append(
            {
                "x": [x[0], x[-1]] if len(x) > 1 else [x[0], x[0]],
                "y": [series["baseline"], series["baseline"]],
                "mode": "lines",
                "name": f"baseline (run {series['baseline_run']})",
                "line": {"color": "#424242", "dash": "dash"},
                "type": "scatter",
            }
        )
    return Chart(
        id=f"score-{index}",
        title=f"{series['evalset']} · {series['strategy']}: {series['metric']} over time",
        traces=traces,
        layout={"yaxis": {"title": series["metric"]}, "xaxis": {"title": "run finished (UTC)"}},
    )


def challenger_chart(challengers: list[dict[str, Any]]) -> Chart | None:
    """Each challenger minus the fine-tune (points), with its 95% interval."""
    rows = [c for c in challengers if isinstance(c.get("vs_finetune"), dict)]
    if not rows:
        return None
    labels = [f"{c['release']} · {c['strategy']} · {c['evalset']}" for c in rows]
    deltas = [100 * c["vs_finetune"]["delta"] for c in rows]
    return Chart(
        id="challengers",
        title="Challengers minus the fine-tune (points, 95% interval)",
        traces=[
            {
                "x": deltas,
                "y": labels,
                "mode": "markers",
                "type": "scatter",
                "marker": {"size": 12, "color": ["#2e7d32" if d > 0 else "#c62828" for d in deltas]},
                "error_x": {
                    "type": "data",
                    "symmetric": False,
                    "array": [
                        100 * c["vs_finetune"]["ci_high"] - d for c, d in zip(rows, deltas, strict=True)
                    ],
                    "arrayminus": [
                        d - 100 * c["vs_finetune"]["ci_low"] for c, d in zip(rows, deltas, strict=True)
                    ],
                },
                "name": "challenger - fine-tune",
            }
        ],
        layout={
            "xaxis": {"title": "points (challenger minus fine-tune)", "zeroline": True},
            "yaxis": {"automargin": True},
            "height": 140 + 50 * len(rows),
        },
    )


def cost_chart(costs: dict[str, Any] | None) -> Chart | None:
    """What each option costs a month, inference and upkeep stacked; ruled-out options in grey."""
    options = list(((costs or {}).get("options") or {}).values())
    if not options:
        return None
    currency = costs.get("currency", "") if costs else ""
    labels = [
        f"{o['option']}: {o['label']}" + ("" if o.get("qualifies", True) else " (ruled out)") for o in options
    ]
    return Chart(
        id="costs",
        title=f"Cost options a month ({currency}), at {costs.get('requests_per_day', 0):,.0f} requests a day"
        if costs
        else "Cost options",
        traces=[
            {
                "x": [o["inference_per_month"] for o in options],
                "y": labels,
                "orientation": "h",
                "type": "bar",
                "name": "inference",
                "marker": {"color": ["#1565c0" if o.get("qualifies", True) else "#bdbdbd" for o in options]},
            },
            {
                "x": [o["upkeep_per_month"] for o in options],
                "y": labels,
                "orientation": "h",
                "type": "bar",
                "name": "upkeep (re-trains)",
                "marker": {"color": ["#90caf9" if o.get("qualifies", True) else "#e0e0e0" for o in options]},
            },
        ],
        layout={
            "barmode": "stack",
            "xaxis": {"title": f"{currency} a month"},
            "yaxis": {"automargin": True},
            "height": 140 + 50 * len(options),
        },
    )


def drift_chart(drift: list[dict[str, Any]]) -> Chart | None:
    """The input drift score over time per source, with the bar it is judged against."""
    traces: list[dict[str, Any]] = []
    by_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for finding in drift:
        if _finite(finding["score"]):
            by_source[finding["source"]].append(finding)
    for source, findings in sorted(by_source.items()):
        x = [_iso(f["at"]) for f in findings]
        traces.append(
            {
                "x": x,
                "y": [f["score"] for f in findings],
                "mode": "lines+markers",
                "type": "scatter",
                "name": f"{source}: drift score",
                "marker": {"size": 10, "color": ["#c62828" if f["drifted"] else "#2e7d32" for f in findings]},
            }
        )
        bars = [f["threshold"] for f in findings]
        if all(_finite(b) for b in bars):
            traces.append(
                {
                    "x": x,
                    "y": bars,
                    "mode": "lines",
                    "type": "scatter",
                    "name": f"{source}: bar",
                    "line": {"dash": "dash", "color": "#424242"},
                }
            )
    if not traces:
        return None
    return Chart(
        id="drift",
        title="Input drift score over time (domain classifier ROC AUC; red: drifted)",
        traces=traces,
        layout={"yaxis": {"title": "score"}, "xaxis": {"title": "checked (UTC)"}},
    )


def charts(report: Report) -> list[Chart]:
    """Every chart of the page, in page order."""
    found = [score_chart(i, s) for i, s in enumerate(report.series)]
    found += [c for c in (challenger_chart(report.challengers), cost_chart(report.costs)) if c is not None]
    drift = drift_chart(report.drift)
    return found + ([drift] if drift is not None else [])


# --- the page -------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _num(value: Any, spec: str = ".3f") -> str:
    return format(value, spec) if _finite(value) else "-"


def _points(value: Any) -> str:
    return f"{100 * value:+.1f}" if _finite(value) else "-"


def _table(columns: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _chart_div(chart: Chart | None) -> str:
    if chart is None:
        return ""
    return f'<div class="chart" id="{_e(chart.id)}"></div>'


def _state(state: Any) -> str:
    colour = STATE_COLOURS.get(state, STATE_COLOURS[None])
    return f'<span class="state" style="background:{colour}">{_e(state)}</span>'


def render_html(report: Report) -> str:
    """The page: self-contained HTML with Plotly's JavaScript inlined (no network needed to open it)."""
    from plotly.offline import get_plotlyjs

    all_charts = charts(report)
    by_id = {c.id: c for c in all_charts}
    parts: list[str] = []
    rec = report.recommendation
    if rec is not None:
        reasons = "".join(f"<li>{_e(r)}</li>" for r in rec["reasons"])
        parts.append(
            f'<section id="recommendation"><h2>Recommendation: <span class="action">{_e(rec["action"].upper())}'
            f"</span></h2><ul>{reasons}</ul></section>"
        )
    else:
        parts.append('<section id="recommendation"><h2>Recommendation</h2><p>none recorded</p></section>')

    parts.append("<section><h2>Score over time</h2>")
    parts.append(
        '<p class="note">The line is each run\'s score; the band is its 95% confidence interval '
        "(± 1.96 standard errors); the dashed line is the pinned baseline. Markers: "
        + " ".join(_state(s) for s in ("ok", "suspect", "regressed", "refused"))
        + " verdict against the baseline; blue: no verdict.</p>"
    )
    for i in range(len(report.series)):
        parts.append(_chart_div(by_id.get(f"score-{i}")))
    if not report.series:
        parts.append("<p>no runs recorded</p>")
    parts.append("</section>")

    parts.append("<section><h2>Verdicts against the baseline</h2>")
    if report.verdicts:
        parts.append(
            _table(
                [
                    "eval set",
                    "strategy",
                    "metric",
                    "verdict",
                    "change (points)",
                    "95% CI",
                    "p",
                    "run",
                    "reason",
                ],
                [
                    [
                        _e(v["evalset"]),
                        _e(v["strategy"]),
                        _e(v["metric"]),
                        _state(v["state"]),
                        _points(v["delta"]),
                        f"{_points(v['ci_low'])} to {_points(v['ci_high'])}",
                        _num(v["p_value"], ".3g"),
                        _e(v["run"]),
                        _e(v["reason"]),
                    ]
                    for v in report.verdicts
                ],
            )
        )
    else:
        parts.append("<p>no verdicts yet (pin a baseline: <code>monitor baseline pin</code>)</p>")
    parts.append("</section>")

    if report.challengers:
        parts.append("<section><h2>Challengers against the fine-tune</h2>")
        parts.append(_chart_div(by_id.get("challengers")))
        parts.append(
            _table(
                [
                    "release",
                    "strategy",
                    "eval set",
                    "challenger",
                    "fine-tune",
                    "difference (points)",
                    "95% CI",
                ],
                [
                    [
                        _e(c.get("release")),
                        _e(c.get("strategy")),
                        _e(c.get("evalset")),
                        _num(c.get("challenger_score")),
                        _num(c.get("finetune_score")),
                        _points((c.get("vs_finetune") or {}).get("delta")),
                        f"{_points((c.get('vs_finetune') or {}).get('ci_low'))} to "
                        f"{_points((c.get('vs_finetune') or {}).get('ci_high'))}",
                    ]
                    for c in report.challengers
                ],
            )
        )
        parts.append("</section>")

    costs = report.costs
    if costs and costs.get("options"):
        currency = costs.get("currency", "")
        parts.append("<section><h2>Cost options</h2>")
        parts.append(_chart_div(by_id.get("costs")))
        parts.append(
            _table(
                [
                    "option",
                    "serves",
                    "inference a month",
                    "upkeep a month",
                    "total a month",
                    "one-time",
                    "quality",
                ],
                [
                    [
                        _e(o["option"])
                        + (" <b>(cheapest)</b>" if o["option"] == costs.get("cheapest") else ""),
                        _e(o["label"]),
                        f"{o['inference_per_month']:,.0f} {_e(currency)}",
                        f"{o['upkeep_per_month']:,.0f} {_e(currency)}",
                        f"<b>{o['total_per_month']:,.0f} {_e(currency)}</b>",
                        f"{o['one_time']:,.0f} {_e(currency)}",
                        _e(o.get("condition") or "-")
                        + ("" if o.get("qualifies", True) else " <b>(ruled out)</b>"),
                    ]
                    for o in costs["options"].values()
                ],
            )
        )
        sentences = " ".join(costs.get("sentences") or [])
        if sentences:
            parts.append(f"<p>{_e(sentences)}</p>")
        parts.append("</section>")

    parts.append("<section><h2>Newly broken items</h2>")
    if report.broken:
        for group in report.broken:
            shown = len(group["items"])
            more = f" (the first {shown} shown)" if group["count"] > shown else ""
            parts.append(
                f"<h3>{_e(group['evalset'])} · {_e(group['strategy'])}: {group['count']} items right in the "
                f"baseline (run {_e(group['baseline_run'])}) and wrong in run {_e(group['run'])}{more}</h3>"
            )
            parts.append(
                _table(
                    ["item", "expected", "baseline's output", "output now"],
                    [
                        [
                            _e(i["item"]),
                            f"<code>{_e(json.dumps(i['target'], default=json_default))}</code>",
                            f"<code>{_e(i['baseline_output'])}</code>",
                            f"<code>{_e(i['output'])}</code>",
                        ]
                        for i in group["items"]
                    ],
                )
            )
    else:
        parts.append("<p>none since the baseline</p>")
    parts.append("</section>")

    parts.append("<section><h2>Input drift</h2>")
    if report.drift:
        parts.append(_chart_div(by_id.get("drift")))
        last = report.drift[-1]
        parts.append(
            f"<p>Newest check ({_e(_iso(last['at']))}, {_e(last['source'])}): {_e(last['state'])}, score "
            f"{_num(last['score'])} against the bar {_num(last['threshold'])}. {_e(last['reason'])}</p>"
        )
    else:
        parts.append("<p>no input drift checks recorded (a <code>drift:</code> section enables them)</p>")
    parts.append("</section>")

    specs = json.dumps(
        [{"id": c.id, "title": c.title, "traces": c.traces, "layout": c.layout} for c in all_charts],
        default=json_default,
    ).replace("</", "<\\/")
    title = f"{report.model}: model-aging-monitor report"
    return _PAGE.format(
        title=_e(title),
        model=_e(report.model),
        generated=_e(report.generated_at.strftime("%Y-%m-%d %H:%M UTC")),
        body="\n".join(parts),
        plotly=get_plotlyjs().replace("</script", "<\\/script"),
        specs=specs,
    )


def write_report(
    store: Store, cfg: MonitorConfig | None, model: str, output: Path, *, now: datetime
) -> Report:
    """Gather the report of ``model`` and write its page to ``output`` (the folder must exist)."""
    from monitor.errors import InputError

    if not output.parent.is_dir():
        raise InputError(f"--output {output}: folder {output.parent} does not exist")
    report = gather_report(store, cfg, model, now=now)
    output.write_text(render_html(report), encoding="utf-8")
    return report


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 1em 2em; color: #212121; }}
h1 {{ margin-bottom: 0; }} .sub {{ color: #616161; margin-top: 0.2em; }}
section {{ margin-top: 1.5em; }}
table {{ border-collapse: collapse; width: 100%; font-size: 0.9em; }}
th, td {{ border-bottom: 1px solid #e0e0e0; padding: 4px 6px; text-align: left; vertical-align: top; }}
th {{ background: #f5f5f5; }}
code {{ white-space: pre-wrap; word-break: break-word; }}
.chart {{ width: 100%; }}
.state {{ color: white; padding: 1px 6px; border-radius: 3px; font-size: 0.85em; }}
.action {{ color: #1565c0; }} .note {{ color: #616161; font-size: 0.9em; }}
#report-errors {{ color: #c62828; }}
</style>
<script>
window.reportErrors = [];
window.addEventListener("error", function (e) {{ window.reportErrors.push(String(e.message)); }});
</script>
<script>{plotly}</script>
</head>
<body>
<h1>{model}</h1>
<p class="sub">model-aging-monitor report, generated {generated}</p>
{body}
<pre id="report-errors"></pre>
<script>
(function () {{
  var specs = {specs};
  var pending = specs.length;
  function done() {{
    pending -= 1;
    if (pending <= 0) {{
      document.body.setAttribute("data-charts-done", String(specs.length));
      document.getElementById("report-errors").textContent = window.reportErrors.join("\\n");
    }}
  }}
  if (!pending) {{ done(); }}
  specs.forEach(function (spec) {{
    var div = document.getElementById(spec.id);
    if (!div) {{ window.reportErrors.push("no element for chart " + spec.id); done(); return; }}
    var layout = Object.assign({{title: {{text: spec.title}}, margin: {{t: 50, r: 20}},
                                 legend: {{orientation: "h"}}}}, spec.layout);
    try {{
      Plotly.newPlot(div, spec.traces, layout, {{displayModeBar: false, responsive: true}})
        .then(function () {{
          div.setAttribute("data-points", String(div.querySelectorAll(".point, .js-line").length));
          done();
        }}, function (err) {{ window.reportErrors.push(String(err)); done(); }});
    }} catch (err) {{ window.reportErrors.push(String(err)); done(); }}
  }});
}})();
</script>
</body>
</html>
"""
