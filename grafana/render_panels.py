"""Pictures of the Grafana dashboards from a real Prometheus: every panel's query run and drawn.

Grafana's own renderer needs a plugin and a browser inside Grafana; this draws the same panels
without Grafana.  Each dashboard in ``grafana/dashboards/`` becomes one HTML page of Plotly charts
(inlined, offline): its template variables take the first value Prometheus has for them, every
panel's PromQL target is run over the time range (``query_range`` for time series and state
timelines, an instant query for stats, tables and bar gauges) and drawn as the panel's kind asks,
with the panel's value mappings, units, thresholds and table transformations (``merge``,
``organize``).  Headless Chromium (Debian's ``chromium``) then takes a screenshot of each page.

From a running Prometheus::

    python grafana/render_panels.py --prometheus http://127.0.0.1:9090 --out docs/images --minutes 60

or with a Prometheus of its own (Debian's ``prometheus``, a throwaway TSDB) scraping a monitor's
``/metrics`` for ``--minutes`` first (how docs/dashboards.md's pictures of the demo's daemon are made)::

    python grafana/render_panels.py --scrape 127.0.0.1:9464 --minutes 15 --out docs/images

Either writes ``docs/images/dashboard-<name>.png`` (and the ``.html`` beside it with ``--keep-html``).
``tests/system/test_dashboard_pictures.py`` runs it on a story store scraped by a real Prometheus.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

DASHBOARDS = Path(__file__).resolve().parent / "dashboards"
#: Values for Grafana's built-in variables when a query runs outside Grafana.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*(?P<label>\w+)\s*\)\s*$", re.S)
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
#: Panel kinds drawn over time (the rest are drawn from an instant query at the end of the range).
OVER_TIME = {"timeseries", "state-timeline", "graph"}


class RenderError(RuntimeError):
    """Prometheus or Chromium could not do its part; the message says which and why."""


@dataclass
class Prometheus:
    """The few calls of Prometheus's HTTP API the pictures need."""

    url: str
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30.0))

    def _get(self, path: str, params: Mapping[str, Any]) -> Any:
        try:
            body = self.client.post(f"{self.url}{path}", data=dict(params)).json()
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            raise RenderError(f"Prometheus at {self.url}: {exc}") from exc
        if body.get("status") != "success":
            raise RenderError(f"{params.get('query', params)}: {body.get('error')}")
        return body["data"]

    def instant(self, expr: str, at: float) -> list[dict[str, Any]]:
        data = self._get("/api/v1/query", {"query": expr, "time": f"{at:.3f}"})
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def over_time(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        data = self._get(
            "/api/v1/query_range", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step}
        )
        return list(data["result"])

    def label_values(self, selector: str, label: str, start: float, end: float) -> list[str]:
        data = self._get(
            "/api/v1/series", {"match[]": selector, "start": f"{start:.3f}", "end": f"{end:.3f}"}
        )
        return sorted({s[label] for s in data if label in s})


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Grafana's template variables replaced by ``values`` (an unknown one matches anything)."""
    known = {**BUILTINS, **values}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        return known.get(name, ".*")

    return _VARIABLE.sub(replace, text)


