"""Scoring: per-item outcomes for each metric, and aggregates with their standard errors.

Multiple choice follows lm-evaluation-harness: ``acc`` picks the choice with the
highest summed log-likelihood, ``acc_norm`` divides it by the choice's length in
characters first.  Generation metrics compare the decoded text with the target.
Aggregates are means with the standard error of the mean (sample standard
deviation over sqrt(n), as lm-eval reports it).  Failed items are not scored
as wrong: they are left out of the metrics and counted apart.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from monitor.evals.evalset import EvalItem
from monitor.evals.filters import parse_json_output


@dataclass(frozen=True)
class MetricValue:
    """An aggregate: the mean over ``n`` scored items and its standard error."""

    value: float
    stderr: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return {"value": self.value, "stderr": self.stderr, "n": self.n}


@dataclass(frozen=True)
class ItemScore:
    """How one item did: its prediction and a score per metric."""

    prediction: str
    scores: dict[str, float]


def mean_stderr(values: Sequence[float]) -> MetricValue:
    """Mean and standard error of the mean (sample std / sqrt(n)); stderr is NaN for n < 2."""
    n = len(values)
    if n == 0:
        return MetricValue(math.nan, math.nan, 0)
    mean = math.fsum(values) / n
    if n < 2:
        return MetricValue(mean, math.nan, n)
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return MetricValue(mean, math.sqrt(var / n), n)


def aggregate(scores: Iterable[Mapping[str, float]], metrics: Sequence[str]) -> dict[str, MetricValue]:
    """Aggregate per-item scores into one :class:`MetricValue` per metric."""
    columns: dict[str, list[float]] = {m: [] for m in metrics}
    for item in scores:
        for metric in metrics:
            if metric in item and item[metric] is not None:
                columns[metric].append(float(item[metric]))
    return {metric: mean_stderr(values) for metric, values in columns.items()}


# --- multiple choice -------------------------------------------------------------------------------


def score_multiple_choice(
    item: EvalItem, loglikelihoods: Sequence[float], metrics: Sequence[str]
) -> ItemScore:
    """Score one multiple-choice item from its per-choice log-likelihoods."""
    pred = _argmax(loglikelihoods)
    gold = item.gold_index
    scores: dict[str, float] = {}
    if "acc" in metrics:
        scores["acc"] = float(pred == gold)
    if "acc_norm" in metrics:
        lengths = [float(len(choice)) for choice in item.choices]
        normed = [ll / max(length, 1.0) for ll, length in zip(loglikelihoods, lengths, strict=True)]
        scores["acc_norm"] = float(_argmax(normed) == gold)
    return ItemScore(item.choices[pred], scores)


def score_picked_choice(item: EvalItem, chosen: int | None, answer: str, metrics: Sequence[str]) -> ItemScore:
    """Score a multiple-choice item whose answer was generated and matched to choice ``chosen``.

    An answer that matched no choice (``chosen`` None) is wrong, and is its own prediction.
    """
    right = float(chosen is not None and chosen == item.gold_index)
    scores = {m: right for m in metrics if m in ("acc", "acc_norm")}
    return ItemScore(item.choices[chosen] if chosen is not None else answer, scores)


def _argmax(values: Sequence[float]) -> int:
    # First maximum wins, as numpy.argmax does in lm-eval.
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


# --- generation ------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_text(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, sub in value.items():
            flat.update(_flatten(sub, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def exact_match(prediction: str, item: EvalItem) -> float:
    """1 when the prediction equals the target: as parsed JSON for an object target, else normalised text."""
    if isinstance(item.target, dict | list):
        try:
            return float(parse_json_output(prediction) == item.target)
        except ValueError:
            return 0.0
    return float(normalize_text(prediction) == normalize_text(item.target_text))


def contains(prediction: str, item: EvalItem) -> float:
    """1 when the normalised target occurs in the normalised prediction."""
    return float(normalize_text(item.target_text) in normalize_text(prediction))


def token_f1(prediction: str, item: EvalItem) -> float:
    """SQuAD token F1 between prediction and target after normalisation."""
    pred_tokens = normalize_text(prediction).split()
    gold_tokens = normalize_text(item.target_text).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def regex_match(prediction: str, item: EvalItem) -> float:
    """1 when the stripped prediction fully matches the item's ``pattern`` field (or its target as a pattern)."""
    pattern = item.fields.get("pattern", item.target_text)
    try:
        return float(re.fullmatch(pattern, prediction.strip(), flags=re.DOTALL) is not None)
    except re.error:
        return 0.0


def json_valid(prediction: str, item: EvalItem) -> float:
    """1 when the prediction parses as JSON."""
    try:
        parse_json_output(prediction)
    except ValueError:
        return 0.0
    return 1.0


def json_fields(prediction: str, item: EvalItem) -> float:
    """The share of the target object's (flattened) fields that the prediction gets exactly right."""
    target = item.target if isinstance(item.target, dict) else None
    if target is None:
        try:
            target = json.loads(item.target_text)
        except ValueError:
            return 0.0
    expected = _flatten(target)
    if not expected:
        return 0.0
    try:
        got = parse_json_output(prediction)
    except ValueError:
        return 0.0
    actual = _flatten(got) if isinstance(got, dict) else {}
    right = sum(1 for key, value in expected.items() if key in actual and actual[key] == value)
    return right / len(expected)


GENERATION_METRICS: dict[str, Callable[[str, EvalItem], float]] = {
    "exact_match": exact_match,
    "contains": contains,
    "token_f1": token_f1,
    "regex": regex_match,
    "json_valid": json_valid,
    "json_fields": json_fields,
}


def score_generation(item: EvalItem, prediction: str, metrics: Sequence[str]) -> ItemScore:
    """Score one generated answer on every configured metric."""
    return ItemScore(prediction, {m: GENERATION_METRICS[m](prediction, item) for m in metrics})


# --- repeated samples ------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of Chen et al. (2021): the chance that ``k`` of ``n`` samples, ``c`` of them
    right, drawn without replacement, hold at least one right one: ``1 - C(n-c, k) / C(n, k)``."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def reduce_samples(
    samples: Sequence[ItemScore], metrics: Sequence[str], reducers: Mapping[str, str], repeats: int
) -> ItemScore:
    """One item's score from its repeated samples, per metric by its reducer (``mean`` by default).

    ``majority`` scores the most frequent answer (normalised text; the first of
    tied answers wins); ``pass_at_k`` is :func:`pass_at_k` over the pass/fail
    scores.  The prediction kept is the most frequent answer.
    """
    if not samples:
        raise ValueError("no samples to reduce")
    counts = Counter(normalize_text(s.prediction) for s in samples)
    top = max(counts.values())
    majority = next(s for s in samples if counts[normalize_text(s.prediction)] == top)
    scores: dict[str, float] = {}
    for metric in metrics:
        reducer = reducers.get(metric, "mean")
        values = [float(s.scores[metric]) for s in samples]
        if reducer == "mean":
            scores[metric] = math.fsum(values) / len(values)
        elif reducer == "majority":
            scores[metric] = float(majority.scores[metric])
        else:
            k = repeats if reducer == "pass_at_k" else int(reducer.removeprefix("pass_at_"))
            scores[metric] = pass_at_k(len(values), sum(1 for v in values if v == 1.0), k)
    return ItemScore(majority.prediction, scores)
