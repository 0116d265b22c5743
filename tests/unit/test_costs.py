"""Cost cases: hand-computed option costs, break-evens, the sentences, rounding, validation."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from monitor.analysis.costs import (
    DAYS_PER_MONTH,
    OPTIONS,
    TokenProfile,
    break_even_days,
    cost_case,
    explain,
    format_amount,
    format_money,
    format_number,
    option_costs,
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
    assert tuple(options) == OPTIONS
    keep, retrain, rebase, retire = (options[o] for o in OPTIONS)

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
    assert without_rebase_block.pricing_for("rebase") == without_rebase_block.challenger_pricing


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
        # 389.632 - 85.232 = 304.40 a month; 120 / 304.40 x 30.44 = 12 days
        "Few-shot on v2 costs 304 USD a month more than the fine-tune at 20,000 requests a day; "
        "the re-train costs 120 USD; it pays for itself in 12 days.",
        # (389.632 - 125.232) x 12 = 264.40 x 12 = 3,172.80; 365.28 / 4 = 91.32 days between re-trains
        "With 4 re-trains a year (one every 91 days), upkeep included, "
        "the fine-tune costs 3,173 USD a year less than few-shot on v2.",
        # 389.632 - 79.144 = 310.488 a month; 300 / 310.488 x 30.44 = 29.4 days
        "Few-shot on v2 costs 310 USD a month more than the adapter re-based on v2; "
        "the re-base costs 300 USD; it pays for itself in 29 days.",
        # 79.144 - 85.232 = -6.088
        "Serving the adapter re-based on v2 costs 6.09 USD a month less than serving the fine-tune.",
        "Over the first year, one-time costs included, the cheapest option is keep (the fine-tune) at 1,503 USD.",
    )
    assert case.cheapest == "keep"
    assert case.retrain_break_even_days == pytest.approx(12)
    assert case.rebase_break_even_days == pytest.approx(29.4118, rel=1e-4)
    assert case.retrain_interval_days == pytest.approx(91.32)


def test_explanation_when_few_shot_is_cheaper() -> None:
    costs = config(
        requests_per_day=1_000,
        pricing={"gpu_hour": 2.0, "requests_per_hour": 3_600, "utilisation": 0.5, "min_replicas": 1},
        challenger_pricing={"prompt_per_1k": 0.01, "completion_per_1k": 0.03},
    )
    case = cost_case(costs, FINE_TUNE, FEW_SHOT, challenger="v2")
    # keep: 48 a day (the always-on replica, above); rebase is served like the challenger (per token)
    # retire: 1,000 x (600 x 0.01/1k + 20 x 0.03/1k) = 1,000 x 0.0066 = 6.60 a day
    # 6.60 - 48 = -41.40 a day x 30.44 = -1,260.22 a month; x 12 = -15,122.59 a year
    # rebase: 1,000 x (100 x 0.01/1k + 20 x 0.03/1k) = 1.60 a day x 30.44 = 48.70 a month
    # few-shot - rebase = (6.60 - 1.60) x 30.44 = 152.20 a month; 300 / 5 a day = 60 days
    # rebase - keep = (1.60 - 48) x 30.44 = -1,412.42 a month
    # first year: retire 6.60 x 30.44 x 12 = 2,410.85; rebase (48.70 + 40) x 12 + 300 = 1,364.45
    assert case.sentences == (
        "Few-shot on v2 costs 1,260 USD a month less than the fine-tune at 1,000 requests a day; "
        "retiring the fine-tune saves 15,123 USD a year and the upkeep of 4 re-trains (480 USD a year).",
        "Few-shot on v2 costs 152 USD a month more than the adapter re-based on v2; "
        "the re-base costs 300 USD; it pays for itself in 60 days.",
        "Serving the adapter re-based on v2 costs 1,412 USD a month less than serving the fine-tune.",
        "Over the first year, one-time costs included, the cheapest option is rebase "
        "(the adapter re-based on v2) at 1,364 USD.",
    )
    assert case.retrain_break_even_days is None
    assert case.rebase_break_even_days == pytest.approx(60)


def test_explanation_when_the_upkeep_outweighs_the_serving_saving() -> None:
    costs = config(pricing={"prompt_per_1k": 0.0001, "completion_per_1k": 0})
    sentences = explain(option_costs(costs, FINE_TUNE, FEW_SHOT, challenger="v2"), costs)
    # few-shot - fine-tune: 20,000 x 500 x 0.0001/1k = 1.00 a day x 30.44 = 30.44 a month; 120 / 1 a day = 120 days
    # upkeep 40 a month: 30.44 - 40 = -9.56 a month x 12 = -114.72 a year
    assert sentences[:2] == (
        "Few-shot on v2 costs 30 USD a month more than the fine-tune at 20,000 requests a day; "
        "the re-train costs 120 USD; it pays for itself in 120 days.",
        "With 4 re-trains a year (one every 91 days), the upkeep outweighs the saving: "
        "the fine-tune costs 115 USD a year more than few-shot on v2.",
    )


def test_explanation_of_a_free_retrain_and_equal_costs() -> None:
    costs = config(retrain_cost=0, rebase_cost=0, retrains_per_year=0)
    sentences = explain(option_costs(costs, FINE_TUNE, FEW_SHOT, FINE_TUNE), costs)
    assert sentences[0] == (
        "Few-shot on the newer base costs 304 USD a month more than the fine-tune at 20,000 requests a day; "
        "the re-train costs nothing; it saves money immediately."
    )
    assert (
        sentences[2]
        == "Serving the adapter re-based on the newer base costs the same as serving the fine-tune."
    )

    same = explain(option_costs(costs, FINE_TUNE, FINE_TUNE, FINE_TUNE), costs)
    assert same[0] == (
        "Few-shot on the newer base costs the same as the fine-tune at 20,000 requests a day; "
        "on cost alone neither wins."
    )
    assert same[1] == (
        "Few-shot on the newer base costs the same as the adapter re-based on the newer base; "
        "the re-base costs nothing; on cost alone neither wins."
    )
    upkeep = config(retrains_per_year=1)
    same_with_upkeep = explain(option_costs(upkeep, FINE_TUNE, FINE_TUNE, FINE_TUNE), upkeep)
    assert same_with_upkeep[0].endswith(
        "; retiring the fine-tune saves the upkeep of 1 re-train (120 USD a year)."
    )
    assert same_with_upkeep[1].endswith("; the re-base costs 300 USD and never pays for itself.")


def test_singular_and_plural() -> None:
    # 1 request a day of 100,000 extra prompt tokens at 0.3/1k = 30 a day: 30 / 30 = 1 day
    costs = config(
        requests_per_day=1,
        pricing={"prompt_per_1k": 0.3, "completion_per_1k": 0},
        retrain_cost=30,
        retrains_per_year=1,
    )
    sentences = explain(
        option_costs(costs, TokenProfile(1, 1, "ft"), TokenProfile(100_001, 1, "fs"), challenger="v2"), costs
    )
    assert sentences[0] == (
        "Few-shot on v2 costs 913 USD a month more than the fine-tune at 1 request a day; "
        "the re-train costs 30 USD; it pays for itself in 1 day."
    )
    assert sentences[1].startswith("With 1 re-train a year (one every 365 days), upkeep included,")
    half = config(retrains_per_year=0.5, requests_per_day=1.5)
    text = explain(option_costs(half, FINE_TUNE, FEW_SHOT), half)
    assert "at 1.5 requests a day;" in text[0]
    assert text[1].startswith("With 0.5 re-trains a year (one every 731 days)")


def test_a_payback_under_a_day() -> None:
    costs = config(retrain_cost=5)
    # 5 / 10 a day = 0.5 days
    assert (
        "it pays for itself in less than a day."
        in explain(option_costs(costs, FINE_TUNE, FEW_SHOT), costs)[0]
    )


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
    assert data["format_version"] == 1
    assert data["days_per_month"] == 30.44
    assert list(data["options"]) == list(OPTIONS)
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
    assert data["retrain_break_even_days"] == pytest.approx(12)
    assert data["sentences"] == list(case.sentences)
    assert case.option("rebase").one_time == 300


def test_assumptions_list_days_prices_and_token_sources() -> None:
    costs = config(
        challenger_pricing={"gpu_hour": 2.5, "tokens_per_second": 1_500, "gpus": 2, "utilisation": 0.7}
    )
    case = cost_case(costs, FINE_TUNE, FEW_SHOT, challenger="v2")
    assert case.assumptions[0] == "a month is 30.44 days and a year 12 months (365.28 days)"
    assert case.assumptions[1] == "20,000 requests a day for every option"
    assert case.assumptions[2] == (
        "a re-train costs 120 USD, a re-base 300 USD; 4 re-trains a year of upkeep for every option "
        "that keeps an adapter (keep, retrain, rebase)"
    )
    assert case.assumptions[3] == (
        "keep (the fine-tune): 0.001 USD per 1k prompt tokens, 0.002 USD per 1k completion tokens; "
        "100 prompt and 20 completion tokens a request (run 7 (router, zero-shot))"
    )
    assert case.assumptions[6] == (
        "retire (few-shot on v2): 2.50 USD a GPU-hour, 2 GPUs a replica serving 1,500 tokens a second "
        "(prompt and completion) at 70% utilisation; 600 prompt and 20 completion tokens a request "
        "(run 9 (v2, 5-shot, v2 tokenizer))"
    )
    assert "not measured on v2" in case.assumptions[5]


def test_markdown_table() -> None:
    case = cost_case(config(), FINE_TUNE, FEW_SHOT, REBASED, challenger="v2")
    assert case.markdown_table() == (
        "| option | served | prompt tokens | completion tokens | per 1k requests | inference / month (USD) "
        "| upkeep / month (USD) | one-time (USD) | total / month (USD) | first year (USD) |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        "| **keep** (cheapest) | the fine-tune | 100 | 20 | 0.14 | 85 | 40 | 0 | 125 | 1,503 |\n"
        "| retrain | the re-trained fine-tune | 100 | 20 | 0.14 | 85 | 40 | 120 | 125 | 1,623 |\n"
        "| rebase | the adapter re-based on v2 | 90 | 20 | 0.13 | 79 | 40 | 300 | 119 | 1,730 |\n"
        "| retire | few-shot on v2 | 600 | 20 | 0.64 | 390 | 0 | 0 | 390 | 4,676 |\n"
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
