"""Cost cases: hand-computed option costs, break-evens, the sentences, rounding, validation."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from monitor.analysis.costs import (
    DAYS_PER_MONTH,
    OPTIONS,
    Condition,
    TokenProfile,
    break_even_days,
    cost_case,
    format_amount,
    format_money,
    format_number,
    monthly_difference,
    option_costs,
    pricing_for,
)
from monitor.config import CostsConfig, PricingConfig

FINE_TUNE = TokenProfile(100, 20, "run 7 (router, zero-shot)")
FEW_SHOT = TokenProfile(600, 20, "run 9 (v2, 5-shot, v2 tokenizer)")
REBASED = TokenProfile(90, 20, "router prompt under the v2 tokenizer")


def config(**overrides: Any) -> CostsConfig:
    data: dict[str, Any] = {
        "requests_per_day": 20_000,
        "pricing": {"prompt_per_1k": 0.001, "completion_per_1k": 0.002},
        "retrain_cost": 120,
        "retrains_per_year": 4,
        "rebase_cost": 300,
    }
    return CostsConfig.model_validate(data | overrides)


# --- option costs -------------------------------------------------------------------------------


def test_per_token_option_costs_by_hand() -> None:
    options = option_costs(config(), FINE_TUNE, FEW_SHOT, REBASED, challenger="v2")
    assert tuple(options) == ("keep", "retrain", "rebase", "retire")  # no rollback unless one is offered
    keep, retrain, rebase, retire = (options[o] for o in OPTIONS if o != "rollback")

    # keep: 20,000 requests/day x (100 prompt x 0.001/1k + 20 completion x 0.002/1k)
    #     = 20,000 x (0.0001 + 0.00004) = 20,000 x 0.00014 = 2.80 a day x 30.44 = 85.232 a month
    assert keep.cost_per_request == pytest.approx(0.00014)
    assert keep.inference_per_month == pytest.approx(85.232)
    # upkeep: 4 re-trains a year x 120 / 12 = 40 a month
    assert keep.upkeep_per_month == pytest.approx(40)
    assert keep.one_time == 0
    assert keep.total_per_month == pytest.approx(125.232)
    # first year: 125.232 x 12 = 1,502.784
    assert keep.annual == pytest.approx(1502.784)
    assert keep.gpu_hours_per_day is None

    # retrain: the same running cost, plus 120 once: 1,502.784 + 120 = 1,622.784
    assert retrain.inference_per_month == pytest.approx(85.232)
    assert retrain.upkeep_per_month == pytest.approx(40)
    assert retrain.one_time == 120
    assert retrain.annual == pytest.approx(1622.784)

    # rebase: 20,000 x (90 x 0.001/1k + 20 x 0.002/1k) = 20,000 x 0.00013 = 2.60 a day x 30.44 = 79.144
    # first year: (79.144 + 40) x 12 + 300 = 1,429.728 + 300 = 1,729.728
    assert rebase.inference_per_month == pytest.approx(79.144)
    assert rebase.upkeep_per_month == pytest.approx(40)
    assert rebase.one_time == 300
    assert rebase.annual == pytest.approx(1729.728)
    assert rebase.tokens is REBASED

    # retire: 20,000 x (600 x 0.001/1k + 20 x 0.002/1k) = 20,000 x 0.00064 = 12.80 a day x 30.44 = 389.632
    # no training, no upkeep: first year 389.632 x 12 = 4,675.584
    assert retire.inference_per_month == pytest.approx(389.632)
    assert retire.upkeep_per_month == 0
    assert retire.one_time == 0
    assert retire.annual == pytest.approx(4675.584)
    assert retire.label == "few-shot on v2"


def test_the_brief_example_20k_requests_at_half_a_cent_prompt_prices() -> None:
    costs = config(pricing={"prompt_per_1k": 0.5, "completion_per_1k": 1.5})
    retire = option_costs(costs, FINE_TUNE, TokenProfile(400, 20, "few-shot"))["retire"]
    # 20,000 x (400 x 0.5/1k + 20 x 1.5/1k) = 20,000 x (0.20 + 0.03) = 4,600 a day x 30.44 = 140,024 a month
    assert retire.inference_per_month == pytest.approx(140_024)


def test_rebase_defaults_to_the_retrain_cost_and_the_fine_tunes_tokens() -> None:
    costs = config(rebase_cost=None)
    rebase = option_costs(costs, FINE_TUNE, FEW_SHOT, challenger="v2")["rebase"]
    assert rebase.one_time == 120
    assert (rebase.tokens.prompt_tokens, rebase.tokens.completion_tokens) == (100, 20)
    assert "not measured on v2" in rebase.tokens.source


def test_per_gpu_hour_with_requests_an_hour_and_a_floor_of_replicas() -> None:
    costs = config(
        requests_per_day=1_000,
        pricing={"gpu_hour": 2.0, "requests_per_hour": 3_600, "utilisation": 0.5, "min_replicas": 1},
    )
    keep = option_costs(costs, FINE_TUNE, FEW_SHOT)["keep"]
    # traffic needs 1,000 / (3,600 x 0.5) = 0.56 replica-hours a day, but one replica runs all day:
    # max(0.56, 1 x 24) = 24 replica-hours x 1 GPU = 24 GPU-hours x 2.00 = 48 a day x 30.44 = 1,461.12 a month
    assert keep.gpu_hours_per_day == pytest.approx(24)
    assert keep.inference_per_month == pytest.approx(1461.12)
    assert keep.cost_per_request == pytest.approx(0.048)


def test_per_gpu_hour_scales_with_traffic_above_the_floor() -> None:
    costs = config(
        requests_per_day=100_000,
        pricing={
            "gpu_hour": 2.0,
            "requests_per_hour": 2_000,
            "gpus": 2,
            "utilisation": 0.8,
            "min_replicas": 1,
        },
    )
    keep = option_costs(costs, FINE_TUNE, FEW_SHOT)["keep"]
    # 100,000 / (2,000 x 0.8) = 62.5 replica-hours (above the floor of 24) x 2 GPUs = 125 GPU-hours
    # x 2.00 = 250 a day x 30.44 = 7,610 a month
    assert keep.gpu_hours_per_day == pytest.approx(125)
    assert keep.inference_per_month == pytest.approx(7610)


def test_per_gpu_hour_with_tokens_a_second_uses_each_options_token_profile() -> None:
    costs = config(pricing={"gpu_hour": 3.0, "tokens_per_second": 1_000, "gpus": 2, "utilisation": 0.6})
    options = option_costs(costs, FINE_TUNE, FEW_SHOT)
    # fine-tune: 1,000 tokens/s x 3,600 / (100 + 20 tokens) = 30,000 requests an hour a replica;
    # 20,000 / (30,000 x 0.6) = 1.111 replica-hours x 2 GPUs = 2.222 GPU-hours x 3.00 = 6.667 a day
    # x 30.44 = 202.93 a month
    assert options["keep"].gpu_hours_per_day == pytest.approx(20_000 / 18_000 * 2)
    assert options["keep"].inference_per_month == pytest.approx(20 / 3 * 30.44)
    # few-shot: 3,600,000 / 620 = 5,806.45 requests an hour; 20,000 / (5,806.45 x 0.6) = 5.741 replica-hours
    # x 2 = 11.48 GPU-hours x 3.00 = 34.44 a day x 30.44 = 1,048.4 a month
    assert options["retire"].inference_per_month == pytest.approx(
        20_000 * 620 / 3_600_000 / 0.6 * 2 * 3 * 30.44
    )


def test_requests_an_hour_scale_with_each_options_measured_tokens() -> None:
    """The reported case: with ``requests_per_hour`` pricing a 274-token few-shot request cost the same as
    a 33-token one.  The rate is read as measured on the fine-tune's requests; few-shot takes longer."""
    costs = config(requests_per_day=100_000, pricing={"gpu_hour": 2.0, "requests_per_hour": 3_300})
    fine, few = TokenProfile(28, 5, "fine-tune"), TokenProfile(269, 5, "few-shot")
    options = option_costs(costs, fine, few)
    keep, retire = options["keep"], options["retire"]
    # keep: 100,000 / 3,300 = 30.3 GPU-hours x 2 = 60.61 a day
    assert keep.requests_per_replica_hour == pytest.approx(3_300)
    assert keep.inference_per_month == pytest.approx(100_000 / 3_300 * 2 * DAYS_PER_MONTH)
    # retire: 3,300 x 33 / 274 = 397.4 requests an hour: 274 / 33 = 8.3 times the GPU-hours
    assert retire.requests_per_replica_hour == pytest.approx(3_300 * 33 / 274)
    assert retire.inference_per_month / keep.inference_per_month == pytest.approx(274 / 33)
    # a challenger block of its own is read as measured on its own (few-shot) requests: not scaled
    own = config(
        requests_per_day=100_000,
        pricing={"gpu_hour": 2.0, "requests_per_hour": 3_300},
        challenger_pricing={"gpu_hour": 2.0, "requests_per_hour": 400},
    )
    assert option_costs(own, fine, few)["retire"].requests_per_replica_hour == pytest.approx(400)
    # completion tokens count too: twice the completions, fewer requests an hour
    longer = option_costs(costs, fine, TokenProfile(28, 38, "long answers"))["retire"]
    assert longer.requests_per_replica_hour == pytest.approx(3_300 * 33 / 66)


