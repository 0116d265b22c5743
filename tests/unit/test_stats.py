"""Regression statistics: agreement with scipy and statsmodels, edge cases, and calibration.

The calibration tests replay one "model" many times: a fixed pool of per-item pass
probabilities (U-shaped, as real models pass most items almost always and some
almost never), a seeded sample of items per replication, and baseline and current
outcomes drawn independently from the same probabilities (no change) or from
probabilities lowered by a known number of points (a real drop).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import optimize
from scipy import stats as sps

from monitor.analysis.stats import (
    PairedTest,
    TestResult,
    holm,
    mcnemar_exact,
    minimum_detectable_difference,
    newcombe_interval,
    paired_bootstrap,
    regression_decision,
    tango_interval,
    unpaired_means,
    unpaired_proportions,
)

ALPHA = 0.05


def paired_outcomes(b: int, c: int, both_pass: int, both_fail: int) -> tuple[list[bool], list[bool]]:
    """Baseline and current outcomes with ``b`` pass->fail and ``c`` fail->pass items."""
    baseline = [True] * b + [False] * c + [True] * both_pass + [False] * both_fail
    current = [False] * b + [True] * c + [True] * both_pass + [False] * both_fail
    return baseline, current


def statsmodels_mcnemar_p(b: int, c: int, both_pass: int, both_fail: int) -> float:
    contingency_tables = pytest.importorskip("statsmodels.stats.contingency_tables")
    table = [[both_pass, b], [c, both_fail]]
    return float(contingency_tables.mcnemar(table, exact=True).pvalue)


# --- McNemar ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("b", "c", "both_pass", "both_fail"),
    [
        (12, 5, 150, 33),
        (5, 12, 150, 33),
        (0, 7, 10, 3),
        (7, 7, 80, 6),
        (1, 0, 0, 0),
        (40, 20, 60, 40),
        (300, 260, 1200, 240),
        (3, 1, 0, 0),
    ],
)
def test_mcnemar_p_value_matches_statsmodels(b: int, c: int, both_pass: int, both_fail: int) -> None:
    baseline, current = paired_outcomes(b, c, both_pass, both_fail)
    result = mcnemar_exact(baseline, current)
    assert result.p_value == pytest.approx(statsmodels_mcnemar_p(b, c, both_pass, both_fail), rel=1e-12)
    n = b + c + both_pass + both_fail
    assert (result.pass_to_fail, result.fail_to_pass, result.n) == (b, c, n)
    assert result.delta == pytest.approx((c - b) / n)
    assert result.delta == pytest.approx(result.current_mean - result.baseline_mean)
    assert result.paired and result.confidence == pytest.approx(0.95)
    assert -1.0 <= result.ci_low <= result.delta <= result.ci_high <= 1.0


def test_mcnemar_takes_numpy_and_zero_one_floats() -> None:
    rng = np.random.default_rng(3)
    baseline = rng.random(300) < 0.7
    current = rng.random(300) < 0.6
    from_bools = mcnemar_exact(baseline, current)
    from_floats = mcnemar_exact(baseline.astype(float).tolist(), current.astype(float).tolist())
    assert from_bools == from_floats


def test_no_discordant_items_gives_p_one_and_a_real_interval() -> None:
    baseline, current = paired_outcomes(0, 0, 120, 80)
    result = mcnemar_exact(baseline, current)
    assert result.p_value == 1.0 and result.delta == 0.0
    # Tango's interval does not collapse to a point the way the Wald interval does.
    assert result.ci_low < 0.0 < result.ci_high
    assert result.ci_high - result.ci_low < 0.05
    assert not regression_decision(result)


def test_single_item() -> None:
    result = mcnemar_exact([True], [False])
    assert (result.delta, result.p_value, result.pass_to_fail) == (-1.0, 1.0, 1)
    assert result.ci_low == -1.0 and result.ci_high <= 1.0
    boot = paired_bootstrap([0.8], [0.3])
    assert boot.delta == pytest.approx(-0.5)
    assert boot.ci_low == boot.ci_high == pytest.approx(-0.5)
    assert boot.p_value == 1.0


def test_identical_runs() -> None:
    outcomes = [True, False, True, True] * 25
    result = mcnemar_exact(outcomes, outcomes)
    assert (result.delta, result.p_value) == (0.0, 1.0)
    scores = np.linspace(0.0, 1.0, 100)
    boot = paired_bootstrap(scores, scores)
    assert (boot.delta, boot.ci_low, boot.ci_high, boot.p_value) == (0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize(
    "test", [mcnemar_exact, paired_bootstrap, unpaired_proportions, unpaired_means], ids=lambda f: f.__name__
)
def test_empty_input_is_a_clear_error(test) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="baseline is empty"):
        test([], [])
    with pytest.raises(ValueError, match="current is empty"):
        test([1.0, 0.0], [])


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="one outcome per item"):
        mcnemar_exact([True, False], [True])
    with pytest.raises(ValueError, match="one outcome per item"):
        paired_bootstrap([0.1, 0.2], [0.3])
    with pytest.raises(ValueError, match="pass/fail"):
        mcnemar_exact([0.5, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap([0.1, math.nan], [0.2, 0.3])
    with pytest.raises(ValueError, match="alpha"):
        mcnemar_exact([True], [True], alpha=1.5)
    with pytest.raises(ValueError, match="at least 2 items"):
        unpaired_means([0.5], [0.1, 0.2])
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap([0.1, 0.2], [0.3, 0.4], n_resamples=10)


# --- Tango's interval ------------------------------------------------------------------------------


def constrained_score_statistic(b: int, c: int, n: int, delta: float) -> float:
    """Tango's statistic with the constrained MLE found numerically rather than in closed form."""

    def negative_log_likelihood(q: float) -> float:
        # q = P(pass -> fail); P(fail -> pass) = q + delta; the rest are concordant.
        p_c = q + delta
        rest = 1.0 - q - p_c
        return -(b * math.log(q) + c * math.log(p_c) + (n - b - c) * math.log(rest))

    low = max(0.0, -delta) + 1e-12
    high = (1.0 - delta) / 2.0 - 1e-12
    q = optimize.minimize_scalar(
        negative_log_likelihood, bounds=(low, high), method="bounded", options={"xatol": 1e-13}
    ).x
    return (c - b - n * delta) / math.sqrt(n * (2.0 * q + delta * (1.0 - delta)))


