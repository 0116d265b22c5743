"""Production accuracy without labels: choice probabilities calibrated on the golden set.

A multiple-choice fine-tune scores every choice of an input; its top choice's
probability is a confidence.  Raw confidences of a language model are rarely
calibrated, so they are calibrated on the golden set, where the outcome of every
item is known: *temperature scaling* (one parameter ``T``, confidence
``softmax(scores / T)[top]``, ``T`` chosen by maximum likelihood of the golden
outcomes) or *isotonic* regression of the outcome on the raw confidence; ``auto``
takes whichever is less biased on held-out golden items weighted to the production
mix (importance-weighted cross-validation): temperature scaling is right for a model that is uniformly over- or
underconfident, isotonic for one that is sure of some inputs it gets wrong.  Applied
to production inputs, whose outcomes nobody knows, the mean calibrated
confidence estimates the accuracy the model has on them.

The interval is a bootstrap of everything the estimate depends on: the golden
items are resampled and the calibrator refitted (calibration uncertainty), the
production items are resampled (which inputs were sampled from the window), and
each resampled item's outcome is drawn from its calibrated confidence (the
outcomes themselves).  So it is an interval for the accuracy on the window's
traffic, honest about a golden set too small to calibrate with.

What it cannot see: the estimate is valid under covariate shift only, when
``p(correct | confidence)`` is the same in production as on the golden set.  A
shift of the labels themselves (the same text now means another answer) or
inputs whose confidence the golden set never shows break it, and no statistic on
unlabelled inputs can prove otherwise.  So every estimate carries the golden
set's held-out calibration error (cross-validated ECE) and a *support* check: how many golden items the
production confidences effectively rest on (importance weights over confidence
bins) and the share of production confidences outside the golden range; a
warning says when the estimate extrapolates.

Pure: numpy and scipy (scikit-learn for isotonic), plain lists in, dataclasses out::

    MonitorError
    └── LabelFreeError   an estimate cannot be made: too few items, unusable scores
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import optimize, stats

from monitor.errors import MonitorError

CalibrationMethod = Literal["temperature", "isotonic"]
#: ``auto`` picks, per estimate, the method with the smaller held-out bias on the production mix.
MethodChoice = Literal["auto", "temperature", "isotonic"]

#: Temperatures searched (log-uniformly) when fitting; beyond them confidence is all or nothing.
TEMPERATURE_BOUNDS = (1e-2, 1e3)
#: Fewer calibration items (or production items) than this and no estimate is made.
MIN_ITEMS = 20
#: The support check warns when production confidences rest on fewer golden items than this ...
MIN_EFFECTIVE_ITEMS = 30
#: ... or when more than this share of them lies outside the golden set's confidence range.
MAX_OUTSIDE_SHARE = 0.05
#: The golden set's cross-validated calibration error above which a warning is given.
MAX_GOLDEN_ECE = 0.1
#: Folds of the cross-validation that measures calibration quality (and picks the ``auto`` method).
CV_FOLDS = 5
#: Version of :meth:`AccuracyEstimate.to_dict`'s format.
FORMAT_VERSION = 1


class LabelFreeError(MonitorError):
    """An accuracy estimate cannot be made: too few items, or scores that are not log-likelihoods."""


# --------------------------------------------------------------------------- scores and confidences


def score_matrix(scores: Sequence[Sequence[float]]) -> np.ndarray:
    """Per-item choice scores (ragged lists allowed) as one array, short rows padded with ``-inf``.

    Raises:
        LabelFreeError: an item has fewer than two choices, or a score that is NaN or not finite
            (choices picked by generation carry ``-inf``: they have no probabilities to calibrate).
    """
    if not scores:
        return np.zeros((0, 2))
    width = max(len(row) for row in scores)
    out = np.full((len(scores), width), -np.inf)
    for i, row in enumerate(scores):
        values = np.asarray(row, dtype=float)
        if values.size < 2:
            raise LabelFreeError(f"item {i} has {values.size} choice score(s); at least two are needed")
        if not np.all(np.isfinite(values)):
            raise LabelFreeError(
                f"item {i} has a score that is not a finite log-likelihood ({list(row)}); "
                "choices picked by generation cannot be calibrated"
            )
        out[i, : values.size] = values
    return out


def _gaps(matrix: np.ndarray) -> np.ndarray:
    """How far each choice's score lies below the item's top score (0 for the top, ``inf`` for padding)."""
    return matrix.max(axis=1, keepdims=True) - matrix


def top_confidence(gaps: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The softmax probability of each item's top choice at ``temperature``, from :func:`_gaps`."""
    return 1.0 / np.exp(-gaps / temperature).sum(axis=1)  # type: ignore[no-any-return]