def test_a_rebase_is_priced_as_the_fine_tunes_prompt_with_the_fine_tunes_deployment() -> None:
    """The re-base used to take the challenger's price block: its extra cost was an artefact of the config."""
    costs = config(
        pricing={"gpu_hour": 2.0, "requests_per_hour": 10_000},
        challenger_pricing={"prompt_per_1k": 0.5, "completion_per_1k": 1.5},
    )
    rebased = TokenProfile(110, 22, "the fine-tune's prompt under the v2 tokenizer")
    options = option_costs(costs, FINE_TUNE, FEW_SHOT, rebased)
    rebase, keep = options["rebase"], options["keep"]
    assert rebase.pricing == costs.pricing and options["retire"].pricing == costs.challenger_pricing
    # 10,000 requests an hour at 120 tokens: 10,000 x 120 / 132 at the re-based 132 tokens
    assert rebase.requests_per_replica_hour == pytest.approx(10_000 * 120 / 132)
    assert rebase.inference_per_month == pytest.approx(keep.inference_per_month * 132 / 120)


def test_the_monthly_difference_is_the_total_inference_plus_upkeep() -> None:
    options = option_costs(config(), FINE_TUNE, FEW_SHOT, REBASED, challenger="v2")
    # 389.632 (no upkeep) - (85.232 + 40) = 264.40, not the 304.40 of inference alone
    assert monthly_difference(options["retire"], options["keep"]) == pytest.approx(264.4)


