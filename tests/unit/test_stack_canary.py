"""The "stack changed" canary: the same weights behind another tokenizer, chat template or server
version are told apart from new weights, reported with the entries that changed, and queue one
confirmation run of the job per change."""

from __future__ import annotations

import shutil
from pathlib import Path

from monitor.analysis.baselines import pin_baseline
from monitor.analysis.behaviour import stack_changed
from monitor.backends import ModelSpec, load_backend
from monitor.service.after_job import analyze_run
from monitor.service.plan import plan_runs
from monitor.service.pool import ModelPool
from monitor.service.runs import execute_run
from monitor.store import Store
from tests.conftest import ChatModels
from tests.unit.test_daemon import make_config
from tests.unit.test_regression import RuleBackend

TEMPLATE_A = {"chat_template/rendered": "sha256:" + "a" * 64, "server/version": "0.6.3"}
TEMPLATE_B = TEMPLATE_A | {"chat_template/rendered": "sha256:" + "b" * 64}


def test_only_values_both_sides_know_can_change() -> None:
    assert stack_changed(TEMPLATE_A, dict(TEMPLATE_A), "the baseline run 1") is None
    # a server that was asked for less (no /version this time) is not a changed stack
    assert (
        stack_changed(TEMPLATE_A, {"chat_template/rendered": TEMPLATE_A["chat_template/rendered"]}, "x")
        is None
    )
    assert stack_changed(None, TEMPLATE_A, "x") is None and stack_changed(TEMPLATE_A, {}, "x") is None
    finding = stack_changed(TEMPLATE_A, TEMPLATE_B | {"server/version": "0.7.0"}, "the baseline run 1")
    assert finding is not None and finding.kind == "stack_changed"
    assert finding.message == (
        "the serving stack changed since the baseline run 1: chat_template/rendered sha256:aaaaaaaaaaaa -> "
        "sha256:bbbbbbbbbbbb; server/version 0.6.3 -> 0.7.0"
    )
    many = stack_changed({f"k{i}": "1" for i in range(7)}, {f"k{i}": "2" for i in range(7)}, "x")
    assert many is not None and many.message.endswith("(and 3 more)")


def _runs(tmp_path: Path) -> tuple[Store, Path, list[int]]:
    cfg = make_config(
        tmp_path, {"nightly": {"models": ["router"], "evalsets": ["routing"]}}, items=20, chunk=10
    )
    store = Store.open(cfg.database_url())
    (plan,) = plan_runs(cfg, ["nightly"], trigger="schedule")
    ids = []
    for stack in (TEMPLATE_A, TEMPLATE_B, TEMPLATE_B, TEMPLATE_A, TEMPLATE_B):
        backend = RuleBackend(lambda k: k % 5 != 0, stack=stack)
        run = execute_run(store, ModelPool(loader=lambda spec, b=backend: b), plan)  # type: ignore[arg-type,misc]
        assert run.id is not None and run.status == "succeeded", run.error
        ids.append(run.id)
    return store, tmp_path / "baselines", ids


def test_against_the_baseline_a_change_queues_one_confirmation_run(tmp_path: Path) -> None:
    store, root, ids = _runs(tmp_path)
    with store:
        pin_baseline(store, root, "router", "routing", ids[0])
        findings = []
        for run_id in ids:
            analysis = analyze_run(store, run_id, root)
            (stack,) = [f for f in analysis.findings if f.source == "stack"]
            (weights,) = [f for f in analysis.findings if f.source == "fingerprint"]
            assert not weights.drifted  # the same weights throughout
            findings.append(stack)
        assert [f.drifted for f in findings] == [False, True, True, False, True]
        assert findings[1].reason is not None and findings[1].reason.startswith(
            f"the serving stack changed since the baseline run {ids[0]}: chat_template/rendered"
        )
        assert findings[1].details is not None and findings[1].details["reference_run"] == ids[0]
        # one request per change: the second run on the changed stack queues nothing more
        requests = store.take_run_requests()
        assert [(r.job, r.requested_by) for r in requests] == [
            ("nightly", f"stack canary: confirm run {ids[1]}"),
            ("nightly", f"stack canary: confirm run {ids[4]}"),
        ]


def test_without_a_baseline_each_run_is_compared_with_the_previous_one(tmp_path: Path) -> None:
    store, root, ids = _runs(tmp_path)
    with store:
        drifted = []
        for run_id in ids:
            stack = [f for f in analyze_run(store, run_id, root).findings if f.source == "stack"]
            drifted.append(stack[0].drifted if stack else None)
        assert drifted == [None, True, False, True, True]  # the first run has nothing to compare with
        assert len(store.take_run_requests()) == 2  # runs 2 and 4 start a change; run 5 continues one


def test_a_real_model_whose_chat_template_changed_on_disk(chat_models: ChatModels, tmp_path: Path) -> None:
    """The tiny GPT-2 under one name, its tokenizer's chat template replaced between two runs: the
    weights' fingerprint is unchanged, the stack canary names the template."""
    served = tmp_path / "served"
    shutil.copytree(chat_models.chatml, served)
    before = load_backend(ModelSpec("hf", str(served), device="cpu", dtype="float32"))
    first = before.fingerprint()
    before.close()
    shutil.rmtree(served)
    shutil.copytree(chat_models.no_system, served)
    after = load_backend(ModelSpec("hf", str(served), device="cpu", dtype="float32"))
    second = after.fingerprint()
    after.close()
    assert first.digest == second.digest and first.stack_digest != second.stack_digest
    finding = stack_changed(first.stack, second.stack, "the previous run 1")
    assert finding is not None and "stack/chat_template.jinja sha256:" in finding.message
    assert "chat_template/rendered" in finding.message  # the probe conversation renders differently
