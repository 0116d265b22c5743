"""Each recommendation path on constructed evidence."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from monitor.analysis.recommend import (
    ChallengerEvidence,
    DriftEvidence,
    Evidence,
    Interval,
    RegressionEvidence,
    decide,
    summarize,
)


def iv(delta: float, half: float = 0.02, p: float = 0.001) -> Interval:
    return Interval(delta, delta - half, delta + half, p, 200)


def challenger(
    strategy: str, vs_ft: Interval | None, vs_base: Interval | None, evalset: str = "routing"
) -> ChallengerEvidence:
    ft = 0.9
    return ChallengerEvidence(
        "base-v2", strategy, evalset, "acc", ft + (vs_ft.delta if vs_ft else 0), ft, vs_ft, vs_base
    )


def test_keep_when_nothing_is_wrong() -> None:
    ev = Evidence("router", ("routing",), (RegressionEvidence("routing", "acc", "ok", -0.005, -0.02, 0.01),))
    decision = decide(ev)
    assert decision.action == "keep"
    assert summarize(decision).startswith("keep the fine-tune")


def test_retrain_on_a_confirmed_regression() -> None:
    ev = Evidence(
        "router", ("routing",), (RegressionEvidence("routing", "acc", "regressed", -0.12, -0.16, -0.08),)
    )
    decision = decide(ev)
    assert decision.action == "retrain"
    assert decision.reasons == (
        "confirmed regression on routing acc: -12.0 points against the baseline (95% CI -16.0 points to -8.0 points)",
    )


def test_retrain_on_drift_with_falling_scores_but_not_on_drift_alone() -> None:
    drift = (DriftEvidence("traffic", True, 0.8),)
    suspect = (RegressionEvidence("routing", "acc", "suspect", -0.05, -0.08, -0.02),)
    assert decide(Evidence("router", ("routing",), suspect, drift)).action == "retrain"
    assert decide(Evidence("router", ("routing",), (), drift)).action == "keep"
    assert decide(Evidence("router", ("routing",), suspect, ())).action == "keep"  # one bad run is not enough


def test_rebase_when_a_newer_base_beats_the_old_one_significantly() -> None:
    ev = Evidence("router", ("routing",), challengers=(challenger("zero-shot", None, iv(0.08)),))
    decision = decide(ev)
    assert decision.action == "rebase" and decision.release == "base-v2"
    assert "beats the current base by +8.0 points" in decision.reasons[0]
    assert decision.details["base_gain"] == 0.08
    # inside the margin, or worse elsewhere: no rebase
    assert (
        decide(
            Evidence("router", ("routing",), challengers=(challenger("zero-shot", None, iv(0.03)),))
        ).action
        == "keep"
    )
    mixed = (
        challenger("zero-shot", None, iv(0.08)),
        challenger("zero-shot", None, iv(-0.1), evalset="triage"),
    )
    assert decide(Evidence("router", ("routing", "triage"), challengers=mixed)).action == "keep"


def test_retire_when_few_shot_on_the_new_base_is_non_inferior_everywhere() -> None:
    close = challenger("5-shot", iv(-0.005, half=0.01), iv(0.1))
    decision = decide(Evidence("router", ("routing",), challengers=(close,)))
    assert decision.action == "retire" and decision.strategy == "5-shot"
    assert "within the 2-point margin" in decision.reasons[0]
    assert summarize(decision).startswith("retire the fine-tune in favour of base-v2 with a 5-shot prompt")
    # zero-shot never retires a fine-tune; an interval reaching below the margin does not either
    assert (
        decide(
            Evidence("router", ("routing",), challengers=(challenger("zero-shot", iv(0.0, 0.01), None),))
        ).action
        == "keep"
    )
    wide = challenger("5-shot", iv(-0.01, half=0.05), None)
    assert decide(Evidence("router", ("routing",), challengers=(wide,))).action == "keep"
    # it must hold on every golden eval set
    only_one = Evidence("router", ("routing", "triage"), challengers=(close,))
    assert decide(only_one).action == "rebase"


def test_retire_beats_retrain_and_rebase() -> None:
    ev = Evidence(
        "router",
        ("routing",),
        (RegressionEvidence("routing", "acc", "regressed", -0.12, -0.16, -0.08),),
        challengers=(challenger("5-shot", iv(0.01, half=0.01), iv(0.1)),),
    )
    assert decide(ev).action == "retire"


CONFIG = """\
database: sqlite:///m.db
models:
  router: {base: ./v1, adapter: ./lora}
  base-v1: {base: ./v1}
  base-v2: {base: ./v2}