def test_the_challenger_and_the_rebase_take_their_own_price_blocks() -> None:
    costs = config(
        pricing={"gpu_hour": 2.0, "requests_per_hour": 10_000},
        challenger_pricing={"prompt_per_1k": 0.01, "completion_per_1k": 0.03},
        rebase_pricing={"gpu_hour": 4.0, "requests_per_hour": 10_000},
    )
    options = option_costs(costs, FINE_TUNE, FEW_SHOT, REBASED)
    # keep: 20,000 / 10,000 = 2 GPU-hours x 2.00 = 4 a day; rebase: 2 GPU-hours x 4.00 = 8 a day
    assert options["keep"].inference_per_month == pytest.approx(4 * DAYS_PER_MONTH)
    assert options["retrain"].pricing == costs.pricing
    assert options["rebase"].inference_per_month == pytest.approx(8 * DAYS_PER_MONTH)
    # retire: 20,000 x (600 x 0.01/1k + 20 x 0.03/1k) = 20,000 x 0.0066 = 132 a day
    assert options["retire"].inference_per_month == pytest.approx(132 * DAYS_PER_MONTH)
    without_rebase_block = config(
        pricing={"gpu_hour": 2.0, "requests_per_hour": 10_000},
        challenger_pricing={"prompt_per_1k": 0.01, "completion_per_1k": 0.03},
    )
    # a re-based adapter is served like the fine-tune, not like the challenger
    assert pricing_for(without_rebase_block, "rebase") == (without_rebase_block.pricing, "pricing")
    assert pricing_for(without_rebase_block, "retire") == (
        without_rebase_block.challenger_pricing,
        "challenger_pricing",
    )


