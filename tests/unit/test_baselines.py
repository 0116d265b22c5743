"""Baselines: pin, show, list, unpin; the file format; corrupt files; export to /metrics."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from monitor.analysis.baselines import BASELINE_FORMAT_VERSION, BaselineFiles, load_baseline
from monitor.cli import app
from monitor.exporters import StoreCollector
from monitor.exporters.metrics import baseline_values
from monitor.store import Store
from tests.unit.test_daemon import ScriptedBackend, make_config, pool_for


def recorded(tmp_path: Path) -> tuple[Path, Store]:
    from monitor.service.plan import plan_runs
    from monitor.service.runs import execute_run

    cfg = make_config(tmp_path, {"j": {"models": ["router"], "evalsets": ["routing"]}}, items=8)
    config = tmp_path / "monitor.yaml"
    config.write_text(
        f"database: {cfg.database}\nmodels:\n  router: {{base: {tmp_path / 'model'}}}\n"
        f"evalsets:\n  routing: {tmp_path / 'evals' / 'routing'}\njobs:\n  j: {{models: [router], evalsets: [routing]}}\n"
    )
    store = Store.open(cfg.database_url())
    pool = pool_for(ScriptedBackend())
    for plan in plan_runs(cfg, ["j"], trigger="test") * 2:
        execute_run(store, pool, plan)
    return config, store


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_pin_show_list_unpin(tmp_path: Path) -> None:
    config, store = recorded(tmp_path)
    code, out, err = invoke("baseline", "pin", "router", "routing", "--config", str(config))
    assert code == 0, err
    path = tmp_path / "baselines" / "router" / "routing.json"
    assert str(path) in out and "run 2" in out
    baseline = load_baseline(path)
    data = json.loads(path.read_text())
    assert data["format_version"] == BASELINE_FORMAT_VERSION == baseline.format_version
    assert baseline.run_id == 2 and baseline.strategy == "zero-shot" and baseline.fewshot_k == 0
    assert baseline.metrics["acc"]["value"] == 0.25 and baseline.metrics["acc"]["n"] == 8
    assert len(baseline.items) == 8 and baseline.items[0].id == "i0" and baseline.items[0].correct is True
    assert baseline.evalset_version == store.get_run(2).evalset_version
    assert baseline.model_fingerprint == "f" * 64
    assert invoke("baseline", "pin", "router", "routing", "--run", "1", "--config", str(config))[0] == 0
    assert load_baseline(path).run_id == 1
    code, out, _ = invoke("baseline", "show", "router", "routing", "--config", str(config), "--json")
    assert code == 0 and json.loads(out)["run_id"] == 1
    code, out, _ = invoke("baseline", "list", "--config", str(config))
    assert code == 0 and "router\trouting\tzero-shot\t1\tacc" in out
    assert invoke("baseline", "unpin", "router", "routing", "--config", str(config))[0] == 0
    assert not path.exists()
    code, _, err = invoke("baseline", "show", "router", "routing", "--config", str(config))
    assert code == 2 and "no baseline pinned for model 'router'" in err
    store.close()


def test_pin_refuses_wrong_runs(tmp_path: Path) -> None:
    config, store = recorded(tmp_path)
    store.finish_run(1, status="failed", error="x")
    code, _, err = invoke("baseline", "pin", "router", "routing", "--run", "1", "--config", str(config))
    assert code == 2 and "run 1 is failed; only a succeeded run can be a baseline" in err
    code, _, err = invoke("baseline", "pin", "router", "other", "--config", str(config))
    assert code == 2 and "no succeeded run of model 'router' on eval set 'other'" in err
    code, _, err = invoke("baseline", "pin", "router", "routing", "--run", "99", "--config", str(config))
    assert code == 2 and "no run with id 99" in err
    assert not (tmp_path / "baselines").exists()
    store.close()


def test_corrupt_baseline_is_a_clear_error_and_nothing_is_lost(tmp_path: Path) -> None:
    config, store = recorded(tmp_path)
    assert invoke("baseline", "pin", "router", "routing", "--config", str(config))[0] == 0
    other = tmp_path / "baselines" / "other" / "routing.json"
    other.parent.mkdir()
    other.write_text('{"format_version": 1, "model": ')
    code, out, err = invoke("baseline", "list", "--config", str(config))
    assert code == 2
    assert "router\trouting" in out
    assert err.strip().startswith(f"error: {other}:1: corrupt baseline file")
    future = tmp_path / "baselines" / "other" / "routing.json"
    future.write_text('{"format_version": 99}')
    code, _, err = invoke("baseline", "show", "other", "routing", "--config", str(config))
    assert code == 2 and "baseline format_version 99 is not supported" in err
    assert len(store.runs()) == 2
    store.close()


def test_baselines_reach_the_metrics(tmp_path: Path) -> None:
    config, store = recorded(tmp_path)
    files = BaselineFiles(tmp_path / "baselines")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, baselines=lambda: baseline_values(files.current())))
    labels = {"model": "router", "evalset": "routing", "strategy": "zero-shot", "metric": "acc"}
    assert registry.get_sample_value("monitor_baseline_score", labels) is None
    assert invoke("baseline", "pin", "router", "routing", "--config", str(config))[0] == 0
    assert registry.get_sample_value("monitor_baseline_score", labels) == 0.25
    assert registry.get_sample_value("monitor_baseline_score_stderr", labels) is not None
    (tmp_path / "baselines" / "router" / "routing.json").write_text("not json")
    assert registry.get_sample_value("monitor_baseline_score", labels) is None  # a corrupt file is skipped
    assert registry.get_sample_value("monitor_store_up") == 1
    store.close()