def _binary_nll(confidence: np.ndarray, correct: np.ndarray) -> float:
    p = np.clip(confidence, 1e-12, 1 - 1e-12)
    return float(-(correct * np.log(p) + (1 - correct) * np.log1p(-p)).sum())


def fit_temperature(gaps: np.ndarray, correct: np.ndarray) -> float:
    """The temperature that maximises the likelihood of the outcomes under the top-choice confidence.

    Top-label calibration: the outcome is whether the top choice was right, so only
    what accuracy needs is fitted (the gold choice among the others is never used).
    """
    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    found = optimize.minimize_scalar(
        lambda log_t: _binary_nll(top_confidence(gaps, math.exp(log_t)), correct),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return math.exp(float(found.x))


@dataclass(frozen=True)
class Calibrator:
    """A fitted map from an item's choice scores to the probability that its top choice is right."""

    method: CalibrationMethod
    temperature: float = 1.0
    #: Isotonic only: the fitted step function's knots (raw confidence -> probability).
    knots_x: tuple[float, ...] = ()
    knots_y: tuple[float, ...] = ()

    def apply(self, gaps: np.ndarray) -> np.ndarray:
        """Calibrated confidences for items given as :func:`_gaps`."""
        if self.method == "temperature":
            return top_confidence(gaps, self.temperature)
        raw = top_confidence(gaps)
        return np.interp(raw, self.knots_x, self.knots_y)  # type: ignore[no-any-return]


def fit_calibrator(gaps: np.ndarray, correct: np.ndarray, method: CalibrationMethod) -> Calibrator:
    """Fit ``method`` on the golden items' score gaps and outcomes (0/1)."""
    if method == "temperature":
        return Calibrator("temperature", fit_temperature(gaps, correct))
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        raw = top_confidence(gaps)
        model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, correct)
        xs = np.asarray(model.X_thresholds_, dtype=float)
        ys = np.asarray(model.y_thresholds_, dtype=float)
        return Calibrator("isotonic", knots_x=tuple(xs.tolist()), knots_y=tuple(ys.tolist()))
    raise ValueError(f"unknown calibration method {method!r}; use temperature or isotonic")


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """ECE: the mean absolute gap between confidence and accuracy over equal-width confidence bins,
    weighted by the bins' shares of items."""
    if confidence.size == 0:
        return math.nan
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(index):
        members = index == b
        total += members.sum() * abs(float(correct[members].mean() - confidence[members].mean()))
    return total / confidence.size


@dataclass(frozen=True)
class CalibrationQuality:
    """How well a method calibrates the golden set, measured on items it was not fitted on."""

    method: CalibrationMethod
    #: Out-of-fold ECE over :data:`CV_FOLDS` folds (golden items as they are).
    ece: float
    #: Out-of-fold Brier score and mean residual (outcome minus confidence), both weighted to the
    #: production mix: how well, and how far off, the calibration does where production lies.
    brier: float
    bias: float


