"""The demo's aging story, end to end: real models, real SQLite, the real watcher, real webhooks over
loopback to the demo's signature-checking receiver.

The fast test runs the story on the toy models (TINY_RECIPE): it checks the
mechanics (every chapter runs, the release is found and evaluated, the memo is
written, every event arrives signed), not the verdicts, which toy models
cannot make.  The ``slow`` test runs it on the real demo models and checks the
story itself: keep, then a confirmed regression and retrain, then rebase onto v2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from monitor.config import load_config
from monitor.demo.receiver import DemoReceiver
from monitor.demo.story import (
    FINETUNE,
    RELEASE,
    SECRET,
    SECRET_ENV,
    StoryOutcome,
    prepare_workdir,
    tell_story,
    write_demo_config,
)
from monitor.store import Store


def tell(
    workdir: Path, models: Any, monkeypatch: pytest.MonkeyPatch, *, triage_items: int | None = None
) -> tuple[StoryOutcome, DemoReceiver, Path]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    prepare_workdir(workdir)
    if triage_items is not None:  # toy models babble to max_new_tokens: keep generation short
        triage = workdir / "evals" / "ticket-triage" / "data.jsonl"
        triage.write_text("".join(triage.read_text().splitlines(keepends=True)[:triage_items]))
    receiver = DemoReceiver(SECRET, workdir / "webhooks.log").start()
    try:
        config = write_demo_config(workdir, models, port=0, receiver_url=receiver.url)
        lines: list[str] = []
        outcome = tell_story(workdir, config, models, receiver=receiver, say=lines.append)
    finally:
        receiver.stop()
    assert any("[4/4]" in line for line in lines), lines
    return outcome, receiver, config


def test_the_story_runs_every_chapter_on_real_models(
    tiny_demo: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = tmp_path / "demo"
    outcome, receiver, config = tell(workdir, tiny_demo, monkeypatch, triage_items=12)

    assert len(outcome.recommendations) == 3 and outcome.recommendations[0] == "keep"
    assert outcome.releases == [RELEASE]
    assert outcome.memo is not None and outcome.memo.read_text().startswith(f"# {FINETUNE}: ")
    assert len(outcome.verdicts) == 2 and len(outcome.input_drift) == 2

    # Every event reached the receiver signed and was verified; the log is on disk.
    assert outcome.webhooks and all("signature ok" in line for line in outcome.webhooks)
    types = {line.split()[1] for line in outcome.webhooks}
    assert {"recommendation.changed", "release.discovered"} <= types
    assert (workdir / "webhooks.log").read_text().splitlines() == receiver.lines

    cfg = load_config(config)
    store = Store.open(cfg.database_url())
    try:
        (release,) = store.releases()
        assert release.name == RELEASE and release.evaluated_at is not None
        series = {(name, run.evalset_name, run.strategy, run.trigger) for run, name in store.runs()}
        for model in (RELEASE, "base-v1"):
            for strategy in ("zero-shot", "5-shot"):
                assert (model, "ticket-routing", strategy, "demo") in series
        assert len([1 for run, name in store.runs(model=FINETUNE)]) == 6  # 3 nights x 2 golden sets
    finally:
        store.close()
    assert (workdir / "baselines" / FINETUNE / "ticket-routing.json").exists()
    assert_memo_agrees_with_the_metrics(outcome, config)

    # The block of next commands names the story's real runs, and its report command draws every chart.
    from monitor.demo.run import next_commands

    block = "\n".join(next_commands(workdir, config))
    assert "monitor diff 3 5 -c" in block and f"report {FINETUNE} -c" in block, block
    from typer.testing import CliRunner

    from monitor.cli.main import app
    from tests.system.test_report import check_rendered, chromium, render_in_chromium

    report = workdir / "report.html"
    result = CliRunner().invoke(app, ["report", FINETUNE, "-c", str(config), "-o", str(report)])
    assert result.exit_code == 0, result.output
    assert f"recommendation: {outcome.recommendations[-1]}" in result.stdout, result.output
    if chromium() is not None:
        assert check_rendered(*render_in_chromium(report)) >= 4

    # Telling it again starts afresh: no history, releases or baselines are left (the models stay).
    prepare_workdir(workdir)
    assert not (workdir / "monitor.db").exists() and not (workdir / "baselines").exists()
    assert list((workdir / "releases").iterdir()) == [] and (workdir / "evals" / "ticket-routing").is_dir()


def test_a_tampered_delivery_is_rejected_by_the_receiver(tmp_path: Path) -> None:
    from monitor.exporters.webhooks import webhook_headers

    receiver = DemoReceiver(SECRET, tmp_path / "webhooks.log")
    body = json.dumps({"type": "drift.detected", "data": {"model": "m"}}).encode()
    headers = webhook_headers(SECRET, "msg_1", int(__import__("time").time()), body)
    assert receiver.receive(headers, body) == 204
    assert receiver.receive(headers, body) == 204  # a retry of the same id: logged as a duplicate
    assert receiver.receive(headers, body.replace(b'"m"', b'"x"')) == 401
    log = (tmp_path / "webhooks.log").read_text().splitlines()
    assert "signature ok" in log[0] and "duplicate" in log[1] and "REJECTED" in log[2]


@pytest.mark.slow
def test_the_full_story_keep_retrain_rebase(
    full_demo: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome, _, config = tell(tmp_path / "demo", full_demo, monkeypatch)
    assert outcome.recommendations == ["keep", "retrain", "rebase"], outcome
    assert outcome.verdicts[0].startswith("suspect") and outcome.verdicts[1].startswith("regressed"), outcome
    assert outcome.input_drift == [False, True], outcome
    memo = outcome.memo.read_text() if outcome.memo else ""
    assert "# ticket-router: rebase" in memo and RELEASE in memo and "USD" in memo
    # the fine-tune is 25 points down: keeping it is ruled out, never "the cheapest option"
    costs = assert_memo_agrees_with_the_metrics(outcome, config)
    assert costs["options"]["keep"]["qualifies"] is False and costs["cheapest"] != "keep"
    assert "Ruled out on quality, so never the cheapest: keep (the fine-tune)" in memo
    types = [line.split()[1] for line in outcome.webhooks]
    assert types.count("recommendation.changed") == 3
    assert {"drift.detected", "regression.confirmed", "release.discovered"} <= set(types)
    assert os.environ[SECRET_ENV] == SECRET


def assert_memo_agrees_with_the_metrics(outcome: StoryOutcome, config: Path) -> dict[str, Any]:
    """The memo's decision, its cost paragraph and the metrics agree: one monthly figure per option,
    the cheapest named only among the options that qualify, no sentence twice."""
    from prometheus_client import CollectorRegistry

    from monitor.analysis.costs import format_money
    from monitor.analysis.recommend import memo_sentences
    from monitor.exporters import StoreCollector

    memo = outcome.memo.read_text() if outcome.memo else ""
    sentences = memo_sentences(memo)
    assert len(sentences) == len(set(sentences)), [s for s in sentences if sentences.count(s) > 1]
    cfg = load_config(config)
    store = Store.open(cfg.database_url())
    try:
        ((record, model),) = [(r, m) for r, m in store.latest_recommendations() if m == FINETUNE]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StoreCollector(store))
        costs = record.costs
        assert memo.startswith(f"# {FINETUNE}: {record.action}")
        assert costs["recommended"] == record.action
        for option, cost in costs["options"].items():
            value = registry.get_sample_value(
                "monitor_option_cost_per_month", {"model": model, "option": option, "currency": "USD"}
            )
            assert value == pytest.approx(cost["total_per_month"])
            assert f"| {format_money(cost['total_per_month'], 'USD').split()[0]} |" in memo
        cheapest = costs["cheapest"]
        if cheapest is not None:
            assert costs["options"][cheapest]["qualifies"] is True
            assert f"the cheapest over the first year is {cheapest} " in memo
        for option in costs["ruled_out"]:
            assert f"the cheapest over the first year is {option} " not in memo
    finally:
        store.close()
    return dict(costs)


def test_the_demo_never_clears_a_folder_it_did_not_make(tmp_path: Path) -> None:
    from monitor.errors import InputError

    mine = tmp_path / "mine"
    (mine / "evals").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match=r"holds files the demo did not write \(evals, notes.txt\)"):
        prepare_workdir(mine)
    assert (mine / "notes.txt").read_text() == "keep me" and (mine / "evals").is_dir()
    # A folder the demo made is its own: the next demo starts it afresh.
    ours = tmp_path / "ours"
    prepare_workdir(ours)
    (ours / "monitor.db").write_text("old history")
    prepare_workdir(ours)
    assert not (ours / "monitor.db").exists()


def test_the_demo_configuration_passes_check_config_as_is(
    tiny_demo: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from monitor.cli.main import app
    from monitor.demo.build import link_stable_paths

    monkeypatch.delenv(SECRET_ENV, raising=False)
    workdir = tmp_path / "demo-output"
    prepare_workdir(workdir)
    (workdir / "models").mkdir()
    models = link_stable_paths(tiny_demo, workdir / "models")
    assert models.base_v1 == workdir / "models" / "base-v1" and models.base_v1.resolve() == tiny_demo.base_v1
    config = write_demo_config(workdir, models, port=0)
    assert "models/base-v1" in config.read_text() and "demo-models-" not in config.read_text()
    result = CliRunner().invoke(app, ["check-config", "-c", str(config)])
    assert result.exit_code == 0, result.output
    # --memo into a folder that does not exist is an error, and nothing is created
    memo = tmp_path / "nope" / "memo.md"
    result = CliRunner().invoke(app, ["recommend", "-c", str(config), "--memo", str(memo)])
    assert result.exit_code != 0 and f"--memo {memo}: folder {memo.parent} does not exist" in result.stderr
    assert not memo.parent.exists() and not (workdir / "monitor.db").exists()