# --- break-even ---------------------------------------------------------------------------------


def test_break_even_arithmetic() -> None:
    # 120 / (304.40 a month) x 30.44 = 120 / (10 a day) = 12 days
    assert break_even_days(120, 304.4) == pytest.approx(12)
    # 300 / 310.488 x 30.44 = 300 / 10.2 a day = 29.41 days
    assert break_even_days(300, 310.488) == pytest.approx(29.4118, rel=1e-4)


def test_break_even_never_and_immediately() -> None:
    assert break_even_days(120, 0) is None  # no saving: never pays for itself
    assert break_even_days(120, -35) is None  # costs more every month: never
    assert break_even_days(0, 410) == 0  # nothing to pay back: saves money immediately
    assert break_even_days(0, 0) == 0  # nothing paid, nothing lost
    assert break_even_days(0, -1) is None


@pytest.mark.parametrize(("one_time", "saving"), [(-1, 10), (float("inf"), 10), (10, float("nan"))])
def test_break_even_refuses_nonsense(one_time: float, saving: float) -> None:
    with pytest.raises(ValueError):
        break_even_days(one_time, saving)


# --- sentences ----------------------------------------------------------------------------------


def test_explanation_when_the_fine_tune_is_cheaper() -> None:
    case = cost_case(config(), FINE_TUNE, FEW_SHOT, REBASED, challenger="v2")
    assert case.sentences == (
        # keep: 85.232 inference + 40 upkeep = 125.232 a month; x 12 = 1,502.78
        "Of the options that qualify, the cheapest over the first year is keep (the fine-tune): "
        "125 USD a month, nothing once, 1,503 USD in the first year.",
        # retrain: the same 125.232 a month, 120 once: 1,622.78
        "Retrain (the re-trained fine-tune) costs the same a month as keep and 120 USD more once, "
        "1,623 USD in the first year.",
        # rebase: 79.144 + 40 = 119.144 a month, 6.088 less; 300 / 6.088 x 30.44 = 1,500 days
        "Rebase (the adapter re-based on v2) costs 6.09 USD a month less than keep and 300 USD more once, "
        "1,730 USD in the first year; it becomes the cheaper after 1,500 days.",
        # retire: 389.632 - 125.232 = 264.40 a month more
        "Retire (few-shot on v2) costs 264 USD a month more than keep, 4,676 USD in the first year.",
    )
    assert case.cheapest == "keep"
    # the break-evens use the same monthly difference: 120 / (389.632 - 125.232) x 30.44 = 13.8 days
    assert case.retrain_break_even_days == pytest.approx(120 / 264.4 * 30.44)
    assert case.rebase_break_even_days == pytest.approx(300 / (389.632 - 119.144) * 30.44)
    assert case.retrain_interval_days == pytest.approx(91.32)
    assert case.monthly_difference("retire", "keep") == pytest.approx(264.4)


def test_explanation_when_few_shot_is_cheaper() -> None:
    costs = config(
        requests_per_day=1_000,
        pricing={"gpu_hour": 2.0, "requests_per_hour": 3_600, "utilisation": 0.5, "min_replicas": 1},
        challenger_pricing={"prompt_per_1k": 0.01, "completion_per_1k": 0.03},
    )
    case = cost_case(costs, FINE_TUNE, FEW_SHOT, challenger="v2", recommended="retire")
    # keep: the always-on replica, 48 a day = 1,461.12 a month + 40 upkeep; the re-base is served like
    # the fine-tune (same replica floor). retire: 1,000 x (600 x 0.01/1k + 20 x 0.03/1k) = 6.60 a day
    # = 200.90 a month, 2,410.85 in the first year
    assert case.cheapest == "retire"
    assert case.sentences[0] == (
        "Of the options that qualify, the cheapest over the first year is retire (few-shot on v2): "
        "201 USD a month, nothing once, 2,411 USD in the first year."
    )
    # keep - retire = 1,501.12 - 200.90 = 1,300.22 a month
    assert case.sentences[1] == (
        "Keep (the fine-tune) costs 1,300 USD a month more than retire, 18,013 USD in the first year."
    )
    assert case.sentences[-1] == "The recommended option, retire, is the cheapest that qualifies."
    assert case.retrain_break_even_days is None
    assert case.rebase_break_even_days is None