@pytest.mark.parametrize(("b", "c", "n"), [(40, 20, 160), (6, 16, 161), (3, 9, 50), (25, 10, 400)])
def test_tango_bounds_are_where_the_score_test_reaches_z(b: int, c: int, n: int) -> None:
    low, high = tango_interval(b, c, n)
    z = sps.norm.isf(0.025)
    assert constrained_score_statistic(b, c, n, low) == pytest.approx(z, abs=1e-4)
    assert constrained_score_statistic(b, c, n, high) == pytest.approx(-z, abs=1e-4)


def test_tango_interval_excludes_zero_exactly_when_asymptotic_mcnemar_rejects() -> None:
    z = sps.norm.isf(0.025)
    for b in range(0, 30):
        for c in range(0, 30):
            if b + c == 0:
                continue
            low, high = tango_interval(b, c, 200)
            mcnemar_z = abs(c - b) / math.sqrt(b + c)
            if abs(mcnemar_z - z) > 1e-9:
                assert (low > 0 or high < 0) == (mcnemar_z > z), (b, c)


def test_tango_extremes() -> None:
    low, high = tango_interval(10, 0, 10)
    assert low == -1.0 and -1.0 < high < 0.0
    low, high = tango_interval(0, 10, 10)
    assert high == 1.0 and 0.0 < low < 1.0
    with pytest.raises(ValueError):
        tango_interval(8, 8, 10)


@pytest.mark.parametrize(("n", "p_b", "p_c"), [(200, 0.10, 0.05), (50, 0.08, 0.12), (30, 0.05, 0.05)])
def test_tango_coverage_is_near_nominal(n: int, p_b: float, p_c: float) -> None:
    rng = np.random.default_rng(11)
    replications = 2000
    counts = rng.multinomial(n, [p_b, p_c, 1.0 - p_b - p_c], size=replications)
    truth = p_c - p_b
    covered = sum(lo <= truth <= hi for lo, hi in (tango_interval(int(b), int(c), n) for b, c, _ in counts))
    coverage = covered / replications
    assert 0.93 <= coverage <= 0.975, coverage