def cross_validate(
    gaps: np.ndarray,
    correct: np.ndarray,
    method: CalibrationMethod,
    *,
    weights: np.ndarray | None = None,
    seed: int = 0,
) -> CalibrationQuality:
    """Out-of-fold calibration quality of ``method``: each fold calibrated by a fit on the others.

    In-sample ECE flatters (isotonic regression has none by construction), so the
    quality reported with an estimate is always the held-out one.  ``weights``
    (importance weights of the golden items, see :func:`importance_weights`) make
    it importance-weighted cross-validation: the quality on the production mix.
    """
    n = gaps.shape[0]
    folds = np.random.default_rng(seed).permutation(n) % min(CV_FOLDS, n)
    held_out = np.empty(n)
    for fold in np.unique(folds):
        test = folds == fold
        held_out[test] = fit_calibrator(gaps[~test], correct[~test], method).apply(gaps[test])
    w = np.ones(n) if weights is None or weights.sum() <= 0 else weights
    brier = float(np.average((held_out - correct) ** 2, weights=w))
    bias = float(np.average(correct - held_out, weights=w))
    return CalibrationQuality(method, expected_calibration_error(held_out, correct), brier, bias)


def choose_method(
    gaps: np.ndarray,
    correct: np.ndarray,
    method: MethodChoice,
    *,
    weights: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[CalibrationMethod, CalibrationQuality]:
    """``method`` itself, or (``auto``) the method whose held-out confidences, weighted to the
    production mix (``weights``), average closest to the outcomes (what an accuracy estimate
    needs; the Brier score rewards sharpness too); with the chosen method's held-out quality."""
    if method != "auto":
        return method, cross_validate(gaps, correct, method, weights=weights, seed=seed)
    qualities = [
        cross_validate(gaps, correct, m, weights=weights, seed=seed) for m in ("temperature", "isotonic")
    ]
    best = min(qualities, key=lambda q: abs(q.bias))
    return best.method, best


# --------------------------------------------------------------------------- support


@dataclass(frozen=True)
class SupportCheck:
    """How far the production confidences lie from the golden set's, where the calibration was fitted."""

    #: Two-sample Kolmogorov-Smirnov statistic and p-value between raw golden and production confidences.
    ks_statistic: float
    ks_p_value: float
    #: Golden items the estimate effectively rests on: the effective sample size of the importance
    #: weights (production share over golden share per confidence bin), ``n / (1 + chi-square)``.
    effective_items: float
    #: Share of production confidences outside the golden set's [min, max].
    outside_share: float
    bins: int
    warning: str | None = None


def _confidence_bins(
    golden_raw: np.ndarray, production_raw: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Golden and production items' bins: up to ten golden quantile bins, at least 20 items each."""
    bins = int(max(2, min(10, golden_raw.size // 20)))
    inner = np.unique(np.quantile(golden_raw, np.linspace(0, 1, bins + 1)))[1:-1]
    return (
        np.searchsorted(inner, golden_raw, side="right"),
        np.searchsorted(inner, production_raw, side="right"),
        inner.size + 1,
    )


def importance_weights(golden_raw: np.ndarray, production_raw: np.ndarray) -> np.ndarray:
    """Each golden item's weight under the production mix: the production share of its confidence
    bin over the golden share (a density ratio, estimated on raw top-choice confidences)."""
    golden_bin, production_bin, nbins = _confidence_bins(golden_raw, production_raw)
    p = np.bincount(golden_bin, minlength=nbins) / golden_raw.size
    q = np.bincount(production_bin, minlength=nbins) / production_raw.size
    ratio = np.where(p > 0, q / np.where(p > 0, p, 1.0), 0.0)
    return ratio[golden_bin]  # type: ignore[no-any-return]


def support_check(golden_raw: np.ndarray, production_raw: np.ndarray) -> SupportCheck:
    """Compare raw (uncalibrated) top-choice confidences of the golden and the production items.

    A difference alone is expected (the point is to estimate accuracy on inputs that
    changed); the warning is for *extrapolation*: production mass where the golden
    set has too few items for its calibration to be trusted there.
    """
    n = golden_raw.size
    ks = stats.ks_2samp(golden_raw, production_raw)
    golden_bin, production_bin, nbins = _confidence_bins(golden_raw, production_raw)
    p = np.bincount(golden_bin, minlength=nbins) / n
    q = np.bincount(production_bin, minlength=nbins) / production_raw.size
    chi2 = float(np.sum(np.where(p > 0, q**2 / np.where(p > 0, p, 1.0), 0.0))) - 1.0
    effective = n / (1.0 + max(chi2, 0.0))
    tol = 1e-9
    outside = float(
        np.mean((production_raw < golden_raw.min() - tol) | (production_raw > golden_raw.max() + tol))
    )
    warning = None
    if effective < min(MIN_EFFECTIVE_ITEMS, n) or outside > MAX_OUTSIDE_SHARE:
        warning = (
            f"production confidences lie where the golden set is thin (they rest on {effective:.0f} "
            f"of {n} golden items, {outside:.0%} outside its range): the estimate extrapolates its "
            "calibration"
        )
    return SupportCheck(float(ks.statistic), float(ks.pvalue), effective, outside, nbins, warning)


# --------------------------------------------------------------------------- the estimate


@dataclass(frozen=True)
class AccuracyEstimate:
    """Estimated accuracy on production inputs, its interval, and how far to trust the calibration."""

    estimate: float
    low: float
    high: float
    level: float
    method: CalibrationMethod
    #: The fitted temperature (temperature scaling), else None.
    temperature: float | None
    n_production: int
    n_calibration: int
    #: The golden set's observed accuracy and its mean raw and calibrated confidences.
    golden_accuracy: float
    golden_raw_confidence: float
    golden_confidence: float
    #: ECE of the calibrated confidences on held-out golden items (cross-validated).
    golden_ece: float
    #: Held-out Brier score and mean residual (outcome minus confidence) of golden items weighted
    #: to the production mix (importance-weighted cross-validation; ``auto`` picks by the Brier score).
    golden_brier: float
    shifted_bias: float
    #: Mean raw top-choice confidence of the production items (before calibration).
    production_raw_confidence: float
    support: SupportCheck
    bootstrap: int
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def change(self) -> float:
        """Estimated production accuracy minus the golden set's accuracy."""
        return self.estimate - self.golden_accuracy

    def summary(self) -> str:
        """One line: the estimate with its interval, beside the golden accuracy."""
        text = (
            f"estimated accuracy {self.estimate:.3f} ({self.level:.0%} interval {self.low:.3f} to "
            f"{self.high:.3f}) on {self.n_production} production inputs; golden {self.golden_accuracy:.3f} "
            f"on {self.n_calibration} items ({self.method}"
            + (f", T={self.temperature:.3g}" if self.temperature is not None else "")
            + f", ECE {self.golden_ece:.3f})"
        )
        return text + "".join(f"; warning: {w}" for w in self.warnings)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["warnings"] = list(self.warnings)
        data["change"] = self.change
        data["format"] = FORMAT_VERSION
        return _finite(data)


def _finite(value: Any) -> Any:
    # Stored as JSON: NaN and infinities become None.
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def estimate_accuracy(
    calibration_scores: Sequence[Sequence[float]],
    calibration_correct: Sequence[bool | float],
    production_scores: Sequence[Sequence[float]],
    *,
    method: MethodChoice = "auto",
    level: float = 0.95,
    bootstrap: int = 1000,
    seed: int = 0,
    production_weights: Sequence[float] | None = None,
) -> AccuracyEstimate:
    """Estimate the accuracy on production items from their choice scores alone.

    ``calibration_scores`` and ``calibration_correct`` are the golden items' per-choice
    scores (log-likelihoods, or whatever the eval set's metric takes its argmax of) and
    whether the top choice was right; ``production_scores`` are the same scores for
    production inputs.  ``production_weights`` count how often each production item
    occurred (traffic repeats; unique texts are scored once).

    Raises:
        LabelFreeError: fewer than :data:`MIN_ITEMS` items on either side, or unusable scores.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), not {level}")
    if len(calibration_scores) != len(calibration_correct):
        raise ValueError("calibration scores and outcomes differ in length")
    for what, count in (
        ("golden set", len(calibration_scores)),
        ("production sample", len(production_scores)),
    ):
        if count < MIN_ITEMS:
            raise LabelFreeError(
                f"the {what} has {count} scored item(s); an accuracy estimate needs at least {MIN_ITEMS}"
            )
    gold_gaps = _gaps(score_matrix(calibration_scores))
    correct = np.asarray(calibration_correct, dtype=float)
    prod_gaps = _gaps(score_matrix(production_scores))
    weights = (
        np.ones(prod_gaps.shape[0])
        if production_weights is None
        else np.asarray(production_weights, dtype=float)
    )
    if weights.shape != (prod_gaps.shape[0],) or np.any(weights <= 0):
        raise ValueError("production_weights must be one positive count per production item")
    share = weights / weights.sum()
    golden_raw = top_confidence(gold_gaps)
    production_raw = top_confidence(prod_gaps)
    # Production items count by their traffic, in the weights and the support check as in the estimate.
    traffic_raw = np.repeat(production_raw, _counts(weights))
    mix = importance_weights(golden_raw, traffic_raw)

    chosen, quality = choose_method(gold_gaps, correct, method, weights=mix, seed=seed)
    fitted = fit_calibrator(gold_gaps, correct, chosen)
    gold_conf = fitted.apply(gold_gaps)
    prod_conf = fitted.apply(prod_gaps)
    estimate = float(share @ prod_conf)

    rng = np.random.default_rng(seed)
    n, m = gold_gaps.shape[0], prod_gaps.shape[0]
    draws = np.empty(bootstrap)
    for b in range(bootstrap):
        pick = rng.integers(0, n, n)
        refit = fit_calibrator(gold_gaps[pick], correct[pick], chosen)
        rows = rng.choice(m, size=m, p=share)
        confidence = refit.apply(prod_gaps[rows])
        draws[b] = float((rng.random(m) < confidence).mean())
    tail = (1.0 - level) / 2.0
    low, high = (float(x) for x in np.quantile(draws, [tail, 1.0 - tail]))

    support = support_check(golden_raw, traffic_raw)
    ece = quality.ece
    warnings = []
    if support.warning is not None:
        warnings.append(support.warning)
    if ece > MAX_GOLDEN_ECE:
        warnings.append(
            f"the calibration fits held-out golden items poorly (ECE {ece:.3f} > {MAX_GOLDEN_ECE}): "
            "the interval does not cover that misfit"
        )
    if abs(quality.bias) > (high - low) / 2:
        warnings.append(
            f"held-out golden items weighted to the production mix are {quality.bias:+.3f} off their "
            "calibrated confidence, more than half the interval: the calibration may not carry over"
        )
    return AccuracyEstimate(
        estimate=estimate,
        low=min(low, estimate),
        high=max(high, estimate),
        level=level,
        method=chosen,
        temperature=fitted.temperature if chosen == "temperature" else None,
        n_production=int(np.rint(weights.sum())),
        n_calibration=n,
        golden_accuracy=float(correct.mean()),
        golden_raw_confidence=float(golden_raw.mean()),
        golden_confidence=float(gold_conf.mean()),
        golden_ece=ece,
        golden_brier=quality.brier,
        shifted_bias=quality.bias,
        production_raw_confidence=float(share @ production_raw),
        support=support,
        bootstrap=bootstrap,
        warnings=tuple(warnings),
    )


def _counts(weights: np.ndarray) -> np.ndarray:
    counts = np.rint(weights).astype(int)
    return np.maximum(counts, 1)
