"""Cost cases: what each option for a fine-tune costs, from measured token counts.

For one deployed fine-tune, :func:`cost_case` prices the options over the
same traffic (``requests_per_day``):

========  =====================================================================
keep      the fine-tune as deployed: its short prompt, its deployment's price,
          and the expected upkeep (``retrains_per_year`` re-trains)
rollback  the baseline's weights and settings served again (only offered when
          the deployed model differs from its baseline): keep's running costs
retrain   the same fine-tune re-trained on fresh data: keep's running costs
          plus ``retrain_cost`` once
rebase    the adapter trained again on the newer base, served like the fine-tune
          (the fine-tune's deployment pricing) with the fine-tune's own prompt,
          counted under the newer base's tokenizer: ``rebase_cost`` once, then
          the same upkeep
retire    the newer base with a few-shot prompt: no training, no upkeep
========  =====================================================================

**One cost model.**  Every figure comes from these definitions, and the memo,
the CLI, the JSON API and the metrics (``monitor_option_cost_per_month``) all
read them from :meth:`CostCase.to_dict`:

* a month's cost of an option (``total_per_month``) = inference a month +
  upkeep a month; a *monthly difference* between two options is the difference
  of their ``total_per_month``, nothing else;
* inference a month = cost a day * :data:`DAYS_PER_MONTH` (30.44);
* upkeep a month = ``retrains_per_year * retrain_cost / 12`` (keep, rollback,
  retrain, rebase; retire has none);
* the first year (``annual``) = 12 * the month's cost + the one-time cost;
* cost a request, priced per token:
  ``prompt_tokens / 1000 * prompt_per_1k + completion_tokens / 1000 * completion_per_1k``;
* cost a day, priced per GPU-hour: replica-hours a day =
  ``max(requests_per_day / (requests_per_hour * utilisation), min_replicas * 24)``,
  times ``gpus * gpu_hour``.  A replica's throughput is a number of tokens
  (prompt plus completion) a second, so an option's requests an hour scale
  with its measured tokens: ``tokens_per_second * 3600 / tokens``, and a
  configured ``requests_per_hour`` is read as measured on the requests of the
  option its price block is written for (``pricing``: the fine-tune's;
  ``challenger_pricing``: few-shot on the newer base; ``rebase_pricing``: the
  re-based adapter), so another option's requests an hour are
  ``requests_per_hour * reference_tokens / tokens``;
* break-even = ``one_time_cost / monthly_saving * 30.44`` days, the saving
  being the monthly difference above.

**Quality first.**  An option is priced whatever its quality, but one that
fails its quality condition (:class:`Condition`, decided by
:mod:`monitor.analysis.recommend` from the evidence) is shown as ruled out,
with the condition, and is never called the cheapest: "cheapest" is said only
among the options that qualify.

Everything here is pure: no I/O, no clock.  The configuration models are
mounted as ``costs:`` under each fine-tune in ``monitor.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from monitor.config.schema import MONTHS_PER_YEAR, CostsConfig, PricingConfig

#: Version of :meth:`CostCase.to_dict`'s layout; bump when it changes.
#: 2: ``rollback``, the quality conditions (``qualifies``, ``condition``), ``cheapest`` among the
#: options that qualify (``None`` when none does), ``recommended``, break-evens on the monthly total.
COSTS_FORMAT_VERSION = 2
#: Days in a month: 365.25 / 12, rounded the way it is usually quoted.
DAYS_PER_MONTH = 30.44
DAYS_PER_YEAR = round(DAYS_PER_MONTH * MONTHS_PER_YEAR, 2)  # 365.28
HOURS_PER_DAY = 24

CostOption = Literal["keep", "rollback", "retrain", "rebase", "retire"]
#: Every option in the order tables show them; ``rollback`` only appears when one is possible.
OPTIONS: tuple[CostOption, ...] = ("keep", "rollback", "retrain", "rebase", "retire")


@dataclass(frozen=True)
class TokenProfile:
    """Mean tokens a request for one option, measured from runs; ``source`` says which."""

    prompt_tokens: float
    completion_tokens: float
    source: str

    def __post_init__(self) -> None:
        for name in ("prompt_tokens", "completion_tokens"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number of tokens, zero or more (got {value!r})")
        if self.prompt_tokens + self.completion_tokens <= 0:
            raise ValueError("a request has at least one token")

    @property
    def total_tokens(self) -> float:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "source": self.source,
        }


@dataclass(frozen=True)
class Condition:
    """An option's quality condition and whether the evidence meets it.

    ``text`` says what was required and what was measured, in words that read
    after the option's name ("needs few-shot on v2 within 2 points of the
    fine-tune on every golden set; routing: 0.105 against 0.980").
    """

    qualifies: bool
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"qualifies": self.qualifies, "text": self.text}


@dataclass(frozen=True)
class OptionCost:
    """What one option costs, in the configured currency."""

    option: CostOption
    #: What is served, in words ("the fine-tune", "few-shot on v2").
    label: str
    tokens: TokenProfile
    pricing: PricingConfig
    cost_per_request: float
    #: GPU-hours paid a day (per-GPU-hour pricing only).
    gpu_hours_per_day: float | None
    #: Requests one replica serves an hour at full load, for this option's tokens (per-GPU-hour only).
    requests_per_replica_hour: float | None
    inference_per_month: float
    #: Re-trains a year amortised: ``retrains_per_year * retrain_cost / 12``.
    upkeep_per_month: float
    one_time: float
    #: Inference plus upkeep: the one monthly figure every comparison uses.
    total_per_month: float
    #: The first year: 12 months of the total plus the one-time cost.
    annual: float
    #: The quality condition (``None``: none was given, the option is taken to qualify).
    condition: Condition | None = None

    @property
    def qualifies(self) -> bool:
        return self.condition is None or self.condition.qualifies

    def to_dict(self) -> dict[str, Any]:
        return {
            "option": self.option,
            "label": self.label,
            "tokens": self.tokens.to_dict(),
            "pricing": self.pricing.to_dict(),
            "cost_per_request": self.cost_per_request,
            "gpu_hours_per_day": self.gpu_hours_per_day,
            "requests_per_replica_hour": self.requests_per_replica_hour,
            "inference_per_month": self.inference_per_month,
            "upkeep_per_month": self.upkeep_per_month,
            "one_time": self.one_time,
            "total_per_month": self.total_per_month,
            "annual": self.annual,
            "qualifies": self.qualifies,
            "condition": None if self.condition is None else self.condition.text,
        }


def pricing_for(config: CostsConfig, option: CostOption) -> tuple[PricingConfig, str]:
    """The price block that applies to an option, and its name in ``costs:``.

    A re-based adapter is served like the fine-tune (an adapter on your own
    deployment), so it takes ``pricing`` unless ``rebase_pricing`` is given;
    only few-shot prompting of the newer base takes ``challenger_pricing``.
    """
    if option == "rebase" and config.rebase_pricing is not None:
        return config.rebase_pricing, "rebase_pricing"
    if option == "retire" and config.challenger_pricing is not None:
        return config.challenger_pricing, "challenger_pricing"
    return config.pricing, "pricing"


def monthly_difference(a: OptionCost, b: OptionCost) -> float:
    """``a`` minus ``b`` a month, inference plus upkeep: the one monthly difference (float noise is 0)."""
    return _difference(a.total_per_month, b.total_per_month)


def daily_inference_cost(
    pricing: PricingConfig,
    requests_per_day: float,
    tokens: TokenProfile,
    reference: TokenProfile | None = None,
) -> tuple[float, float | None, float | None]:
    """Cost of a day's traffic, the GPU-hours it takes and a replica's requests an hour
    (both ``None`` when priced per token).

    ``reference``: the requests a configured ``requests_per_hour`` was measured on
    (default: ``tokens`` themselves); the throughput scales by ``reference / tokens``.
    """
    if pricing.prompt_per_1k is not None and pricing.completion_per_1k is not None:
        per_request = (
            tokens.prompt_tokens / 1000 * pricing.prompt_per_1k
            + tokens.completion_tokens / 1000 * pricing.completion_per_1k
        )
        return requests_per_day * per_request, None, None
    assert pricing.gpu_hour is not None
    if pricing.tokens_per_second is not None:
        requests_per_hour = pricing.tokens_per_second * 3600 / tokens.total_tokens
    else:
        assert pricing.requests_per_hour is not None
        measured_on = (reference or tokens).total_tokens
        requests_per_hour = pricing.requests_per_hour * measured_on / tokens.total_tokens
    replica_hours = max(
        requests_per_day / (requests_per_hour * pricing.utilisation), pricing.min_replicas * HOURS_PER_DAY
    )
    gpu_hours = replica_hours * pricing.gpus
    return gpu_hours * pricing.gpu_hour, gpu_hours, requests_per_hour


def option_costs(
    config: CostsConfig,
    fine_tune: TokenProfile,
    few_shot: TokenProfile,
    rebased: TokenProfile | None = None,
    *,
    challenger: str = "the newer base",
    rollback: str | None = None,
    conditions: Mapping[str, Condition] | None = None,
) -> dict[CostOption, OptionCost]:
    """Each option's monthly inference, upkeep, one-time, total and annual cost, in :data:`OPTIONS` order.

    Args:
        config: the fine-tune's ``costs:``.
        fine_tune: tokens a request of the fine-tune with its short prompt (keep, rollback, retrain).
        few_shot: tokens a request of the newer base with the few-shot prompt, under its tokenizer (retire).
        rebased: tokens a request of the fine-tune's prompt under the newer base's tokenizer (rebase);
            when not measured, the fine-tune's, and its source says so.
        challenger: the newer base's name, for the labels ("few-shot on v2").
        rollback: what a rollback serves ("the baseline's weights (sha256:1a2b3c4d5e6f)"); no
            rollback option without it.
        conditions: each option's quality condition (an option without one qualifies).
    """
    if rebased is None:
        rebased = TokenProfile(
            fine_tune.prompt_tokens,
            fine_tune.completion_tokens,
            f"{fine_tune.source} (the fine-tune's; not measured on {challenger})",
        )
    upkeep = config.upkeep_per_month
    plan: dict[CostOption, tuple[str, TokenProfile, float, float]] = {
        "keep": ("the fine-tune", fine_tune, 0.0, upkeep),
    }
    if rollback is not None:
        plan["rollback"] = (rollback, fine_tune, 0.0, upkeep)
    plan["retrain"] = ("the re-trained fine-tune", fine_tune, config.retrain_cost, upkeep)
    plan["rebase"] = (f"the adapter re-based on {challenger}", rebased, config.rebase_one_time, upkeep)
    plan["retire"] = (f"few-shot on {challenger}", few_shot, 0.0, 0.0)
    # What each price block's requests_per_hour was measured on (see the module's docstring).
    references = {"pricing": fine_tune, "challenger_pricing": few_shot, "rebase_pricing": rebased}
    out: dict[CostOption, OptionCost] = {}
    for option, (label, tokens, one_time, upkeep_per_month) in plan.items():
        pricing, block = pricing_for(config, option)
        per_day, gpu_hours, per_replica = daily_inference_cost(
            pricing, config.requests_per_day, tokens, references[block]
        )
        inference = per_day * DAYS_PER_MONTH
        total = inference + upkeep_per_month
        out[option] = OptionCost(
            option=option,
            label=label,
            tokens=tokens,
            pricing=pricing,
            cost_per_request=per_day / config.requests_per_day,
            gpu_hours_per_day=gpu_hours,
            requests_per_replica_hour=per_replica,
            inference_per_month=inference,
            upkeep_per_month=upkeep_per_month,
            one_time=one_time,
            total_per_month=total,
            annual=total * MONTHS_PER_YEAR + one_time,
            condition=(conditions or {}).get(option),
        )
    return out


def break_even_days(one_time_cost: float, monthly_saving: float) -> float | None:
    """Days until a one-time cost is paid back by a monthly saving: ``one_time_cost / monthly_saving * 30.44``.

    ``0.0`` when there is nothing to pay back and nothing is lost (it saves
    money immediately); ``None`` when it never pays for itself (the saving is
    zero or negative and there is a cost to recover).

    Raises:
        ValueError: a negative or non-finite cost, or a non-finite saving.
    """
    if not math.isfinite(one_time_cost) or one_time_cost < 0:
        raise ValueError(f"one_time_cost must be a finite amount, zero or more (got {one_time_cost!r})")
    if not math.isfinite(monthly_saving):
        raise ValueError(f"monthly_saving must be finite (got {monthly_saving!r})")
    if monthly_saving > 0:
        return one_time_cost / monthly_saving * DAYS_PER_MONTH
    if one_time_cost == 0 and monthly_saving == 0:
        return 0.0
    return None


def cheapest_option(options: Mapping[CostOption, OptionCost], prefer: str | None = None) -> OptionCost | None:
    """The option that qualifies with the lowest first-year cost; ``None`` when no option qualifies.

    Ties go to ``prefer`` (the recommended option) when it is among them, else to the earlier in
    :data:`OPTIONS`, so that a recommendation that costs no more than another is called the cheapest.
    """
    qualifying = [options[option] for option in OPTIONS if option in options and options[option].qualifies]
    if not qualifying:
        return None
    lowest = min(cost.annual for cost in qualifying)
    tied = [cost for cost in qualifying if _difference(cost.annual, lowest) == 0]
    return next((cost for cost in tied if cost.option == prefer), tied[0])


def explain(
    options: Mapping[CostOption, OptionCost], config: CostsConfig, recommended: str | None = None
) -> tuple[str, ...]:
    """The cost case in plain-English sentences, amounts rounded for reading; no sentence twice.

    In order: the options ruled out on quality (with their conditions); the
    cheapest option that qualifies; every other option that qualifies against
    it (the monthly difference, the one-time difference, and when it becomes
    the cheaper); the recommended option against the cheapest.  Every monthly
    figure is :func:`monthly_difference`: inference plus upkeep.
    """
    currency = config.currency
    priced = [options[option] for option in OPTIONS if option in options]
    sentences: list[str] = []
    ruled_out = [cost for cost in priced if not cost.qualifies]
    if ruled_out:
        sentences.append(
            "ruled out on quality, so never the cheapest: "
            + "; ".join(f"{cost.option} ({cost.label}) {_condition_text(cost)}" for cost in ruled_out)
        )
    cheapest = cheapest_option(options, recommended)
    if cheapest is None:
        sentences.append("no option meets its quality condition, so none is called the cheapest")
        return _finish(sentences)
    sentences.append(
        f"of the options that qualify, the cheapest over the first year is {cheapest.option} "
        f"({cheapest.label}): {format_money(cheapest.total_per_month, currency)} a month, "
        f"{_cost(cheapest.one_time, currency)} once, {format_money(cheapest.annual, currency)} in the first year"
    )
    for cost in priced:
        if cost is cheapest or not cost.qualifies:
            continue
        monthly = monthly_difference(cost, cheapest)
        once = _difference(cost.one_time, cheapest.one_time)
        text = f"{cost.option} ({cost.label}) {_compares(monthly, currency)} {cheapest.option}"
        if once > 0:
            text += f" and {format_money(once, currency)} more once"
        elif once < 0:
            text += f" and {format_money(-once, currency)} less once"
        text += f", {format_money(cost.annual, currency)} in the first year"
        if monthly < 0 and once > 0:
            days = break_even_days(once, -monthly)
            assert days is not None
            text += f"; it becomes the cheaper after {_count(_round(days), 'day')}"
        sentences.append(text)
    chosen = next((cost for cost in priced if cost.option == recommended), None)
    if chosen is not None:
        if chosen is cheapest:
            sentences.append(f"the recommended option, {chosen.option}, is the cheapest that qualifies")
        elif chosen.qualifies:
            extra = _difference(chosen.annual, cheapest.annual)
            sentences.append(
                f"the recommended option, {chosen.option}, costs "
                f"{format_money(extra, currency)} more than {cheapest.option} over the first year: "
                "it is recommended on quality, not on cost"
            )
    return _finish(sentences)


def _condition_text(cost: OptionCost) -> str:
    return cost.condition.text if cost.condition is not None else ""


def _finish(sentences: list[str]) -> tuple[str, ...]:
    out: list[str] = []
    for sentence in sentences:
        text = sentence[0].upper() + sentence[1:] + "."
        if text not in out:
            out.append(text)
    return tuple(out)


@dataclass(frozen=True)
class CostCase:
    """The cost case for one fine-tune: every option's cost, the break-evens, the sentences, the assumptions."""

    currency: str
    requests_per_day: float
    options: tuple[OptionCost, ...]
    #: The option that qualifies with the lowest first-year cost (``None``: no option qualifies).
    cheapest: CostOption | None
    #: Days until a re-train pays for itself against few-shot on the newer base (``None``: never).
    retrain_break_even_days: float | None
    #: Days until a re-base pays for itself against few-shot on the newer base (``None``: never).
    rebase_break_even_days: float | None
    #: Days between re-trains at the expected upkeep (``None``: no re-trains expected).
    retrain_interval_days: float | None
    retrain_cost: float
    rebase_cost: float
    retrains_per_year: float
    sentences: tuple[str, ...]
    assumptions: tuple[str, ...]
    #: The recommended action, when the case was made for one.
    recommended: str | None = None
    days_per_month: float = DAYS_PER_MONTH
    format_version: int = COSTS_FORMAT_VERSION

    def option(self, name: str) -> OptionCost:
        """One option's costs."""
        for cost in self.options:
            if cost.option == name:
                return cost
        raise KeyError(name)

    def monthly_difference(self, a: str, b: str) -> float:
        """Option ``a`` minus option ``b`` a month (:func:`monthly_difference`)."""
        return monthly_difference(self.option(a), self.option(b))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, versioned with ``format_version``."""
        return {
            "format_version": self.format_version,
            "currency": self.currency,
            "requests_per_day": self.requests_per_day,
            "days_per_month": self.days_per_month,
            "retrain_cost": self.retrain_cost,
            "rebase_cost": self.rebase_cost,
            "retrains_per_year": self.retrains_per_year,
            "options": {cost.option: cost.to_dict() for cost in self.options},
            "cheapest": self.cheapest,
            "recommended": self.recommended,
            "ruled_out": [cost.option for cost in self.options if not cost.qualifies],
            "retrain_break_even_days": self.retrain_break_even_days,
            "rebase_break_even_days": self.rebase_break_even_days,
            "retrain_interval_days": self.retrain_interval_days,
            "sentences": list(self.sentences),
            "assumptions": list(self.assumptions),
        }

    def markdown_table(self) -> str:
        """The options side by side, amounts in whole units of the currency; the cheapest option that
        qualifies in bold, the options ruled out on quality marked so."""
        c = self.currency
        header = (
            "| option | served | quality | prompt tokens | completion tokens | per 1k requests | "
            f"inference / month ({c}) | upkeep / month ({c}) | one-time ({c}) | total / month ({c}) | "
            f"first year ({c}) |"
        )
        rows = [header, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for cost in self.options:
            marks = []
            if cost.option == self.cheapest:
                marks.append("cheapest that qualifies")
            if cost.option == self.recommended:
                marks.append("recommended")
            name = f"**{cost.option}**" if cost.option == self.cheapest else cost.option
            if marks:
                name += f" ({', '.join(marks)})"
            cells = [
                name,
                cost.label.replace("|", "\\|"),
                "qualifies" if cost.qualifies else "ruled out",
                format_number(cost.tokens.prompt_tokens),
                format_number(cost.tokens.completion_tokens),
                format_amount(cost.cost_per_request * 1000),
                format_amount(cost.inference_per_month),
                format_amount(cost.upkeep_per_month),
                format_amount(cost.one_time),
                format_amount(cost.total_per_month),
                format_amount(cost.annual),
            ]
            rows.append("| " + " | ".join(cells) + " |")
        return "\n".join(rows) + "\n"


def cost_case(
    config: CostsConfig,
    fine_tune: TokenProfile,
    few_shot: TokenProfile,
    rebased: TokenProfile | None = None,
    *,
    challenger: str = "the newer base",
    rollback: str | None = None,
    conditions: Mapping[str, Condition] | None = None,
    recommended: str | None = None,
) -> CostCase:
    """Price every option (:func:`option_costs`), find the break-evens and explain them (:func:`explain`)."""
    options = option_costs(
        config, fine_tune, few_shot, rebased, challenger=challenger, rollback=rollback, conditions=conditions
    )
    retrain, rebase, retire = options["retrain"], options["rebase"], options["retire"]
    currency = config.currency
    assumptions = [
        f"a month is {DAYS_PER_MONTH:g} days and a year {MONTHS_PER_YEAR} months ({DAYS_PER_YEAR:g} days)",
        "a month's cost is inference plus upkeep (re-trains amortised), and every monthly difference "
        "compares those totals; the first year adds the one-time costs",
        f"{_count(config.requests_per_day, 'request')} a day for every option",
        f"a re-train costs {format_money(config.retrain_cost, currency)}, a re-base "
        f"{format_money(config.rebase_one_time, currency)}; {_count(config.retrains_per_year, 're-train')} "
        "a year of upkeep for every option that keeps an adapter",
    ]
    references = {
        "pricing": "the fine-tune's",
        "challenger_pricing": "few-shot",
        "rebase_pricing": "the re-based",
    }
    for cost in options.values():
        _, block = pricing_for(config, cost.option)
        text = (
            f"{cost.option} ({cost.label}): {describe_pricing(cost.pricing, currency)} (`{block}`); "
            f"{format_number(cost.tokens.prompt_tokens)} prompt and "
            f"{format_number(cost.tokens.completion_tokens)} completion tokens a request "
            f"({cost.tokens.source})"
        )
        if cost.requests_per_replica_hour is not None:
            text += f"; {format_number(cost.requests_per_replica_hour)} requests an hour a replica"
            if cost.pricing.requests_per_hour is not None:
                text += f" (the configured rate, measured on {references[block]} requests, scaled by tokens)"
        assumptions.append(text)
    cheapest = cheapest_option(options, recommended)
    return CostCase(
        currency=currency,
        requests_per_day=config.requests_per_day,
        options=tuple(options.values()),
        cheapest=None if cheapest is None else cheapest.option,
        retrain_break_even_days=break_even_days(retrain.one_time, monthly_difference(retire, retrain)),
        rebase_break_even_days=break_even_days(rebase.one_time, monthly_difference(retire, rebase)),
        retrain_interval_days=DAYS_PER_YEAR / config.retrains_per_year if config.retrains_per_year else None,
        retrain_cost=config.retrain_cost,
        rebase_cost=config.rebase_one_time,
        retrains_per_year=config.retrains_per_year,
        sentences=explain(options, config, recommended),
        assumptions=tuple(assumptions),
        recommended=recommended,
    )


# Formatting.  Rounding is half-up on the value as printed (8.5 days read as 9), not banker's rounding.


def format_amount(amount: float) -> str:
    """An amount for reading: whole units from 10 up (with thousands separators), cents below 10,
    two significant digits below 1 (``4,440``, ``35``, ``2.50``, ``0.042``)."""
    if not math.isfinite(amount):
        raise ValueError(f"not a finite amount: {amount!r}")
    sign = "-" if amount < 0 else ""
    magnitude = abs(amount)
    whole = _round(magnitude)
    if whole >= 10:
        return f"{sign}{whole:,}"
    cents = _round(magnitude, 2)
    if cents >= 1:
        return f"{sign}{cents:.2f}"
    if magnitude == 0:
        return "0"
    places = max(2, 1 - math.floor(math.log10(magnitude)))
    text = f"{_round(magnitude, places):f}"
    if "." in text:
        integer, decimals = text.split(".")
        text = f"{integer}.{decimals.rstrip('0').ljust(2, '0')}"
    return f"{sign}{text}"


def format_money(amount: float, currency: str) -> str:
    """:func:`format_amount` followed by the currency: ``4,440 USD``."""
    return f"{format_amount(amount)} {currency}"


def format_number(value: float) -> str:
    """A count or a quantity: whole numbers with thousands separators, one decimal from 1 to 100,
    two significant digits below 1 (``20,000``, ``20.5``, ``0.25``)."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    magnitude = abs(value)
    sign = "-" if value < 0 else ""
    if magnitude >= 100 or magnitude == int(magnitude):
        return f"{sign}{_round(magnitude):,}"
    if magnitude >= 1:
        text = f"{_round(magnitude, 1):f}"
    else:
        text = f"{_round(magnitude, 1 - math.floor(math.log10(magnitude))):f}"
    text = text.rstrip("0").rstrip(".") if "." in text else text
    return f"{sign}{text}"