def test_an_option_that_fails_its_quality_condition_is_never_the_cheapest() -> None:
    """The reported memo: the fine-tune at 0.98, few-shot on the new base at 0.105, and the memo bolded
    'retire (cheapest)'.  Few-shot is the cheapest here by far, and is ruled out."""
    costs = config(challenger_pricing={"prompt_per_1k": 0.0001, "completion_per_1k": 0.0001})
    conditions = {
        "retire": Condition(
            False, "needs few-shot on v2 within 2 points of the fine-tune; routing: 0.105 against 0.980"
        ),
        "keep": Condition(True, "no confirmed regression against the baseline"),
    }
    case = cost_case(
        costs, FINE_TUNE, FEW_SHOT, REBASED, challenger="v2", conditions=conditions, recommended="keep"
    )
    assert case.option("retire").annual < case.option("keep").annual  # cheapest by price ...
    assert case.cheapest == "keep"  # ... but not among the options that qualify
    assert case.sentences[0] == (
        "Ruled out on quality, so never the cheapest: retire (few-shot on v2) needs few-shot on v2 within "
        "2 points of the fine-tune; routing: 0.105 against 0.980."
    )
    assert case.sentences[1].startswith(
        "Of the options that qualify, the cheapest over the first year is keep"
    )
    assert not any(
        "retire" in s.lower() and "cheapest" in s and "ruled out" not in s.lower() for s in case.sentences
    )
    assert case.sentences[-1] == "The recommended option, keep, is the cheapest that qualifies."
    table = case.markdown_table()
    assert "| **keep** (cheapest that qualifies, recommended) |" in table
    assert "| retire | few-shot on v2 | ruled out |" in table
    data = case.to_dict()
    assert data["ruled_out"] == ["retire"] and data["options"]["retire"]["qualifies"] is False
    assert data["options"]["retire"]["condition"].startswith("needs few-shot on v2")


def test_no_option_qualifies() -> None:
    bad = Condition(False, "fails")
    conditions = dict.fromkeys(("keep", "retrain", "rebase", "retire"), bad)
    case = cost_case(config(), FINE_TUNE, FEW_SHOT, conditions=conditions)
    assert case.cheapest is None
    assert case.sentences[-1] == "No option meets its quality condition, so none is called the cheapest."
    assert "cheapest that qualifies" not in case.markdown_table()


def test_the_recommended_option_against_the_cheapest_that_qualifies() -> None:
    ruled_out = {"keep": Condition(False, "needs no confirmed regression against the baseline, and has one")}
    case = cost_case(
        config(), FINE_TUNE, FEW_SHOT, REBASED, challenger="v2", conditions=ruled_out, recommended="rebase"
    )
    assert case.cheapest == "retrain"  # keep is ruled out: the demo's "the cheapest option is keep" is gone
    # rebase 1,729.73 - retrain 1,622.78 = 106.94 over the first year
    assert case.sentences[-1] == (
        "The recommended option, rebase, costs 107 USD more than retrain over the first year: "
        "it is recommended on quality, not on cost."
    )


def test_a_recommendation_that_ties_with_the_cheapest_is_called_the_cheapest() -> None:
    """The demo: rebase and retrain cost the same (same tokens, same one-time cost), and the memo said
    'the recommended option, rebase, costs 0 USD more than retrain'."""
    ruled_out = {"keep": Condition(False, "needs no confirmed regression against the baseline, and has one")}
    costs = config(rebase_cost=None)
    case = cost_case(costs, FINE_TUNE, FEW_SHOT, conditions=ruled_out, recommended="rebase")
    assert case.option("rebase").annual == case.option("retrain").annual
    assert case.cheapest == "rebase"
    assert case.sentences[-1] == "The recommended option, rebase, is the cheapest that qualifies."
    assert not any("0 USD more" in sentence for sentence in case.sentences)
    # without a recommendation the tie goes to the earlier option
    assert cost_case(costs, FINE_TUNE, FEW_SHOT, conditions=ruled_out).cheapest == "retrain"


