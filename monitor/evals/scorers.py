"""Scorers: what turns one generated output into a score, found by name.

A metric entry of ``evalset.yaml`` names a scorer (``name:``).  Built-ins are
imported lazily from their module (``"judge": "monitor.evals.judge:make_judge"``);
any other name is looked up among the entry points of group ``monitor.scorers``
(as inspect_ai registers its scorers).  An entry point names either a factory
``(options, context) -> Scorer`` or a class whose constructor takes the options
as keyword arguments and whose one method is ``score(output, item) -> float``.

A scorer may also have ``score_batch(outputs, items)`` (a list of floats or
:class:`ScoreError`), ``settings()`` (folded into the eval set's settings digest,
so a changed scorer never pairs) and ``close()``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from monitor.backends.base import Backend

#: A :class:`monitor.evals.evalset.EvalItem` (not imported: the eval set builds its scorers through here).
EvalItem = Any

#: The entry point group custom scorers register under.
ENTRY_POINT_GROUP = "monitor.scorers"


class ScoreError(Exception):
    """One item gets no score on one metric; the reason is kept in ``ItemResult.metric_errors[key]``."""


@runtime_checkable
class Scorer(Protocol):
    """Scores one (filtered) output of one item; higher is better."""

    def score(self, output: str, item: EvalItem) -> float: ...


@dataclass(frozen=True)
class ScorerContext:
    """What a scorer factory may use beyond its options."""

    evalset_dir: Path
    #: A configured model name -> its loaded backend (the service layer supplies it; None at load).
    backend_for: Callable[[str], Backend] | None = None
    #: The configured model names (check-config checks a judge's model against them; empty: unchecked).
    models: Collection[str] = ()


#: ``options`` is the metric mapping minus name, key and filters.
ScorerFactory = Callable[[Mapping[str, Any], ScorerContext], Scorer]

#: Built-in scorers: name -> "module:factory", imported when first used.
BUILTIN_SCORERS: dict[str, str] = {
    "exact_match": "monitor.evals.text_metrics:make_exact_match",
    "contains": "monitor.evals.text_metrics:make_contains",
    "token_f1": "monitor.evals.text_metrics:make_token_f1",
    "regex": "monitor.evals.text_metrics:make_regex",
    "json_valid": "monitor.evals.text_metrics:make_json_valid",
    "json_fields": "monitor.evals.text_metrics:make_json_fields",
    "json_schema": "monitor.evals.text_metrics:make_json_schema",
    "rouge_l": "monitor.evals.text_metrics:make_rouge_l",
    "chrf": "monitor.evals.text_metrics:make_chrf",
    "bleu": "monitor.evals.text_metrics:make_bleu",
    "embedding_similarity": "monitor.evals.text_metrics:make_embedding_similarity",
    "judge": "monitor.evals.judge:make_judge",
}


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def known_scorers() -> list[str]:
    """Every scorer name that resolves: the built-ins and the installed entry points."""
    return sorted(set(BUILTIN_SCORERS) | set(_entry_points()))


def resolve_scorer(name: str) -> ScorerFactory:
    """The factory of scorer ``name``.

    Raises:
        ValueError: ``name: ...`` for an unknown scorer (listing the known ones) or one that does not import.
    """
    target = BUILTIN_SCORERS.get(name)
    if target is not None:
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"name: scorer {name!r} is not available here ({module_name}: {exc})") from exc
        obj = getattr(module, attr, None)
        if obj is None:
            raise ValueError(f"name: scorer {name!r} is not available here ({target} is missing)")
        return _as_factory(name, obj)
    ep = _entry_points().get(name)
    if ep is None:
        raise ValueError(f"name: unknown scorer {name!r}; known scorers: {', '.join(known_scorers())}")
    try:
        obj = ep.load()
    except Exception as exc:
        raise ValueError(
            f"name: scorer {name!r} (entry point {ep.value}) does not load: {type(exc).__name__}: {exc}"
        ) from exc
    return _as_factory(name, obj)


def _as_factory(name: str, obj: Any) -> ScorerFactory:
    if inspect.isclass(obj):
        cls = obj

        def from_class(options: Mapping[str, Any], context: ScorerContext) -> Scorer:
            try:
                scorer = cls(**dict(options))
            except TypeError as exc:
                raise ValueError(f"{name}: bad options {sorted(options)}: {exc}") from exc
            return scorer  # type: ignore[no-any-return,return-value]

        return from_class
    if not callable(obj):
        raise ValueError(f"name: scorer {name!r} is neither a factory nor a scorer class")
    return obj  # type: ignore[no-any-return]


def make_scorer(name: str, options: Mapping[str, Any], context: ScorerContext) -> Scorer:
    """Build scorer ``name`` with its options.

    Raises:
        ValueError: ``field: message`` for an unknown scorer or a bad option.
    """
    scorer = resolve_scorer(name)(options, context)
    if not callable(getattr(scorer, "score", None)):
        raise ValueError(f"name: scorer {name!r} has no score(output, item) method")
    return scorer


def scorer_settings(scorer: Scorer) -> dict[str, Any]:
    """A scorer's own settings (its optional ``settings()``), JSON-ready; {} when it has none."""
    settings = getattr(scorer, "settings", None)
    if settings is None:
        return {}
    return dict(settings())


def score_many(scorer: Scorer, outputs: Sequence[str], items: Sequence[EvalItem]) -> list[float | ScoreError]:
    """Score several outputs: through ``score_batch`` when the scorer has it, else one by one.

    A :class:`ScoreError` (or ``ValueError``) of one item becomes that item's entry.
    """
    batch = getattr(scorer, "score_batch", None)
    if batch is not None and outputs:
        results = list(batch(outputs, items))
        if len(results) != len(outputs):
            raise ScoreError(f"score_batch gave {len(results)} scores for {len(outputs)} outputs")
        return results
    out: list[float | ScoreError] = []
    for output, item in zip(outputs, items, strict=True):
        try:
            value = scorer.score(output, item)
            out.append(value if isinstance(value, float) else float(value))  # a float keeps its reason
        except ScoreError as exc:
            out.append(exc)
    return out


def close_scorer(scorer: Scorer) -> None:
    """Call the scorer's optional ``close()``."""
    close = getattr(scorer, "close", None)
    if close is not None:
        close()


def check_options(name: str, options: Mapping[str, Any], allowed: Collection[str]) -> None:
    """Refuse options a built-in scorer does not know (``option: unknown option of NAME``)."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        choices = f" ({', '.join(sorted(allowed))})" if allowed else " (it takes none)"
        raise ValueError(f"{unknown[0]}: unknown option of {name}{choices}")
