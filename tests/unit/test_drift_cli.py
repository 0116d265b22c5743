"""``monitor drift`` and ``monitor report drift`` on repeated traffic: the verdict and the repetition it shows."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from typer.testing import CliRunner

from monitor.cli import app
from tests.unit.test_drift_repeated import REFERENCE, messages, resampled


def write_setup(tmp_path: Path, window: list[str]) -> Path:
    now = datetime.now(timezone.utc)
    (tmp_path / "base").mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    lines = [
        json.dumps({"timestamp": (now - timedelta(minutes=5 * (i + 1))).isoformat(), "input": text})
        for i, text in enumerate(window)
    ]
    (logs / "traffic.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "train.jsonl").write_text(
        "\n".join(json.dumps({"input": t}) for t in REFERENCE) + "\n", encoding="utf-8"
    )
    config = tmp_path / "monitor.yaml"
    config.write_text(
        """\
database: sqlite:///state/monitor.db
models:
  router:
    base: ./base
    drift:
      source: {kind: jsonl, path: logs}
      reference: {kind: training, path: train.jsonl}
      embeddings: false
""",
        encoding="utf-8",
    )
    return config


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout


def test_drift_command_shows_the_repetition_of_an_unchanged_window(tmp_path: Path) -> None:
    window = resampled(messages(150, seed=7), 800, seed=3)
    config = write_setup(tmp_path, window)
    distinct = len(set(window))

    code, stdout = invoke("drift", "--config", str(config))
    assert code == 0, stdout
    header, row, *details = stdout.strip().splitlines()
    assert header.split("\t") == [
        "model",
        "source",
        "state",
        "score",
        "threshold",
        "repeated rows (ref / cur)",
        "reason",
    ]
    cells = row.split("\t")
    assert cells[2] == "ok"
    repeated = f"{100 * (800 - distinct) / 800:.0f}%"
    assert cells[5] == f"0% / {repeated}"
    classifier = next(line for line in details if line.startswith("router: domain classifier ok: AUC"))
    assert classifier.endswith(
        f"repeated rows: reference 0% of 200 (200 distinct), current {repeated} of 800 ({distinct} distinct)"
    )
    assert any(line.startswith("router: descriptors ok: 0 of 5 drifted") for line in details)

    code, stdout = invoke("drift", "--config", str(config), "--json")
    assert code == 0
    (finding,) = json.loads(stdout)
    assert finding["state"] == "ok" and finding["triggered_by"] == []
    assert finding["repetition"]["current"] == {
        "rows": 800,
        "distinct": distinct,
        "repeated_share": round((800 - distinct) / 800, 4),
        "top_share": finding["repetition"]["current"]["top_share"],
    }
    assert finding["repetition"]["reference"]["repeated_share"] == 0.0


def test_report_drift_names_what_the_html_shows(tmp_path: Path) -> None:
    drifted = resampled(messages(150, seed=8, drift=1.0), 800, seed=4)
    config = write_setup(tmp_path, drifted)
    code, stdout = invoke(
        "report", "drift", "router", "--config", str(config), "-o", str(tmp_path / "r.html")
    )
    assert code == 0, stdout
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("router: drifted (score ")
    assert any(line.startswith("router: domain classifier drifted: AUC") for line in lines)
    assert "distinct texts" in lines[-1]
    assert (tmp_path / "r.html").stat().st_size > 10_000
