"""Two-sample tests that stay right when texts repeat: grouped by text, weighted by counts, calibrated by permutation.

Production traffic repeats itself (retries, templates, bots).  A test that treats
every row as an independent draw sees 800 rows where there are 150 texts, and a
classifier that meets a text on both sides of its train/test split memorises it:
both make a window that has not changed look different.  Here:

* every side is reduced to its **distinct texts with their counts** (an *entry*
  is one distinct text of one side; a text found on both sides is one *group*
  with two entries);
* the domain classifier is **cross-fitted over text groups**: a group's entries
  are all in one fold, so a text is never both trained on and scored; rows keep
  their weight (the count) in the training and in the ROC AUC;
* the p-value of every statistic comes from **permutations of the entries**
  between the sides, each side keeping its own pattern of counts: under "no
  drift" the distinct texts are exchangeable between the sides, and the
  statistic's null distribution is rebuilt with exactly this window's
  repetition, whatever it is.  The permutations are drawn once per analysis and
  shared by every statistic, so the components are judged on the same null.

Pure numpy and scikit-learn: no Evidently here (see ``evidently.py``).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

#: Relabellings of the entries drawn per analysis (the p-value resolution is ``1 / (PERMUTATIONS + 1)``).
PERMUTATIONS = 999
#: Labellings scored at once by a classifier (bounds the words x labellings matrices).
_CHUNK = 128
#: Laplace smoothing of the naive Bayes word rates.
_SMOOTHING = 1.0
#: Ridge added to the embedding covariance, relative to its mean variance.
_RIDGE = 0.1


# --------------------------------------------------------------------------- repetition


@dataclass(frozen=True)
class Repetition:
    """How much one side of a comparison repeats itself."""

    rows: int
    distinct: int
    #: Share of rows that repeat a text already seen on this side (0: every row distinct).
    repeated_share: float
    #: Share of rows taken by the most frequent text.
    top_share: float


def _repetition(rows: int, counts: np.ndarray) -> Repetition:
    if rows == 0:
        return Repetition(0, 0, 0.0, 0.0)
    return Repetition(
        rows=rows,
        distinct=len(counts),
        repeated_share=round((rows - len(counts)) / rows, 4),
        top_share=round(float(counts.max()) / rows, 4),
    )


def tally(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct texts in first-seen order and how many times each occurs."""
    counts: dict[str, int] = {}
    for text in texts:
        counts[text] = counts.get(text, 0) + 1
    return list(counts), np.fromiter(counts.values(), dtype=np.float64, count=len(counts))


def repetition(texts: Sequence[str]) -> Repetition:
    """How much ``texts`` repeats itself."""
    return _repetition(len(texts), tally(texts)[1])


# --------------------------------------------------------------------------- entries and relabellings


@dataclass(frozen=True)
class Pool:
    """Both sides as entries (distinct texts per side, with counts), and their relabellings.

    ``reference_weights[b, e]`` and ``current_weights[b, e]`` are entry ``e``'s rows on
    each side under labelling ``b``; labelling 0 is the observed one, the others
    are permutations.  ``group[e]`` indexes ``texts`` (distinct across both sides).
    """

    texts: tuple[str, ...]
    group: np.ndarray
    #: Entry ``e`` was observed on the reference side (``True``) or the current side.
    observed_reference: np.ndarray
    reference_weights: np.ndarray
    current_weights: np.ndarray
    reference: Repetition
    current: Repetition

    @property
    def permutations(self) -> int:
        return int(self.reference_weights.shape[0]) - 1

    @property
    def entries(self) -> int:
        return int(self.group.shape[0])

    def entry_texts(self, *, reference: bool) -> list[str]:
        """One side's distinct texts, in entry order."""
        chosen = self.group[self.observed_reference == reference]
        return [self.texts[g] for g in chosen]

    def entry_counts(self, *, reference: bool) -> np.ndarray:
        """One side's observed count per entry (zero for the other side's entries)."""
        return self.reference_weights[0] if reference else self.current_weights[0]


def pool(
    reference: Sequence[str], current: Sequence[str], *, seed: int, permutations: int = PERMUTATIONS
) -> Pool:
    """Entries of both sides and ``permutations`` seeded relabellings keeping each side's count pattern."""
    ref_texts, ref_counts = tally(reference)
    cur_texts, cur_counts = tally(current)
    index: dict[str, int] = {}
    for text in (*ref_texts, *cur_texts):
        index.setdefault(text, len(index))
    group = np.array([index[t] for t in (*ref_texts, *cur_texts)], dtype=np.int64)
    n_ref, n_entries = len(ref_texts), len(ref_texts) + len(cur_texts)
    pattern = np.concatenate([ref_counts, cur_counts])
    rng = np.random.default_rng(_seed("permutations", seed, n_entries))
    orders = np.vstack([np.arange(n_entries), *(rng.permutation(n_entries) for _ in range(permutations))])
    # Labelling b puts pattern slot i on entry orders[b, i]: slots 0..n_ref-1 are the reference's counts.
    ref_w = np.zeros((permutations + 1, n_entries))
    cur_w = np.zeros((permutations + 1, n_entries))
    rows = np.arange(permutations + 1)[:, None]
    ref_w[rows, orders[:, :n_ref]] = pattern[:n_ref]
    cur_w[rows, orders[:, n_ref:]] = pattern[n_ref:]
    return Pool(
        texts=tuple(index),
        group=group,
        observed_reference=np.arange(n_entries) < n_ref,
        reference_weights=ref_w,
        current_weights=cur_w,
        reference=_repetition(len(reference), ref_counts),
        current=_repetition(len(current), cur_counts),
    )


