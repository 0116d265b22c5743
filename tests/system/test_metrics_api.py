"""The Prometheus collector's values and names, promtool's verdict, and the HTTP endpoints over loopback."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from monitor.api.server import HttpServer, MonitorApp
from monitor.exporters import BaselineValue, DaemonCollector, StoreCollector
from monitor.service.daemon import Daemon, WorkItem
from monitor.store import Store, utcnow
from tests.unit.test_daemon import ScriptedBackend, make_config, pool_for


@pytest.fixture()
def running(tmp_path: Path) -> Iterator[tuple[Daemon, Store, CollectorRegistry]]:
    cfg = make_config(
        tmp_path,
        {
            "nightly": {"models": ["router"], "evalsets": ["routing"], "schedule": {"every": "6h"}},
            "broken": {"models": ["ghost"], "evalsets": ["routing"], "schedule": {"cron": "0 3 * * *"}},
        },
        items=8,
        chunk=4,
    )
    store = Store.open(cfg.database_url())
    daemon = Daemon(cfg, store, pool=pool_for(ScriptedBackend()), manual_timer=True)
    daemon.start()
    scheduled = utcnow() - timedelta(seconds=3)
    daemon.enqueue(WorkItem("nightly", "schedule", scheduled))
    daemon.enqueue(WorkItem("broken", "manual"))
    assert daemon.wait_idle(20)
    daemon.enqueue(WorkItem("nightly", "manual"))
    assert daemon.wait_idle(20)
    registry = CollectorRegistry(auto_describe=False)
    baselines = [BaselineValue("router", "routing", "zero-shot", "acc", 0.5, 0.1)]
    registry.register(StoreCollector(store, job_intervals=daemon.job_intervals, baselines=lambda: baselines))
    registry.register(DaemonCollector(daemon))
    yield daemon, store, registry
    daemon.shutdown()
    store.close()


def test_collector_values(running: tuple[Daemon, Store, CollectorRegistry]) -> None:
    _, _, registry = running
    value = registry.get_sample_value
    series = {"model": "router", "evalset": "routing", "strategy": "zero-shot", "metric": "acc"}
    # the scripted model always answers the first choice: right for a quarter of the items
    assert value("monitor_score", series) == pytest.approx(0.25)
    assert value("monitor_score_stderr", series) == pytest.approx(0.1637, abs=1e-4)
    assert value("monitor_score_items", series) == 8
    assert value("monitor_baseline_score", series) == 0.5
    assert value("monitor_baseline_score_stderr", series) == 0.1
    labels = {"model": "router", "evalset": "routing", "job": "nightly"}
    assert value("monitor_runs_total", {**labels, "status": "succeeded"}) == 2
    assert (
        value(
            "monitor_runs_total",
            {"model": "ghost", "evalset": "routing", "job": "broken", "status": "failed"},
        )
        == 1
    )
    assert value("monitor_items_evaluated_total", labels) == 16
    assert value("monitor_item_errors_total", labels) == 0
    assert value("monitor_tokens_total", {**labels, "kind": "prompt"}) == 16 * 7
    assert value("monitor_run_duration_seconds_count", {"job": "nightly"}) == 2
    assert value("monitor_run_duration_seconds_count", {"job": "broken"}) == 1
    assert value("monitor_run_duration_seconds_bucket", {"job": "nightly", "le": "+Inf"}) == 2
    last = value("monitor_last_success_timestamp_seconds", {"job": "nightly"})
    assert last is not None and abs(last - time.time()) < 60
    assert value("monitor_last_success_timestamp_seconds", {"job": "broken"}) is None
    assert value("monitor_job_schedule_lag_seconds", {"job": "nightly"}) == pytest.approx(3, abs=2)
    assert value("monitor_job_interval_seconds", {"job": "nightly"}) == 6 * 3600
    assert value("monitor_job_interval_seconds", {"job": "broken"}) == 24 * 3600
    assert value("monitor_model_load_seconds", {"model": "router"}) is not None
    assert value("monitor_store_up") == 1
    assert value("monitor_scheduler_running") == 1
    assert value("monitor_runs_in_progress", {"job": "nightly"}) == 0
    assert value("monitor_runs_interrupted", {"job": "nightly"}) == 0
    # present before the first failure, so that the first one is an increase
    assert value("monitor_runs_total", {**labels, "status": "failed"}) == 0
    assert value("monitor_runs_total", {**labels, "status": "running"}) is None


def test_a_restarted_exporter_reports_the_same_values(
    running: tuple[Daemon, Store, CollectorRegistry],
) -> None:
    _, store, registry = running
    fresh = CollectorRegistry(auto_describe=False)
    fresh.register(StoreCollector(Store.open(str(store.engine.url))))
    for name, labels in [
        (
            "monitor_score",
            {"model": "router", "evalset": "routing", "strategy": "zero-shot", "metric": "acc"},
        ),
        (
            "monitor_runs_total",
            {"model": "router", "evalset": "routing", "job": "nightly", "status": "succeeded"},
        ),
        ("monitor_items_evaluated_total", {"model": "router", "evalset": "routing", "job": "nightly"}),
    ]:
        assert fresh.get_sample_value(name, labels) == registry.get_sample_value(name, labels)


def test_a_model_removed_from_the_config_stops_exporting_its_state_but_keeps_its_counters(
    running: tuple[Daemon, Store, CollectorRegistry],
) -> None:
    _, store, _ = running
    configured: set[str] = {"router"}
    baselines = [BaselineValue("router", "routing", "zero-shot", "acc", 0.5, 0.1)]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, baselines=lambda: baselines, models=lambda: configured))
    series = {"model": "router", "evalset": "routing", "strategy": "zero-shot", "metric": "acc"}
    runs = {"model": "router", "evalset": "routing", "job": "nightly", "status": "succeeded"}
    assert registry.get_sample_value("monitor_score", series) == pytest.approx(0.25)
    configured.clear()  # router is taken out of monitor.yaml (read at every scrape)
    assert registry.get_sample_value("monitor_score", series) is None
    assert registry.get_sample_value("monitor_baseline_score", series) is None
    assert registry.get_sample_value("monitor_runs_total", runs) == 2


def test_labels_are_bounded(running: tuple[Daemon, Store, CollectorRegistry]) -> None:
    _, _, registry = running
    allowed = {"model", "evalset", "strategy", "metric", "job", "status", "kind", "version", "le"}
    for family in registry.collect():
        for sample in family.samples:
            assert set(sample.labels) <= allowed, (sample.name, sample.labels)


def test_store_down_is_reported_not_raised(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'm.db'}")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    (tmp_path / "m.db").unlink()
    (tmp_path / "m.db").mkdir()  # the file is gone and cannot come back: queries fail
    store.engine.dispose()
    assert registry.get_sample_value("monitor_store_up") == 0


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian package 'prometheus')"
)
def test_promtool_check_metrics_is_clean(running: tuple[Daemon, Store, CollectorRegistry]) -> None:
    _, _, registry = running
    text = generate_latest(registry)
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert proc.stdout.decode().strip() == "" and proc.stderr.decode().strip() == ""


@pytest.fixture()
def server(running: tuple[Daemon, Store, CollectorRegistry]) -> Iterator[str]:
    daemon, store, registry = running
    http = HttpServer(MonitorApp(registry, store, daemon, token="s3cret"), "127.0.0.1", 0)
    http.start()
    yield http.url
    http.stop()


def test_http_endpoints_and_the_api_token(
    server: str, running: tuple[Daemon, Store, CollectorRegistry]
) -> None:
    daemon, store, _ = running
    with httpx.Client(base_url=server, timeout=10) as client:
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        assert (
            'monitor_score{evalset="routing",metric="acc",model="router",strategy="zero-shot"} 0.25'
            in metrics.text
        )
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"ready": True, "checks": {"store": True, "scheduler": True}}
        assert client.get("/api/v1/status").status_code == 401
        denied = client.get("/api/v1/runs", headers={"Authorization": "Bearer wrong"})
        assert denied.status_code == 401 and denied.headers["www-authenticate"].startswith("Bearer")
        auth = {"Authorization": "Bearer s3cret"}
        status = client.get("/api/v1/status", headers=auth).json()
        assert {s["model"] for s in status["series"]} == {"router", "ghost"}
        assert set(status["jobs"]) == {"nightly", "broken"}
        runs = client.get("/api/v1/runs", params={"model": "router", "limit": 1}, headers=auth).json()["runs"]
        assert len(runs) == 1 and runs[0]["status"] == "succeeded" and runs[0]["metrics"]["acc"]["n"] == 8
        assert client.get("/api/v1/runs", params={"limit": "x"}, headers=auth).status_code == 400
        items = client.get(f"/api/v1/runs/{runs[0]['id']}/items", headers=auth).json()["items"]
        assert len(items) == 8 and all(i["prompt"] and "prediction" in i for i in items)
        assert client.get("/api/v1/runs/99999/items", headers=auth).status_code == 404
        fires = client.get("/api/v1/fires", params={"job": "nightly"}, headers=auth).json()["fires"]
        assert [(f["trigger"], f["status"], f["planned"]) for f in fires] == [
            ("manual", "done", ["router/routing/zero-shot"]),
            ("schedule", "done", ["router/routing/zero-shot"]),
        ]
        assert all(f["after_job_at"] is not None for f in fires)
        assert client.get("/api/v1/recommendations", headers=auth).json() == {"recommendations": []}
        assert client.post("/api/v1/jobs/nope/run", headers=auth).status_code == 404
        accepted = client.post("/api/v1/jobs/nightly/run", headers=auth)
        assert accepted.status_code == 202 and accepted.json()["job"] == "nightly"
        assert daemon.wait_idle(20)
        assert len(store.runs(model="router")) == 3
        assert client.get("/nope").status_code == 404
    daemon.request_stop()
    with httpx.Client(base_url=server, timeout=10) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["scheduler"] is False
