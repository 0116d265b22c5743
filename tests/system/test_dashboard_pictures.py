"""Pictures of the Grafana dashboards from real data: a story store scraped by a real Prometheus.

A fine-tune's nights are written through the store one after another while Debian's ``prometheus``
scrapes the monitor's ``/metrics`` every second (the story in compressed time: a night is a few
seconds), then ``grafana/render_panels.py`` runs every dashboard panel's query on that Prometheus,
draws it with Plotly and has headless Chromium take the screenshot.  Each page must draw every
panel without an error, and the panels that read the story must have data.  With
``MONITOR_DASHBOARD_PICTURES=FOLDER`` the PNGs are kept there.  (The pictures docs/dashboards.md shows
come from the demo's own daemon instead: ``render_panels.py --scrape``, as that page says.)
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from prometheus_client import CollectorRegistry

from monitor.api.server import HttpServer, MonitorApp
from monitor.evals.results import ItemResult
from monitor.exporters import BaselineValue, StoreCollector
from monitor.store import Store, utcnow
from monitor.store.tables import DriftRecord, VerdictRecord
from tests.helpers.prom import PrometheusServer, require_binary, start_prometheus

ROOT = Path(__file__).resolve().parents[2]
MODEL = "ticket-router"
NIGHTS = 6
ITEMS = 40
PICTURES_ENV = "MONITOR_DASHBOARD_PICTURES"


def load_renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_panels", ROOT / "grafana" / "render_panels.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("render_panels", module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def routing_score(night: int) -> float:
    return 0.95 - 0.06 * max(0, night - 2)


def tell_night(store: Store, night: int, first_runs: dict[str, int]) -> None:
    """One night of the fine-tune: a run per eval set, verdicts against night 0, a drift check."""
    model = store.upsert_model(MODEL, kind="hf", base="base-v1", adapter="lora-v1")
    assert model.id is not None
    for evalset, value in (("ticket-routing", routing_score(night)), ("ticket-triage", 0.975)):
        version = store.ensure_evalset_version(
            evalset, "v1", task="multiple_choice", path=evalset, item_count=ITEMS
        )
        run = store.start_run(
            model=model,
            evalset=version,
            strategy="zero-shot",
            fewshot_k=0,
            settings_digest="d1",
            settings={},
            trigger="schedule",
            items_total=ITEMS,
            model_fingerprint="sha256:abc",
        )
        assert run.id is not None
        right = round(value * ITEMS)
        store.add_item_results(
            run.id,
            [ItemResult(f"item-{i}", "billing", "billing", correct=i < right) for i in range(ITEMS)],
        )
        stderr = (value * (1 - value) / ITEMS) ** 0.5
        store.finish_run(run.id, status="succeeded", metrics={"acc": {"value": value, "stderr": stderr}})
        if night == 0:
            first_runs[evalset] = run.id
            continue
        delta = value - 0.95 if evalset == "ticket-routing" else 0.0
        state = "ok" if delta > -0.05 else ("suspect" if night == 3 else "regressed")
        store.add_verdicts(
            [
                VerdictRecord(
                    run_id=run.id,
                    model_id=model.id,
                    evalset_name=evalset,
                    strategy="zero-shot",
                    metric="acc",
                    baseline_run_id=first_runs[evalset],
                    mode="paired",
                    delta=delta,
                    ci_low=delta - 0.05,
                    ci_high=delta + 0.05,
                    p_value=0.5 if state == "ok" else 0.001,
                    state=state,
                    reason=f"{delta * 100:+.1f} points against the baseline",
                    details={"newly_broken": max(0, round(0.95 * ITEMS) - right)},
                    created_at=utcnow(),
                )
            ]
        )
    score = 0.5 + 0.05 * night
    store.add_findings(
        [
            DriftRecord(
                model_id=model.id,
                kind="input",
                source="traffic",
                score=score,
                threshold=0.6,
                p_value=0.01 if score > 0.6 else 0.5,
                drifted=score > 0.6,
                state="drifted" if score > 0.6 else "ok",
                reason="domain classifier AUC",
                details={},
                created_at=utcnow(),
            )
        ]
    )
    if night >= 4:
        store.add_recommendation(
            model.id,
            action="retrain" if night == NIGHTS - 1 else "keep",
            summary="ticket-routing regressed" if night == NIGHTS - 1 else "within its baseline",
            reasons=["ticket-routing regressed: -18.0 points (95% CI -23.0 to -13.0)"],
            evidence={},
        )


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrometheusServer, float, float]]:
    require_binary("prometheus")
    folder = tmp_path_factory.mktemp("pictures")
    store = Store.open(f"sqlite:///{folder / 'monitor.db'}")
    registry = CollectorRegistry(auto_describe=False)
    baselines = [
        BaselineValue(MODEL, evalset, "zero-shot", "acc", value, (value * (1 - value) / ITEMS) ** 0.5)
        for evalset, value in (("ticket-routing", 0.95), ("ticket-triage", 0.975))
    ]
    registry.register(StoreCollector(store, baselines=lambda: baselines))
    http = HttpServer(MonitorApp(registry, store), "127.0.0.1", 0)
    http.start()
    host, port = http.address
    prom = start_prometheus(folder / "prometheus", [f"{host}:{port}"])
    try:
        first_runs: dict[str, int] = {}
        start = time.time()
        for night in range(NIGHTS):
            tell_night(store, night, first_runs)
            value = routing_score(night)
            prom.wait_for(
                f'monitor_score{{evalset="ticket-routing"}} > {value - 0.001} < {value + 0.001}',
                what=f"night {night} scraped",
            )
            time.sleep(2.5)  # a few scrapes of each night
        yield prom, start - 5, time.time()
    finally:
        prom.stop()
        http.stop()
        store.close()


def check_page(dom: str, panels: int) -> None:
    assert f'data-charts-done="{panels}"' in dom, "the page's scripts did not finish"
    errors = re.search(r'<pre id="render-errors">(.*?)</pre>', dom, re.S)
    assert errors is not None and errors.group(1).strip() == "", errors
    drawn = re.findall(
        r'<div class="chart[^"]*" id="panel-\d+"[^>]*>(.*?)(?=<div class="chart|<pre id)', dom, re.S
    )
    assert len(drawn) == panels and all("<svg" in body for body in drawn)


@pytest.mark.slow
def test_every_dashboard_panel_is_drawn_from_a_real_prometheus(
    scraped: tuple[PrometheusServer, float, float], tmp_path: Path
) -> None:
    renderer = load_renderer()
    if renderer.chromium() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    prom, start, end = scraped
    target = os.environ.get(PICTURES_ENV)
    out = Path(target) if target else tmp_path
    client = renderer.Prometheus(prom.url)
    with_data: dict[str, int] = {}
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        page, png, drawn = renderer.render_dashboard(client, path, out, start, end, step=1.0)
        dom = page.with_suffix(".dom.html").read_text()
        check_page(dom, len(drawn))
        if path.stem == "model-monitor-regression-drift":
            # tables merge their queries into named columns and show states by name, as Grafana does
            for text in (">state<", ">CI low<", ">regressed<", ">detected<"):
                assert text in dom, text
        assert png.stat().st_size > 20_000
        with_data[path.stem] = sum(p.points > 0 for p in drawn)
        if target:
            page.with_suffix(".dom.html").unlink()
            page.unlink()
    shutil.rmtree(out / "chromium-profile", ignore_errors=True)
    # the story's dashboards draw mostly real data (run health needs a daemon: only its store panels)
    assert with_data["model-monitor-trend"] >= 4, with_data
    assert with_data["model-monitor-regression-drift"] >= 8, with_data
    assert with_data["model-monitor-overview"] >= 6, with_data
    assert with_data["model-monitor-recommendations"] >= 4, with_data