def permutations_for(alpha: float) -> int:
    """Relabellings needed to judge at ``alpha``: :data:`PERMUTATIONS`, or more when ``alpha`` is tiny.

    With ``n`` relabellings the smallest p-value is ``1 / (n + 1)``; below ``alpha``
    by a factor two leaves room for an observed value that is not the very largest.
    """
    return max(PERMUTATIONS, math.ceil(2 / alpha) - 1)


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def permutation_p_values(statistics: np.ndarray) -> np.ndarray:
    """Per labelling, the share of labellings (itself included) whose statistic is at least as large.

    Row 0 is the observed statistic, so ``result[0]`` is its permutation p-value;
    the other rows are the p-values each permutation would have had (used to
    calibrate statistics built from several p-values).
    """
    order = np.sort(statistics)
    # Tolerance for floating point: a permutation equal to the observed value counts as "as large".
    at_least = len(statistics) - np.searchsorted(order, statistics - 1e-12, side="left")
    return np.asarray(at_least / len(statistics), dtype=np.float64)


def alarm_threshold(statistics: np.ndarray, alpha: float) -> float:
    """The value the observed statistic (``statistics[0]``) must exceed for a p-value of at most ``alpha``.

    The p-value is ``(1 + #{permutations at least as large}) / (permutations + 1)``,
    so at most ``alpha * (permutations + 1) - 1`` permutations may reach the
    observed value; infinite when the permutations are too few for ``alpha``.
    """
    null = np.sort(statistics[1:])[::-1]
    allowed = int(np.floor(alpha * len(statistics) + 1e-9)) - 1
    return float(null[allowed]) if 0 <= allowed < len(null) else float("inf")


# --------------------------------------------------------------------------- weighted two-sample statistics


def weighted_auc(scores: np.ndarray, current: np.ndarray, reference: np.ndarray) -> float:
    """ROC AUC of ``scores`` for telling current rows from reference rows, rows weighted; ties count half."""
    total = current.sum() * reference.sum()
    if total <= 0:
        return 0.5
    order = np.argsort(scores, kind="stable")
    s, c, r = scores[order], current[order], reference[order]
    # One block per distinct score: the reference weight strictly below and within each block.
    starts = np.flatnonzero(np.r_[True, np.diff(s) != 0])
    block_r = np.add.reduceat(r, starts)
    block_c = np.add.reduceat(c, starts)
    below = np.cumsum(block_r) - block_r
    return float((block_c * (below + 0.5 * block_r)).sum() / total)


def weighted_ks(values: np.ndarray, reference_weights: np.ndarray, current_weights: np.ndarray) -> np.ndarray:
    """Kolmogorov-Smirnov distance between the weighted samples, for every labelling at once.

    ``values`` holds one value per entry; the weights are ``(labellings, entries)``.
    """
    order = np.argsort(values, kind="stable")
    v = values[order]
    last_of_value = np.r_[np.diff(v) != 0, True]
    ref = np.cumsum(reference_weights[:, order], axis=1)[:, last_of_value]
    cur = np.cumsum(current_weights[:, order], axis=1)[:, last_of_value]
    ref /= np.maximum(ref[:, -1:], 1e-300)
    cur /= np.maximum(cur[:, -1:], 1e-300)
    return np.asarray(np.abs(ref - cur).max(axis=1), dtype=np.float64)


# --------------------------------------------------------------------------- domain classifiers


def text_folds(groups: int, *, seed: int) -> np.ndarray:
    """Each text group's fold (0 or 1), seeded, as balanced as the count allows."""
    rng = np.random.default_rng(_seed("folds", seed, groups))
    return np.asarray(rng.permutation(groups) % 2, dtype=np.int64)


def _fold_aucs(scores: np.ndarray, test: np.ndarray, ref_w: np.ndarray, cur_w: np.ndarray) -> np.ndarray:
    """Per labelling, the weighted AUC of ``scores[:, b]`` over the ``test`` entries."""
    return np.array(
        [weighted_auc(scores[:, b], cur_w[b, test], ref_w[b, test]) for b in range(scores.shape[1])]
    )


