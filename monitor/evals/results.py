"""Per-item results as the runner hands them to the store (plain data: no SQLAlchemy here), and the results JSONL."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from monitor._version import __version__

if TYPE_CHECKING:
    from monitor.backends.base import ModelFingerprint
    from monitor.evals.evalset import EvalSet


@dataclass(frozen=True)
class ItemResult:
    """One item's outcome, as the runner hands it to the store."""

    item_id: str
    prediction: str | None
    target: Any
    correct: bool | None = None
    score: float | None = None
    scores: dict[str, float] | None = None
    loglikelihoods: list[float] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    #: The exact prompt text the model was given (after any chat template); None when a server
    #: rendered it unseen (then ``messages`` holds what was sent).
    prompt: str | None = None
    #: The conversation sent (``format: chat``), as ``{role, content}`` objects.
    messages: list[dict[str, str]] | None = None
    #: Every sample of a repeated generation (``generation.repeats``): prediction, scores, tokens.
    samples: list[dict[str, Any]] | None = None
    #: Per metric, the output after that metric's filters (``filters:``), where they changed it.
    filtered: dict[str, str] | None = None
    #: Per metric, why the item has no score on it (a JSON Schema path, an unparseable judge answer).
    metric_errors: dict[str, str] | None = None
    #: Each draw of the few-shot examples (``fewshot.draws``): seed, prediction, scores, tokens.
    draws: list[dict[str, Any]] | None = None


#: Version of the summary ``monitor eval --json`` prints (one JSON object).
SUMMARY_FORMAT_VERSION = 1
#: Version of the results JSONL that ``monitor eval --output`` writes (one JSON object per line).
RESULTS_FORMAT_VERSION = 1


class EvalTotals(Protocol):
    """What a summary reads of an evaluation (:class:`monitor.evals.loop.EvalOutcome` has it)."""

    @property
    def results(self) -> Sequence[ItemResult]: ...
    @property
    def eval_s(self) -> float: ...
    @property
    def failed(self) -> int: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...


def eval_summary(
    *,
    base: str,
    adapter: str | None,
    fingerprint: ModelFingerprint,
    evalset: EvalSet,
    strategy: str,
    fewshot_k: int,
    metrics: dict[str, Any],
    outcome: EvalTotals,
    load_s: float,
    total_s: float,
    backend: dict[str, Any],
) -> dict[str, Any]:
    """The summary of one evaluation as ``monitor eval --json`` prints it (``metrics``: name -> dict)."""
    return {
        "format_version": SUMMARY_FORMAT_VERSION,
        "monitor_version": __version__,
        "model": {
            "base": base,
            "adapter": adapter,
            "fingerprint": fingerprint.digest,
            "files": fingerprint.files,
        },
        "evalset": {
            "name": evalset.name,
            "version": evalset.version,
            "path": str(evalset.path),
            "task": evalset.task,
            "items": len(evalset.items),
        },
        "strategy": strategy,
        "fewshot_k": fewshot_k,
        "metrics": metrics,
        "items_failed": outcome.failed,
        "tokens": {"prompt": outcome.prompt_tokens, "completion": outcome.completion_tokens},
        "timings": {
            "load_s": round(load_s, 4),
            "eval_s": round(outcome.eval_s, 4),
            "total_s": round(total_s, 4),
            "items_per_s": round(len(outcome.results) / outcome.eval_s, 2) if outcome.eval_s else None,
        },
        "backend": backend,
    }


def result_line(result: ItemResult, task: str) -> dict[str, Any]:
    """One item's line of the results JSONL (NaN left as is: the writer turns it into null).

    ``prompt`` is the exact text the model was given (after the chat template),
    ``messages`` the conversation sent (``format: chat``), ``samples`` every
    sample of a repeated generation; each only when there is one.
    """
    line: dict[str, Any] = {
        "format_version": RESULTS_FORMAT_VERSION,
        "id": result.item_id,
        "prediction": result.prediction,
        "target": result.target,
    }
    if task == "multiple_choice":
        line["correct"] = result.correct
        line["loglikelihoods"] = result.loglikelihoods
    else:
        line["score"] = result.score
        line["scores"] = result.scores
    if result.prompt is not None:
        line["prompt"] = result.prompt
    if result.messages is not None:
        line["messages"] = result.messages
    if result.samples is not None:
        line["samples"] = result.samples
    details = item_details(result)
    for key in ("filtered", "metric_errors", "draws"):
        if key in details:
            line[key] = details[key]
    if result.error:
        line["error"] = result.error
    return line


#: The ItemResult fields kept, besides the scores, as an item's details (the JSONL and the store).
DETAIL_FIELDS = ("prompt", "messages", "samples", "filtered", "metric_errors", "draws")


def item_details(result: ItemResult) -> dict[str, Any]:
    """What one item's result carries besides its scores: the prompt, the conversation sent,
    every sample, the filtered outputs and per-metric errors (each only when there is one)."""
    return {key: value for key in DETAIL_FIELDS if (value := getattr(result, key)) is not None}


def draw_spread(
    details: Iterable[Mapping[str, Any]], metrics: Sequence[str], seeds: Sequence[int]
) -> dict[str, Any]:
    """How much a run's score depends on the few-shot examples drawn (``fewshot.draws``).

    ``details``: each scored item's details (their ``draws``).  Per metric: the score of
    each draw (the mean over the items scored under every draw), their mean, standard
    deviation (n - 1), lowest and highest.
    """
    per_draw: dict[str, list[list[float]]] = {m: [[] for _ in seeds] for m in metrics}
    for entry in details:
        draws = entry.get("draws")
        if not isinstance(draws, list) or len(draws) != len(seeds):
            continue
        for metric in metrics:
            values = [d.get("scores", {}).get(metric) for d in draws]
            if all(isinstance(v, int | float) and not math.isnan(v) for v in values):
                for column, value in zip(per_draw[metric], values, strict=True):
                    column.append(float(value))
    out: dict[str, Any] = {"seeds": list(seeds), "metrics": {}}
    for metric, columns in per_draw.items():
        if not columns or not columns[0]:
            continue
        scores = [sum(column) / len(column) for column in columns]
        mean = statistics.fmean(scores)
        sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
        out["metrics"][metric] = {
            "scores": scores,
            "mean": mean,
            "sd": sd,
            "min": min(scores),
            "max": max(scores),
            "n": len(columns[0]),
        }
    return out


def write_results(path: Path, task: str, results: Sequence[ItemResult]) -> None:
    """Write the results JSONL to ``path`` atomically (through a temporary file next to it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for result in results:
            fh.write(json.dumps(_nan_to_none(result_line(result, task)), ensure_ascii=False) + "\n")
    tmp.replace(path)


def _nan_to_none(value: Any) -> Any:
    """NaN is not JSON: null instead, everywhere."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    return value
