"""Base-model releases: the watchers (a directory, an OpenAI model list, a hub repository over loopback
HTTP), the effective configuration, and the daemon evaluating a new release against the old base."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from monitor.cli import app
from monitor.config import MonitorConfig, load_config
from monitor.errors import ConfigError, WatchError
from monitor.service.daemon import Daemon
from monitor.service.releases.effective import effective_config
from monitor.service.releases.sources import (
    DirectorySource,
    HubSource,
    OpenAIModelsSource,
    Release,
    release_name,
)
from monitor.service.releases.watch import ReleaseWatcher
from monitor.store import Store
from tests.unit.test_daemon import ScriptedBackend, make_evalset, pool_for

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def make_model_folder(root: Path, name: str, *, weights: bool = True, age_s: float = 3600.0) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "gpt2"}')
    if weights:
        (folder / "model.safetensors").write_bytes(b"\0" * 64)
    old = time.time() - age_s
    for path in folder.iterdir():
        os.utime(path, (old, old))
    return folder


class JsonRoutes(BaseHTTPRequestHandler):
    """Answers GET requests from ``server.routes``: path -> (status, body); records what it saw."""

    def do_GET(self) -> None:
        server: Any = self.server
        server.seen.append((self.path, self.headers.get("Authorization")))
        status, body = server.routes.get(self.path, (404, {"error": "not found"}))
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def http_server() -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), JsonRoutes)
    server.routes, server.seen = {}, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


# --- sources ---------------------------------------------------------------------------------------


def test_directory_source_finds_model_folders_once_they_settle(tmp_path: Path) -> None:
    releases = tmp_path / "releases"
    make_model_folder(releases, "base-v2")
    make_model_folder(releases, "half-copied", weights=False)
    make_model_folder(releases, "notes-v9")
    (releases / "README.txt").write_text("not a model")
    fresh = make_model_folder(releases, "base-v3", age_s=1.0)
    source = DirectorySource("base", releases, pattern="base-*", settle_s=30.0)

    found = source.scan()
    assert [r.name for r in found] == ["base-v2"]
    assert found[0].location == str((releases / "base-v2").resolve()) and found[0].source == "directory"
    assert found[0].details == {"files": 2, "bytes": 86}

    old = time.time() - 60
    for path in fresh.iterdir():
        os.utime(path, (old, old))
    assert [r.name for r in source.scan()] == ["base-v2", "base-v3"]

    with pytest.raises(WatchError, match="does not exist"):
        DirectorySource("base", tmp_path / "nowhere").scan()


def test_openai_model_list_source_over_http(http_server: Any) -> None:
    http_server.routes["/v1/models"] = (
        200,
        {
            "object": "list",
            "data": [
                {"id": "acme/base-v2", "object": "model", "owned_by": "vllm", "root": "/models/v2"},
                {"id": "ticket-router", "object": "model", "parent": "acme/base-v1"},
                {"id": "acme/base-v3", "object": "model"},
            ],
        },
    )
    source = OpenAIModelsSource("acme", f"{http_server.url}/v1", api_key="sk-secret", pattern="acme/base-*")
    found = source.scan()
    assert [(r.name, r.location) for r in found] == [
        ("acme-base-v2", "acme/base-v2"),
        ("acme-base-v3", "acme/base-v3"),
    ]
    assert found[0].details == {"owned_by": "vllm", "root": "/models/v2"}
    assert http_server.seen[-1] == ("/v1/models", "Bearer sk-secret")

    # Every model, but never a LoRA adapter (vLLM lists those with their base as "parent").
    everything = OpenAIModelsSource("acme", f"{http_server.url}/v1").scan()
    assert [r.location for r in everything] == ["acme/base-v2", "acme/base-v3"]

    http_server.routes["/v1/models"] = (500, {"error": "boom"})
    with pytest.raises(WatchError, match="HTTP 500") as err:
        source.scan()
    assert "sk-secret" not in str(err.value)
    http_server.routes["/v1/models"] = (200, "<html>proxy error</html>")
    with pytest.raises(WatchError, match="not an OpenAI model list"):
        source.scan()
    with pytest.raises(WatchError, match="ConnectError"):
        OpenAIModelsSource("acme", "http://127.0.0.1:9/v1", timeout_s=2).scan()


def test_hub_source_turns_each_new_commit_into_a_release(http_server: Any) -> None:
    path = "/api/models/acme/base/revision/main"
    http_server.routes[path] = (
        200,
        {"id": "acme/base", "sha": "a" * 40, "lastModified": "2026-11-01T00:00:00Z"},
    )
    source = HubSource("acme", "acme/base", endpoint=http_server.url, token="hf_x")
    first = source.scan()
    assert [(r.name, r.location, r.revision) for r in first] == [("base-aaaaaaaaaa", "acme/base", "a" * 40)]
    assert http_server.seen[-1][1] == "Bearer hf_x"
    http_server.routes[path] = (200, {"id": "acme/base", "sha": "b" * 40})
    assert source.scan()[0].name == "base-bbbbbbbbbb"
    http_server.routes[path] = (401, {"error": "unauthorized"})
    with pytest.raises(WatchError, match="HTTP 401"):
        source.scan()
    # The tests run with HF_HUB_OFFLINE=1: without an explicit endpoint the watcher says so.
    with pytest.raises(WatchError, match="offline"):
        HubSource("acme", "acme/base").scan()


def test_release_names() -> None:
    assert release_name("meta-llama/Llama-3.1-8B") == "meta-llama-Llama-3.1-8B"
    assert release_name("  v2 (final) ") == "v2-final"
    with pytest.raises(WatchError):
        release_name("///")


# --- configuration ---------------------------------------------------------------------------------


def write_family_config(tmp_path: Path, *, extra: str = "", watch: str | None = None) -> Path:
    es = make_evalset(tmp_path / "evals", 8)
    with (es / "evalset.yaml").open("a") as f:
        f.write("fewshot: {k: 2, pool: fewshot.jsonl}\n")
    pool = [{"id": f"f{k}", "target": c} for k, c in enumerate(("billing", "account"))]
    (es / "fewshot.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pool))
    for name in ("v1", "v1-adapter"):
        (tmp_path / name).mkdir(exist_ok=True)
    watch = (
        watch
        or f"""
    watch:
      directory: {tmp_path / "releases"}
      settle: 1s
      every: 1s
      model: {{strategy: 5-shot, dtype: float32}}"""
    )
    path = tmp_path / "monitor.yaml"
    path.write_text(
        f"""
