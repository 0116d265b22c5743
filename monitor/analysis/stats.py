"""Statistics for deciding whether a model regressed against its pinned baseline.

Every test compares a *current* run with the *baseline* run and reports the
difference ``delta = mean(current) - mean(baseline)`` (negative: the model got
worse), a confidence interval for it, a two-sided p-value and how it was got, in
one :class:`TestResult`.

Which test:

* same items in both runs (the usual case), pass/fail metric: :func:`mcnemar_exact`;
* same items, graded metric (token F1, share of JSON fields): :func:`paired_bootstrap`;
* the eval set changed between the runs, so items cannot be paired:
  :func:`unpaired_proportions` or :func:`unpaired_means`.

Several metrics or eval sets tested at once: adjust their p-values with
:func:`holm`, then apply :func:`regression_decision` to each.  How small a drop
an eval set can see at all: :func:`minimum_detectable_difference`.  The same
baseline compared night after night: each look spends its share of ``alpha``,
:func:`look_alpha`, so that the chance of any false alarm over all the looks stays
at most ``alpha``.

Everything here is a pure function of its inputs (the bootstrap takes a seed), on
numpy and scipy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from scipy import optimize, special
from scipy import stats as sps

__all__ = [
    "PairedTest",
    "TestResult",
    "holm",
    "look_alpha",
    "mcnemar_exact",
    "minimum_detectable_difference",
    "newcombe_interval",
    "paired_bootstrap",
    "regression_decision",
    "tango_interval",
    "unpaired_means",
    "unpaired_proportions",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# Differences that take few distinct values (pass/fail: three) are resampled through the counts
# of each value, with multinomial and binomial draws: the same distributions at a cost that does
# not grow with the number of items.  A draw per value costs about as much as 16 draws per item,
# hence when to switch.
_ITEMS_PER_VALUE = 16
# Resampled cells (rows x items) drawn at once: small chunks stay in the CPU cache, which is
# several times faster than drawing everything at once.
_CHUNK_CELLS = 1 << 16
# Ties between a resampled and the observed statistic are decided with this relative tolerance.
_TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class TestResult:
    """The outcome of comparing a current run with its baseline on one metric.

    Attributes:
        method: the test, e.g. ``"mcnemar-exact"``; the interval method follows a ``+``.
        paired: whether the same items were compared one to one.
        delta: ``current_mean - baseline_mean``; negative means worse than the baseline.
        ci_low, ci_high: the ``confidence`` interval for the true delta.
        confidence: the interval's level, ``1 - alpha``.
        p_value: two-sided p-value for "no difference".
        n: pairs for a paired test, all items of both runs for an unpaired one.
        baseline_mean, current_mean: the two means (pass rates for pass/fail metrics).
        n_baseline, n_current: items in each run (both equal ``n`` when paired).
        pass_to_fail, fail_to_pass: McNemar's discordant counts ``b`` and ``c``
            (items the baseline passed and the current run failed, and the reverse);
            ``None`` for other tests.
    """

    __test__: ClassVar[bool] = False  # not a pytest test class, despite its name

    method: str
    paired: bool
    delta: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    n: int
    baseline_mean: float
    current_mean: float
    n_baseline: int
    n_current: int
    pass_to_fail: int | None = None
    fail_to_pass: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PairedTest = TestResult
"""The same result type; the name reads better where only paired tests are meant."""


# --- input checks ----------------------------------------------------------------------------------


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")


def _as_scores(values: Sequence[float] | npt.ArrayLike, name: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of per-item scores, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: there is nothing to compare")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds NaN or infinite scores: leave failed items out before testing")
    return array


def _as_outcomes(values: Sequence[bool] | npt.ArrayLike, name: str) -> BoolArray:
    array = _as_scores(values, name)
    if not np.all((array == 0.0) | (array == 1.0)):
        raise ValueError(f"{name} must hold pass/fail outcomes (True/False or 1/0)")
    return array == 1.0


def _check_paired(baseline: np.ndarray, current: np.ndarray) -> None:
    if baseline.size != current.size:
        raise ValueError(
            f"paired tests need one outcome per item in both runs: "
            f"{baseline.size} baseline items but {current.size} current items"
        )


def _z(alpha: float) -> float:
    """The two-sided normal critical value ``z_{1 - alpha/2}``."""
    return float(sps.norm.isf(alpha / 2.0))


# --- paired pass/fail ------------------------------------------------------------------------------


def mcnemar_exact(
    baseline: Sequence[bool] | npt.ArrayLike,
    current: Sequence[bool] | npt.ArrayLike,
    *,
    alpha: float = 0.05,
) -> TestResult:
    """McNemar's exact test of paired pass/fail outcomes on the same items.

    Only discordant items carry information: ``b`` items the baseline passed and
    the current run failed, ``c`` the reverse.  Under "no difference" each of the
    ``b + c`` discordant items goes either way with probability 1/2, so the p-value
    is the two-sided binomial one, ``min(1, 2 * P(Binomial(b + c, 1/2) <= min(b, c)))``,
    exactly as ``statsmodels.stats.contingency_tables.mcnemar(exact=True)``; it is 1
    when there are no discordant items.  The exact test is conservative: its actual
    level is at most ``alpha``.

    The interval for ``delta = (c - b) / n`` is Tango's score interval (see
    :func:`tango_interval`).

    Raises:
        ValueError: empty inputs, different lengths, or values other than pass/fail.
    """
    _check_alpha(alpha)
    base = _as_outcomes(baseline, "baseline")
    cur = _as_outcomes(current, "current")
    _check_paired(base, cur)
    n = int(base.size)
    pass_to_fail = int(np.count_nonzero(base & ~cur))
    fail_to_pass = int(np.count_nonzero(~base & cur))
    low, high = tango_interval(pass_to_fail, fail_to_pass, n, alpha=alpha)
    baseline_mean = float(np.count_nonzero(base)) / n
    current_mean = float(np.count_nonzero(cur)) / n
    return TestResult(
        method="mcnemar-exact+tango-score",
        paired=True,
        delta=(fail_to_pass - pass_to_fail) / n,
        ci_low=low,
        ci_high=high,
        confidence=1.0 - alpha,
        p_value=_mcnemar_exact_p(pass_to_fail, fail_to_pass),
        n=n,
        baseline_mean=baseline_mean,
        current_mean=current_mean,
        n_baseline=n,
        n_current=n,
        pass_to_fail=pass_to_fail,
        fail_to_pass=fail_to_pass,
    )


def _mcnemar_exact_p(b: int, c: int) -> float:
    discordant = b + c
    if discordant == 0:
        return 1.0
    return float(min(1.0, 2.0 * sps.binom.cdf(min(b, c), discordant, 0.5)))


def tango_interval(
    pass_to_fail: int, fail_to_pass: int, n: int, *, alpha: float = 0.05
) -> tuple[float, float]:
    """Tango's (1998) score interval for a paired difference of proportions.

    The interval holds every ``delta`` (``P(current passes) - P(baseline passes)``)
    that the score test of ``H0: delta`` does not reject at level ``alpha``:
    ``|Z(delta)| <= z_{1-alpha/2}`` with::

        Z(delta) = (c - b - n*delta) / sqrt(n * (2*q(delta) + delta*(1 - delta)))

    where ``q(delta)`` is the maximum-likelihood probability of a pass->fail item
    under the constraint (a root of a quadratic, in closed form).  ``Z(0)`` is
    McNemar's ``(c - b) / sqrt(b + c)``, so the interval excludes 0 exactly when
    the asymptotic McNemar test rejects.  Unlike the Wald interval it stays inside
    [-1, 1], is not empty when ``b + c = 0``, and keeps close to nominal coverage
    in small samples (Tango 1998; Newcombe 1998; Fagerland, Lydersen & Laake 2014).

    Raises:
        ValueError: counts out of range.
    """
    _check_alpha(alpha)
    b, c = int(pass_to_fail), int(fail_to_pass)
    if n <= 0 or b < 0 or c < 0 or b + c > n:
        raise ValueError(f"need 0 <= b, c and b + c <= n with n > 0, got b={b}, c={c}, n={n}")
    z = _z(alpha)
    estimate = (c - b) / n

    def score(delta: float) -> float:
        return _tango_score(delta, b, c, n)

    edge = 1e-12
    if estimate <= -1.0 or score(-1.0 + edge) <= z:
        low = -1.0
    else:
        low = optimize.brentq(lambda d: score(d) - z, -1.0 + edge, estimate, xtol=1e-13)
    if estimate >= 1.0 or score(1.0 - edge) >= -z:
        high = 1.0
    else:
        high = optimize.brentq(lambda d: score(d) + z, estimate, 1.0 - edge, xtol=1e-13)
    return float(low), float(high)


def _tango_score(delta: float, b: int, c: int, n: int) -> float:
    numerator = c - b - n * delta
    if numerator == 0.0:
        return 0.0
    # q: constrained ML estimate of P(pass -> fail) given delta (Tango 1998, eq. 5).
    qa = 2.0 * n
    qb = -c - b + (2.0 * n - c + b) * delta
    qc = -b * delta * (1.0 - delta)
    q = (math.sqrt(max(qb * qb - 4.0 * qa * qc, 0.0)) - qb) / (2.0 * qa)
    variance = n * (2.0 * q + delta * (1.0 - delta))
    if variance <= 0.0:
        return math.copysign(math.inf, numerator)
    return numerator / math.sqrt(variance)


# --- paired graded scores --------------------------------------------------------------------------


def paired_bootstrap(
    baseline: Sequence[float] | npt.ArrayLike,
    current: Sequence[float] | npt.ArrayLike,
    *,
    alpha: float = 0.05,
    n_resamples: int = 10_000,
    seed: int = 0,
    ci_method: Literal["bca", "percentile"] = "bca",
) -> TestResult:
    """Paired comparison of per-item scores on the same items, by resampling.

    With ``d_i = current_i - baseline_i``, ``delta`` is ``mean(d)``.

    * **Interval**: bootstrap over items (``n_resamples`` resamples of the ``n``
      differences with replacement), by default BCa (bias-corrected and
      accelerated, Efron 1987, as ``scipy.stats.bootstrap``'s default: the
      acceleration from the jackknife, the bias from the share of resampled means
      below the observed one, ties counted half), or the plain percentile interval.
      BCa corrects the skew of the resampled mean, which matters for scores that
      pile up at 0 or 1.
    * **p-value**: a paired sign-flip (randomisation) test of ``mean(d) = 0``.  If
      the two runs are draws of the same model, each item's difference is as likely
      to be ``+d_i`` as ``-d_i``, so flipping signs at random reproduces the null
      distribution of the sum exactly, whatever the score's distribution.  The
      p-value is ``(1 + #{|T*| >= |T|}) / (1 + n_resamples)``, which is valid
      (never below its level) at any number of resamples; when ``2**m`` sign
      patterns of the ``m`` non-zero differences are no more than ``n_resamples``
      they are all enumerated and the p-value is exact.  On pass/fail scores this
      is McNemar's exact test, computed by simulation.

    Differences that take few distinct values (pass/fail scores) are resampled
    through the counts of each value, which gives the same distributions at a cost
    independent of ``n``.  The result is deterministic for a ``seed``.

    Raises:
        ValueError: empty inputs, different lengths, non-finite scores, fewer than 100 resamples.
    """
    _check_alpha(alpha)
    if n_resamples < 100:
        raise ValueError(f"n_resamples must be at least 100, got {n_resamples}")
    if ci_method not in ("bca", "percentile"):
        raise ValueError(f"ci_method must be 'bca' or 'percentile', got {ci_method!r}")
    base = _as_scores(baseline, "baseline")
    cur = _as_scores(current, "current")
    _check_paired(base, cur)
    diffs = cur - base
    n = int(diffs.size)
    estimate = float(diffs.mean())
    boot_seq, flip_seq = np.random.SeedSequence(seed).spawn(2)

    if n < 2 or np.all(diffs == diffs[0]):
        # Every resample is the sample itself: the interval collapses to the estimate.
        low = high = estimate
    else:
        means = _bootstrap_means(diffs, n_resamples, np.random.default_rng(boot_seq))
        low, high = _bootstrap_interval(diffs, estimate, means, alpha, ci_method)
    p_value = _sign_flip_p_value(diffs, n_resamples, np.random.default_rng(flip_seq))
    return TestResult(
        method=f"paired-sign-flip+bootstrap-{ci_method}",
        paired=True,
        delta=estimate,
        ci_low=low,
        ci_high=high,
        confidence=1.0 - alpha,
        p_value=p_value,
        n=n,
        baseline_mean=float(base.mean()),
        current_mean=float(cur.mean()),
        n_baseline=n,
        n_current=n,
    )


def _bootstrap_means(diffs: FloatArray, n_resamples: int, rng: np.random.Generator) -> FloatArray:
    n = diffs.size
    values, counts = np.unique(diffs, return_counts=True)
    if values.size * _ITEMS_PER_VALUE <= n:
        return np.asarray(_multinomial_rows(rng, counts, n_resamples) @ values / n, dtype=np.float64)
    means = np.empty(n_resamples)
    rows = max(1, _CHUNK_CELLS // n)
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        index = rng.integers(0, n, size=(stop - start, n), dtype=np.int32 if n < 2**31 else np.int64)
        means[start:stop] = diffs[index].mean(axis=1)
    return means


def _multinomial_rows(
    rng: np.random.Generator, counts: npt.NDArray[np.int64], rows: int
) -> npt.NDArray[np.int64]:
    """``rows`` draws from Multinomial(sum(counts), counts / sum(counts)), as conditional binomials.

    One vectorised binomial draw per category: several times faster than ``Generator.multinomial``
    for few categories and many rows.
    """
    draws = np.empty((rows, counts.size), dtype=np.int64)
    remaining = np.full(rows, int(counts.sum()), dtype=np.int64)
    for j in range(counts.size - 1):
        share = counts[j] / counts[j:].sum()
        draws[:, j] = rng.binomial(remaining, share)
        remaining -= draws[:, j]
    draws[:, -1] = remaining
    return draws


def _bootstrap_interval(
    diffs: FloatArray, estimate: float, means: FloatArray, alpha: float, ci_method: str
) -> tuple[float, float]:
    levels = np.array([alpha / 2.0, 1.0 - alpha / 2.0])
    if ci_method == "bca":
        levels = _bca_levels(diffs, estimate, means, alpha)
    low, high = np.quantile(means, levels)
    return float(low), float(high)


def _bca_levels(diffs: FloatArray, estimate: float, means: FloatArray, alpha: float) -> FloatArray:
    n_resamples = means.size
    below = np.count_nonzero(means < estimate) + np.count_nonzero(means <= estimate)
    share = min(max(below / (2.0 * n_resamples), 0.5 / n_resamples), 1.0 - 0.5 / n_resamples)
    bias = float(special.ndtri(share))
    n = diffs.size
    jackknife = (diffs.sum() - diffs) / (n - 1)
    spread = jackknife.mean() - jackknife
    denominator = float(np.sum(spread**2)) ** 1.5
    acceleration = float(np.sum(spread**3)) / (6.0 * denominator) if denominator > 0 else 0.0
    z = np.array([special.ndtri(alpha / 2.0), special.ndtri(1.0 - alpha / 2.0)])
    shifted = bias + z
    with np.errstate(divide="ignore", invalid="ignore"):
        levels = np.asarray(special.ndtr(bias + shifted / (1.0 - acceleration * shifted)), dtype=np.float64)
    if not np.all(np.isfinite(levels)):
        # Extreme skew can break the BCa formula; the percentile interval is the fallback.
        return np.array([alpha / 2.0, 1.0 - alpha / 2.0])
    return levels


def _sign_flip_p_value(diffs: FloatArray, n_resamples: int, rng: np.random.Generator) -> float:
    magnitudes = np.abs(diffs[diffs != 0.0])
    m = magnitudes.size
    if m == 0:
        return 1.0
    observed = abs(float(diffs.sum()))
    threshold = observed - _TIE_TOLERANCE * float(magnitudes.sum())
    if 2**m <= n_resamples:
        patterns = (np.arange(2**m)[:, None] >> np.arange(m)) & 1
        sums = (2 * patterns - 1) @ magnitudes
        return float(np.count_nonzero(np.abs(sums) >= threshold)) / 2**m
    values, counts = np.unique(magnitudes, return_counts=True)
    extreme = 0
    if values.size * _ITEMS_PER_VALUE <= m:
        # For each distinct magnitude, the number of positive signs is Binomial(count, 1/2).
        positive = rng.binomial(counts, 0.5, size=(n_resamples, values.size))
        sums = (2 * positive - counts) @ values
        extreme = int(np.count_nonzero(np.abs(sums) >= threshold))
    else:
        total = float(magnitudes.sum())
        rows = max(1, _CHUNK_CELLS // m)
        width = (m + 7) // 8
        for start in range(0, n_resamples, rows):
            stop = min(start + rows, n_resamples)
            packed = np.frombuffer(rng.bytes((stop - start) * width), dtype=np.uint8)
            flips = np.unpackbits(packed.reshape(stop - start, width), axis=1, count=m)
            sums = 2.0 * (flips.astype(np.float64) @ magnitudes) - total
            extreme += int(np.count_nonzero(np.abs(sums) >= threshold))
    return (1.0 + extreme) / (1.0 + n_resamples)


# --- unpaired --------------------------------------------------------------------------------------


def unpaired_proportions(
    baseline: Sequence[bool] | npt.ArrayLike,
    current: Sequence[bool] | npt.ArrayLike,
    *,
    alpha: float = 0.05,
) -> TestResult:
    """Two independent pass rates, for runs on different versions of an eval set.

    The p-value is the two-proportion z-test with the pooled variance (the
    chi-square test without continuity correction), as
    ``statsmodels.stats.proportion.proportions_ztest([x_cur, x_base], [n_cur, n_base])``;
    it is 1 when both runs passed everything or nothing (statsmodels gives NaN).
    The interval is Newcombe's hybrid score interval (see :func:`newcombe_interval`).

    Pairing is lost, so this is less powerful than :func:`mcnemar_exact` on the
    same items: use it only when the items differ.

    Raises:
        ValueError: empty inputs or values other than pass/fail.
    """
    _check_alpha(alpha)
    base = _as_outcomes(baseline, "baseline")
    cur = _as_outcomes(current, "current")
    n_base, n_cur = int(base.size), int(cur.size)
    x_base, x_cur = int(np.count_nonzero(base)), int(np.count_nonzero(cur))
    p_base, p_cur = x_base / n_base, x_cur / n_cur
    pooled = (x_base + x_cur) / (n_base + n_cur)
    variance = pooled * (1.0 - pooled) * (1.0 / n_base + 1.0 / n_cur)
    # No spread at all (both runs passed everything, or nothing): no evidence of a difference.
    z = (p_cur - p_base) / math.sqrt(variance) if variance > 0.0 else 0.0
    p_value = float(2.0 * sps.norm.sf(abs(z)))
    low, high = newcombe_interval(x_cur, n_cur, x_base, n_base, alpha=alpha)
    return TestResult(
        method="two-proportion-z+newcombe-score",
        paired=False,
        delta=p_cur - p_base,
        ci_low=low,
        ci_high=high,
        confidence=1.0 - alpha,
        p_value=p_value,
        n=n_base + n_cur,
        baseline_mean=p_base,
        current_mean=p_cur,
        n_baseline=n_base,
        n_current=n_cur,
    )


def newcombe_interval(
    passed_current: int, n_current: int, passed_baseline: int, n_baseline: int, *, alpha: float = 0.05
) -> tuple[float, float]:
    """Newcombe's (1998, method 10) hybrid score interval for ``p_current - p_baseline``.

    Combines the Wilson score intervals of the two rates; coverage stays close to
    nominal for small samples and rates near 0 or 1, where the Wald interval
    collapses.  Agrees with statsmodels' ``confint_proportions_2indep(method="newcomb")``.
    """
    _check_alpha(alpha)
    z = _z(alpha)
    p1, p2 = passed_current / n_current, passed_baseline / n_baseline
    low1, high1 = _wilson(passed_current, n_current, z)
    low2, high2 = _wilson(passed_baseline, n_baseline, z)
    delta = p1 - p2
    low = delta - math.sqrt((p1 - low1) ** 2 + (high2 - p2) ** 2)
    high = delta + math.sqrt((high1 - p1) ** 2 + (p2 - low2) ** 2)
    return low, high


def _wilson(successes: int, n: int, z: float) -> tuple[float, float]:
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def unpaired_means(
    baseline: Sequence[float] | npt.ArrayLike,
    current: Sequence[float] | npt.ArrayLike,
    *,
    alpha: float = 0.05,
) -> TestResult:
    """Welch's t-test of two independent means, for runs on different eval set versions.

    ``t = delta / se`` with ``se = sqrt(s_cur^2/n_cur + s_base^2/n_base)`` and the
    Welch-Satterthwaite degrees of freedom, as ``scipy.stats.ttest_ind(current,
    baseline, equal_var=False)``; the interval is ``delta +- t_{df, 1-alpha/2} * se``.
    When both runs have no spread at all (scipy gives NaN), the p-value is 1 for
    equal means and 0 otherwise, and the interval is the point ``delta``.

    Raises:
        ValueError: fewer than 2 items in a run, or non-finite scores.
    """
    _check_alpha(alpha)
    base = _as_scores(baseline, "baseline")
    cur = _as_scores(current, "current")
    for name, array in (("baseline", base), ("current", cur)):
        if array.size < 2:
            raise ValueError(f"{name} needs at least 2 items for a variance, got {array.size}")
    n_base, n_cur = int(base.size), int(cur.size)
    delta = float(cur.mean() - base.mean())
    share_base = float(base.var(ddof=1)) / n_base
    share_cur = float(cur.var(ddof=1)) / n_cur
    se = math.sqrt(share_base + share_cur)
    if se > 0.0:
        df = (share_base + share_cur) ** 2 / (share_base**2 / (n_base - 1) + share_cur**2 / (n_cur - 1))
        p_value = float(2.0 * sps.t.sf(abs(delta) / se, df))
        half = float(sps.t.isf(alpha / 2.0, df)) * se
    else:
        p_value = 1.0 if delta == 0.0 else 0.0
        half = 0.0
    return TestResult(
        method="welch-t",
        paired=False,
        delta=delta,
        ci_low=delta - half,
        ci_high=delta + half,
        confidence=1.0 - alpha,
        p_value=p_value,
        n=n_base + n_cur,
        baseline_mean=float(base.mean()),
        current_mean=float(cur.mean()),
        n_baseline=n_base,
        n_current=n_cur,
    )


# --- several tests at once -------------------------------------------------------------------------


def holm(p_values: Sequence[float] | npt.ArrayLike) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given.

    The i-th smallest of m p-values becomes ``max over j <= i of (m - j + 1) * p_(j)``,
    capped at 1, as ``statsmodels.stats.multitest.multipletests(method="holm")``.
    Rejecting where the adjusted p-value is below ``alpha`` keeps the chance of any
    false alarm among the m tests at most ``alpha``, whatever their dependence.

    Raises:
        ValueError: a p-value that is NaN or outside [0, 1].
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0:
        return []
    if p.ndim != 1 or not np.all((p >= 0.0) & (p <= 1.0)):
        raise ValueError("p-values must be a flat sequence of numbers in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.maximum.accumulate(p[order] * np.arange(m, 0, -1))
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(scaled, 1.0)
    return [float(v) for v in adjusted]


# --- repeated looks --------------------------------------------------------------------------------

#: ``sum(1 / k**2 for k >= 1) = pi**2 / 6``: the spending weights ``6 / (pi**2 k**2)`` add up to 1.
_SPENDING_NORM = 6.0 / math.pi**2


def look_alpha(alpha: float, look: int) -> float:
    """The level the ``look``-th comparison with one baseline is tested at: ``alpha * 6 / (pi**2 * look**2)``.

    A baseline is compared with a new run every night.  Testing every look at
    ``alpha`` would make a false alarm over a year of looks all but certain, and
    the looks are not independent (they share the baseline run), so their number
    cannot be corrected for after the fact.  Spending ``alpha`` over the looks
    instead, with shares that add up to ``alpha`` over infinitely many looks
    (``sum 6 / (pi**2 k**2) = 1``), keeps the chance of *any* false alarm, over all
    the looks there will ever be, at most ``alpha`` whatever their dependence (the
    union bound).  The first look gets 61% of ``alpha``, the tenth 0.6%, the 365th
    4.6e-6: later looks need more evidence, which a real drop of a few points on
    a few hundred items still gives (``benchmarks/bench_calibration.py --year``).

    Raises:
        ValueError: alpha out of range or a look below 1.
    """
    _check_alpha(alpha)
    if look < 1:
        raise ValueError(f"looks are counted from 1, got {look}")
    return alpha * _SPENDING_NORM / float(look) ** 2


# --- planning --------------------------------------------------------------------------------------


def minimum_detectable_difference(
    n: int,
    *,
    baseline_rate: float | None = None,
    sd: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    paired: bool = True,
    discordance: float | None = None,
    n_current: int | None = None,
    two_sided: bool = True,
) -> float:
    """The smallest true drop a test at level ``alpha`` detects with probability ``power``.

    Normal approximations, with ``z_a = z_{1-alpha/2}`` (``z_{1-alpha}`` when
    ``two_sided`` is false) and ``z_b = z_{power}``:

    * pass/fail, paired (McNemar; Connor 1987): the drop ``delta`` solves
      ``sqrt(n)*delta = z_a*sqrt(psi) + z_b*sqrt(psi - delta^2)``, where ``psi`` is the
      share of discordant items with the drop present.  With ``discordance`` given
      (``psi0``, the share of items on which two runs of the unchanged model
      disagree, e.g. from a re-run of the baseline), ``psi = psi0 + delta``: the drop
      turns passes into fails on top of that disagreement, which is conservative
      (a drop that also settles some items the other way adds less).  Without it,
      the two runs' outcomes on an item are taken as independent, ``p = baseline_rate``
      and ``q = p - delta``: ``psi = p*(1-q) + q*(1-p)``.  Runs of one model agree on
      most items, so the true discordance is usually much smaller and the paired test
      sees smaller drops than this default figure, which is about the unpaired one.
    * pass/fail, unpaired (two-proportion z-test, ``n`` baseline and ``n_current``
      current items, default ``n``): ``delta`` solves
      ``delta = z_a*sqrt(pbar*(1-pbar)*(1/n + 1/n_cur)) + z_b*sqrt(p*(1-p)/n + q*(1-q)/n_cur)``
      with ``q = p - delta`` and ``pbar`` their pooled mean.
    * graded scores with standard deviation ``sd``: paired, ``sd`` is that of the
      per-item differences and ``delta = (z_a + z_b) * sd / sqrt(n)``; unpaired, ``sd``
      is that of the scores in each run and ``delta = (z_a + z_b) * sd * sqrt(1/n + 1/n_cur)``.

    The decision rule of :func:`regression_decision` with ``tolerance=0`` uses a
    two-sided p-value and asks for a drop, so ``two_sided=True`` is its matching
    setting.  Returns ``math.inf`` when no drop within the possible range reaches
    the power.

    Raises:
        ValueError: not exactly one of ``baseline_rate`` and ``sd``, or arguments out of range.
    """
    _check_alpha(alpha)
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be between 0 and 1, got {power}")
    if n < 1 or (n_current is not None and n_current < 1):
        raise ValueError("eval set sizes must be positive")
    if (baseline_rate is None) == (sd is None):
        raise ValueError("give exactly one of baseline_rate (pass/fail metrics) or sd (graded scores)")
    z_a = float(sps.norm.isf(alpha / 2.0 if two_sided else alpha))
    z_b = float(sps.norm.ppf(power))
    m = n if n_current is None else n_current

    if sd is not None:
        if sd < 0:
            raise ValueError(f"sd must be non-negative, got {sd}")
        scale = math.sqrt(1.0 / n) if paired else math.sqrt(1.0 / n + 1.0 / m)
        return (z_a + z_b) * sd * scale

    assert baseline_rate is not None
    p = baseline_rate
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"baseline_rate must be in [0, 1], got {p}")
    if paired:
        if discordance is not None and not 0.0 <= discordance <= 1.0:
            raise ValueError(f"discordance must be in [0, 1], got {discordance}")

        def shortfall(delta: float) -> float:
            if discordance is None:
                q = p - delta
                psi = p * (1.0 - q) + q * (1.0 - p)
            else:
                psi = min(discordance + delta, 1.0)
            return (
                math.sqrt(n) * delta - z_a * math.sqrt(psi) - z_b * math.sqrt(max(psi - delta * delta, 0.0))
            )

        # A drop cannot exceed the baseline rate.
        top = p
    else:

        def shortfall(delta: float) -> float:
            q = p - delta
            pooled = (n * p + m * q) / (n + m)
            null_se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n + 1.0 / m))
            alt_se = math.sqrt(p * (1.0 - p) / n + q * (1.0 - q) / m)
            return delta - z_a * null_se - z_b * alt_se

        top = p
    if top <= 0.0 or shortfall(top) < 0.0:
        return math.inf
    return float(optimize.brentq(shortfall, 1e-12, top, xtol=1e-12))


# --- the decision ----------------------------------------------------------------------------------


def regression_decision(
    result: TestResult,
    *,
    tolerance: float = 0.0,
    alpha: float = 0.05,
    adjusted_p: float | None = None,
) -> bool:
    """Whether one comparison declares a regression.

    Declared exactly when all three hold:

    1. ``result.delta < -tolerance``: the observed drop is larger than what is
       tolerated (``tolerance`` in the metric's units, e.g. 0.02 for 2 points);
    2. ``p < alpha``, with ``p = adjusted_p`` when given (e.g. from :func:`holm`
       across the metrics and eval sets tested together), else ``result.p_value``;
    3. ``result.ci_high < 0``: the whole interval lies below "no change".

    NaN anywhere means no regression.  The p-value is two-sided and only drops
    count, so the false-alarm rate of this rule on an unchanged model is at most
    about ``alpha / 2``.  The interval is at the level the test was run with.  For a
    baseline looked at again and again, pass each look's share, :func:`look_alpha`, as
    ``alpha`` (the interval may stay at the run's level); confirming over consecutive
    runs is left to the caller (``monitor.analysis.regression.decide_look``).

    Raises:
        ValueError: negative tolerance or alpha out of range.
    """
    _check_alpha(alpha)
    if tolerance < 0:
        raise ValueError(f"tolerance must be non-negative, got {tolerance}")
    p = result.p_value if adjusted_p is None else adjusted_p
    return bool(result.delta < -tolerance and p < alpha and result.ci_high < 0.0)
