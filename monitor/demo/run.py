"""``monitor demo``: build the demo models (cached), write a demo configuration, run it.

By default the demo starts the daemon on a fast schedule (the fine-tune every
minute, the base-model challengers every two), prints where ``/metrics`` is
and shows the status table as runs land, until Ctrl-C.  ``--once`` runs every
job once instead and exits (what the tests and CI use).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..errors import NotFoundError

if TYPE_CHECKING:
    from .build import DemoModels

DEMO_PORT = 9464


def repo_evals() -> Path:
    """The eval sets shipped in the repository's ``evals/`` folder."""
    return Path(__file__).resolve().parents[2] / "evals"


def write_demo_config(
    workdir: Path, models: DemoModels, evals: Path, *, port: int = DEMO_PORT, fast: bool = True
) -> Path:
    """Write ``workdir/monitor.yaml`` for the demo models and the shipped eval sets."""
    routing, triage = evals / "ticket-routing", evals / "ticket-triage"
    for path in (routing, triage):
        if not (path / "evalset.yaml").exists():
            raise NotFoundError(
                f"the demo needs the eval set {path} (run the demo from a clone of the repository)"
            )
    m = models
    config = {
        "database": "sqlite:///monitor.db",
        "models": {
            "ticket-router": {"base": str(m.base_v1), "adapter": str(m.lora_v1), "strategy": "zero-shot"},
            "base-v1": {"base": str(m.base_v1), "strategy": "5-shot"},
            "base-v2": {"base": str(m.base_v2), "strategy": "5-shot"},
        },
        "evalsets": {"ticket-routing": str(routing), "ticket-triage": str(triage)},
        "jobs": {
            "fine-tune": {
                "models": ["ticket-router"],
                "evalsets": ["ticket-routing", "ticket-triage"],
                "schedule": {"every": "1m" if fast else "6h", "run_at_start": True},
            },
            "challengers": {
                "models": ["base-v1", "base-v2"],
                "evalsets": ["ticket-routing"],
                "strategies": ["zero-shot", "5-shot"],
                "schedule": {"every": "2m" if fast else "1d", "run_at_start": True},
            },
        },
        "daemon": {"port": port, "max_loaded_models": 3},
    }
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "monitor.yaml"
    header = "# Written by `monitor demo`: the demo's models, the shipped eval sets, a fast schedule.\n"
    path.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def run_demo(workdir: Path, *, rebuild: bool = False, once: bool = False, port: int = DEMO_PORT) -> Path:
    """Build (or load) the demo models, write the config, then run the daemon or every job once."""
    from ..cli import print_status, serve_daemon
    from ..config import load_config
    from ..execution import ModelPool, execute_run, plan_runs
    from ..store import Store
    from ..views import status_entries
    from .build import build_demo_models

    workdir = workdir.resolve()
    started = time.perf_counter()
    print(
        f"demo: building the demo models under {workdir / 'models'} (cached after the first time) ...",
        flush=True,
    )
    models = build_demo_models(workdir / "models", force=rebuild)
    state = "loaded from cache" if models.from_cache else "built"
    print(f"demo: models {state} in {time.perf_counter() - started:.0f} s", flush=True)
    config_path = write_demo_config(workdir, models, repo_evals(), port=port)
    print(f"demo: configuration written to {config_path}", flush=True)
    if not once:
        print("demo: starting the daemon; runs land every minute or two. Ctrl-C stops it.", flush=True)
        serve_daemon(config_path, show_status=True, log_level="warning")
        return config_path
    cfg = load_config(config_path)
    store = Store.open(cfg.database_url())
    pool = ModelPool(max_models=3)
    try:
        for plan in plan_runs(cfg, [], trigger="demo"):
            run = execute_run(store, pool, plan)
            suffix = f" ({run.error})" if run.error else ""
            print(
                f"demo: {plan.model_name} on {plan.evalset.name} ({run.strategy}): {run.status}{suffix}",
                flush=True,
            )
        print_status(status_entries(store))
    finally:
        pool.close()
        store.close()
    print(
        f"demo: done in {time.perf_counter() - started:.0f} s; database {workdir / 'monitor.db'}",
        file=sys.stderr,
    )
    return config_path
