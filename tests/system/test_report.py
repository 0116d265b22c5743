"""``monitor report MODEL``: the HTML page opens in a real headless Chromium, offline, and every chart draws.

The history is written through the store's own methods (a fine-tune whose routing score drops over six
nights, with verdicts, a drift check a night, and a recommendation with challengers and a cost case),
the page is written by the CLI, and Debian's ``chromium`` opens it from a file with the network off:
each chart must have drawn an SVG with marks on it, and the page must have raised no error. The
screenshot goes to ``docs/images/report.png`` when ``MONITOR_REPORT_SCREENSHOT`` names a path (the
README's picture is made so from the demo's real history, see docs/report.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from monitor.cli.main import app
from monitor.evals.results import ItemResult
from monitor.store import Store, utcnow
from monitor.store.tables import DriftRecord, VerdictRecord

MODEL = "ticket-router"


def chromium() -> str | None:
    """Debian's chromium, or another Chromium on PATH."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def write_history(db: Path) -> str:
    """Six nights of a fine-tune on two eval sets, verdicts on each, a drift check a night, a recommendation."""
    url = f"sqlite:///{db}"
    with Store.open(url) as store:
        model = store.upsert_model(MODEL, kind="hf", base="base-v1", adapter="lora-v1")
        assert model.id is not None
        now = utcnow()
        first_run = None
        for evalset, start in (("ticket-routing", 0.95), ("ticket-triage", 0.99)):
            version = store.ensure_evalset_version(
                evalset, "v1", task="multiple_choice", path=evalset, item_count=40
            )
            for night in range(6):
                value = start - (0.06 * max(0, night - 2) if evalset == "ticket-routing" else 0.0)
                run = store.start_run(
                    model=model,
                    evalset=version,
                    strategy="zero-shot",
                    fewshot_k=0,
                    settings_digest="d1",
                    settings={},
                    trigger="schedule",
                    items_total=40,
                    model_fingerprint="sha256:abc",
                )
                assert run.id is not None
                right = round(value * 40)
                store.add_item_results(
                    run.id,
                    [
                        ItemResult(
                            f"item-{i}", "billing" if i < right else "shipping", "billing", correct=i < right
                        )
                        for i in range(40)
                    ],
                )
                stderr = (value * (1 - value) / 40) ** 0.5
                store.finish_run(
                    run.id, status="succeeded", metrics={"acc": {"value": value, "stderr": stderr}}
                )
                store.update_run(run.id, finished_at=now - timedelta(days=6 - night))
                if night == 0:
                    first_run = run.id
                    base_run = run.id
                    continue
                delta = value - start
                state = "ok" if delta > -0.05 else ("suspect" if night == 3 else "regressed")
                store.add_verdicts(
                    [
                        VerdictRecord(
                            run_id=run.id,
                            model_id=model.id,
                            evalset_name=evalset,
                            strategy="zero-shot",
                            metric="acc",
                            baseline_run_id=base_run,
                            mode="paired",
                            delta=delta,
                            ci_low=delta - 0.05,
                            ci_high=delta + 0.05,
                            p_value=0.5 if state == "ok" else 0.001,
                            state=state,
                            reason=f"{delta * 100:+.1f} points against the baseline (95% CI a wide interval)",
                            details={"newly_broken": max(0, 38 - right)},
                            created_at=now,
                        )
                    ]
                )
        for night in range(6):
            score = 0.5 + 0.05 * night
            store.add_findings(
                [
                    DriftRecord(
                        model_id=model.id,
                        kind="input",
                        source="traffic",
                        score=score,
                        threshold=0.6,
                        p_value=0.01 if score > 0.6 else 0.5,
                        drifted=score > 0.6,
                        state="drifted" if score > 0.6 else "ok",
                        reason="domain classifier AUC",
                        details={},
                        created_at=now - timedelta(days=6 - night),
                    )
                ]
            )
        store.add_recommendation(
            model.id,
            action="retrain",
            summary="retrain",
            reasons=["ticket-routing regressed: -18.0 points (95% CI -23.0 to -13.0)"],
            evidence={
                "challengers": [
                    {
                        "release": "ticket-base-v2",
                        "strategy": "5-shot",
                        "evalset": "ticket-routing",
                        "metric": "acc",
                        "challenger_score": 0.58,
                        "finetune_score": 0.77,
                        "vs_finetune": {
                            "delta": -0.19,
                            "ci_low": -0.26,
                            "ci_high": -0.12,
                            "p_value": 0.001,
                            "n": 40,
                        },
                        "vs_old_base": None,
                    }
                ]
            },
            costs={
                "currency": "USD",
                "requests_per_day": 20000,
                "cheapest": "retrain",
                "sentences": ["Re-training costs 120 USD."],
                "options": {
                    name: {
                        "option": name,
                        "label": label,
                        "inference_per_month": inference,
                        "upkeep_per_month": upkeep,
                        "total_per_month": inference + upkeep,
                        "one_time": one_time,
                        "qualifies": qualifies,
                        "condition": None if qualifies else "needs 5 points over the fine-tune",
                    }
                    for name, label, inference, upkeep, one_time, qualifies in (
                        ("keep", "the fine-tune", 45.0, 40.0, 0.0, False),
                        ("retrain", "the fine-tune re-trained", 45.0, 40.0, 120.0, True),
                        ("retire", "few-shot on v2", 235.0, 0.0, 0.0, False),
                    )
                },
            },
        )
        assert first_run is not None
    return url


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("report")
    url = write_history(folder / "monitor.db")
    output = folder / "report.html"
    result = CliRunner().invoke(
        app,
        ["report", MODEL, "--db", url, "--output", str(output), "-c", str(folder / "none.yaml"), "--json"],
    )
    assert result.exit_code == 0, result.output
    return output, json.loads(result.stdout)


