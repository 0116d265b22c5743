"""Input drift on repeated traffic: calibration and power when texts repeat (retries, templates, bots).

The bug this reproduces: a no-drift window of 150 distinct production messages
resampled to 800 rows was flagged drifted (domain-classifier AUC 0.61-0.64)
because repeated texts landed on both sides of the classifier's train/test split
and the alarm's bar assumed independent rows.  Here the same windows, and other
repetition patterns, must raise an alarm at most at the configured rate across
seeds, while drifted windows with the same repetition still alarm.
"""

from __future__ import annotations

import hashlib
import random
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from scipy.stats import ks_2samp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from monitor.analysis.drift import permutation
from monitor.analysis.drift.evidently import DriftAnalysis, analyze_input_drift
from monitor.config.schema import DriftThresholds
from monitor.demo.data import generate_tickets, generate_traffic

WEEK_START = datetime(2025, 3, 1, tzinfo=timezone.utc)
REFERENCE = [t.text for t in generate_tickets(200, seed=1, drift=0.0)]


def messages(n: int, *, seed: int, drift: float = 0.0) -> list[str]:
    records = generate_traffic(n, seed=seed, drift=drift, start=WEEK_START, span=timedelta(days=7))
    return [r.input for r in records]


def resampled(texts: list[str], rows: int, *, seed: int) -> list[str]:
    """``rows`` rows drawn with replacement from ``texts``: repeated traffic."""
    rng = random.Random(f"resample:{seed}")
    return [rng.choice(texts) for _ in range(rows)]


def one_text_dominates(
    texts: list[str], rows: int, share: float, *, seed: int, text: str | None = None
) -> list[str]:
    """One text (a bot, a template) takes ``share`` of the rows; the rest are drawn from the others."""
    rng = random.Random(f"dominates:{seed}")
    heavy = text if text is not None else texts[0]
    others = [t for t in texts if t != heavy]
    k = round(rows * share)
    rows_out = [heavy] * k + [rng.choice(others) for _ in range(rows - k)]
    rng.shuffle(rows_out)
    return rows_out