# --- paired bootstrap ------------------------------------------------------------------------------


def graded_scores(rng: np.random.Generator, n: int, drop: float) -> tuple[np.ndarray, np.ndarray]:
    quality = rng.beta(2.0, 1.2, size=n)
    baseline = rng.beta(10 * quality + 0.01, 10 * (1 - quality) + 0.01)
    lowered = quality * (1 - drop / quality.mean())
    current = rng.beta(10 * lowered + 0.01, 10 * (1 - lowered) + 0.01)
    return baseline, current


@pytest.mark.parametrize("ci_method", ["percentile", "bca"])
def test_bootstrap_interval_agrees_with_scipy(ci_method: str) -> None:
    rng = np.random.default_rng(5)
    baseline, current = graded_scores(rng, 400, 0.03)
    ours = paired_bootstrap(baseline, current, n_resamples=20_000, seed=1, ci_method=ci_method)  # type: ignore[arg-type]
    theirs = sps.bootstrap(
        (current - baseline,), np.mean, n_resamples=20_000, method=ci_method, random_state=2
    ).confidence_interval
    width = theirs.high - theirs.low
    # Different resamples: agreement within Monte Carlo error, a few percent of the width.
    assert ours.ci_low == pytest.approx(theirs.low, abs=0.04 * width)
    assert ours.ci_high == pytest.approx(theirs.high, abs=0.04 * width)
    assert ours.delta == pytest.approx(float(np.mean(current - baseline)))
    assert ours.method == f"paired-sign-flip+bootstrap-{ci_method}"


def test_bootstrap_on_pass_fail_agrees_with_scipy() -> None:
    baseline, current = paired_outcomes(30, 14, 120, 36)
    ours = paired_bootstrap(baseline, current, n_resamples=20_000, seed=4, ci_method="percentile")
    diffs = np.asarray(current, dtype=float) - np.asarray(baseline, dtype=float)
    theirs = sps.bootstrap((diffs,), np.mean, n_resamples=20_000, method="percentile", random_state=3)
    assert ours.ci_low == pytest.approx(theirs.confidence_interval.low, abs=0.006)
    assert ours.ci_high == pytest.approx(theirs.confidence_interval.high, abs=0.006)


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(8)
    baseline, current = graded_scores(rng, 300, 0.02)
    first = paired_bootstrap(baseline, current, seed=42)
    assert paired_bootstrap(baseline, current, seed=42) == first
    other = paired_bootstrap(baseline, current, seed=43)
    assert other != first
    assert other.ci_low == pytest.approx(first.ci_low, abs=0.003)
    assert other.p_value == pytest.approx(first.p_value, abs=0.02)


def test_sign_flip_on_pass_fail_is_mcnemar() -> None:
    # With few discordant items every sign pattern is enumerated: exactly McNemar's exact test.
    for b, c in [(9, 2), (6, 6), (0, 5), (1, 12)]:
        baseline, current = paired_outcomes(b, c, 50, 20)
        boot = paired_bootstrap(baseline, current)
        assert boot.p_value == pytest.approx(mcnemar_exact(baseline, current).p_value, rel=1e-12)
    # With many, the Monte Carlo p-value is close to it.
    baseline, current = paired_outcomes(60, 38, 300, 102)
    exact = mcnemar_exact(baseline, current).p_value
    assert paired_bootstrap(baseline, current, n_resamples=50_000).p_value == pytest.approx(exact, abs=0.005)


def test_sign_flip_on_graded_scores_is_close_to_the_paired_t_test() -> None:
    rng = np.random.default_rng(9)
    baseline, current = graded_scores(rng, 500, 0.02)
    boot = paired_bootstrap(baseline, current, n_resamples=20_000)
    t_test = sps.ttest_rel(current, baseline)
    assert boot.p_value == pytest.approx(t_test.pvalue, abs=0.01)