def variable_values(
    prom: Prometheus,
    dashboard: Mapping[str, Any],
    start: float,
    end: float,
    chosen: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Each template variable's value: ``chosen``'s, else the first that Prometheus has (``.*`` when
    it has none; an empty selector for a ``query_result`` variable, which stands for a whole one)."""
    values: dict[str, str] = {}
    for variable in dashboard.get("templating", {}).get("list", []):
        name, kind = variable["name"], variable.get("type")
        if chosen and name in chosen:
            values[name] = chosen[name]
            continue
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        if kind == "query" and text.startswith("query_result("):
            found = query_result_options(
                prom, variable, substitute(text[len("query_result(") : -1], values), end
            )
            values[name] = found[0] if found else ""
        elif kind == "query":
            match = _LABEL_VALUES.match(text)
            found = (
                prom.label_values(
                    substitute(match.group("selector"), values), match.group("label"), start, end
                )
                if match
                else []
            )
            values[name] = found[0] if found else ".*"
        elif kind in ("custom", "constant", "textbox", "interval"):
            current = (variable.get("current") or {}).get("value")
            values[name] = str(current if current not in (None, "", []) else text.split(",")[0]).strip()
    return values


def query_result_options(prom: Prometheus, variable: Mapping[str, Any], expr: str, at: float) -> list[str]:
    """A ``query_result(...)`` variable's options as Grafana makes them: each sample's text, regex applied."""
    regex = str(variable.get("regex") or "")
    pattern = re.compile(regex[1 : regex.rindex("/")]) if regex.startswith("/") else None
    options = []
    for sample in prom.instant(expr, at):
        labels = dict(sample["metric"])
        name = labels.pop("__name__", "")
        text = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
        text += f" {sample['value'][1]} {int(float(sample['value'][0]) * 1000)}"
        match = pattern.search(text) if pattern else None
        if pattern is None or match:
            options.append(text if match is None else (match.group(1) if match.groups() else match.group(0)))
    return sorted(set(options))


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """The dashboard's panels that query something, those inside collapsed rows included, in order."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") != "row" and panel.get("targets"):
            yield panel
        for inner in panel.get("panels", []):
            if inner.get("targets"):
                yield inner


def legend(target: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    template = target.get("legendFormat") or ""
    if template and template != "__auto":
        return _LEGEND.sub(lambda m: labels.get(m.group(1), ""), template)
    shown = {k: v for k, v in labels.items() if k not in ("__name__", "job", "instance")}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or target.get("refId", "value")


def _number(text: Any) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


#: Grafana's named colours, as its dark theme draws them.
COLOURS = {
    "green": "#73bf69",
    "red": "#f2495c",
    "orange": "#ff9830",
    "yellow": "#fade2a",
    "blue": "#5794f2",
    "purple": "#b877d9",
    "text": "#ccccdc",
    "transparent": "#181b1f",
}
PANEL = "#181b1f"


def _colour(name: str | None) -> str:
    return COLOURS.get(str(name), str(name)) if name else COLOURS["text"]


@dataclass(frozen=True)
class FieldStyle:
    """How one field (a table column, a stat's query) is shown: value mappings, unit, decimals, thresholds."""

    mappings: dict[str, tuple[str, str | None]]
    unit: str
    decimals: int | None
    thresholds: list[tuple[float | None, str]]
    colour_cells: bool = False

    def text(self, value: float | None) -> str:
        if value is None:
            return "-"
        mapped = self.mappings.get(_key(value))
        return mapped[0] if mapped else format_value(value, self.unit, self.decimals)

    def colour(self, value: float | None) -> str | None:
        """The value's colour: its mapping's, else the last threshold step at or below it."""
        if value is None:
            return None
        mapped = self.mappings.get(_key(value))
        if mapped and mapped[1]:
            return _colour(mapped[1])
        chosen = None
        for limit, colour in self.thresholds:
            if limit is None or value >= limit:
                chosen = colour
        return _colour(chosen) if chosen else None


def _key(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def format_value(value: float, unit: str = "", decimals: int | None = None) -> str:
    """A number as Grafana shows it for the few units the dashboards use."""
    if unit == "s":
        for size, name in ((86400, "day"), (3600, "hour"), (60, "min")):
            if abs(value) >= size:
                shown = value / size
                return f"{shown:.1f} {name}" + ("s" if name != "min" and round(shown, 1) != 1 else "")
        return f"{value:.0f} s"
    if unit == "percentunit":
        return f"{value * 100:.{1 if decimals is None else decimals}f}%"
    if unit == "percent":
        return f"{value:.1f}%"
    if unit.startswith("dateTime"):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value / 1000))
    if unit == "sci":
        return f"{value:.{2 if decimals is None else decimals}e}"
    if decimals is not None:
        return f"{value:.{decimals}f}"
    return f"{value:.4g}"


def _mapping_table(raw: Sequence[Mapping[str, Any]] | None) -> dict[str, tuple[str, str | None]]:
    table: dict[str, tuple[str, str | None]] = {}
    for mapping in raw or []:
        if mapping.get("type") == "value":
            for value, shown in (mapping.get("options") or {}).items():
                table[str(value)] = (str(shown.get("text", value)), shown.get("color"))
    return table


def field_style(panel: Mapping[str, Any], *, name: str | None = None, ref: str | None = None) -> FieldStyle:
    """The style of field ``name`` (a column) or of query ``ref``: the panel's defaults, then its
    overrides matching by name, by regex or by query."""
    config = panel.get("fieldConfig") or {}
    defaults = config.get("defaults") or {}
    props: dict[str, Any] = {
        "mappings": defaults.get("mappings"),
        "unit": defaults.get("unit", ""),
        "decimals": defaults.get("decimals"),
        "thresholds": defaults.get("thresholds"),
        "custom.cellOptions": (defaults.get("custom") or {}).get("cellOptions"),
    }
    for override in config.get("overrides", []):
        matcher = override.get("matcher") or {}
        kind, option = matcher.get("id"), str(matcher.get("options", ""))
        if (
            (kind == "byName" and name == option)
            or (kind == "byRegexp" and name is not None and re.search(option.strip("/"), name))
            or (kind == "byFrameRefID" and ref == option)
        ):
            for prop in override.get("properties", []):
                props[prop["id"]] = prop.get("value")
    steps = (props["thresholds"] or {}).get("steps", [])
    cells = props.get("custom.cellOptions") or {}
    return FieldStyle(
        mappings=_mapping_table(props["mappings"]),
        unit=str(props["unit"] or ""),
        decimals=props["decimals"],
        thresholds=[(step.get("value"), str(step.get("color"))) for step in steps],
        colour_cells=str(cells.get("type", "")).startswith("color"),
    )


def _base_layout(title: str, height: int, *, legend: bool) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 13}},
        "margin": {"l": 50, "r": 10, "t": 36, "b": 30},
        "height": height,
        "paper_bgcolor": PANEL,
        "plot_bgcolor": PANEL,
        "font": {"color": COLOURS["text"], "size": 11},
        "showlegend": legend,
        "legend": {"orientation": "h", "y": -0.22, "font": {"size": 10}},
    }


