"""The daemon's console line when a run starts (the finished lines are tested with the report's views)."""

from __future__ import annotations

import io
from pathlib import Path

from monitor.api.views import EventLines
from monitor.service.daemon import Daemon, WorkItem
from monitor.store import Store
from tests.unit.test_daemon import ScriptedBackend, make_config, pool_for


def test_each_run_gets_a_started_line(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path,
        {"nightly": {"models": ["router"], "evalsets": ["routing"], "schedule": {"every": "6h"}}},
        items=8,
        chunk=4,
    )
    out = io.StringIO()
    lines = EventLines(out=out)
    with Store.open(cfg.database_url()) as store:
        daemon = Daemon(cfg, store, pool=pool_for(ScriptedBackend()), manual_timer=True)
        daemon.on_run_started = lines.started
        daemon.start()
        try:
            daemon.enqueue(WorkItem("nightly", "manual"))
            assert daemon.wait_idle(20)
            ((run, _),) = store.runs()
        finally:
            daemon.shutdown()
    printed = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]
    assert printed == [f"run {run.id} router routing zero-shot: started (8 items)"]