def test_bootstrap_is_fast() -> None:
    rng = np.random.default_rng(0)
    baseline, current = graded_scores(rng, 2000, 0.01)
    best = math.inf
    for seed in range(2):
        start = time.perf_counter()
        paired_bootstrap(baseline, current, n_resamples=10_000, seed=seed)
        best = min(best, time.perf_counter() - start)
    assert best < 1.0, best


# --- unpaired --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x_base", "n_base", "x_cur", "n_cur"), [(140, 200, 120, 200), (30, 90, 40, 100), (9, 10, 2, 12)]
)
def test_unpaired_proportions_match_statsmodels(x_base: int, n_base: int, x_cur: int, n_cur: int) -> None:
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    baseline = [True] * x_base + [False] * (n_base - x_base)
    current = [True] * x_cur + [False] * (n_cur - x_cur)
    result = unpaired_proportions(baseline, current)
    _, p_value = proportion.proportions_ztest([x_cur, x_base], [n_cur, n_base])
    assert result.p_value == pytest.approx(p_value, rel=1e-10)
    low, high = proportion.confint_proportions_2indep(
        x_cur, n_cur, x_base, n_base, method="newcomb", compare="diff"
    )
    assert (result.ci_low, result.ci_high) == (pytest.approx(low, abs=1e-10), pytest.approx(high, abs=1e-10))
    assert newcombe_interval(x_cur, n_cur, x_base, n_base) == (result.ci_low, result.ci_high)
    assert not result.paired and result.n == n_base + n_cur
    assert result.delta == pytest.approx(x_cur / n_cur - x_base / n_base)


def test_unpaired_proportions_all_passed() -> None:
    result = unpaired_proportions([True] * 50, [True] * 70)
    assert (result.delta, result.p_value) == (0.0, 1.0)
    assert result.ci_low < 0.0 < result.ci_high


@pytest.mark.parametrize("sizes", [(40, 40), (25, 60), (2, 3)])
def test_unpaired_means_match_scipy_welch(sizes: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(sizes))
    baseline = rng.normal(0.6, 0.2, sizes[0])
    current = rng.normal(0.55, 0.3, sizes[1])
    result = unpaired_means(baseline, current, alpha=0.1)
    reference = sps.ttest_ind(current, baseline, equal_var=False)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-10)
    interval = reference.confidence_interval(confidence_level=0.9)
    assert result.ci_low == pytest.approx(interval.low, rel=1e-10)
    assert result.ci_high == pytest.approx(interval.high, rel=1e-10)
    assert not result.paired and result.method == "welch-t"


def test_unpaired_means_without_spread() -> None:
    same = unpaired_means([0.5] * 4, [0.5] * 6)
    assert (same.p_value, same.ci_low, same.ci_high) == (1.0, 0.0, 0.0)
    moved = unpaired_means([0.5] * 4, [0.25] * 6)
    assert moved.p_value == 0.0 and moved.ci_high == pytest.approx(-0.25)


# --- Holm ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "p_values",
    [[0.01, 0.04, 0.03, 0.005], [0.2, 0.2, 0.01, 0.5, 1.0], [0.0, 1.0], [0.04], [0.03, 0.03, 0.03]],
)
def test_holm_matches_statsmodels(p_values: list[float]) -> None:
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    expected = multitest.multipletests(p_values, method="holm")[1]
    assert holm(p_values) == pytest.approx(list(expected), rel=1e-12)


def test_holm_random_inputs_match_statsmodels() -> None:
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(1)
    for size in (2, 7, 30):
        p_values = rng.random(size) ** 3
        assert holm(p_values) == pytest.approx(list(multitest.multipletests(p_values, method="holm")[1]))


def test_holm_edges() -> None:
    assert holm([]) == []
    with pytest.raises(ValueError):
        holm([0.1, math.nan])
    with pytest.raises(ValueError):
        holm([1.2])


# --- minimum detectable difference ----------------------------------------------------------------


