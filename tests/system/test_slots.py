"""``monitor run JOB --slot``: several claimants at once, on SQLite and a real PostgreSQL, each fire
made once; a claimant killed mid-fire is completed by the next one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import TinyModels
from tests.helpers.pg import free_port, postgres_server, postgres_url  # noqa: F401  (fixtures)

CHOICES = ["billing", "technical", "account", "shipping"]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitor.db'}"
    return str(request.getfixturevalue("postgres_url"))


def write_setup(root: Path, tiny: TinyModels, db_url: str, items: int) -> Path:
    es = root / "evals" / "mc"
    es.mkdir(parents=True)
    (es / "evalset.yaml").write_text(
        f'name: mc\ntask: multiple_choice\nprompt: "Ticket: {{input}}\\nCategory:"\nchoices: {json.dumps(CHOICES)}\n'
    )
    (es / "data.jsonl").write_text(
        "".join(
            json.dumps({"id": f"m{k}", "input": f"ticket {k}", "target": CHOICES[k % 4]}) + "\n"
            for k in range(items)
        )
    )
    config = root / "monitor.yaml"
    config.write_text(
        f"""\
database: "{db_url}"
models:
  router: {{base: {tiny.gpt2}, adapter: {tiny.lora}}}
  base: {{base: {tiny.gpt2}}}
evalsets:
  mc: evals/mc
jobs:
  nightly:
    models: [router, base]
    evalsets: [mc]
    schedule: {{cron: "0 3 * * *"}}
daemon:
  chunk_size: 4
  lease_ttl: 30s
"""
    )
    return config


def claimant(config: Path, slot: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "monitor",
            "run",
            "nightly",
            "--slot",
            slot,
            "--config",
            str(config),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=log.open("ab"),
        env=env,
        cwd=config.parent,
    )


def rows(db_url: str, sql: str) -> list[tuple]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql)).all()]
    except Exception:
        return []
    finally:
        engine.dispose()


def check_once(db_url: str, fires: int) -> None:
    assert rows(db_url, "select count(*), count(distinct key) from fires where status = 'done'") == [
        (fires, fires)
    ]
    assert rows(db_url, "select count(*) from runs where status <> 'succeeded'") == [(0,)]
    per_fire = rows(db_url, "select fire_id, count(*) from runs group by fire_id")
    assert len(per_fire) == fires and all(n == 2 for _, n in per_fire)  # two models, one eval set
    for run_id, total in rows(db_url, "select id, items_total from runs"):
        stored = rows(
            db_url, f"select count(*), count(distinct item_id) from item_results where run_id = {run_id}"
        )
        assert stored == [(total, total)]


def test_claimants_started_at_once_make_each_fire_once(
    tiny_models: TinyModels, tmp_path: Path, db_url: str
) -> None:
    config = write_setup(tmp_path, tiny_models, db_url, items=40)
    log = tmp_path / "claimants.log"
    procs = [claimant(config, slot, log) for slot in ("2026-03-01", "2026-03-01", "auto", "auto")]
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, log.read_text()[-3000:]
        outputs.append(json.loads(out))
    text_log = log.read_text()
    assert "Traceback" not in text_log
    by_slot: dict[str, list[str]] = {}
    for body in outputs:
        by_slot.setdefault(body["fire"], []).append(body["outcome"])
    assert len(by_slot) == 2  # the named slot and today's scheduled time
    for outcomes in by_slot.values():
        assert outcomes.count("ran") == 1 and set(outcomes) <= {"ran", "held", "done"}
    check_once(db_url, fires=2)


def test_a_claimant_killed_mid_fire_is_completed_by_the_next(
    tiny_models: TinyModels, tmp_path: Path, db_url: str
) -> None:
    config = write_setup(tmp_path, tiny_models, db_url, items=400)
    log = tmp_path / "claimants.log"
    first = claimant(config, "s1", log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not rows(db_url, "select 1 from runs where items_done >= 8"):
        assert first.poll() is None, log.read_text()[-3000:]
        time.sleep(0.1)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    (done_before,) = rows(db_url, "select count(*) from item_results")[0]
    assert 0 < done_before < 800
    second = claimant(config, "s1", log)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, log.read_text()[-3000:]
    body = json.loads(out)
    assert body["outcome"] == "ran" and body["claim"] == "resumed" and body["fire"] == "nightly#slot-s1"
    assert "resumed fire nightly#slot-s1, left open by a claimant that died" in log.read_text()
    check_once(db_url, fires=1)
    # a third claimant of the same slot finds it done
    third = claimant(config, "s1", log)
    out, _ = third.communicate(timeout=300)
    assert third.returncode == 0 and json.loads(out)["outcome"] == "done"