def cross_fitted_auc(score_fold: _Scorer, data: Pool, folds: np.ndarray) -> np.ndarray:
    """Per labelling, the mean over the two folds of the held-out weighted AUC.

    ``folds`` gives each text group's fold; ``score_fold(train, test, ref_w, cur_w)``
    trains on the entries in ``train`` (their weights under some labellings) and
    returns the ``test`` entries' scores, one column per labelling.  Labellings go
    through in chunks of :data:`_CHUNK`, which bounds the memory of a large vocabulary.
    """
    entry_fold = folds[data.group]
    ref_w, cur_w = data.reference_weights, data.current_weights
    aucs = []
    for fold in (0, 1):
        test = entry_fold == fold
        train = ~test
        if not test.any() or not train.any():
            continue
        fold_aucs = []
        for start in range(0, ref_w.shape[0], _CHUNK):
            chunk = slice(start, start + _CHUNK)
            scores = score_fold(train, test, ref_w[chunk][:, train], cur_w[chunk][:, train])
            fold_aucs.append(_fold_aucs(scores, test, ref_w[chunk], cur_w[chunk]))
        aucs.append(np.concatenate(fold_aucs))
    if not aucs:
        return np.full(data.permutations + 1, 0.5)
    return np.asarray(np.mean(aucs, axis=0), dtype=np.float64)


class _Scorer:
    """Trains on one fold's entries under every labelling and scores the other fold's."""

    def __call__(
        self, train: np.ndarray, test: np.ndarray, ref_w: np.ndarray, cur_w: np.ndarray
    ) -> np.ndarray:
        raise NotImplementedError


def _shares(weights: np.ndarray) -> np.ndarray:
    """Weights ``(labellings, entries)`` as each labelling's shares, transposed to ``(entries, labellings)``."""
    return (weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-300)).T


class NaiveBayesScorer(_Scorer):
    """Multinomial naive Bayes on word counts: the log ratio of the sides' smoothed word rates.

    Training is two sparse products, so a thousand relabellings cost about as much
    as one logistic regression.
    """

    def __init__(self, features: sparse.csr_matrix, group: np.ndarray) -> None:
        self.rows = features[group]  # one row per entry

    def __call__(
        self, train: np.ndarray, test: np.ndarray, ref_w: np.ndarray, cur_w: np.ndarray
    ) -> np.ndarray:
        x_train = self.rows[train].T.tocsr()  # words x entries
        cur_words = np.asarray(x_train @ cur_w.T)  # words x labellings
        ref_words = np.asarray(x_train @ ref_w.T)
        cur_rate = (cur_words + _SMOOTHING) / (cur_words.sum(axis=0) + _SMOOTHING * cur_words.shape[0])
        ref_rate = (ref_words + _SMOOTHING) / (ref_words.sum(axis=0) + _SMOOTHING * ref_words.shape[0])
        log_ratio = np.log(cur_rate) - np.log(ref_rate)
        # Length-normalised so that a long text is not scored as "more current" by its length alone.
        x_test = self.rows[test]
        lengths = np.maximum(np.asarray(x_test.sum(axis=1)).ravel(), 1.0)
        return np.asarray(x_test @ log_ratio) / lengths[:, None]


class LinearDiscriminantScorer(_Scorer):
    """Fisher's linear discriminant on vectors (embeddings): ``(S + ridge)^-1 (mean_cur - mean_ref)``.

    ``S`` is the training fold's covariance over both sides, which does not depend on
    the labelling, so the direction of every relabelling is one solve.
    """

    def __init__(self, vectors: np.ndarray, group: np.ndarray) -> None:
        self.rows = np.asarray(vectors, dtype=np.float64)[group]

    def __call__(
        self, train: np.ndarray, test: np.ndarray, ref_w: np.ndarray, cur_w: np.ndarray
    ) -> np.ndarray:
        x = self.rows[train]
        # Each entry once, whatever its count: the spread of distinct texts.
        centred = x - x.mean(axis=0)
        covariance = centred.T @ centred / max(len(x) - 1, 1)
        ridge = _RIDGE * max(float(np.trace(covariance)) / covariance.shape[0], 1e-12)
        difference = x.T @ (_shares(cur_w) - _shares(ref_w))  # dims x labellings
        direction = np.linalg.solve(covariance + ridge * np.eye(covariance.shape[0]), difference)
        return np.asarray(self.rows[test] @ direction)


# --------------------------------------------------------------------------- word features

_TOKEN = re.compile(r"(?u)\b\w\w+\b")


def word_counts(texts: Sequence[str]) -> sparse.csr_matrix:
    """Word unigram and bigram counts per text (lower-cased), as a sparse matrix.

    Only terms found in at least two texts: a term of one text cannot be learnt on
    one fold and used on the other, and leaving them out keeps the vocabulary small.
    """
    from sklearn.feature_extraction.text import CountVectorizer

    for min_df in (2, 1):
        vectorizer = CountVectorizer(
            lowercase=True, token_pattern=_TOKEN.pattern, ngram_range=(1, 2), min_df=min_df
        )
        try:
            return vectorizer.fit_transform(texts).tocsr()
        except ValueError:  # no term in two texts (min_df 2), or no term at all (only punctuation)
            continue
    return sparse.csr_matrix((len(texts), 1))
