"""The demo's story: a fine-tune ages, and the monitor says what to do about it, with the numbers.

Four chapters, each run through the same code paths the daemon uses (runs,
analysis, drift checks, the release watcher, recommendations, the webhook
outbox), on the demo's own small models:

1. **Deployed.**  The fine-tune ``ticket-router`` (base v1 + LoRA) is evaluated
   on its golden sets and pinned as the baseline; production inputs look like
   its training data.  Recommendation: keep.
2. **Drift.**  Production tickets change (new products, new phrasing): the
   input drift check notices.  The team refreshes the golden set with labelled
   recent tickets; the fine-tune's next two runs confirm a regression.
   Recommendation: retrain.
3. **A new base.**  Base v2 appears in the watched releases folder; the
   watcher finds it and evaluates it, zero- and five-shot, next to the old
   base on the refreshed golden set.  v2 beats v1 by far under the same prompts:
   re-train the adapter on v2 instead (rebase), and the memo says why and what
   each option costs.
4. **Webhooks.**  Every event above went through the outbox to a local,
   signature-checking receiver; its log is shown.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from monitor.demo import data
from monitor.errors import NotFoundError

if TYPE_CHECKING:
    from monitor.demo.build import DemoModels
    from monitor.demo.receiver import DemoReceiver

#: The demo receiver's signing secret is read from this variable (the monitor never stores secrets).
SECRET_ENV = "MONITOR_DEMO_WEBHOOK_SECRET"
SECRET = "whsec_" + base64.b64encode(b"model-aging-monitor-demo-secret!").decode()
FINETUNE = "ticket-router"
FAMILY = "ticket-base"
RELEASE = "ticket-base-v2"
#: How far production tickets have moved by chapter 2 (0: like the training data, 1: all new).
DRIFT = 0.5
TRAFFIC_PER_DAY = 400
GOLDEN_ITEMS = 180


def repo_evals() -> Path:
    """The eval sets shipped in the repository's ``evals/`` folder."""
    return Path(__file__).resolve().parents[2] / "evals"


#: Written into a folder the demo made: only such a folder is ever cleared by the next demo.
MARKER = ".monitor-demo"


def claim_workdir(workdir: Path) -> None:
    """Make ``workdir`` the demo's (created, or already marked as the demo's), or refuse it.

    A folder that exists, holds anything besides the model cache and was not made by the demo is the
    user's: the demo stops with an error naming it rather than clearing its history and eval sets.
    """
    from monitor.errors import InputError

    marker = workdir / MARKER
    if workdir.is_dir() and not marker.exists():
        others = sorted(p.name for p in workdir.iterdir() if p.name != "models")
        written_by_demo = (workdir / "monitor.yaml").is_file() and "Written by `monitor demo`" in (
            workdir / "monitor.yaml"
        ).read_text(encoding="utf-8", errors="replace")
        if others and not written_by_demo:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise InputError(
                f"--workdir {workdir}: the folder holds files the demo did not write ({shown}); "
                "the demo clears its folder's history and eval sets, so give it an empty or new folder"
            )
    elif workdir.exists() and not workdir.is_dir():
        raise InputError(f"--workdir {workdir}: not a folder")
    workdir.mkdir(parents=True, exist_ok=True)
    marker.write_text(
        "This folder is written by `monitor demo`; the next demo clears it (models/ is kept).\n"
    )