database: sqlite:///{tmp_path / "monitor.db"}
models:
  router: {{base: {tmp_path / "v1"}, adapter: {tmp_path / "v1-adapter"}}}
  base-v1: {{base: {tmp_path / "v1"}}}
evalsets:
  routing: {es}
jobs:
  fine-tune: {{models: [router], evalsets: [routing]}}
finetunes:
  router:
    model: router
    base_model: base-v1
    family: acme
    evalsets: [routing]
    strategies: [zero-shot, 2-shot]
families:
  acme:
    versions: [base-v1]{watch}
{extra}"""
    )
    (tmp_path / "releases").mkdir(exist_ok=True)
    return path


def test_watch_config_is_validated_with_locations(tmp_path: Path) -> None:
    bad = write_family_config(tmp_path, watch="\n    watch: {directory: x, hub: acme/base}")
    with pytest.raises(ConfigError, match=r"monitor.yaml:\d+: families.acme.watch: .*exactly one of"):
        load_config(bad)
    bad = write_family_config(tmp_path, watch="\n    watch: {directory: x, model: {dtype: 3, colour: red}}")
    with pytest.raises(ConfigError, match=r"families.acme.watch: .*model\."):
        load_config(bad)
    bad = write_family_config(tmp_path, watch="\n    watch: {directory: x, every: soon}")
    with pytest.raises(ConfigError, match=r"families.acme.watch.every"):
        load_config(bad)
    cfg = load_config(write_family_config(tmp_path))
    assert cfg.families["acme"].watch is not None and cfg.families["acme"].watch.source == "directory"

    result = CliRunner().invoke(
        app, ["check-config", "--config", str(write_family_config(tmp_path, watch="\n    watch: {}"))]
    )
    assert result.exit_code == 2 and "families.acme.watch" in result.output


def test_effective_config_folds_releases_in(tmp_path: Path) -> None:
    cfg = load_config(write_family_config(tmp_path))
    v2 = make_model_folder(tmp_path / "releases", "base-v2")
    releases = [
        Release("acme", "base-v2", "directory", str(v2)),
        Release("acme", "v1-again", "directory", str(tmp_path / "v1")),  # the configured old base itself
        Release("gone-family", "x", "directory", str(v2)),
    ]
    eff = effective_config(cfg, releases)
    assert eff.models["base-v2"].base == str(v2) and eff.models["base-v2"].strategy == "5-shot"
    assert eff.models["base-v2"].dtype == "float32" and "v1-again" not in eff.models and "x" not in eff.models
    assert eff.finetunes["router"].challengers == ("base-v2",)
    job = eff.jobs["challengers-base-v2"]
    assert (job.models, job.evalsets, job.strategies, job.schedule) == (
        ("base-v2", "base-v1"),
        ("routing",),
        ("zero-shot", "2-shot"),
        None,
    )
    assert "challengers-base-v1" not in eff.jobs
    # The declared configuration is untouched.
    assert "base-v2" not in cfg.models and cfg.finetunes["router"].challengers == ()


def test_a_version_registered_in_the_config_is_a_challenger_too(tmp_path: Path) -> None:
    (tmp_path / "v3").mkdir()
    path = write_family_config(tmp_path)
    text = path.read_text().replace("versions: [base-v1]", "versions: [base-v1, base-v3]")
    text = text.replace("  base-v1: {", f"  base-v3: {{base: {tmp_path / 'v3'}}}\n  base-v1: {{")
    path.write_text(text)
    cfg = load_config(path)
    store = Store.open(cfg.database_url())
    try:
        watcher = ReleaseWatcher(store, cfg)
        assert [r.name for r in watcher.register_configured()] == ["base-v3"]
        assert watcher.register_configured() == []  # stored once
        eff = effective_config(cfg, store.releases())
        assert eff.finetunes["router"].challengers == ("base-v3",)
        assert eff.jobs["challengers-base-v3"].models == ("base-v3", "base-v1")
    finally:
        store.close()


# --- the daemon ------------------------------------------------------------------------------------


def test_daemon_evaluates_a_new_release_against_the_old_base_once(tmp_path: Path) -> None:
    cfg = load_config(write_family_config(tmp_path))
    store = Store.open(cfg.database_url())
    backend = ScriptedBackend()
    daemon = Daemon(cfg, store, pool=pool_for(backend), manual_timer=True)
    daemon.start()
    try:
        assert daemon.scan_releases() == []
        make_model_folder(tmp_path / "releases", "base-v2")
        make_model_folder(tmp_path / "releases", "v1-copy")
        time.sleep(1.1)  # the family is scanned every second
        queued = daemon.scan_releases()
        assert queued == ["challengers-base-v2", "challengers-v1-copy"]
        assert daemon.wait_idle(60)
        series = sorted((name, r.strategy, r.trigger, r.status) for r, name in store.runs())
        assert series == sorted(
            (m, s, "release", "succeeded")
            for m in ("base-v2", "v1-copy", "base-v1", "base-v1")
            for s in ("zero-shot", "2-shot")
        )
        assert all(r.evaluated_at is not None for r in store.releases())
        assert daemon.config.finetunes["router"].challengers == ("base-v2", "v1-copy")
        time.sleep(1.1)
        assert daemon.scan_releases() == []  # known releases are not evaluated again
        state = daemon.watcher.state["acme"]
        assert state.scans == {"ok": 3, "error": 0} and state.last_error is None
    finally:
        daemon.shutdown()
        store.close()


def test_a_release_not_evaluated_before_a_stop_is_evaluated_at_the_next_start(tmp_path: Path) -> None:
    cfg = load_config(write_family_config(tmp_path))
    make_model_folder(tmp_path / "releases", "base-v2")
    store = Store.open(cfg.database_url())
    watcher = ReleaseWatcher(store, cfg)
    assert [r.name for r in watcher.scan("acme", NOW)] == ["base-v2"]  # found, then the process died
    assert store.releases()[0].evaluated_at is None

    daemon = Daemon(cfg, store, pool=pool_for(ScriptedBackend()), manual_timer=True)
    daemon.start()
    try:
        assert daemon.wait_idle(60)
        assert {name for _, name in store.runs()} == {"base-v2", "base-v1"}
        assert store.releases()[0].evaluated_at is not None
    finally:
        daemon.shutdown()
        store.close()


def test_a_failing_watcher_is_counted_and_never_stops_the_daemon(tmp_path: Path) -> None:
    path = write_family_config(tmp_path)
    cfg = load_config(path)
    (tmp_path / "releases").rmdir()
    store = Store.open(cfg.database_url())
    daemon = Daemon(cfg, store, pool=pool_for(ScriptedBackend()), manual_timer=True)
    daemon.start()
    try:
        assert daemon.scan_releases() == []
        state = daemon.watcher.state["acme"]
        assert state.scans["error"] == 1 and "does not exist" in (state.last_error or "")
        assert daemon.ready()[0]
    finally:
        daemon.shutdown()
        store.close()


def test_a_new_release_writes_an_event_to_the_outbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import select

    from monitor.store.tables import WebhookEvent

    monkeypatch.setenv("HOOK_SECRET", "whsec_" + "A" * 32)
    extra = "webhooks:\n  endpoints:\n    ops: {url: 'http://127.0.0.1:9/hook', secret_env: HOOK_SECRET}\n"
    cfg = load_config(write_family_config(tmp_path, extra=extra))
    make_model_folder(tmp_path / "releases", "base-v2")
    store = Store.open(cfg.database_url())
    try:
        from monitor.service.after_job import make_notifier

        ReleaseWatcher(store, cfg, notify=make_notifier(cfg)).scan("acme", NOW)
        with store.session() as s:
            events = list(s.execute(select(WebhookEvent)).scalars())
        assert [e.type for e in events] == ["release.discovered"]
        assert events[0].payload["data"]["release"] == "base-v2"
        assert events[0].payload["data"]["finetunes"] == ["router"]
    finally:
        store.close()


# --- the CLI ---------------------------------------------------------------------------------------


def test_cli_scan_evaluates_new_releases_and_lists_them(tiny_models: Any, tmp_path: Path) -> None:
    import shutil

    path = write_family_config(tmp_path)
    text = path.read_text()
    text = text.replace(str(tmp_path / "v1-adapter"), str(tiny_models.lora)).replace(
        f"{{base: {tmp_path / 'v1'}", f"{{base: {tiny_models.gpt2}"
    )
    path.write_text(text)
    release = tmp_path / "releases" / "gpt2-v2"
    shutil.copytree(tiny_models.gpt2_other, release)
    old = time.time() - 60
    for p in release.rglob("*"):
        os.utime(p, (old, old))
    cfg: MonitorConfig = load_config(path)
    assert cfg.models["base-v1"].base == str(tiny_models.gpt2)

    runner = CliRunner()
    deployed = runner.invoke(app, ["run", "fine-tune", "--config", str(path)])
    assert deployed.exit_code == 0, deployed.output
    scan = runner.invoke(app, ["releases", "scan", "--config", str(path), "--json"])
    assert scan.exit_code == 0, scan.output
    runs = json.loads(scan.stdout)
    assert sorted((r["model"], r["strategy"]) for r in runs) == sorted(
        (m, s) for m in ("gpt2-v2", "base-v1") for s in ("zero-shot", "2-shot")
    )
    listed = runner.invoke(app, ["releases", "list", "--config", str(path), "--json"])
    assert listed.exit_code == 0, listed.output
    (only,) = json.loads(listed.stdout)
    assert only["name"] == "gpt2-v2" and only["evaluated_at"] is not None
    again = runner.invoke(app, ["releases", "scan", "--config", str(path)])
    assert again.exit_code == 0 and "no new release" in again.output

    recommend = runner.invoke(app, ["recommend", "--config", str(path), "--json"])
    assert recommend.exit_code == 0, recommend.output
    (rec,) = json.loads(recommend.stdout)
    assert {c["release"] for c in rec["evidence"]["challengers"]} == {"gpt2-v2"}


# --- a release served by an OpenAI-compatible server ----------------------------------------------


def test_a_release_on_an_openai_server_is_found_and_evaluated_through_it(
    tiny_models: Any, tmp_path: Path
) -> None:
    """The in-project OpenAI-compatible server serves the old base and the fine-tune; a new base
    appears in its model list, and the daemon's watcher evaluates it through the openai backend."""
    from monitor.testing.openai_server import OpenAIServer, load_served_model

    served = {
        "acme-base-v1": load_served_model("acme-base-v1", tiny_models.gpt2),
        "router": load_served_model("router", tiny_models.gpt2, tiny_models.lora),
    }
    with OpenAIServer(served) as server:
        es = make_evalset(tmp_path / "evals", 8)
        endpoint = f"{{base_url: '{server.url}', mc_method: logprobs}}"
        path = tmp_path / "monitor.yaml"
        path.write_text(
            f"""
database: sqlite:///{tmp_path / "monitor.db"}
models:
  router: {{backend: openai, base: router, endpoint: {endpoint}}}
  base-v1: {{backend: openai, base: acme-base-v1, endpoint: {endpoint}}}
evalsets: {{routing: {es}}}
jobs:
  fine-tune: {{models: [router], evalsets: [routing]}}
finetunes:
  router: {{model: router, base_model: base-v1, family: acme, evalsets: [routing], strategies: [zero-shot]}}
families:
  acme:
    versions: [base-v1]
    watch:
      openai: {{base_url: '{server.url}'}}
      pattern: acme-base-*
      every: 1s
      model: {{endpoint: {{mc_method: logprobs, max_concurrency: 2}}}}
"""
        )
        cfg = load_config(path)
        store = Store.open(cfg.database_url())
        daemon = Daemon(cfg, store, manual_timer=True)
        daemon.start()
        try:
            assert daemon.scan_releases() == []  # the old base is configured: not a challenger
            (old_base,) = store.releases()  # stored, nothing to evaluate (no ReleaseNotEvaluated alert)
            assert old_base.name == "acme-base-v1" and old_base.evaluated_at is not None
            server.models["acme-base-v2"] = load_served_model("acme-base-v2", tiny_models.gpt2_other)
            time.sleep(1.1)
            assert daemon.scan_releases() == ["challengers-acme-base-v2"]
            entry = daemon.config.models["acme-base-v2"]
            assert (entry.backend, entry.base) == ("openai", "acme-base-v2")
            assert entry.endpoint is not None and entry.endpoint.base_url == server.url
            assert (entry.endpoint.mc_method, entry.endpoint.max_concurrency) == ("logprobs", 2)
            assert daemon.wait_idle(120)
            runs = {(name, run.status) for run, name in store.runs()}
            assert runs == {("acme-base-v2", "succeeded"), ("base-v1", "succeeded")}, store.runs()
        finally:
            daemon.shutdown()
            store.close()


