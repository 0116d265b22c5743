"""What a new user meets in the first hour (issue 15): messages that say what is wrong, once."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from typer.testing import CliRunner

from monitor.cli import app
from tests.unit.test_drift_cli import write_setup
from tests.unit.test_drift_repeated import messages


def test_a_drift_error_counts_each_repeated_problem_once_in_the_stored_reason(tmp_path: Path) -> None:
    config = write_setup(tmp_path, messages(150, seed=8, drift=0.0))
    now = datetime.now(timezone.utc)
    log = tmp_path / "logs" / "traffic.jsonl"
    lines = log.read_text().splitlines()
    lines += [json.dumps({"input": f"no time {i}"}) for i in range(800)]
    lines += [json.dumps({"timestamp": (now - timedelta(minutes=1)).isoformat()}), "not json"]
    log.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(app, ["drift", "router", "--config", str(config), "--json"])
    assert result.exit_code == 1, result.output
    (row,) = json.loads(result.stdout)
    reason = row["reason"]
    first = len(lines) - 801  # the first line without a timestamp (1-based: 150 good lines before it)
    assert row["state"] == "error"
    assert "802 bad line(s) in the production log" in reason, reason
    assert f"800 lines: no 'timestamp' field (first at {log}:{first})" in reason, reason
    assert (
        f"{log}:{len(lines) - 1}: no 'input' field" in reason
        and f"{log}:{len(lines)}: invalid JSON" in reason
    )
    assert reason.count("no 'timestamp' field") == 1 and len(reason) < 600, reason


def test_a_mistyped_command_gets_a_did_you_mean() -> None:
    result = CliRunner().invoke(app, ["stauts"])
    assert result.exit_code == 2 and "No such command 'stauts'. Did you mean 'status'?" in result.output
    result = CliRunner().invoke(app, ["releases", "lsit"])
    assert result.exit_code == 2 and "Did you mean 'list'?" in result.output