def test_a_rollback_is_priced_like_keeping_with_no_one_time_cost() -> None:
    case = cost_case(
        config(), FINE_TUNE, FEW_SHOT, rollback="the baseline's weights (fingerprint 1a2b3c4d5e6f)"
    )
    rollback, keep = case.option("rollback"), case.option("keep")
    assert [cost.option for cost in case.options] == list(OPTIONS)
    assert rollback.total_per_month == keep.total_per_month and rollback.one_time == 0
    assert rollback.label == "the baseline's weights (fingerprint 1a2b3c4d5e6f)"


def test_no_sentence_is_said_twice() -> None:
    # equal costs everywhere are the easiest way to make sentences alike
    costs = config(retrain_cost=0, rebase_cost=0, retrains_per_year=0)
    for case in (
        cost_case(costs, FINE_TUNE, FINE_TUNE, FINE_TUNE, recommended="keep"),
        cost_case(
            config(), FINE_TUNE, FEW_SHOT, REBASED, rollback="the baseline's weights", recommended="rollback"
        ),
    ):
        assert len(case.sentences) == len(set(case.sentences))


def test_singular_and_plural() -> None:
    # 1 request a day of 100,000 extra prompt tokens at 0.3/1k = 30 a day = 913.20 a month; the re-train
    # of 30 against 2.50 a month of upkeep
    costs = config(
        requests_per_day=1,
        pricing={"prompt_per_1k": 0.3, "completion_per_1k": 0},
        retrain_cost=30,
        retrains_per_year=1,
        rebase_cost=30,
    )
    case = cost_case(costs, TokenProfile(1, 1, "ft"), TokenProfile(100_001, 1, "fs"), challenger="v2")
    assert "at 1 request a day" not in " ".join(case.sentences)
    assert case.assumptions[2] == "1 request a day for every option"
    assert "1 re-train a year of upkeep" in case.assumptions[3]
    half = config(retrains_per_year=0.5, requests_per_day=1.5)
    assert cost_case(half, FINE_TUNE, FEW_SHOT).assumptions[2] == "1.5 requests a day for every option"


def test_when_a_dearer_start_becomes_the_cheaper() -> None:
    # the re-base serves one prompt token fewer: 20,000 x 1 x 0.001/1k = 0.02 a day cheaper than keep,
    # and costs 10 once: 10 / 0.02 = 500 days
    costs = config(pricing={"prompt_per_1k": 0.001, "completion_per_1k": 0}, rebase_cost=10)
    case = cost_case(costs, FINE_TUNE, FEW_SHOT, TokenProfile(99, 20, "rebased"))
    assert case.cheapest == "keep"
    assert case.sentences[2].endswith("; it becomes the cheaper after 500 days.")


# --- rounding -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (4440, "4,440"),
        (1_234_567.5, "1,234,568"),  # half up, not half to even
        (10.5, "11"),
        (35.4, "35"),
        (9.996, "10"),
        (9.4, "9.40"),
        (2.5, "2.50"),
        (0.996, "1.00"),
        (0.5, "0.50"),
        (0.125, "0.13"),
        (0.042, "0.042"),
        (0.00123, "0.0012"),
        (0.001, "0.001"),
        (0, "0"),
        (-35, "-35"),
    ],
)
def test_amounts_are_rounded_for_reading(amount: float, text: str) -> None:
    assert format_amount(amount) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(20_000, "20,000"), (365.28, "365"), (20.5, "20.5"), (2.04, "2"), (1, "1"), (0.25, "0.25"), (0, "0")],
)
def test_numbers_are_rounded_for_reading(value: float, text: str) -> None:
    assert format_number(value) == text


def test_money_carries_its_currency() -> None:
    assert format_money(1234.4, "EUR") == "1,234 EUR"
    with pytest.raises(ValueError):
        format_amount(float("nan"))