@dataclass
class DrawnPanel:
    """One panel as Plotly draws it: ``points`` is how many values its queries returned."""

    title: str
    kind: str
    width: int
    data: list[dict[str, Any]]
    layout: dict[str, Any]
    points: int


def _merged_table(
    panel: Mapping[str, Any], samples: Sequence[tuple[str, Mapping[str, str], float | None]]
) -> tuple[list[str], list[list[float | str | None]]]:
    """Grafana's ``merge`` then ``organize``: one row per label set, a ``Value #<ref>`` column per
    query, columns left out, ordered and renamed as the panel says."""
    organize: dict[str, Any] = {}
    for step in panel.get("transformations", []):
        if step.get("id") == "organize":
            organize = step.get("options") or {}
    rows: dict[tuple[tuple[str, str], ...], dict[str, float | str | None]] = {}
    columns: list[str] = []
    for ref, labels, value in samples:
        shown = {k: v for k, v in labels.items() if k != "__name__"}
        key = tuple(sorted(shown.items()))
        if key not in rows:  # as Grafana's merge: a row that agrees on every label both have is joined
            key = next(
                (
                    k
                    for k, row in rows.items()
                    if all(row.get(n, v) == v for n, v in shown.items())
                    and all(shown.get(n, v) == v for n, v in k)
                ),
                key,
            )
        row = rows.setdefault(key, dict(shown))
        row.update(shown)
        row[f"Value #{ref}"] = value
        for column in [*shown, f"Value #{ref}"]:
            if column not in columns:
                columns.append(column)
    excluded = {k for k, v in (organize.get("excludeByName") or {}).items() if v}
    order = organize.get("indexByName") or {}
    kept = [c for c in columns if c not in excluded]
    kept.sort(key=lambda c: (order.get(c, 1000), columns.index(c)))
    table = [[row.get(c) for c in kept] for row in rows.values()]
    renamed = [str((organize.get("renameByName") or {}).get(c) or c) for c in kept]
    return renamed, table


