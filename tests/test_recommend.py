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