# --- the case as data ---------------------------------------------------------------------------


def test_to_dict_is_json_ready_and_versioned() -> None:
    case = cost_case(config(), FINE_TUNE, FEW_SHOT, REBASED, challenger="v2")
    data = json.loads(json.dumps(case.to_dict(), allow_nan=False))
    assert data["format_version"] == 2
    assert data["days_per_month"] == 30.44
    assert list(data["options"]) == ["keep", "retrain", "rebase", "retire"]
    assert data["options"]["retire"]["tokens"] == {
        "prompt_tokens": 600,
        "completion_tokens": 20,
        "source": "run 9 (v2, 5-shot, v2 tokenizer)",
    }
    assert data["options"]["keep"]["pricing"] == {
        "kind": "per_token",
        "prompt_per_1k": 0.001,
        "completion_per_1k": 0.002,
    }
    assert data["options"]["keep"]["annual"] == pytest.approx(1502.784)
    assert data["cheapest"] == "keep"
    assert data["retrain_break_even_days"] == pytest.approx(120 / 264.4 * 30.44)  # the monthly total
    assert data["sentences"] == list(case.sentences)
    assert case.option("rebase").one_time == 300


def test_assumptions_list_days_prices_and_token_sources() -> None:
    costs = config(
        challenger_pricing={"gpu_hour": 2.5, "tokens_per_second": 1_500, "gpus": 2, "utilisation": 0.7}
    )
    case = cost_case(costs, FINE_TUNE, FEW_SHOT, challenger="v2")
    assert case.assumptions[0] == "a month is 30.44 days and a year 12 months (365.28 days)"
    assert case.assumptions[1] == (
        "a month's cost is inference plus upkeep (re-trains amortised), and every monthly difference "
        "compares those totals; the first year adds the one-time costs"
    )
    assert case.assumptions[2] == "20,000 requests a day for every option"
    assert case.assumptions[3] == (
        "a re-train costs 120 USD, a re-base 300 USD; 4 re-trains a year of upkeep for every option "
        "that keeps an adapter"
    )
    assert case.assumptions[4] == (
        "keep (the fine-tune): 0.001 USD per 1k prompt tokens, 0.002 USD per 1k completion tokens "
        "(`pricing`); 100 prompt and 20 completion tokens a request (run 7 (router, zero-shot))"
    )
    # 1,500 tokens a second x 3,600 / 620 tokens = 8,710 requests an hour
    assert case.assumptions[7] == (
        "retire (few-shot on v2): 2.50 USD a GPU-hour, 2 GPUs a replica serving 1,500 tokens a second "
        "(prompt and completion) at 70% utilisation (`challenger_pricing`); 600 prompt and 20 completion "
        "tokens a request (run 9 (v2, 5-shot, v2 tokenizer)); 8,710 requests an hour a replica"
    )
    # the re-base is served like the fine-tune
    assert "not measured on v2" in case.assumptions[6] and "(`pricing`)" in case.assumptions[6]


def test_markdown_table() -> None:
    case = cost_case(config(), FINE_TUNE, FEW_SHOT, REBASED, challenger="v2")
    assert case.markdown_table() == (
        "| option | served | quality | prompt tokens | completion tokens | per 1k requests "
        "| inference / month (USD) | upkeep / month (USD) | one-time (USD) | total / month (USD) "
        "| first year (USD) |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        "| **keep** (cheapest that qualifies) | the fine-tune | qualifies | 100 | 20 | 0.14 | 85 | 40 | 0 | 125 "
        "| 1,503 |\n"
        "| retrain | the re-trained fine-tune | qualifies | 100 | 20 | 0.14 | 85 | 40 | 120 | 125 | 1,623 |\n"
        "| rebase | the adapter re-based on v2 | qualifies | 90 | 20 | 0.13 | 79 | 40 | 300 | 119 | 1,730 |\n"
        "| retire | few-shot on v2 | qualifies | 600 | 20 | 0.64 | 390 | 0 | 0 | 390 | 4,676 |\n"
    )