def _round(value: float, places: int = 0) -> Decimal:
    return Decimal(repr(value)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def _count(value: float | Decimal, noun: str) -> str:
    text = format_number(float(value))
    return f"{text} {noun if text == '1' else noun + 's'}"


def _difference(a: float, b: float) -> float:
    # Float noise between equal costs computed two ways must not read as "0.0000001 USD more".
    return 0.0 if math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) else a - b


def _compares(difference: float, currency: str) -> str:
    """``costs X a month more than``, ``... less than`` or ``costs the same a month as``, for
    ``subject - object``."""
    if difference > 0:
        return f"costs {format_money(difference, currency)} a month more than"
    if difference < 0:
        return f"costs {format_money(-difference, currency)} a month less than"
    return "costs the same a month as"


def _cost(amount: float, currency: str) -> str:
    return "nothing" if amount == 0 else format_money(amount, currency)


def describe_pricing(pricing: PricingConfig, currency: str) -> str:
    """The price in words, for the assumptions of a cost case."""
    if pricing.prompt_per_1k is not None and pricing.completion_per_1k is not None:
        return (
            f"{format_money(pricing.prompt_per_1k, currency)} per 1k prompt tokens, "
            f"{format_money(pricing.completion_per_1k, currency)} per 1k completion tokens"
        )
    assert pricing.gpu_hour is not None
    throughput = (
        f"{format_number(pricing.requests_per_hour)} requests an hour"
        if pricing.requests_per_hour is not None
        else f"{format_number(pricing.tokens_per_second or 0.0)} tokens a second (prompt and completion)"
    )
    text = (
        f"{format_money(pricing.gpu_hour, currency)} a GPU-hour, {_count(pricing.gpus, 'GPU')} a replica "
        f"serving {throughput} at {format_number(pricing.utilisation * 100)}% utilisation"
    )
    if pricing.min_replicas:
        text += f", {_count(pricing.min_replicas, 'replica')} always on"
    return text