evalsets:
  routing: evals/routing
jobs:
  all:
    models: [router]
    evalsets: [routing]
  challengers:
    models: [base-v1, base-v2]
    evalsets: [routing]
    strategies: [zero-shot, 5-shot]
finetunes:
  ticket-router:
    model: router
    base_model: base-v1
    evalsets: [routing]
    challengers: [base-v2]
    strategies: [zero-shot, 5-shot]
    costs:
      requests_per_day: 20000
      pricing: {prompt_per_1k: 0.5, completion_per_1k: 1.5}
COSTS_EXTRA      retrain_cost: 120
      retrains_per_year: 4
"""

Rule = Callable[[int], bool]


class Recorded:
    """A configured fine-tune, its bases and a newer base, each answering the routing items by a rule;
    runs recorded in a real store, analysed against pinned baselines as the daemon does."""

    def __init__(
        self, tmp_path: Path, rules: dict[tuple[str, bool, bool], Rule], costs_extra: str = ""
    ) -> None:
        from monitor.config import load_config
        from monitor.store import Store
        from tests.unit.test_daemon import make_evalset

        self.tmp_path = tmp_path
        make_evalset(tmp_path / "evals", 200)
        for name in ("v1", "v2", "lora"):
            (tmp_path / name).mkdir()
        self.config = tmp_path / "monitor.yaml"
        self.config.write_text(CONFIG.replace("COSTS_EXTRA", costs_extra))
        spec = tmp_path / "evals" / "routing" / "evalset.yaml"
        (tmp_path / "evals" / "routing" / "fewshot.jsonl").write_text(
            "".join(json.dumps({"id": f"p{k}", "target": "billing"}) + "\n" for k in range(5))
        )
        spec.write_text(spec.read_text() + "fewshot: {k: 5, pool: fewshot.jsonl}\n")
        self.cfg = load_config(self.config)
        self.store = Store.open(self.cfg.database_url())
        #: (base path, adapter?, few-shot?) -> which items the model gets right
        self.rules = rules
        #: the fine-tune's fingerprint digit (a new adapter deployed: another digit)
        self.adapter_digest = "a"

    def run(self, job: str | None = None) -> None:
        from monitor.service.after_job import analysis_policy, analyze_run
        from monitor.service.plan import plan_runs
        from monitor.service.runs import ModelPool, execute_run
        from tests.unit.test_regression import RuleBackend

        for plan in plan_runs(self.cfg, [job] if job else [], trigger="test"):
            key = (plan.spec.base.rsplit("/", 1)[-1], plan.spec.adapter is not None, plan.fewshot_k > 0)
            digest = self.adapter_digest if key[1] else key[0][-1]
            backend = RuleBackend(self.rules[key], digest=digest)
            run = execute_run(self.store, ModelPool(loader=lambda s, b=backend: b), plan)  # type: ignore[misc]
            assert run.id is not None
            analyze_run(self.store, run.id, self.cfg.baselines_dir(), analysis_policy(self.cfg.regression))

    def pin(self) -> None:
        from monitor.analysis.baselines import pin_baseline

        pin_baseline(self.store, self.cfg.baselines_dir(), "router", "routing")

    def recommend(self, *args: str) -> list[dict[str, Any]]:
        from typer.testing import CliRunner

        from monitor.cli import app

        result = CliRunner().invoke(app, ["recommend", "--config", str(self.config), "--json", *args])
        assert result.exit_code == 0, result.stderr
        return list(json.loads(result.stdout))

    def close(self) -> None:
        self.store.close()


def rules(finetune: Rule, new_few_shot: Rule) -> dict[tuple[str, bool, bool], Rule]:
    return {
        ("v1", True, False): finetune,
        ("v1", False, False): lambda k: k % 10 < 4,  # old base zero-shot: 40 %
        ("v1", False, True): lambda k: k % 10 < 5,  # old base 5-shot: 50 %
        ("v2", False, False): lambda k: k % 10 < 6,  # new base zero-shot: 60 %
        ("v2", False, True): new_few_shot,
    }


def test_recommend_end_to_end_on_recorded_runs(tmp_path: Path) -> None:
    # the newer base prompted few-shot is served at a fiftieth of the fine-tune's price per token
    cheap = "      challenger_pricing: {prompt_per_1k: 0.01, completion_per_1k: 0.03}\n"
    h = Recorded(
        tmp_path, rules(lambda k: k % 10 != 0, lambda k: True), cheap
    )  # fine-tune 90 %, few-shot 100 %
    h.run()
    (rec,) = h.recommend("--memo", str(tmp_path / "memo.md"))
    assert rec["action"] == "retire" and rec["release"] == "base-v2" and rec["strategy"] == "5-shot"
    assert rec["changed"] is True
    costs = rec["costs"]
    assert (
        costs["requests_per_day"] == 20000
        and costs["cheapest"] == "retire"
        and costs["recommended"] == "retire"
    )
    sentences = costs["sentences"]
    assert sentences[0].startswith("Of the options that qualify, the cheapest over the first year is retire")
    assert sentences[-1] == "The recommended option, retire, is the cheapest that qualifies."
    memo = (tmp_path / "memo.md").read_text()
    assert "## The numbers" in memo and sentences[0] in memo
    assert (
        memo.startswith("# ticket-router: retire")
        and "| base-v2 | 5-shot | routing | 1.000 | 0.900 |" in memo
    )
    assert_no_sentence_twice(memo)
    # the same evidence again: recorded, but not a change
    assert h.recommend()[0]["changed"] is False
    # the new base's few-shot run falls back: a re-base remains (v2 beats v1 by 20 points zero-shot)
    h.rules[("v2", False, True)] = lambda k: k % 10 < 7
    h.run()
    (rec,) = h.recommend()
    assert rec["action"] == "rebase" and rec["changed"] is True
    assert rec["costs"]["options"]["retire"]["qualifies"] is False
    h.close()


def test_retire_that_would_cost_more_is_not_recommended(tmp_path: Path) -> None:
    """Few-shot as good as the fine-tune, but its long prompt at the same price per token costs more:
    the fine-tune still pays for itself, and the memo says so instead of 'recommended on quality'."""
    h = Recorded(tmp_path, rules(lambda k: k % 10 != 0, lambda k: True))
    h.run()
    (rec,) = h.recommend("--memo", str(tmp_path / "memo.md"))
    assert rec["action"] == "rebase"  # the next rule: v2 beats v1 by 20 points
    assert "the fine-tune still pays for itself" in rec["reasons"][-1]
    assert rec["costs"]["cheapest"] == "keep"
    assert_no_sentence_twice((tmp_path / "memo.md").read_text())
    h.close()


def test_an_option_failing_its_condition_is_never_called_cheapest_and_the_memo_agrees_with_the_metrics(
    tmp_path: Path,
) -> None:
    """The reported memo: the fine-tune at 0.98, few-shot on the new base at 0.105, cheap to serve, and the
    memo bolded 'retire (cheapest)' and ended 'the cheapest option is retire'."""
    from prometheus_client import CollectorRegistry

    from monitor.analysis.recommend import memo_sentences
    from monitor.exporters import StoreCollector

    cheap = "      challenger_pricing: {prompt_per_1k: 0.001, completion_per_1k: 0.003}\n"
    h = Recorded(tmp_path, rules(lambda k: k % 50 != 0, lambda k: k % 200 < 21), cheap)  # 0.98 and 0.105
    h.run()
    (rec,) = h.recommend("--memo", str(tmp_path / "memo.md"))
    costs = rec["costs"]
    options = costs["options"]
    assert options["retire"]["annual"] < options["keep"]["annual"]  # the cheapest by price ...
    assert options["retire"]["qualifies"] is False and costs["cheapest"] != "retire"  # ... but ruled out
    memo = (tmp_path / "memo.md").read_text()
    assert "**retire** (cheapest" not in memo and "| retire | few-shot on base-v2 | ruled out |" in memo
    for sentence in memo_sentences(memo):
        if "cheapest" in sentence and "Ruled out" not in sentence:
            assert "retire" not in sentence.lower(), sentence
    assert (
        "Ruled out on quality, so never the cheapest: retire (few-shot on base-v2) needs few-shot on base-v2"
        in memo
    )
    assert "0.105 against 0.980" in memo
    assert_no_sentence_twice(memo)

    # the decision, the cost paragraph and the metrics give the same monthly figures
    cheapest = costs["cheapest"]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(h.store))

    def metric(option: str) -> float:
        value = registry.get_sample_value(
            "monitor_option_cost_per_month", {"model": "router", "option": option, "currency": "USD"}
        )
        assert value is not None
        return value

    from monitor.analysis.costs import format_money

    for option, cost in options.items():
        assert metric(option) == pytest.approx(cost["total_per_month"])
        assert registry.get_sample_value(
            "monitor_option_qualifies", {"model": "router", "option": option}
        ) == (1.0 if cost["qualifies"] else 0.0)
        if option != cheapest and cost["qualifies"]:
            difference = metric(option) - metric(cheapest)
            words = "more" if difference > 0 else "less"
            said = (
                f"costs {format_money(abs(difference), 'USD')} a month {words} than {cheapest}"
                if abs(difference) > 1e-6
                else f"costs the same a month as {cheapest}"
            )
            assert said in memo, said
    assert f"the cheapest over the first year is {cheapest}" in memo
    # the API's view of the stored recommendation carries the same figures
    from monitor.api.views import recommendation_to_dict

    ((record, name),) = h.store.latest_recommendations()
    view = recommendation_to_dict(record, name)
    assert view["action"] == rec["action"] and view["costs"]["cheapest"] == cheapest
    for option in options:
        assert view["costs"]["options"][option]["total_per_month"] == pytest.approx(metric(option))
    h.close()


def test_a_bad_adapter_deploy_recommends_rollback_naming_the_baseline_fingerprint(tmp_path: Path) -> None:
    """A regression that came with a new adapter fingerprint since the baseline: roll back, not re-train."""
    h = Recorded(tmp_path, rules(lambda k: k % 10 != 0, lambda k: k % 10 < 3))
    h.rules[("v2", False, False)] = lambda k: k % 10 < 4  # the newer base is no better: no rebase
    h.run()
    h.pin()
    assert h.recommend()[0]["action"] == "keep"
    # a new adapter is deployed, and it is worse (70 % against 90 %): two runs confirm the regression
    h.adapter_digest = "b"
    h.rules[("v1", True, False)] = lambda k: k % 10 < 7
    h.run("all")
    h.run("all")
    (rec,) = h.recommend("--memo", str(tmp_path / "memo.md"))
    assert rec["action"] == "rollback", rec["reasons"]
    reason = rec["reasons"][0]
    assert (
        "the baseline ran fingerprint aaaaaaaaaaaa" in reason
        and "the model serves fingerprint bbbbbbbbbbbb" in reason
    )
    (deploy,) = rec["evidence"]["deploys"]
    changed = h.store.get_run(deploy["changed_run_id"])
    assert changed.model_fingerprint == "b" * 64 and deploy["baseline_fingerprint"] == "a" * 64
    assert deploy["changed_at"] is not None and deploy["changed_at"] in reason
    memo = (tmp_path / "memo.md").read_text()
    assert memo.startswith("# ticket-router: rollback")
    assert "roll the fine-tune back to the baseline's weights (fingerprint aaaaaaaaaaaa)" in memo
    assert rec["costs"]["options"]["rollback"]["qualifies"] is True
    assert rec["costs"]["options"]["keep"]["qualifies"] is False
    assert_no_sentence_twice(memo)
    # the same drop with the baseline's own weights is not a deploy: re-train
    h.adapter_digest = "a"
    h.run("all")
    h.run("all")
    assert h.recommend()[0]["action"] == "retrain"
    h.close()


def test_rollback_comes_first_and_needs_the_whole_streak() -> None:
    from monitor.analysis.recommend import DeployEvidence

    regressed = (RegressionEvidence("routing", "acc", "regressed", -0.12, -0.16, -0.08),)

    def deploy(whole: bool, changed: tuple[str, ...] = ("fingerprint",)) -> DeployEvidence:
        return DeployEvidence(
            "routing",
            3,
            "sha256:" + "1" * 64,
            "d1",
            None,
            "2" * 64,
            "d1",
            7,
            "2026-12-01 10:00 UTC",
            changed,
            whole,
        )

    better = (challenger("5-shot", iv(0.01, half=0.01), iv(0.1)),)
    assert (
        decide(
            Evidence("router", ("routing",), regressed, challengers=better, deploys=(deploy(True),))
        ).action
        == "rollback"
    )
    assert decide(Evidence("router", ("routing",), regressed, deploys=(deploy(False),))).action == "retrain"
    assert (
        decide(Evidence("router", ("routing",), regressed, deploys=(deploy(True, ()),))).action == "retrain"
    )
    settings = decide(Evidence("router", ("routing",), regressed, deploys=(deploy(True, ("settings",)),)))
    assert (
        settings.action == "rollback" and "other serving settings than the baseline's" in settings.reasons[0]
    )
    assert summarize(settings).startswith(
        "roll the fine-tune back to the baseline's weights (fingerprint 111111111111)"
    )
    # no confirmed regression: nothing to roll back
    suspect = (RegressionEvidence("routing", "acc", "suspect", -0.12, -0.16, -0.08),)
    assert decide(Evidence("router", ("routing",), suspect, deploys=(deploy(True),))).action == "keep"


def assert_no_sentence_twice(memo: str) -> None:
    from monitor.analysis.recommend import memo_sentences

    sentences = memo_sentences(memo)
    repeated = {s for s in sentences if sentences.count(s) > 1}
    assert not repeated, repeated


def test_recommendations_reach_the_metrics(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client import CollectorRegistry

    from monitor.analysis.recommend import Decision, record_recommendation
    from monitor.exporters import StoreCollector
    from monitor.store import Store

    store = Store.open(f"sqlite:///{tmp_path / 'm.db'}")
    store.upsert_model("router", kind="hf", base="b", adapter="a")
    events = []
    ev = Evidence("ticket-router", ("routing",))
    record_recommendation(
        store, "router", Decision("keep", ("fine",)), ev, on_change=lambda s, r: events.append(r.action)
    )
    record_recommendation(
        store, "router", Decision("keep", ("fine",)), ev, on_change=lambda s, r: events.append(r.action)
    )
    record_recommendation(
        store, "router", Decision("retrain", ("worse",)), ev, on_change=lambda s, r: events.append(r.action)
    )
    assert events == ["keep", "retrain"]  # the first and every change, not the repeats
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    assert registry.get_sample_value("monitor_recommendation", {"model": "router", "action": "retrain"}) == 1
    assert registry.get_sample_value("monitor_recommendation", {"model": "router", "action": "keep"}) == 0
    store.close()
