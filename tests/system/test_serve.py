"""``monitor serve`` as a process: the API and /metrics over a store that ``monitor run --slot`` fills."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import TinyModels
from tests.helpers.pg import free_port
from tests.system.test_slots import write_setup


def test_serve_answers_over_a_store_filled_by_slot_runs(tiny_models: TinyModels, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'monitor.db'}"
    config = write_setup(tmp_path, tiny_models, db_url, items=8)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    ran = subprocess.run(
        [sys.executable, "-m", "monitor", "run", "nightly", "--slot", "s1", "--config", str(config)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor", "serve", "--config", str(config), "--port", str(port)],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "monitor serve: metrics at" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert client.get("/readyz").json() == {"ready": True, "checks": {"store": True}}
            metrics = client.get("/metrics").text
            assert 'monitor_score{evalset="mc",metric="acc",model="router",strategy="zero-shot"}' in metrics
            assert 'monitor_job_interval_seconds{job="nightly"} 86400.0' in metrics
            assert {s["model"] for s in client.get("/api/v1/status").json()["series"]} == {"router", "base"}
            fires = client.get("/api/v1/fires").json()["fires"]
            assert [(f["job"], f["status"]) for f in fires] == [("nightly", "done")]
            refused = client.post("/api/v1/jobs/nightly/run")
            assert refused.status_code == 409 and "monitor run JOB --slot" in refused.json()["error"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in log.read_text()
