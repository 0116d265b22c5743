"""Each recommendation path on constructed evidence."""

from __future__ import annotations

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


def test_recommend_end_to_end_on_recorded_runs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from typer.testing import CliRunner

    from monitor.cli import app
    from monitor.config import load_config
    from monitor.service.plan import plan_runs
    from monitor.service.runs import ModelPool, execute_run
    from monitor.store import Store
    from tests.unit.test_daemon import make_evalset
    from tests.unit.test_regression import RuleBackend

    make_evalset(tmp_path / "evals", 200)
    for name in ("v1", "v2", "lora"):
        (tmp_path / name).mkdir()
    config = tmp_path / "monitor.yaml"
    config.write_text(
        """\
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
      retrain_cost: 120
      retrains_per_year: 4
"""
    )
    spec = tmp_path / "evals" / "routing" / "evalset.yaml"
    (tmp_path / "evals" / "routing" / "fewshot.jsonl").write_text(
        "".join(json.dumps({"id": f"p{k}", "target": "billing"}) + "\n" for k in range(5))
    )
    spec.write_text(spec.read_text() + "fewshot: {k: 5, pool: fewshot.jsonl}\n")
    cfg = load_config(config)
    store = Store.open(cfg.database_url())
    accuracy = {  # (base path, adapter?, few-shot?) -> which items the model gets right
        ("v1", True, False): lambda k: k % 10 != 0,  # the fine-tune: 90 %
        ("v1", False, False): lambda k: k % 10 < 4,  # old base zero-shot: 40 %
        ("v1", False, True): lambda k: k % 10 < 5,  # old base 5-shot: 50 %
        ("v2", False, False): lambda k: k % 10 < 6,  # new base zero-shot: 60 %
        ("v2", False, True): lambda k: True,  # new base 5-shot: 100 %
    }

    def run_all() -> None:
        for plan in plan_runs(cfg, [], trigger="test"):
            key = (plan.spec.base.rsplit("/", 1)[-1], plan.spec.adapter is not None, plan.fewshot_k > 0)
            backend = RuleBackend(accuracy[key])
            execute_run(store, ModelPool(loader=lambda s, b=backend: b), plan)  # type: ignore[misc]

    run_all()
    result = CliRunner().invoke(
        app, ["recommend", "--config", str(config), "--json", "--memo", str(tmp_path / "memo.md")]
    )
    assert result.exit_code == 0, result.stderr
    (rec,) = json.loads(result.stdout)
    assert rec["action"] == "retire" and rec["release"] == "base-v2" and rec["strategy"] == "5-shot"
    assert rec["changed"] is True
    assert rec["costs"]["requests_per_day"] == 20000 and rec["costs"]["cheapest"] in ("keep", "retire")
    sentences = rec["costs"]["sentences"]
    assert (
        sentences[0].startswith("Few-shot on base-v2 costs ")
        and "a month more than the fine-tune" in sentences[0]
    )
    assert "the re-train costs 120 USD; it pays for itself in" in sentences[0]
    memo = (tmp_path / "memo.md").read_text()
    assert "## The numbers" in memo and sentences[0] in memo
    assert (
        memo.startswith("# ticket-router: retire")
        and "| base-v2 | 5-shot | routing | 1.000 | 0.900 |" in memo
    )
    # the same evidence again: recorded, but not a change
    again = json.loads(CliRunner().invoke(app, ["recommend", "--config", str(config), "--json"]).stdout)
    assert again[0]["changed"] is False
    # the new base's few-shot run falls back: a re-base remains (v2 beats v1 by 20 points zero-shot)
    accuracy[("v2", False, True)] = lambda k: k % 10 < 7
    run_all()
    (rec,) = json.loads(CliRunner().invoke(app, ["recommend", "--config", str(config), "--json"]).stdout)
    assert rec["action"] == "rebase" and rec["changed"] is True
    store.close()


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
