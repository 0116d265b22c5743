"""Cost cases: what each option for a fine-tune costs, from measured token counts.

For one deployed fine-tune, :func:`cost_case` prices four options over the
same traffic (``requests_per_day``):

========  =====================================================================
keep      the fine-tune as deployed: its short prompt, its deployment's price,
          and the expected upkeep (``retrains_per_year`` re-trains)
retrain   the same fine-tune re-trained on fresh data: keep's running costs
          plus ``retrain_cost`` once
rebase    the adapter trained again on the newer base, served with the short
          prompt (under the newer base's tokenizer): ``rebase_cost`` once,
          then the same upkeep
retire    the newer base with a few-shot prompt: no training, no upkeep
========  =====================================================================

The formulas, with a month of :data:`DAYS_PER_MONTH` (30.44) days and a year
of 12 such months (365.28 days):

* cost per request, priced per token:
  ``prompt_tokens / 1000 * prompt_per_1k + completion_tokens / 1000 * completion_per_1k``;
* cost per day, priced per GPU-hour: replica-hours a day =
  ``max(requests_per_day / (requests_per_hour * utilisation), min_replicas * 24)``
  (``requests_per_hour = tokens_per_second * 3600 / (prompt_tokens + completion_tokens)``
  when the throughput was measured in tokens), times ``gpus * gpu_hour``;
* inference a month = cost per day * 30.44;
* upkeep a month = ``retrains_per_year * retrain_cost / 12`` (keep, retrain,
  rebase; retire has none);
* total a month = inference + upkeep; annual (the first year) = 12 * total + one-time;
* break-even = ``one_time_cost / monthly_saving * 30.44`` days, where the saving
  is what the trained option saves a month in inference against few-shot on
  the newer base.  A re-train that pays for itself in fewer days than the
  interval between re-trains (``365.28 / retrains_per_year``) keeps the fine-tune
  the cheaper option, upkeep included.

Everything here is pure: no I/O, no clock.  The configuration models are
mounted as ``costs:`` under each fine-tune in ``monitor.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from monitor.config.schema import MONTHS_PER_YEAR, CostsConfig, Option, PricingConfig

#: Version of :meth:`CostCase.to_dict`'s layout; bump when it changes.
COSTS_FORMAT_VERSION = 1
#: Days in a month: 365.25 / 12, rounded the way it is usually quoted.
DAYS_PER_MONTH = 30.44
DAYS_PER_YEAR = round(DAYS_PER_MONTH * MONTHS_PER_YEAR, 2)  # 365.28
HOURS_PER_DAY = 24

OPTIONS: tuple[Option, ...] = ("keep", "retrain", "rebase", "retire")


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
class OptionCost:
    """What one option costs, in the configured currency."""

    option: Option
    #: What is served, in words ("the fine-tune", "few-shot on v2").
    label: str
    tokens: TokenProfile
    pricing: PricingConfig
    cost_per_request: float
    #: GPU-hours paid a day (per-GPU-hour pricing only).
    gpu_hours_per_day: float | None
    inference_per_month: float
    #: Re-trains a year amortised: ``retrains_per_year * retrain_cost / 12``.
    upkeep_per_month: float
    one_time: float
    #: Inference plus upkeep.
    total_per_month: float
    #: The first year: 12 months of the total plus the one-time cost.
    annual: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "option": self.option,
            "label": self.label,
            "tokens": self.tokens.to_dict(),
            "pricing": self.pricing.to_dict(),
            "cost_per_request": self.cost_per_request,
            "gpu_hours_per_day": self.gpu_hours_per_day,
            "inference_per_month": self.inference_per_month,
            "upkeep_per_month": self.upkeep_per_month,
            "one_time": self.one_time,
            "total_per_month": self.total_per_month,
            "annual": self.annual,
        }


def daily_inference_cost(
    pricing: PricingConfig, requests_per_day: float, tokens: TokenProfile
) -> tuple[float, float | None]:
    """Cost of a day's traffic, and the GPU-hours it takes (``None`` when priced per token)."""
    if pricing.prompt_per_1k is not None and pricing.completion_per_1k is not None:
        per_request = (
            tokens.prompt_tokens / 1000 * pricing.prompt_per_1k
            + tokens.completion_tokens / 1000 * pricing.completion_per_1k
        )
        return requests_per_day * per_request, None
    assert pricing.gpu_hour is not None
    if pricing.requests_per_hour is not None:
        requests_per_hour = pricing.requests_per_hour
    else:
        assert pricing.tokens_per_second is not None
        requests_per_hour = pricing.tokens_per_second * 3600 / tokens.total_tokens
    replica_hours = max(
        requests_per_day / (requests_per_hour * pricing.utilisation), pricing.min_replicas * HOURS_PER_DAY
    )
    gpu_hours = replica_hours * pricing.gpus
    return gpu_hours * pricing.gpu_hour, gpu_hours