def test_minimum_detectable_difference_for_graded_scores() -> None:
    z = sps.norm.isf(0.025) + sps.norm.ppf(0.8)
    assert minimum_detectable_difference(400, sd=0.2) == pytest.approx(z * 0.2 / 20)
    assert minimum_detectable_difference(400, sd=0.2, paired=False) == pytest.approx(
        z * 0.2 * math.sqrt(2 / 400)
    )
    one_sided = minimum_detectable_difference(400, sd=0.2, two_sided=False)
    assert one_sided == pytest.approx((sps.norm.isf(0.05) + sps.norm.ppf(0.8)) * 0.01)


def test_minimum_detectable_difference_for_pass_rates() -> None:
    independent = minimum_detectable_difference(200, baseline_rate=0.7)
    agreeing = minimum_detectable_difference(200, baseline_rate=0.7, discordance=0.1)
    unpaired = minimum_detectable_difference(200, baseline_rate=0.7, paired=False)
    # Independent outcomes: pairing gains nothing; agreeing runs: it gains a lot.
    assert independent == pytest.approx(unpaired, rel=0.05)
    assert agreeing < 0.7 * unpaired
    # Roughly 1/sqrt(n): four times the items, half the detectable drop.
    assert minimum_detectable_difference(800, baseline_rate=0.7) == pytest.approx(independent / 2, rel=0.05)
    # The unpaired figure gives the target power under the z-test's normal approximation.
    q = 0.7 - unpaired
    pooled = (0.7 + q) / 2
    se0 = math.sqrt(pooled * (1 - pooled) * 2 / 200)
    se1 = math.sqrt((0.7 * 0.3 + q * (1 - q)) / 200)
    power = sps.norm.sf((sps.norm.isf(0.025) * se0 - unpaired) / se1)
    assert power == pytest.approx(0.8, abs=1e-6)
    assert minimum_detectable_difference(5, baseline_rate=0.7, discordance=0.01) == math.inf
    with pytest.raises(ValueError, match="exactly one"):
        minimum_detectable_difference(100)
    with pytest.raises(ValueError, match="exactly one"):
        minimum_detectable_difference(100, baseline_rate=0.5, sd=0.1)


# --- the decision rule -----------------------------------------------------------------------------


def make_result(delta: float, ci_high: float, p_value: float) -> TestResult:
    return PairedTest(
        method="test",
        paired=True,
        delta=delta,
        ci_low=delta - 0.05,
        ci_high=ci_high,
        confidence=0.95,
        p_value=p_value,
        n=100,
        baseline_mean=0.7,
        current_mean=0.7 + delta,
        n_baseline=100,
        n_current=100,
    )


@pytest.mark.parametrize(
    ("delta", "ci_high", "p_value", "kwargs", "declared"),
    [
        (-0.05, -0.01, 0.01, {}, True),
        (-0.05, -0.01, 0.01, {"tolerance": 0.05}, False),  # not beyond the tolerance
        (-0.05, -0.01, 0.01, {"tolerance": 0.04}, True),
        (-0.05, -0.01, 0.06, {}, False),  # not significant
        (-0.05, -0.01, 0.01, {"adjusted_p": 0.07}, False),  # not after Holm
        (-0.05, 0.01, 0.01, {}, False),  # interval reaches zero
        (0.05, 0.09, 0.001, {}, False),  # an improvement
        (-0.05, -0.01, math.nan, {}, False),
    ],
)
def test_regression_decision(
    delta: float, ci_high: float, p_value: float, kwargs: dict, declared: bool
) -> None:  # type: ignore[type-arg]
    assert regression_decision(make_result(delta, ci_high, p_value), **kwargs) is declared


def test_result_round_trips_to_a_dict() -> None:
    result = mcnemar_exact([True, True, False], [True, False, False])
    data = result.to_dict()
    assert data["pass_to_fail"] == 1 and data["paired"] is True
    assert TestResult(**data) == result


# --- calibration -----------------------------------------------------------------------------------

POOL = np.random.default_rng(2024).beta(0.7, 0.3, size=20_000)


def replay(rng: np.random.Generator, n: int, drop: float) -> tuple[np.ndarray, np.ndarray]:
    """One baseline and one current run of ``n`` items sampled from the pool, ``drop`` points apart."""
    p = rng.choice(POOL, size=n)
    q = p * (1.0 - drop / POOL.mean())
    return rng.random(n) < p, rng.random(n) < q