def zipf_traffic(texts: list[str], rows: int, *, seed: int) -> list[str]:
    """A long tail: the i-th text is drawn with probability proportional to 1 / i."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(texts) + 1)
    return [texts[i] for i in rng.choice(len(texts), size=rows, p=weights / weights.sum())]


class HashingEmbedder:
    """A real, tiny text embedder: hashed word counts, L2-normalised; counts the texts it encodes."""

    def __init__(self, name: str = "hashing-64") -> None:
        self.name = name
        self.encoded = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.encoded += len(texts)
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(hashlib.sha1(word.encode()).hexdigest(), 16) % 64] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


def analyze(current: list[str], **kwargs: object) -> DriftAnalysis:
    options: dict[str, object] = {"embeddings": False, "min_samples": 20}
    options.update(kwargs)
    return analyze_input_drift(REFERENCE, current, **options)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the reproduced bug


def test_a_row_level_split_memorises_repeated_texts() -> None:
    """The flaw being fixed, shown with a plain row-level classifier (what Evidently's text drift does)."""
    window = resampled(messages(150, seed=7), 800, seed=3)
    texts, labels = REFERENCE + window, [0] * len(REFERENCE) + [1] * len(window)
    aucs = []
    for seed in range(3):
        train_x, test_x, train_y, test_y = train_test_split(
            texts, labels, test_size=0.5, random_state=seed, stratify=labels
        )
        vectorizer = TfidfVectorizer()
        model = SGDClassifier(loss="log_loss", random_state=seed).fit(
            vectorizer.fit_transform(train_x), train_y
        )
        aucs.append(roc_auc_score(test_y, model.decision_function(vectorizer.transform(test_x))))
    # Repeated texts on both sides of the split: the row-level classifier "tells" an unchanged window apart.
    assert min(aucs) > 0.58, aucs
    # The grouped classifier does not.
    fixed = analyze(window, seed=0)
    assert fixed.score < 0.56 and not fixed.drifted, fixed.domain_classifier


# --------------------------------------------------------------------------- calibration


PATTERNS = {
    "150 distinct resampled to 800 rows": lambda base, seed: resampled(base, 800, seed=seed),
    "one text in 30% of the rows": lambda base, seed: one_text_dominates(base, 800, 0.3, seed=seed),
    "the longest text in 30% of the rows": lambda base, seed: one_text_dominates(
        base, 800, 0.3, seed=seed, text=max(base, key=len)
    ),
    "a Zipf tail": lambda base, seed: zipf_traffic(base, 800, seed=seed),
    "the reference's own texts, repeated": lambda base, seed: resampled(REFERENCE, 800, seed=seed),
}


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_repeated_no_drift_windows_never_alarm(pattern: str) -> None:
    make = PATTERNS[pattern]
    for seed in range(4):
        window = make(messages(150, seed=100 + seed), seed)
        result = analyze(window, seed=seed, embeddings=True, embedder=HashingEmbedder())
        assert not result.drifted, (pattern, seed, result.triggered_by, result.domain_classifier)
        assert result.current_repetition.rows == 800
        assert result.current_repetition.repeated_share > 0.5


def test_false_alarm_rate_is_at_most_alpha_across_seeds() -> None:
    """Thirty unchanged, heavily repeated windows at alpha 0.05, with no AUC floor to hide behind."""
    thresholds = DriftThresholds(alpha=0.05, classifier_auc=0.5)
    alarms = []
    for seed in range(30):
        window = resampled(messages(120, seed=300 + seed), 500, seed=seed)
        result = analyze(window, seed=seed, thresholds=thresholds, max_samples=500)
        alarms.append(result.drifted)
        assert result.component_alpha == pytest.approx(0.05 / 2)  # classifier and descriptors
    # At most alpha: 1.5 expected; 6 or more would happen by chance about 1 time in 300.
    assert sum(alarms) <= 5, sum(alarms)


def test_permutation_p_values_are_uniform_under_no_change() -> None:
    """The statistic level: the classifier's permutation p-value on repeated, unchanged windows."""
    p_values = []
    for seed in range(30):
        window = one_text_dominates(messages(100, seed=500 + seed), 400, 0.3, seed=seed)
        data = permutation.pool(REFERENCE[:150], window, seed=seed, permutations=199)
        features = permutation.word_counts(data.texts)
        folds = permutation.text_folds(len(data.texts), seed=seed)
        aucs = permutation.cross_fitted_auc(permutation.NaiveBayesScorer(features, data.group), data, folds)
        p_values.append(permutation.permutation_p_values(aucs)[0])
    assert np.mean(np.array(p_values) <= 0.1) <= 0.25, sorted(p_values)
    assert 0.3 < float(np.median(p_values)) < 0.7


# --------------------------------------------------------------------------- power


def test_drifted_windows_still_alarm_when_repeated() -> None:
    for seed in range(3):
        base = messages(150, seed=200 + seed, drift=0.5)
        result = analyze(
            resampled(base, 800, seed=seed), seed=seed, embeddings=True, embedder=HashingEmbedder()
        )
        assert result.drifted and "domain_classifier" in result.triggered_by, result.domain_classifier
        assert result.domain_classifier.p_value <= result.component_alpha
        assert {"descriptors", "embeddings"} & set(result.triggered_by)
        # A bot on top of fully drifted traffic does not hide it.
        strong = analyze(
            one_text_dominates(messages(150, seed=250 + seed, drift=1.0), 800, 0.3, seed=seed), seed=seed
        )
        assert strong.drifted and "domain_classifier" in strong.triggered_by


# --------------------------------------------------------------------------- what is reported


def test_repeated_share_is_reported_with_each_check() -> None:
    window = resampled(messages(150, seed=7), 800, seed=3)
    result = analyze(window, embeddings=True, embedder=HashingEmbedder(), embedding_max_samples=100)
    assert result.reference_repetition == permutation.Repetition(200, 200, 0.0, 0.005)
    current = result.current_repetition
    assert current.rows == 800 and current.distinct == len(set(window)) <= 150
    assert current.repeated_share == pytest.approx(1 - current.distinct / 800, abs=1e-4)
    assert result.domain_classifier.current_repetition == current
    assert result.domain_classifier.test_size == 1000 and result.domain_classifier.permutations == 999
    # The embeddings use their own sample, fewer distinct texts with all their rows: reported with them.
    assert result.embeddings is not None
    embedded = result.embeddings.current_repetition
    assert embedded.distinct == 100 and 300 < embedded.rows < 800
    data = result.to_dict()
    assert data["format_version"] == 2
    assert data["current_repetition"]["repeated_share"] == current.repeated_share
    assert data["domain_classifier"]["reference_repetition"]["repeated_share"] == 0.0
    assert data["embeddings"]["current_repetition"]["distinct"] == 100


def test_sampling_keeps_whole_texts_and_reports_the_windows_repetition() -> None:
    window = resampled(messages(600, seed=21), 3000, seed=5)
    result = analyze(window, max_samples=200)
    # The window as given ...
    assert result.current_repetition.rows == 3000
    assert result.current_repetition.distinct == len(set(window))
    # ... and what the classifier analysed: 200 distinct texts, each with all its rows.
    analysed = result.domain_classifier.current_repetition
    assert analysed.distinct == 200 and analysed.rows == result.current_size
    assert 200 < result.current_size < 3000
    assert not result.drifted


def test_only_distinct_texts_are_encoded_and_the_reference_once() -> None:
    embedder = HashingEmbedder(name="hashing-64-counted")  # its own name: no vectors kept from other tests
    window = resampled(messages(150, seed=7), 800, seed=3)
    analyze(window, embeddings=True, embedder=embedder, embedding_max_samples=800)
    first = embedder.encoded
    assert first == 200 + len(set(window) - set(REFERENCE))
    analyze(window, embeddings=True, embedder=embedder, embedding_max_samples=800)
    assert embedder.encoded - first == len(set(window) - set(REFERENCE))  # the reference's vectors are kept


def test_deterministic_for_a_seed() -> None:
    window = one_text_dominates(messages(150, seed=9), 600, 0.3, seed=1)
    strip = lambda a: {k: v for k, v in a.to_dict().items() if k != "duration_s"}  # noqa: E731
    assert strip(analyze(window, seed=4)) == strip(analyze(window, seed=4))
    assert strip(analyze(window, seed=4)) != strip(analyze(window, seed=5))


# --------------------------------------------------------------------------- the statistics themselves


def test_weighted_statistics_match_the_expanded_rows() -> None:
    rng = np.random.default_rng(0)
    values = np.round(rng.normal(size=40), 1)  # ties on purpose
    ref_counts = rng.integers(0, 4, size=40).astype(float)
    cur_counts = rng.integers(0, 4, size=40).astype(float)
    ref_rows, cur_rows = np.repeat(values, ref_counts.astype(int)), np.repeat(values, cur_counts.astype(int))
    assert permutation.weighted_ks(values, ref_counts[None, :], cur_counts[None, :])[0] == pytest.approx(
        ks_2samp(ref_rows, cur_rows).statistic
    )
    scores = np.concatenate([ref_rows, cur_rows])
    labels = np.r_[np.zeros(len(ref_rows)), np.ones(len(cur_rows))]
    assert permutation.weighted_auc(values, cur_counts, ref_counts) == pytest.approx(
        roc_auc_score(labels, scores)
    )


def test_alarm_threshold_agrees_with_the_p_value() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        statistics = rng.normal(size=200)
        for alpha in (0.01, 0.05, 0.2):
            p_value = permutation.permutation_p_values(statistics)[0]
            assert (statistics[0] > permutation.alarm_threshold(statistics, alpha)) == (p_value <= alpha)
    # Too few permutations for alpha: no value can alarm.
    assert permutation.alarm_threshold(rng.normal(size=50), 0.01) == float("inf")


def test_relabellings_keep_each_sides_count_pattern() -> None:
    data = permutation.pool(["a", "a", "b", "c"], ["x"] * 5 + ["a", "y"], seed=0, permutations=20)
    assert data.texts == ("a", "b", "c", "x", "y") and data.entries == 6
    for ref_w, cur_w in zip(data.reference_weights, data.current_weights, strict=True):
        assert sorted(ref_w[ref_w > 0]) == [1.0, 1.0, 2.0]
        assert sorted(cur_w[cur_w > 0]) == [1.0, 1.0, 5.0]
        assert not (ref_w > 0)[cur_w > 0].any()  # an entry is on one side per labelling
    assert data.current == permutation.Repetition(7, 3, round(4 / 7, 4), round(5 / 7, 4))


def test_a_tiny_alpha_gets_enough_permutations() -> None:
    # alpha 0.001 over two components: 0.0005 each, below what 999 permutations can resolve.
    result = analyze(messages(200, seed=11, drift=1.0), thresholds=DriftThresholds(alpha=0.001))
    assert result.permutations == 3999 and result.domain_classifier.permutations == 3999
    assert result.drifted and result.domain_classifier.p_value <= result.component_alpha


def test_a_repeated_reference_does_not_alarm_either() -> None:
    """Training sets repeat too (duplicated examples, augmentation): both sides repeated, no change."""
    for seed in range(3):
        reference = resampled(REFERENCE, 600, seed=40 + seed)
        window = zipf_traffic(messages(150, seed=600 + seed), 800, seed=seed)
        result = analyze_input_drift(reference, window, embeddings=False, min_samples=20, seed=seed)
        assert not result.drifted, (seed, result.triggered_by, result.domain_classifier)
        assert result.reference_repetition.repeated_share > 0.5


def test_the_summary_names_the_components_and_the_repetition() -> None:
    drifted = analyze(resampled(messages(150, seed=8, drift=1.0), 800, seed=4))
    distinct = drifted.current_repetition.distinct
    assert drifted.summary().startswith("drift in domain_classifier")
    assert drifted.summary().endswith(
        f"repeated rows: reference 0% of 200, current {drifted.current_repetition.repeated_share:.0%}"
        f" of 800 ({distinct} distinct)"
    )
    assert analyze(messages(200, seed=9)).summary().startswith("no drift; repeated rows: reference 0% of 200")