def option_costs(
    config: CostsConfig,
    fine_tune: TokenProfile,
    few_shot: TokenProfile,
    rebased: TokenProfile | None = None,
    *,
    challenger: str = "the newer base",
) -> dict[Option, OptionCost]:
    """Each option's monthly inference, upkeep, one-time, total and annual cost, in :data:`OPTIONS` order.

    Args:
        config: the fine-tune's ``costs:``.
        fine_tune: tokens a request of the fine-tune with its short prompt (keep, retrain).
        few_shot: tokens a request of the newer base with the few-shot prompt, under its tokenizer (retire).
        rebased: tokens a request of the short prompt under the newer base's tokenizer (rebase);
            when not measured, the fine-tune's, and its source says so.
        challenger: the newer base's name, for the labels ("few-shot on v2").
    """
    if rebased is None:
        rebased = TokenProfile(
            fine_tune.prompt_tokens,
            fine_tune.completion_tokens,
            f"{fine_tune.source} (the fine-tune's; not measured on {challenger})",
        )
    upkeep = config.upkeep_per_month
    plan: dict[Option, tuple[str, TokenProfile, float, float]] = {
        "keep": ("the fine-tune", fine_tune, 0.0, upkeep),
        "retrain": ("the re-trained fine-tune", fine_tune, config.retrain_cost, upkeep),
        "rebase": (f"the adapter re-based on {challenger}", rebased, config.rebase_one_time, upkeep),
        "retire": (f"few-shot on {challenger}", few_shot, 0.0, 0.0),
    }
    out: dict[Option, OptionCost] = {}
    for option, (label, tokens, one_time, upkeep_per_month) in plan.items():
        pricing = config.pricing_for(option)
        per_day, gpu_hours = daily_inference_cost(pricing, config.requests_per_day, tokens)
        inference = per_day * DAYS_PER_MONTH
        total = inference + upkeep_per_month
        out[option] = OptionCost(
            option=option,
            label=label,
            tokens=tokens,
            pricing=pricing,
            cost_per_request=per_day / config.requests_per_day,
            gpu_hours_per_day=gpu_hours,
            inference_per_month=inference,
            upkeep_per_month=upkeep_per_month,
            one_time=one_time,
            total_per_month=total,
            annual=total * MONTHS_PER_YEAR + one_time,
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


def explain(options: Mapping[Option, OptionCost], config: CostsConfig) -> tuple[str, ...]:
    """The cost case in plain-English sentences, amounts rounded for reading.

    The options come from :func:`option_costs` (their labels name the newer base).

    In order: the fine-tune against few-shot on the newer base (and whether a
    re-train pays for itself), the upkeep over a year, the re-base against
    few-shot, the re-base against the fine-tune, and the cheapest option over
    the first year.
    """
    keep, retrain, rebase, retire = (options[option] for option in OPTIONS)
    currency = config.currency
    traffic = f"{_count(config.requests_per_day, 'request')} a day"
    retrains = _count(config.retrains_per_year, "re-train")
    upkeep_a_year = config.upkeep_per_month * MONTHS_PER_YEAR
    sentences: list[str] = []

    # The fine-tune's serving saving against prompting decides whether a re-train pays for itself.
    saving = _difference(retire.inference_per_month, keep.inference_per_month)
    head = f"{retire.label} {_compares(saving, currency)} {keep.label} at {traffic}"
    if saving > 0:
        days = break_even_days(retrain.one_time, saving)
        sentences.append(f"{head}; the re-train costs {_cost(retrain.one_time, currency)}; {_payback(days)}")
        if config.retrains_per_year > 0:
            every = _count(_round(DAYS_PER_YEAR / config.retrains_per_year), "day")
            lead = f"with {retrains} a year (one every {every})"
            net_a_year = _difference(retire.total_per_month, keep.total_per_month) * MONTHS_PER_YEAR
            if net_a_year > 0:
                sentences.append(
                    f"{lead}, upkeep included, {keep.label} costs "
                    f"{format_money(net_a_year, currency)} a year less than {retire.label}"
                )
            elif net_a_year < 0:
                sentences.append(
                    f"{lead}, the upkeep outweighs the saving: {keep.label} costs "
                    f"{format_money(-net_a_year, currency)} a year more than {retire.label}"
                )
            else:
                sentences.append(f"{lead}, the upkeep cancels the saving exactly")
    else:
        savings = []
        if saving < 0:
            savings.append(f"{format_money(-saving * MONTHS_PER_YEAR, currency)} a year")
        if config.retrains_per_year > 0:
            amount = f" ({format_money(upkeep_a_year, currency)} a year)" if upkeep_a_year > 0 else ""
            savings.append(f"the upkeep of {retrains}{amount}")
        tail = (
            f"retiring {keep.label} saves {' and '.join(savings)}"
            if savings
            else "on cost alone neither wins"
        )
        sentences.append(f"{head}; {tail}")

    rebase_saving = _difference(retire.inference_per_month, rebase.inference_per_month)
    head = f"{retire.label} {_compares(rebase_saving, currency)} {rebase.label}"
    rebase_cost = f"the re-base costs {_cost(rebase.one_time, currency)}"
    if rebase_saving > 0:
        sentences.append(
            f"{head}; {rebase_cost}; {_payback(break_even_days(rebase.one_time, rebase_saving))}"
        )
    elif rebase_saving == 0 and rebase.one_time == 0:
        sentences.append(f"{head}; {rebase_cost}; on cost alone neither wins")
    else:
        sentences.append(f"{head}; {rebase_cost} and never pays for itself")

    serving = _difference(rebase.inference_per_month, keep.inference_per_month)
    sentences.append(f"serving {rebase.label} {_compares(serving, currency)} serving {keep.label}")

    cheapest = cheapest_option(options)
    sentences.append(
        f"over the first year, one-time costs included, the cheapest option is {cheapest.option} "
        f"({cheapest.label}) at {format_money(cheapest.annual, currency)}"
    )
    return tuple(sentence[0].upper() + sentence[1:] + "." for sentence in sentences)


def cheapest_option(options: Mapping[Option, OptionCost]) -> OptionCost:
    """The option with the lowest first-year cost; ties go to the earlier of keep, retrain, rebase, retire."""
    return min((options[option] for option in OPTIONS if option in options), key=lambda cost: cost.annual)


@dataclass(frozen=True)
class CostCase:
    """The cost case for one fine-tune: every option's cost, the break-evens, the sentences, the assumptions."""

    currency: str
    requests_per_day: float
    options: tuple[OptionCost, ...]
    #: The option with the lowest first-year cost.
    cheapest: Option
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
    days_per_month: float = DAYS_PER_MONTH
    format_version: int = COSTS_FORMAT_VERSION

    def option(self, name: Option) -> OptionCost:
        """One option's costs."""
        for cost in self.options:
            if cost.option == name:
                return cost
        raise KeyError(name)

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
            "retrain_break_even_days": self.retrain_break_even_days,
            "rebase_break_even_days": self.rebase_break_even_days,
            "retrain_interval_days": self.retrain_interval_days,
            "sentences": list(self.sentences),
            "assumptions": list(self.assumptions),
        }

    def markdown_table(self) -> str:
        """The options side by side, amounts in whole units of the currency, the cheapest in bold."""
        c = self.currency
        header = (
            "| option | served | prompt tokens | completion tokens | per 1k requests | "
            f"inference / month ({c}) | upkeep / month ({c}) | one-time ({c}) | total / month ({c}) | "
            f"first year ({c}) |"
        )
        rows = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for cost in self.options:
            name = f"**{cost.option}** (cheapest)" if cost.option == self.cheapest else cost.option
            cells = [
                name,
                cost.label.replace("|", "\\|"),
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
) -> CostCase:
    """Price every option (:func:`option_costs`), find the break-evens and explain them (:func:`explain`)."""
    options = option_costs(config, fine_tune, few_shot, rebased, challenger=challenger)
    retrain, rebase, retire = options["retrain"], options["rebase"], options["retire"]
    currency = config.currency
    assumptions = [
        f"a month is {DAYS_PER_MONTH:g} days and a year {MONTHS_PER_YEAR} months ({DAYS_PER_YEAR:g} days)",
        f"{_count(config.requests_per_day, 'request')} a day for every option",
        f"a re-train costs {format_money(config.retrain_cost, currency)}, a re-base "
        f"{format_money(config.rebase_one_time, currency)}; {_count(config.retrains_per_year, 're-train')} "
        "a year of upkeep for every option that keeps an adapter (keep, retrain, rebase)",
    ]
    for cost in options.values():
        assumptions.append(
            f"{cost.option} ({cost.label}): {describe_pricing(cost.pricing, currency)}; "
            f"{format_number(cost.tokens.prompt_tokens)} prompt and "
            f"{format_number(cost.tokens.completion_tokens)} completion tokens a request "
            f"({cost.tokens.source})"
        )
    return CostCase(
        currency=currency,
        requests_per_day=config.requests_per_day,
        options=tuple(options.values()),
        cheapest=cheapest_option(options).option,
        retrain_break_even_days=break_even_days(
            retrain.one_time, _difference(retire.inference_per_month, retrain.inference_per_month)
        ),
        rebase_break_even_days=break_even_days(
            rebase.one_time, _difference(retire.inference_per_month, rebase.inference_per_month)
        ),
        retrain_interval_days=DAYS_PER_YEAR / config.retrains_per_year if config.retrains_per_year else None,
        retrain_cost=config.retrain_cost,
        rebase_cost=config.rebase_one_time,
        retrains_per_year=config.retrains_per_year,
        sentences=explain(options, config),
        assumptions=tuple(assumptions),
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
    """``costs X a month more than``, ``... less than`` or ``the same as``, for ``subject - object``."""
    if difference > 0:
        return f"costs {format_money(difference, currency)} a month more than"
    if difference < 0:
        return f"costs {format_money(-difference, currency)} a month less than"
    return "costs the same as"


def _cost(amount: float, currency: str) -> str:
    return "nothing" if amount == 0 else format_money(amount, currency)


def _payback(days: float | None) -> str:
    if days is None:
        return "it never pays for itself"
    if days == 0:
        return "it saves money immediately"
    if days < 1:
        return "it pays for itself in less than a day"
    return f"it pays for itself in {_count(_round(days), 'day')}"


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