def alarm_rates(n: int, drop: float, replications: int, seed: int) -> tuple[float, float, float, float]:
    """Declared-regression and two-sided rejection rates, for McNemar and for the paired bootstrap."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(4)
    for i in range(replications):
        baseline, current = replay(rng, n, drop)
        exact = mcnemar_exact(baseline, current)
        boot = paired_bootstrap(baseline, current, n_resamples=2000, seed=i)
        counts += [
            regression_decision(exact),
            exact.p_value < ALPHA,
            regression_decision(boot),
            boot.p_value < ALPHA,
        ]
    mcnemar_alarm, mcnemar_reject, boot_alarm, boot_reject = counts / replications
    return mcnemar_alarm, mcnemar_reject, boot_alarm, boot_reject


def test_no_change_rarely_raises_an_alarm() -> None:
    replications = 1000
    margin = 3 * math.sqrt(ALPHA * (1 - ALPHA) / replications)
    mcnemar_alarm, mcnemar_reject, boot_alarm, boot_reject = alarm_rates(200, 0.0, replications, seed=1)
    # Only drops are alarms, so the rule's rate is about alpha/2; the two-sided tests stay within alpha.
    for rate in (mcnemar_alarm, boot_alarm):
        assert rate <= ALPHA / 2 + margin
    for rate in (mcnemar_reject, boot_reject):
        assert rate <= ALPHA + margin


def test_power_grows_with_the_drop_and_with_the_eval_set() -> None:
    replications = 300
    at_5 = alarm_rates(200, 0.05, replications, seed=2)
    at_10 = alarm_rates(200, 0.10, replications, seed=3)
    small = alarm_rates(100, 0.05, replications, seed=4)
    large = alarm_rates(500, 0.05, replications, seed=5)
    for test in (0, 2):  # McNemar, bootstrap
        assert small[test] > 2 * ALPHA
        assert at_5[test] + 0.25 < at_10[test]
        assert small[test] + 0.25 < large[test]
    # McNemar and the sign-flip test are the same test on pass/fail outcomes.
    assert at_10[0] == pytest.approx(at_10[2], abs=0.06)


def test_minimum_detectable_difference_gives_about_its_power() -> None:
    n = 300
    discordance = float(2 * np.mean(POOL * (1 - POOL)))
    drop = minimum_detectable_difference(n, baseline_rate=float(POOL.mean()), discordance=discordance)
    rng = np.random.default_rng(6)
    replications = 600
    detected = 0
    for _ in range(replications):
        baseline, current = replay(rng, n, drop)
        detected += regression_decision(mcnemar_exact(baseline, current))
    # The figure is conservative (it adds the whole drop to the discordance), the exact test a
    # little conservative too: near 0.8, not below 0.7.
    assert 0.7 <= detected / replications <= 0.95


def test_unpaired_tests_are_calibrated() -> None:
    rng = np.random.default_rng(7)
    replications = 1000
    margin = 3 * math.sqrt(ALPHA * (1 - ALPHA) / replications)
    proportions = means = 0
    for _ in range(replications):
        proportions += unpaired_proportions(rng.random(150) < 0.7, rng.random(180) < 0.7).p_value < ALPHA
        means += unpaired_means(rng.beta(2, 1, 60), rng.beta(2, 1, 90)).p_value < ALPHA
    assert proportions / replications <= ALPHA + margin
    assert means / replications <= ALPHA + margin


def test_look_alpha_spends_at_most_alpha_over_all_looks() -> None:
    from monitor.analysis.stats import look_alpha

    assert look_alpha(0.05, 1) == pytest.approx(0.05 * 6 / math.pi**2)
    assert look_alpha(0.05, 10) == pytest.approx(look_alpha(0.05, 1) / 100)
    assert sum(look_alpha(0.05, k) for k in range(1, 100_000)) < 0.05
    assert sum(look_alpha(0.05, k) for k in range(1, 100_000)) > 0.05 * 0.9999
    with pytest.raises(ValueError, match="counted from 1"):
        look_alpha(0.05, 0)
    with pytest.raises(ValueError, match="alpha"):
        look_alpha(1.5, 1)