def test_the_report_holds_every_section(page: tuple[Path, dict[str, Any]]) -> None:
    path, data = page
    text = path.read_text()
    assert len(data["series"]) == 2 and all(len(s["points"]) == 6 for s in data["series"])
    assert data["recommendation"]["action"] == "retrain"
    assert [v["state"] for v in data["verdicts"]] == ["regressed", "ok"]
    assert (
        data["newly_broken"][0]["count"] > 0 and data["newly_broken"][0]["items"][0]["output"] == "shipping"
    )
    assert len(data["drift"]) == 6
    for heading in (
        "Score over time",
        "Verdicts against the baseline",
        "Challengers against the fine-tune",
        "Cost options",
        "Newly broken items",
        "Input drift",
        "RETRAIN",
    ):
        assert heading in text, heading
    assert "(ruled out)" in text
    # Self-contained: Plotly is inlined, nothing is fetched.
    assert not re.search(r"<script[^>]+src=", text) and not re.search(r"<link[^>]+href=", text)


def test_report_errors_are_one_line(tmp_path: Path) -> None:
    url = write_history(tmp_path / "monitor.db")
    missing = CliRunner().invoke(app, ["report", "nobody", "--db", url, "-c", str(tmp_path / "none.yaml")])
    assert missing.exit_code != 0 and "no runs recorded for model 'nobody'" in missing.stderr
    assert "Traceback" not in missing.output
    folder = CliRunner().invoke(
        app,
        [
            "report",
            MODEL,
            "--db",
            url,
            "-o",
            str(tmp_path / "nope" / "r.html"),
            "-c",
            str(tmp_path / "x.yaml"),
        ],
    )
    assert folder.exit_code != 0 and "does not exist" in folder.stderr
    nothing = CliRunner().invoke(app, ["report", MODEL, "--db", f"sqlite:///{tmp_path}/absent.db"])
    assert nothing.exit_code != 0 and not (tmp_path / "absent.db").exists()


def render_in_chromium(html: Path, screenshot: Path | None = None) -> tuple[str, str]:
    """Open ``html`` in headless Chromium offline; return the DOM after the scripts ran, and its stderr."""
    binary = chromium()
    assert binary is not None
    profile = html.parent / "chromium-profile"
    base = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        "--proxy-server=127.0.0.1:9",  # offline: any network fetch fails
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=15000",
        "--window-size=1200,2400",
    ]
    dom = subprocess.run(
        [*base, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120, check=True
    )
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [*base, "--hide-scrollbars", f"--screenshot={screenshot}", html.as_uri()],
            capture_output=True,
            timeout=120,
            check=True,
        )
    return dom.stdout, dom.stderr


def check_rendered(dom: str, console: str) -> int:
    """Every chart drew an SVG with marks and nothing raised; the number of charts."""
    assert 'data-charts-done="' in dom, "the page's scripts did not finish"
    charts = re.findall(r'<div class="chart[^"]*" id="([^"]+)"[^>]*data-points="(\d+)"', dom)
    expected = re.findall(r'<div class="chart[^"]*" id="([^"]+)"', dom)
    assert expected and [c for c, _ in charts] == expected, (expected, charts)
    assert all(int(n) > 0 for _, n in charts), charts
    for chart in expected:
        body = dom.split(f'id="{chart}"', 1)[1]
        assert "<svg" in body.split('<div class="chart', 1)[0], f"no SVG in chart {chart}"
    errors = re.search(r'<pre id="report-errors">(.*?)</pre>', dom, re.S)
    assert errors is not None and errors.group(1).strip() == "", errors.group(1) if errors else dom[-500:]
    console_errors = [
        line
        for line in console.splitlines()
        if "CONSOLE" in line and re.search(r"error|Uncaught", line, re.I)
    ]
    assert not console_errors, console_errors
    return len(expected)


def test_every_chart_renders_in_headless_chromium(page: tuple[Path, dict[str, Any]]) -> None:
    if chromium() is None:
        message = (
            "chromium is not installed (apt-get install chromium; bash deploy/bootstrap.sh setup does it)"
        )
        if os.environ.get("MONITOR_TEST_CHROMIUM_REQUIRED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    path, _ = page
    target = os.environ.get("MONITOR_REPORT_SCREENSHOT")
    screenshot = Path(target) if target else path.with_suffix(".png")
    dom, console = render_in_chromium(path, screenshot)
    # 2 score series, the challengers, the costs, the drift
    assert check_rendered(dom, console) == 5
    assert screenshot.stat().st_size > 10_000


def test_the_daemon_console_prints_one_line_per_event(tmp_path: Path) -> None:
    import io

    from monitor.api.views import EventLines, status_entries

    out = io.StringIO()
    lines = EventLines(f"sqlite:///{tmp_path / 'monitor.db'}", out=out)
    lines.prime([])  # before the database exists: everything after is news
    url = write_history(tmp_path / "monitor.db")
    with Store.open(url) as store:
        entries = status_entries(store)
    lines(entries)
    printed = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]
    assert (
        "run 6 ticket-router ticket-routing zero-shot: succeeded, acc 0.7700 ± 0.0665, regressed (-0.180)"
        in printed
    )
    assert any(
        line.startswith("recommendation for ticket-router: retrain: ticket-routing regressed")
        for line in printed
    )
    assert len(printed) == 3  # two series, one recommendation: no table
    lines(entries)  # nothing new: nothing printed
    assert len(out.getvalue().splitlines()) == 3