def prepare_workdir(workdir: Path) -> None:
    """Start the story afresh: a copy of the shipped eval sets, empty history, releases and traffic.

    The models (under ``models/``) are kept: they are the cache. A folder the demo did not make is
    refused (:func:`claim_workdir`).
    """
    shipped = repo_evals()
    for name in ("ticket-routing", "ticket-triage"):
        if not (shipped / name / "evalset.yaml").exists():
            raise NotFoundError(
                f"the demo needs the eval set {shipped / name} (run the demo from a clone of the repository)"
            )
    claim_workdir(workdir)
    for name in ("baselines", "releases", "traffic", "evals", "reports"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    for name in ("monitor.db", "monitor.db-wal", "monitor.db-shm", "webhooks.log", f"memo-{FINETUNE}.md"):
        (workdir / name).unlink(missing_ok=True)
    for name in ("ticket-routing", "ticket-triage"):
        shutil.copytree(shipped / name, workdir / "evals" / name)
    (workdir / "releases").mkdir()
    (workdir / "traffic").mkdir()


def write_demo_config(
    workdir: Path,
    models: DemoModels,
    *,
    port: int,
    receiver_url: str | None = None,
    every: str = "1m",
    run_at_start: bool = False,
    name: str = "monitor.yaml",
) -> Path:
    """Write ``workdir/NAME``: the fine-tune, its base family and watcher, costs, and (with ``receiver_url``)
    webhooks to the demo's receiver, whose secret is read from $MONITOR_DEMO_WEBHOOK_SECRET."""
    config: dict[str, Any] = {
        "database": "sqlite:///monitor.db",
        "models": {
            FINETUNE: {
                "base": str(models.base_v1),
                "adapter": str(models.lora_v1),
                "version": "2026-06",
                "drift": {
                    "source": {"kind": "jsonl", "path": "traffic"},
                    # The golden set as it was when the fine-tune was deployed (the shipped one).
                    "reference": {"kind": "evalset", "path": str(repo_evals() / "ticket-routing")},
                    "window": "1d",
                    "embeddings": False,
                },
            },
            "base-v1": {"base": str(models.base_v1), "strategy": "5-shot"},
        },
        "evalsets": {"ticket-routing": "evals/ticket-routing", "ticket-triage": "evals/ticket-triage"},
        "jobs": {
            "fine-tune": {
                "models": [FINETUNE],
                "evalsets": ["ticket-routing", "ticket-triage"],
                "schedule": {"every": every, "run_at_start": run_at_start},
            },
        },
        "finetunes": {
            FINETUNE: {
                "model": FINETUNE,
                "base_model": "base-v1",
                "family": FAMILY,
                "evalsets": ["ticket-routing"],
                "strategies": ["zero-shot", "5-shot"],
                "trained_on": "2026-06-01",
                "costs": {
                    "requests_per_day": 20000,
                    "currency": "USD",
                    "pricing": {"prompt_per_1k": 0.002, "completion_per_1k": 0.006},
                    "retrain_cost": 120,
                    "retrains_per_year": 4,
                },
            }
        },
        "families": {
            FAMILY: {
                "versions": ["base-v1"],
                "watch": {
                    "directory": "releases",
                    "every": "15s",
                    "settle": "5s",
                    "model": {"strategy": "5-shot"},
                },
            }
        },
        "daemon": {"port": port, "max_loaded_models": 3},
    }
    if receiver_url is not None:
        config["webhooks"] = {
            "endpoints": {"demo-receiver": {"url": receiver_url, "secret_env": SECRET_ENV}},
            "initial_backoff": "1s",
            "poll_interval": "1s",
        }
    path = workdir / name
    header = "# Written by `monitor demo`: the demo's models, its copy of the eval sets, a fast schedule.\n"
    if receiver_url is not None:
        header += (
            f"# The webhooks go to the receiver inside `monitor demo`; its secret is read from ${SECRET_ENV}\n"
            f"# (the demo sets it to {SECRET}).\n"
        )
    else:
        header += (
            "# `monitor check-config` and `monitor daemon` take it as is: no secret is needed (the demo's\n"
            "# webhook receiver lived inside `monitor demo`, so this copy has no webhooks section).\n"
        )
    path.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def write_traffic(workdir: Path, drift: float, *, now: datetime, seed: int) -> Path:
    """The last day of production tickets, as the team's request log would have them (JSONL)."""
    records = data.generate_traffic(TRAFFIC_PER_DAY, seed=seed, drift=drift, start=now - timedelta(days=1))
    path = workdir / "traffic" / "requests.jsonl"
    lines = (
        json.dumps(
            {"id": r.id, "timestamp": r.timestamp.isoformat().replace("+00:00", "Z"), "input": r.input}
        )
        for r in records
    )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def refresh_golden_set(workdir: Path, drift: float) -> int:
    """Replace the routing golden set with labelled recent tickets (its version changes with it)."""
    items = data.refreshed_golden_set(GOLDEN_ITEMS, seed=3001, drift=drift)
    path = workdir / "evals" / "ticket-routing" / "data.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return len(items)


@dataclass
class StoryOutcome:
    """What the story showed (the tests check it)."""

    recommendations: list[str] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    input_drift: list[bool | None] = field(default_factory=list)
    releases: list[str] = field(default_factory=list)
    memo: Path | None = None
    webhooks: list[str] = field(default_factory=list)


def tell_story(
    workdir: Path,
    config_path: Path,
    models: DemoModels,
    *,
    receiver: DemoReceiver | None = None,
    say: Callable[[str], None] = print,
    show_table: Callable[[Any], None] | None = None,
) -> StoryOutcome:
    """Run the four chapters against the demo configuration; the history stays in ``workdir``."""
    from monitor.analysis.baselines import pin_baseline
    from monitor.analysis.recommend import assess_finetune
    from monitor.api.views import status_entries
    from monitor.config import load_config
    from monitor.service.after_job import make_notifier
    from monitor.service.releases.challengers import pending_challenger_jobs
    from monitor.service.releases.effective import effective_config
    from monitor.service.releases.watch import ReleaseWatcher
    from monitor.service.runs import ModelPool, run_jobs
    from monitor.store import Store, utcnow

    outcome = StoryOutcome()
    declared = load_config(config_path)
    with Store.open(declared.database_url()) as store, ModelPool(max_models=3) as pool:

        def run(job: str, cfg: Any) -> None:
            for done, model in run_jobs(store, cfg, [job], trigger="demo", pool=pool):
                suffix = f" ({done.error})" if done.error else ""
                say(f"      {model:<15} {done.evalset_name:<15} {done.strategy:<9} {_score(done)}{suffix}")

        def recommendation(cfg: Any) -> str:
            found = assess_finetune(store, cfg, FINETUNE)
            outcome.recommendations.append(found.decision.action)
            say(
                f"  -> recommendation for {FINETUNE}: {found.decision.action.upper()}: {found.decision.reasons[0]}"
            )
            return found.decision.action

        # --- 1 ---------------------------------------------------------------------------------------
        say("\n[1/4] The fine-tune is deployed: golden sets evaluated, baseline pinned.")
        write_traffic(workdir, 0.0, now=utcnow(), seed=1)
        run("fine-tune", declared)
        for evalset in ("ticket-routing", "ticket-triage"):
            pin_baseline(store, declared.baselines_dir(), FINETUNE, evalset)
        say(f"      baselines pinned under {declared.baselines_dir()}")
        outcome.input_drift.append(_input_drift(store))
        recommendation(declared)

        # --- 2 ---------------------------------------------------------------------------------------
        say(
            f"\n[2/4] Production drifts (new products and phrasing, drift {DRIFT:.0%}); "
            f"the golden set is refreshed with {GOLDEN_ITEMS} labelled recent tickets."
        )
        write_traffic(workdir, DRIFT, now=utcnow(), seed=2)
        refresh_golden_set(workdir, DRIFT)
        for night in (1, 2):
            say(f"      nightly run {night}:")
            run("fine-tune", declared)
            verdict = _verdict(store, declared)
            outcome.verdicts.append(verdict)
            say(f"      verdict on ticket-routing against the baseline: {verdict}")
        drifted = _input_drift(store)
        outcome.input_drift.append(drifted)
        say(f"      input drift on the production tickets: {'DETECTED' if drifted else 'not detected'}")
        recommendation(declared)

        # --- 3 ---------------------------------------------------------------------------------------
        say(f"\n[3/4] Base v2 is released into {workdir / 'releases'}; the watcher picks it up.")
        released = shutil.copytree(models.base_v2, workdir / "releases" / RELEASE)
        _landed_a_while_ago(released, declared)
        watcher = ReleaseWatcher(store, declared, notify=make_notifier(declared))
        found = watcher.scan(FAMILY, utcnow())
        outcome.releases = [r.name for r in found]
        say(f"      found: {', '.join(outcome.releases) or 'nothing'}")
        cfg = effective_config(declared, store.releases())
        for job in pending_challenger_jobs(cfg, store.releases()):
            say(
                f"      {job}: the release and the old base, zero- and five-shot, on the refreshed golden set"
            )
            run(job, cfg)
        action = recommendation(cfg)
        memo = workdir / f"memo-{FINETUNE}.md"
        memo.write_text(
            assess_finetune(store, cfg, FINETUNE).memo(when=utcnow().strftime("%Y-%m-%d %H:%M UTC"))
        )
        outcome.memo = memo
        say(f"      memo written to {memo}")
        costs = _cost_sentences(store)
        if costs:
            say(f"      {costs}")
        say(f"      history: {' -> '.join(outcome.recommendations)} (now {action})")

        # --- 4 ---------------------------------------------------------------------------------------
        say("\n[4/4] Webhooks, from the outbox to the local receiver (signatures checked):")
        outcome.webhooks = _deliver(store, declared, receiver)
        for line in outcome.webhooks:
            say(f"      {line}")
        if receiver is not None:
            say(f"      (log: {receiver.log_path})")
        if show_table is not None:
            show_table(status_entries(store))
    return outcome


def _score(run: Any) -> str:
    metrics = run.metrics or {}
    for name in ("acc", "json_fields", "exact_match"):
        value = metrics.get(name)
        if isinstance(value, dict) and value.get("value") is not None:
            return f"{name} {value['value']:.3f} ± {value.get('stderr') or 0:.3f}"
    return run.status


def _verdict(store: Any, cfg: Any) -> str:
    from monitor.analysis.regression import latest_verdicts

    model_id = store.get_model(FINETUNE).id
    for v in latest_verdicts(store, model_id):
        if v.evalset_name == "ticket-routing":
            return f"{v.state} (delta {v.delta:+.3f}, {v.mode})" if v.delta is not None else v.state
    return "none"


def _input_drift(store: Any) -> bool | None:
    from monitor.service.after_job import latest_findings

    for record, name in latest_findings(store):
        if name == FINETUNE and record.kind == "input":
            return None if record.state == "error" else bool(record.drifted)
    return None


def _cost_sentences(store: Any) -> str:
    from monitor.analysis.recommend import latest_recommendations

    for record, name in latest_recommendations(store):
        if name == FINETUNE:
            return " ".join((record.costs or {}).get("sentences", [])[:2])
    return ""


def _deliver(store: Any, cfg: Any, receiver: DemoReceiver | None) -> list[str]:
    from monitor.exporters.webhooks import WebhookSender

    if receiver is None or not cfg.webhooks.endpoints:
        return []
    with WebhookSender(store, cfg.webhooks) as sender:
        for _ in range(20):
            counts = sender.deliver_due()
            if counts.due == 0:
                break
            time.sleep(0.2)
    return list(receiver.lines)


def demo_secret_env() -> dict[str, str]:
    """The environment the demo's processes need for the receiver's secret."""
    return {SECRET_ENV: SECRET}


def _landed_a_while_ago(folder: Path, cfg: Any) -> None:
    """Date the copied release back past the watcher's settle time, as a release that finished landing.

    The watcher skips a folder changed within ``settle`` (it may still be being written); the story
    scans right after copying, and a freshly built model's files are only seconds old.
    """
    watch = cfg.families[FAMILY].watch
    settled = time.time() - (watch.settle.total_seconds() if watch is not None else 0) - 1
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (settled, settled))