# --- validation ---------------------------------------------------------------------------------


def errors(data: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        config(**data)
    return [(tuple(e["loc"]), e["msg"]) for e in caught.value.errors()]


def test_both_kinds_of_pricing_is_refused() -> None:
    [(loc, msg)] = errors({"pricing": {"prompt_per_1k": 0.5, "completion_per_1k": 1.5, "gpu_hour": 2.0}})
    assert loc == ("pricing",)
    assert msg == (
        "Value error, give one kind of pricing, not both: per token (prompt_per_1k, completion_per_1k) "
        "or per GPU-hour (gpu_hour)"
    )
    # a GPU-only setting alongside per-token prices is the same mistake
    [(_, msg)] = errors({"challenger_pricing": {"prompt_per_1k": 0.5, "completion_per_1k": 1.5, "gpus": 2}})
    assert "not both" in msg and "(gpus)" in msg


def test_no_pricing_is_refused() -> None:
    [(loc, msg)] = errors({"challenger_pricing": {}})
    assert loc == ("challenger_pricing",)
    assert msg == (
        "Value error, give a price: per token (prompt_per_1k and completion_per_1k) "
        "or per GPU-hour (gpu_hour with requests_per_hour or tokens_per_second)"
    )
    with pytest.raises(ValidationError, match="pricing\n  Field required"):
        CostsConfig.model_validate({"requests_per_day": 1, "retrain_cost": 1, "retrains_per_year": 1})


@pytest.mark.parametrize(
    ("pricing", "message"),
    [
        ({"prompt_per_1k": 0.5}, "needs both prompt_per_1k and completion_per_1k"),
        ({"requests_per_hour": 100}, "needs gpu_hour"),
        ({"gpu_hour": 2.0}, "needs a measured throughput"),
        ({"gpu_hour": 2.0, "requests_per_hour": 100, "tokens_per_second": 50}, "not both"),
    ],
)
def test_incomplete_pricing_is_refused(pricing: dict[str, Any], message: str) -> None:
    [(_, msg)] = errors({"pricing": pricing})
    assert message in msg


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"pricing": {"prompt_per_1k": -0.5, "completion_per_1k": 1.5}}, ("pricing", "prompt_per_1k")),
        ({"pricing": {"gpu_hour": -1, "requests_per_hour": 10}}, ("pricing", "gpu_hour")),
        ({"pricing": {"gpu_hour": 1, "requests_per_hour": 0}}, ("pricing", "requests_per_hour")),
        ({"pricing": {"gpu_hour": 1, "requests_per_hour": 10, "utilisation": 0}}, ("pricing", "utilisation")),
        (
            {"pricing": {"gpu_hour": 1, "requests_per_hour": 10, "utilisation": 1.2}},
            ("pricing", "utilisation"),
        ),
        ({"pricing": {"prompt_per_1k": float("inf"), "completion_per_1k": 1}}, ("pricing", "prompt_per_1k")),
        ({"requests_per_day": 0}, ("requests_per_day",)),
        ({"requests_per_day": -5}, ("requests_per_day",)),
        ({"retrain_cost": -120}, ("retrain_cost",)),
        ({"rebase_cost": -1}, ("rebase_cost",)),
        ({"retrains_per_year": -1}, ("retrains_per_year",)),
        ({"currency": "usd"}, ("currency",)),
        ({"monthly_budget": 10}, ("monthly_budget",)),
    ],
)
def test_bad_values_are_refused_at_their_key(data: dict[str, Any], loc: tuple[str, ...]) -> None:
    assert [found for found, _ in errors(data)] == [loc]


def test_config_and_profiles_are_frozen_and_checked() -> None:
    costs = config()
    with pytest.raises(ValidationError):
        costs.retrain_cost = 1  # type: ignore[misc]
    assert costs.currency == "USD"
    assert PricingConfig(prompt_per_1k=0, completion_per_1k=0).kind == "per_token"
    with pytest.raises(ValueError, match="prompt_tokens must be"):
        TokenProfile(-1, 20, "bad")
    with pytest.raises(ValueError, match="at least one token"):
        TokenProfile(0, 0, "empty")