def test_check_config_reports_a_missing_watched_folder_and_an_impossible_strategy(tmp_path: Path) -> None:
    path = write_family_config(tmp_path, watch=f"\n    watch: {{directory: {tmp_path / 'nowhere'}}}")
    path.write_text(
        path.read_text().replace("strategies: [zero-shot, 2-shot]", "strategies: [zero-shot, 9-shot]")
    )
    result = CliRunner().invoke(app, ["check-config", "--config", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert any(
        f"families.acme.watch.directory: {tmp_path / 'nowhere'} is not a directory" in x for x in lines
    )
    assert any("finetunes.router.strategies: 9-shot on routing" in x for x in lines), lines


def test_releases_are_reevaluated_on_the_family_schedule(tmp_path: Path) -> None:
    path = write_family_config(tmp_path)
    path.write_text(
        path.read_text().replace(
            "    versions: [base-v1]", "    versions: [base-v1]\n    reevaluate: {every: 7d}"
        )
    )
    cfg = load_config(path)
    store = Store.open(cfg.database_url())
    daemon = Daemon(cfg, store, pool=pool_for(ScriptedBackend()), manual_timer=True)
    daemon.start()
    try:
        make_model_folder(tmp_path / "releases", "base-v2")
        assert daemon.scan_releases() == ["challengers-base-v2"]
        assert daemon.wait_idle(60)
        job = daemon.config.jobs["challengers-base-v2"]
        assert job.schedule is not None and job.schedule.every == timedelta(days=7)
        assert "challengers-base-v2" in daemon.timer.jobs()  # found while running: scheduled at once
        assert daemon.job_intervals["challengers-base-v2"] == 7 * 86400
    finally:
        daemon.shutdown()
        store.close()
    # The next start schedules it from the configuration and the stored release.
    store = Store.open(cfg.database_url())
    again = Daemon(cfg, store, pool=pool_for(ScriptedBackend()), manual_timer=True)
    again.start()
    try:
        assert "challengers-base-v2" in again.timer.jobs()
    finally:
        again.shutdown()
        store.close()


def test_a_refreshed_golden_set_queues_the_challenger_jobs_again(tmp_path: Path) -> None:
    from monitor.service.daemon import WorkItem

    cfg = load_config(write_family_config(tmp_path))
    store = Store.open(cfg.database_url())
    daemon = Daemon(cfg, store, pool=pool_for(ScriptedBackend()), manual_timer=True)
    daemon.start()
    try:
        daemon.enqueue(WorkItem("fine-tune", "manual"))
        make_model_folder(tmp_path / "releases", "base-v2")
        assert daemon.scan_releases() == ["challengers-base-v2"]
        assert daemon.wait_idle(60)
        assert len(store.runs(model="base-v2")) == 2  # zero-shot and 2-shot
        # The fine-tune runs again on the same golden set: nothing to redo.
        daemon.enqueue(WorkItem("fine-tune", "manual"))
        assert daemon.wait_idle(60)
        assert len(store.runs(model="base-v2")) == 2
        # The golden set is refreshed: after the fine-tune's next run, the challengers run again.
        data = tmp_path / "evals" / "routing" / "data.jsonl"
        data.write_text(data.read_text() + json.dumps({"id": "new", "target": "billing"}) + "\n")
        daemon.enqueue(WorkItem("fine-tune", "manual"))
        assert daemon.wait_idle(60)
        again = store.runs(model="base-v2")
        assert len(again) == 4 and {r.trigger for r, _ in again[:2]} == {"evalset-changed"}
        versions = {r.evalset_version for r, _ in store.runs(evalset="routing", limit=3)}
        assert len(versions) == 1  # fine-tune, release and old base on the same version: paired again
    finally:
        daemon.shutdown()
        store.close()


def test_forget_a_release(tmp_path: Path) -> None:
    path = write_family_config(tmp_path)
    cfg = load_config(path)
    store = Store.open(cfg.database_url())
    store.add_release(Release("acme", "base-v2", "directory", str(tmp_path / "releases" / "base-v2")))
    store.close()
    runner = CliRunner()
    done = runner.invoke(app, ["releases", "forget", "base-v2", "--config", str(path)])
    assert done.exit_code == 0 and "forgotten" in done.output
    missing = runner.invoke(app, ["releases", "forget", "base-v2", "--config", str(path)])
    assert missing.exit_code == 2 and "no release named 'base-v2'" in missing.output
    listed = runner.invoke(app, ["releases", "list", "--config", str(path), "--json"])
    assert json.loads(listed.stdout) == []