def _table(
    panel: Mapping[str, Any],
    title: str,
    samples: list[tuple[str, Mapping[str, str], float | None]],
    targets: Sequence[Mapping[str, Any]],
    width: int = 24,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if any(step.get("id") == "merge" for step in panel.get("transformations", [])):
        names, rows = _merged_table(panel, samples)
    else:
        names = ["series", "value"]
        rows = [
            [legend(next(t for t in targets if t.get("refId") == ref), labels), value]
            for ref, labels, value in samples
        ]
    styles = [field_style(panel, name=name) for name in names]
    cells: list[list[str]] = []
    fills: list[list[str]] = []
    for i, style in enumerate(styles):
        column = [row[i] for row in rows]
        numeric = all(v is None or isinstance(v, float) for v in column) and any(
            isinstance(v, float) for v in column
        )
        if numeric:
            cells.append([style.text(v) for v in column])  # type: ignore[arg-type]
            fills.append([(style.colour(v) or PANEL) if style.colour_cells else PANEL for v in column])  # type: ignore[arg-type]
        else:
            cells.append(["" if v is None else str(v) for v in column])
            fills.append([PANEL] * len(column))
    if not rows:
        names, cells, fills = ["no data"], [[""]], [[PANEL]]
    # a cell wraps (two lines) where its text is wider than its column's share of the panel
    column_px = width / 24 * 1500 / max(1, len(names))
    wraps = any(len(text) * 6.5 > column_px - 12 for column in cells for text in column)
    row_height = 42 if wraps else 24
    layout = _base_layout(title, min(560, 90 + row_height * max(1, len(rows))), legend=False)
    layout["margin"] = {"l": 8, "r": 8, "t": 36, "b": 8}
    data = [
        {
            "type": "table",
            "header": {"values": names, "fill": {"color": "#22252b"}, "align": "left", "font": {"size": 11}},
            "cells": {"values": cells, "fill": {"color": fills}, "align": "left", "height": 22},
        }
    ]
    return data, layout


def _stat(
    panel: Mapping[str, Any], title: str, width: int, tiles: list[tuple[str, str, float | None]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Stat tiles: one per series (value, and its name where the panel shows names or has several)."""
    options = panel.get("options") or {}
    background = options.get("colorMode", "value") == "background"
    only_name = options.get("textMode") == "name"  # e.g. the version, carried by a label
    named = not only_name and (options.get("textMode") == "value_and_name" or len(tiles) > 1)
    if not tiles:
        tiles = [("", "A", None)]
    per_row = max(1, min(len(tiles), width // 6 if width >= 12 else 1))
    rows = -(-len(tiles) // per_row)
    tile_height = 110 if named else 100
    layout = _base_layout(title, 40 + rows * tile_height, legend=False)
    layout["margin"] = {"l": 6, "r": 6, "t": 36, "b": 6}
    layout["xaxis"] = {"visible": False, "range": [0, per_row], "fixedrange": True}
    layout["yaxis"] = {"visible": False, "range": [rows, 0], "fixedrange": True}
    shapes, notes = [], []
    for i, (name, ref, value) in enumerate(tiles):
        style = field_style(panel, ref=ref)
        x, y = i % per_row, i // per_row
        colour = style.colour(value)
        fill = colour if background and colour and colour != COLOURS["text"] else "#22252b"
        text_colour = "#ffffff" if fill != "#22252b" else (colour or COLOURS["text"])
        shapes.append(
            {
                "type": "rect",
                "x0": x + 0.02,
                "x1": x + 0.98,
                "y0": y + 0.04,
                "y1": y + 0.96,
                "fillcolor": fill,
                "line": {"width": 0},
                "layer": "below",
            }
        )
        shown = "no data" if value is None else (name if only_name and name else style.text(value))
        notes.append(
            {
                "x": x + 0.5,
                "y": y + (0.42 if named else 0.5),
                "text": html.escape(shown),
                "showarrow": False,
                "font": {"size": 30 if len(shown) < 12 else 18, "color": text_colour},
            }
        )
        if named and name:
            notes.append(
                {
                    "x": x + 0.5,
                    "y": y + 0.8,
                    "text": html.escape(name),
                    "showarrow": False,
                    "font": {"size": 11, "color": text_colour},
                }
            )
    layout["shapes"], layout["annotations"] = shapes, notes
    # an invisible point so Plotly draws the axes area the tiles sit in
    return [
        {
            "type": "scatter",
            "mode": "markers",
            "x": [0],
            "y": [0],
            "marker": {"opacity": 0},
            "hoverinfo": "skip",
        }
    ], layout


def draw_panel(
    prom: Prometheus,
    panel: Mapping[str, Any],
    values: Mapping[str, str],
    start: float,
    end: float,
    step: float,
) -> DrawnPanel:
    """Run ``panel``'s targets on ``prom`` and draw them as the panel's kind asks."""
    kind = str(panel.get("type", "table"))
    title = substitute(str(panel.get("title", "")), values)
    width = int((panel.get("gridPos") or {}).get("w", 12))
    targets = [t for t in panel.get("targets", []) if t.get("expr")]
    if kind in OVER_TIME:
        style = field_style(panel)
        layout = _base_layout(title, 280, legend=True)
        data: list[dict[str, Any]] = []
        points = 0
        for target in targets:
            for series in prom.over_time(substitute(target["expr"], values), start, end, step):
                xs = [time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(t))) for t, _ in series["values"]]
                ys = [_number(v) for _, v in series["values"]]
                points += sum(y is not None for y in ys)
                data.append(
                    {
                        "type": "scatter",
                        "mode": "lines",
                        "line": {"shape": "hv" if kind == "state-timeline" else "linear", "width": 2},
                        "x": xs,
                        "y": ys,
                        "name": legend(target, series["metric"]),
                    }
                )
        layout["xaxis"] = {"gridcolor": "#2c3235", "type": "date"}
        layout["yaxis"] = {"gridcolor": "#2c3235", "automargin": True}
        if style.unit == "percentunit":
            layout["yaxis"]["tickformat"] = ".0%"
        elif style.unit == "s":
            layout["yaxis"]["ticksuffix"] = " s"
        if style.mappings:  # a state over time: its states' names on the axis
            known = sorted(style.mappings, key=float)
            layout["yaxis"].update(
                tickvals=[float(v) for v in known],
                ticktext=[style.mappings[v][0] for v in known],
                range=[float(known[0]) - 0.3, float(known[-1]) + 0.3],
            )
        if not points:
            _no_data(layout)
        return DrawnPanel(title, kind, width, data, layout, points)
    samples: list[tuple[str, Mapping[str, str], float | None]] = []
    for target in targets:
        for sample in prom.instant(substitute(target["expr"], values), end):
            samples.append((str(target.get("refId", "A")), sample["metric"], _number(sample["value"][1])))
    points = sum(v is not None for _, _, v in samples)
    by_ref = {str(t.get("refId", "A")): t for t in targets}
    if kind == "stat":
        tiles = [(legend(by_ref[ref], labels), ref, value) for ref, labels, value in samples]
        data, layout = _stat(panel, title, width, tiles)
    elif kind == "bargauge":
        style = field_style(panel)
        layout = _base_layout(title, 80 + 34 * max(1, len(samples)), legend=False)
        layout["yaxis"] = {"automargin": True}
        scale, suffix = 1.0, ""
        if style.unit == "s":  # seconds on the axis in the unit that suits the largest
            top = max((abs(v) for _, _, v in samples if v is not None), default=0.0)
            scale, suffix = next(
                (
                    (size, name)
                    for size, name in ((86400, " days"), (3600, " h"), (60, " min"))
                    if top >= 2 * size
                ),
                (1.0, " s"),
            )
        layout["xaxis"] = {"gridcolor": "#2c3235", "ticksuffix": suffix}
        data = [
            {
                "type": "bar",
                "orientation": "h",
                "x": [None if v is None else v / scale for _, _, v in samples],
                "y": [legend(by_ref[ref], labels) for ref, labels, _ in samples],
                "text": [style.text(v) for _, _, v in samples],
                "textposition": "auto",
                "marker": {"color": COLOURS["green"]},
            }
        ]
        if not samples:
            _no_data(layout)
    else:
        data, layout = _table(panel, title, samples, targets, width)
    return DrawnPanel(title, kind, width, data, layout, points)


def _no_data(layout: dict[str, Any]) -> None:
    """An empty chart says so, as Grafana's do, instead of drawing empty axes."""
    layout["xaxis"] = {"visible": False}
    layout["yaxis"] = {"visible": False}
    layout["showlegend"] = False
    layout["annotations"] = [
        {
            "text": "no data",
            "showarrow": False,
            "xref": "paper",
            "yref": "paper",
            "x": 0.5,
            "y": 0.5,
            "font": {"size": 16, "color": "#8e8e8e"},
        }
    ]


def dashboard_page(title: str, drawn: Sequence[DrawnPanel], plotly_js: str, note: str = "") -> str:
    """One self-contained HTML page: the panels in Grafana's 24-column grid, drawn by Plotly."""
    divs = []
    for i, panel in enumerate(drawn):
        share = max(1, min(24, panel.width)) / 24 * 100
        divs.append(
            f'<div class="chart" id="panel-{i}" data-kind="{html.escape(panel.kind)}" '
            f'style="width:calc({share:.3f}% - 8px)"></div>'
        )
    spec = json.dumps([{"data": p.data, "layout": p.layout, "points": p.points} for p in drawn])
    inlined = plotly_js.replace("</script", "<\\/script")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{background:#111217;color:#ccccdc;font-family:sans-serif;margin:12px}}
h1{{font-size:18px;margin:4px 0}} p{{font-size:12px;margin:2px 0 10px}}
#grid{{display:flex;flex-wrap:wrap;gap:8px}} .chart{{background:#181b1f;border:1px solid #2c3235}}</style>
<script>{inlined}</script></head>
<body><h1>{html.escape(title)}</h1><p>{html.escape(note)}</p><div id="grid">{"".join(divs)}</div>
<pre id="render-errors"></pre>
<script>
const panels = {spec};
const errors = [];
Promise.all(panels.map((p, i) => {{
  const div = document.getElementById("panel-" + i);
  div.setAttribute("data-points", p.points);
  return Plotly.newPlot(div, p.data, p.layout, {{staticPlot: true, displayModeBar: false}})
    .catch(e => errors.push("panel " + i + ": " + e));
}})).then(() => {{
  document.getElementById("render-errors").textContent = errors.join("\\n");
  document.body.setAttribute("data-charts-done", String(panels.length));
}});
</script></body></html>
"""


def chromium() -> str | None:
    """Debian's chromium, or another Chromium on PATH."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(page: Path, png: Path, *, width: int = 1600, height: int = 1400) -> str:
    """Open ``page`` in headless Chromium offline, save ``png``, and return the DOM after the scripts ran."""
    binary = chromium()
    if binary is None:
        raise RenderError("no chromium on the PATH (apt-get install chromium)")
    base = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={page.parent / 'chromium-profile'}",
        "--proxy-server=127.0.0.1:9",  # offline: any network fetch fails
        "--virtual-time-budget=15000",
        f"--window-size={width},{height}",
    ]
    try:
        dom = subprocess.run(
            [*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
        )
        png.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [*base, "--hide-scrollbars", f"--screenshot={png}", page.as_uri()],
            capture_output=True,
            timeout=120,
            check=True,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        raise RenderError(f"chromium failed on {page}: {exc}") from exc
    return dom.stdout


def page_height(drawn: Sequence[DrawnPanel]) -> int:
    """About how tall the page draws (rows of panels filling 24 columns), so the screenshot holds it."""
    height, row_width, row_height = 70, 0, 0
    for panel in drawn:
        if row_width + panel.width > 24:
            height, row_width, row_height = height + row_height + 8, 0, 0
        row_width += panel.width
        row_height = max(row_height, int(panel.layout["height"]) + 2)
    return int((height + row_height) * 1.1) + 120  # titles, gaps and borders the estimate leaves out


def render_dashboard(
    prom: Prometheus,
    path: Path,
    out: Path,
    start: float,
    end: float,
    *,
    step: float = 0,
    note: str = "",
    chosen: Mapping[str, str] | None = None,
) -> tuple[Path, Path, list[DrawnPanel]]:
    """Draw one dashboard file: its HTML page and PNG in ``out``, and the panels as drawn."""
    from plotly.offline import get_plotlyjs

    out = out.resolve()  # chromium opens the page by a file:// URI
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    step = step or max(1.0, (end - start) / 300)
    values = variable_values(prom, dashboard, start, end, chosen)
    drawn = [draw_panel(prom, panel, values, start, end, step) for panel in panels(dashboard)]
    name = path.stem.removeprefix("model-monitor-")
    shown = ", ".join(f"{k}={v}" for k, v in values.items() if v not in (".*", ""))
    page = out / f"dashboard-{name}.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(
        dashboard_page(str(dashboard.get("title", name)), drawn, get_plotlyjs(), note or shown),
        encoding="utf-8",
    )
    png = out / f"dashboard-{name}.png"
    dom = screenshot(page, png, height=page_height(drawn))
    page.with_suffix(".dom.html").write_text(dom, encoding="utf-8")
    return page, png, drawn


@contextlib.contextmanager
def scraping(target: str, folder: Path, *, every: str = "5s", port: int = 9099) -> Iterator[Prometheus]:
    """Debian's ``prometheus`` scraping ``target`` (``host:port`` of a monitor's ``/metrics``) as the
    ``model-monitor`` job, with a throwaway TSDB in ``folder``, until the block ends."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RenderError("no prometheus on the PATH (apt-get install prometheus)")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(
        "global:\n"
        f"  scrape_interval: {every}\n"
        "scrape_configs:\n"
        "  - job_name: model-monitor\n"
        "    honor_labels: true\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n",
        encoding="utf-8",
    )
    log = (folder / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    prom = Prometheus(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if prom.client.get(f"{prom.url}/-/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RenderError(f"prometheus did not start; see {folder / 'prometheus.log'}")
            time.sleep(0.5)
        yield prom
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prometheus", help="a running Prometheus's URL, e.g. http://127.0.0.1:9090")
    source.add_argument(
        "--scrape",
        metavar="HOST:PORT",
        help="start Debian's prometheus scraping this monitor's /metrics for --minutes, then draw",
    )
    parser.add_argument("--port", type=int, default=9099, help="the port the started prometheus listens on")
    parser.add_argument("--out", type=Path, default=Path("docs/images"), help="where the PNGs go")
    parser.add_argument("--minutes", type=float, default=60.0, help="the time range, ending now")
    parser.add_argument("--dashboard", type=Path, action="append", help="one dashboard file (default: all)")
    parser.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a template variable's value (default: the first Prometheus has), e.g. --var model=ticket-router",
    )
    parser.add_argument("--keep-html", action="store_true", help="keep each page's HTML beside its PNG")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still stops its prometheus
    try:
        if args.scrape:
            with (
                tempfile.TemporaryDirectory(prefix="render-panels-") as folder,
                scraping(args.scrape, Path(folder), port=args.port) as prom,
            ):
                print(f"scraping {args.scrape} for {args.minutes:g} min ...", flush=True)
                started = time.time()
                time.sleep(args.minutes * 60)
                draw_all(prom, args, started, time.time())
        else:
            end = time.time()
            draw_all(Prometheus(args.prometheus.rstrip("/")), args, end - args.minutes * 60, end)
    except RenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    shutil.rmtree(args.out / "chromium-profile", ignore_errors=True)
    return 0


def draw_all(prom: Prometheus, args: argparse.Namespace, start: float, end: float) -> None:
    for path in args.dashboard or sorted(DASHBOARDS.glob("*.json")):
        chosen = dict(item.split("=", 1) for item in args.var)
        page, png, drawn = render_dashboard(prom, path, args.out, start, end, chosen=chosen)
        with_data = sum(p.points > 0 for p in drawn)
        print(f"{png}: {len(drawn)} panels, {with_data} with data", flush=True)
        page.with_suffix(".dom.html").unlink(missing_ok=True)
        if not args.keep_html:
            page.unlink()


if __name__ == "__main__":
    sys.exit(main())
