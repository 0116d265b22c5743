"""The daemon as a real process on real tiny models: kill -9 and resume, SIGTERM, the second instance."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import TinyModels

CHOICES = ["billing", "technical", "account", "shipping"]
ITEMS = 400
SIGTERM_ITEMS = 20_000


def write_setup(tmp_path: Path, tiny: TinyModels, items: int = ITEMS) -> Path:
    es = tmp_path / "evals" / "big"
    es.mkdir(parents=True)
    (es / "evalset.yaml").write_text(
        f'name: big\ntask: multiple_choice\nprompt: "Ticket: {{input}}\\nCategory:"\nchoices: {json.dumps(CHOICES)}\n'
    )
    words = ["refund", "crash", "login", "parcel", "invoice", "password", "screen", "address"]
    (es / "data.jsonl").write_text(
        "".join(
            json.dumps(
                {"id": f"i{k}", "input": f"{words[k % 8]} {words[(k * 7) % 8]} {k}", "target": CHOICES[k % 4]}
            )
            + "\n"
            for k in range(items)
        )
    )
    config = tmp_path / "monitor.yaml"
    config.write_text(
        f"""\
database: sqlite:///monitor.db
models:
  router: {{base: {tiny.gpt2}, adapter: {tiny.lora}}}
evalsets:
  big: evals/big
jobs:
  nightly:
    models: [router]
    evalsets: [big]
    schedule: {{every: 1h, run_at_start: true}}
daemon:
  port: 0
  chunk_size: 4
  lease_ttl: 60s
"""
    )
    return config


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, "-m", "monitor", "daemon", "--config", str(config)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=config.parent,
    )


def query(db: Path, sql: str) -> list[tuple]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(
                f"daemon exited ({proc.returncode}) while waiting for {what}:\n{log.read_text()[-3000:]}"
            )
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def test_kill_9_mid_run_then_resume_loses_and_repeats_nothing(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    config = write_setup(tmp_path, tiny_models)
    db, log = tmp_path / "monitor.db", tmp_path / "daemon.log"
    first = start_daemon(config, log)
    try:
        wait_for(
            lambda: bool(query(db, "select items_done from runs where items_done >= 40")),
            120,
            "items",
            first,
            log,
        )
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    before = dict(query(db, "select item_id, id from item_results"))
    assert 40 <= len(before) < ITEMS, "the run must be cut in the middle"
    assert query(db, "select status from runs") == [("running",)]

    second = start_daemon(config, log)
    try:
        wait_for(lambda: query(db, "select status from runs") == [("succeeded",)], 180, "resume", second, log)
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0
    finally:
        if second.poll() is None:
            second.kill()
    after = query(db, "select item_id, id from item_results")
    assert len(after) == ITEMS and len({item for item, _ in after}) == ITEMS
    # the items committed before the crash were kept as they were, not computed again
    assert {item: row for item, row in after if item in before} == before
    ((run_id, items_done, trigger),) = query(db, "select id, items_done, trigger from runs")
    assert items_done == ITEMS and trigger == "schedule"
    text = log.read_text()
    assert f"resuming run {run_id} of job nightly" in text


def test_sigterm_stops_within_seconds_and_a_second_daemon_is_refused(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    # a run long enough to be still going, whatever the machine's load, while the second daemon starts
    config = write_setup(tmp_path, tiny_models, items=SIGTERM_ITEMS)
    db, log = tmp_path / "monitor.db", tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    try:
        wait_for(
            lambda: bool(query(db, "select 1 from runs where items_done >= 8")), 120, "a run", daemon, log
        )
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        second = subprocess.run(
            [sys.executable, "-m", "monitor", "daemon", "--config", str(config)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
        assert second.returncode == 5
        assert "error: another monitor daemon is running against this database" in second.stderr
        assert "Traceback" not in second.stderr
        assert query(db, "select status from runs") == [("running",)]
        sent = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0
        assert time.monotonic() - sent < 10
    finally:
        if daemon.poll() is None:
            daemon.kill()
    ((status, done, error),) = query(db, "select status, items_done, error from runs")
    assert status == "interrupted" and 8 <= done < SIGTERM_ITEMS
    assert done == query(db, "select count(*) from item_results")[0][0]
    assert "stopped after" in error
    assert query(db, "select count(*) from daemon_lease where holder != ''") == [
        (0,)
    ]  # released on a clean stop


def test_sigterm_during_a_chunk_longer_than_the_timeout_exits_cleanly_and_records_the_run(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    # One chunk of 4,096 items takes far longer than a 1 s shutdown timeout: the worker is inside torch
    # when the signal comes, so the daemon must leave without waiting for it, and without SIGABRT.
    config = write_setup(tmp_path, tiny_models, items=SIGTERM_ITEMS)
    text = config.read_text().replace("chunk_size: 4", "chunk_size: 4096\n  shutdown_timeout: 1s")
    config.write_text(text)
    db, log = tmp_path / "monitor.db", tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    try:
        wait_for(
            lambda: bool(query(db, "select 1 from runs where status = 'running'")), 120, "a run", daemon, log
        )
        time.sleep(0.5)  # into the first chunk
        sent = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(20)
        took = time.monotonic() - sent
    finally:
        if daemon.poll() is None:
            daemon.kill()
    output = log.read_text()
    assert code == 0, output
    assert took < 10
    assert "terminate called" not in output and "Traceback" not in output
    assert "outlasted the shutdown timeout" in output
    ((status, done, error),) = query(db, "select status, items_done, error from runs")
    assert status == "interrupted" and done == query(db, "select count(*) from item_results")[0][0]
    assert "shutdown timeout (1s)" in error
    assert query(db, "select count(*) from daemon_lease where holder != ''") == [
        (0,)
    ]  # released through the database
