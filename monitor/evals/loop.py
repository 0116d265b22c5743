"""The runner: one model on one eval set under one prompt strategy becomes one run.

Items go to the backend in chunks; each chunk's results are handed to a sink
(the store commits them) before the next starts, so an interrupted run loses at
most one chunk and a resumed run skips what is stored.  A chunk that fails is
retried item by item, and an item that still fails is kept with its reason:
it is never scored as wrong.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from monitor.backends.base import (
    GREEDY,
    Backend,
    ChatBackend,
    ChatTemplate,
    GenerationRequest,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    ProgressCallback,
    Sampling,
    fold_system,
)
from monitor.errors import EndpointAuthError, EvalSetError, reason_of
from monitor.evals.evalset import SPEC_FILE, EvalItem, EvalSet, GenerationSpec, strategy_name
from monitor.evals.filters import apply_filters
from monitor.evals.results import ItemResult
from monitor.evals.scorers import ScoreError, Scorer, ScorerContext, close_scorer, score_many
from monitor.evals.scoring import (
    ItemScore,
    MetricValue,
    aggregate,
    reduce_samples,
    score_multiple_choice,
    score_picked_choice,
)

#: Items handed to the backend (and committed) at a time.
DEFAULT_CHUNK_SIZE = 64
#: A run with a larger share of failed items is marked failed.
DEFAULT_MAX_ERROR_RATE = 0.1

ChunkSink = Callable[[list[ItemResult]], None]


@dataclass
class EvalOutcome:
    """What evaluating a model on an eval set produced."""

    results: list[ItemResult] = field(default_factory=list)
    eval_s: float = 0.0

    @property
    def failed(self) -> int:
        return sum(1 for r in self.results if r.error)

    @property
    def prompt_tokens(self) -> int:
        return sum(r.prompt_tokens for r in self.results)

    @property
    def completion_tokens(self) -> int:
        return sum(r.completion_tokens for r in self.results)


def evaluate(
    backend: Backend,
    evalset: EvalSet,
    *,
    fewshot_k: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    skip: Collection[str] = (),
    sink: ChunkSink | None = None,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    scorer_context: ScorerContext | None = None,
) -> EvalOutcome:
    """Evaluate every item of ``evalset`` (except ``skip``) with ``backend``.

    ``sink`` receives each chunk's results once they are scored; ``should_stop``
    is checked between chunks so that a shutdown stops after a committed chunk.
    The generation metrics' scorers are built with ``scorer_context`` (default: the
    eval set's folder, no backends) and closed at the end.
    """
    evalset.render_fewshot_prefix(fewshot_k)  # fail early on an impossible strategy
    chat = chat_setup(backend, evalset)
    scorers = evalset.scorers(scorer_context)
    try:
        return _evaluate(
            backend, evalset, fewshot_k, chunk_size, skip, sink, progress, should_stop, chat, scorers
        )
    finally:
        if scorer_context is not None:
            for scorer in scorers.values():
                close_scorer(scorer)


def _evaluate(
    backend: Backend,
    evalset: EvalSet,
    fewshot_k: int,
    chunk_size: int,
    skip: Collection[str],
    sink: ChunkSink | None,
    progress: ProgressCallback | None,
    should_stop: Callable[[], bool] | None,
    chat: ChatTemplate | None,
    scorers: Mapping[str, Scorer],
) -> EvalOutcome:
    todo = [item for item in evalset.items if item.id not in skip]
    chunks = [todo[start : start + chunk_size] for start in range(0, len(todo), max(1, chunk_size))]
    outcome = EvalOutcome()
    started = time.perf_counter()
    overlap = max(1, int(getattr(backend, "overlapping_calls", 1)))
    if overlap == 1:
        for chunk in chunks:
            if should_stop is not None and should_stop():
                break
            results = _evaluate_chunk(backend, evalset, chunk, fewshot_k, progress, chat, scorers)
            if sink is not None:
                sink(results)
            outcome.results.extend(results)
    else:
        _evaluate_overlapped(
            backend, evalset, chunks, fewshot_k, overlap, outcome, sink, progress, should_stop, chat, scorers
        )
    outcome.eval_s = time.perf_counter() - started
    return outcome


def _evaluate_overlapped(
    backend: Backend,
    evalset: EvalSet,
    chunks: list[list[EvalItem]],
    fewshot_k: int,
    overlap: int,
    outcome: EvalOutcome,
    sink: ChunkSink | None,
    progress: ProgressCallback | None,
    should_stop: Callable[[], bool] | None,
    chat: ChatTemplate | None,
    scorers: Mapping[str, Scorer],
) -> None:
    """Chunks in flight ``overlap`` at a time (a remote backend), committed in order as each finishes.

    A remote backend bounds its requests in flight across calls, so handing over the next chunk
    before the last one's stragglers are answered keeps every slot busy; a stop waits for the
    chunks in flight, which are committed too.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    pending: deque[Future[list[ItemResult]]] = deque()
    queue = iter(chunks)
    with ThreadPoolExecutor(max_workers=overlap, thread_name_prefix="monitor-chunk") as pool:

        def submit() -> bool:
            if should_stop is not None and should_stop():
                return False
            chunk = next(queue, None)
            if chunk is None:
                return False
            pending.append(
                pool.submit(_evaluate_chunk, backend, evalset, chunk, fewshot_k, progress, chat, scorers)
            )
            return True

        while len(pending) < overlap and submit():
            pass
        while pending:
            results = pending.popleft().result()
            if sink is not None:
                sink(results)
            outcome.results.extend(results)
            submit()


def _evaluate_chunk(
    backend: Backend,
    evalset: EvalSet,
    chunk: Sequence[EvalItem],
    fewshot_k: int,
    progress: ProgressCallback | None,
    chat: ChatTemplate | None = None,
    scorers: Mapping[str, Scorer] | None = None,
) -> list[ItemResult]:
    try:
        return _score_chunk(backend, evalset, chunk, fewshot_k, progress, chat, scorers)
    except EndpointAuthError:
        raise  # a refused key refuses every item: asking again one by one only costs calls
    except Exception as exc:
        if len(chunk) == 1:
            return [_failed(chunk[0], exc)]
    # One bad item must not sink its neighbours: retry one by one and keep each failure's reason.
    results = []
    for item in chunk:
        try:
            results.extend(_score_chunk(backend, evalset, [item], fewshot_k, None, chat, scorers))
        except EndpointAuthError:
            raise
        except Exception as exc:
            results.append(_failed(item, exc))
        if progress is not None:
            progress(1)
    return results


def _failed(item: EvalItem, exc: BaseException) -> ItemResult:
    return _failed_reason(item, reason_of(exc))


def _failed_reason(item: EvalItem, reason: str) -> ItemResult:
    return ItemResult(item_id=item.id, prediction=None, target=item.target, error=reason[:2000])


@dataclass(frozen=True)
class RenderedPrompt:
    """What one item is sent as: the exact text (None when a server renders it unseen) and the messages."""

    text: str | None
    messages: tuple[tuple[str, str], ...] = ()


def chat_setup(backend: Backend, evalset: EvalSet) -> ChatTemplate | None:
    """The chat template a ``format: chat`` eval set is rendered with (None for a text eval set).

    Raises:
        EvalSetError: the eval set is ``format: chat`` and the model has no chat template.
    """
    if not evalset.is_chat:
        return None
    template = backend.chat_template() if isinstance(backend, ChatBackend) else None
    if template is None:
        raise EvalSetError(
            f"format: chat, but the model has no chat template ({_model_name(backend)}): give the "
            "tokenizer a chat_template, or use format: text",
            str(evalset.path / SPEC_FILE),
        )
    return template


def chat_settings(backend: Backend, evalset: EvalSet) -> dict[str, Any]:
    """What a chat eval set adds to a run's settings once the model is loaded (empty for text).

    ``chat_template_sha256`` goes into the settings digest too
    (``evalset.settings_digest(k, chat_template_sha256=...)``), so a run under
    another template is never paired with one under the old.
    """
    template = chat_setup(backend, evalset)
    if template is None:
        return {}
    return {
        "chat_template_sha256": template.sha256,
        "chat_template_source": template.source,
        "system_prompt": "system message" if template.system_role else "folded into the first user turn",
    }


def render_item(
    backend: Backend,
    evalset: EvalSet,
    item: EvalItem,
    fewshot_k: int,
    chat: ChatTemplate | None,
    *,
    need_text: bool = True,
) -> RenderedPrompt:
    """The prompt of one item exactly as the model gets it.

    A server that applies its template itself gets the messages; their text is
    only asked of it when ``need_text`` (multiple choice scores continuations of it).
    """
    if chat is None:
        return RenderedPrompt(evalset.render_context(item, fewshot_k))
    messages = evalset.render_messages(item, fewshot_k)
    if not chat.system_role:
        messages = fold_system(messages)
    if chat.source == "server" and not need_text:
        return RenderedPrompt(None, messages)
    assert isinstance(backend, ChatBackend)  # chat_setup checked it
    return RenderedPrompt(backend.render_chat(messages), messages)


def _model_name(backend: Backend) -> str:
    facts = backend.describe()
    return str(facts.get("base") or facts.get("model") or "this model")


def _score_chunk(
    backend: Backend,
    evalset: EvalSet,
    chunk: Sequence[EvalItem],
    fewshot_k: int,
    progress: ProgressCallback | None,
    chat: ChatTemplate | None = None,
    scorers: Mapping[str, Scorer] | None = None,
) -> list[ItemResult]:
    draws = evalset.fewshot_draws(fewshot_k)
    if draws > 1:
        seeds = evalset.draw_seeds(fewshot_k)
        per_draw = [
            _score_chunk(backend, evalset.for_draw(d), chunk, fewshot_k, None, chat, scorers)
            for d in range(draws)
        ]
        if progress is not None:
            progress(len(chunk))
        return [merge_draws(list(results), seeds, evalset.metrics) for results in zip(*per_draw, strict=True)]
    metrics = evalset.metrics
    need_text = evalset.task == "multiple_choice"
    prompts = [render_item(backend, evalset, item, fewshot_k, chat, need_text=need_text) for item in chunk]
    results: list[ItemResult] = []
    if evalset.task == "multiple_choice":
        requests = [
            LoglikelihoodRequest(
                p.text or "",
                evalset.continuations(item),
                exact_boundary=chat is not None,
                messages=p.messages,
            )
            for item, p in zip(chunk, prompts, strict=True)
        ]
        answers = backend.loglikelihood(requests, progress=progress)
        for item, p, answer in zip(chunk, prompts, answers, strict=True):
            results.append(_multiple_choice_result(item, p, answer, metrics))
        return results
    decoding = evalset.spec.decoding
    repeats = decoding.repeats
    gen_requests = [
        GenerationRequest(
            p.text or "",
            decoding.max_new_tokens or evalset.spec.max_new_tokens,
            tuple(decoding.stop or ()),
            _sampling(decoding, r),
            p.messages if chat is not None else (),
        )
        for p in prompts
        for r in range(repeats)
    ]
    outs = backend.generate(gen_requests, progress=progress if repeats == 1 else None)
    if repeats > 1 and progress is not None:
        progress(len(chunk))
    if scorers is None:
        scorers = evalset.scorers()
    ok = [
        index
        for index in range(len(chunk))
        if all(out.error is None for out in outs[index * repeats : (index + 1) * repeats])
    ]
    graded = score_outputs(
        evalset,
        scorers,
        [chunk[index] for index in ok for _ in range(repeats)],
        [out.text for index in ok for out in outs[index * repeats : (index + 1) * repeats]],
    )
    by_item = {index: graded[n * repeats : (n + 1) * repeats] for n, index in enumerate(ok)}
    for index, (item, p) in enumerate(zip(chunk, prompts, strict=True)):
        samples = outs[index * repeats : (index + 1) * repeats]
        failed = next((out for out in samples if out.error is not None), None)
        if failed is not None:
            results.append(_failed_reason(item, failed.error or ""))
            continue
        scored = by_item[index]
        if repeats == 1:
            reduced, filtered, errors = scored[0]
        else:
            reduced, filtered, errors = _reduce(scored, metrics, decoding.reduce, repeats)
        first = reduced.scores.get(metrics[0])
        results.append(
            ItemResult(
                item_id=item.id,
                prediction=reduced.prediction,
                target=item.target,
                correct=bool(reduced.scores["exact_match"]) if "exact_match" in reduced.scores else None,
                score=first,
                scores=reduced.scores,
                prompt_tokens=sum(out.prompt_tokens for out in samples),
                completion_tokens=sum(out.completion_tokens for out in samples),
                prompt=p.text,
                messages=_message_dicts(p.messages),
                samples=[
                    {
                        "prediction": out.text,
                        "scores": s.scores,
                        "completion_tokens": out.completion_tokens,
                        **({"filtered": f} if f else {}),
                        **({"metric_errors": e} if e else {}),
                    }
                    for out, (s, f, e) in zip(samples, scored, strict=True)
                ]
                if repeats > 1
                else None,
                filtered=filtered or None,
                metric_errors=errors or None,
            )
        )
    return results


def merge_draws(draws: Sequence[ItemResult], seeds: Sequence[int], metrics: Sequence[str]) -> ItemResult:
    """One item's result over several draws of its few-shot examples (``fewshot.draws``).

    Each metric's score is the mean over the draws (a metric unscored in any draw is
    unscored, with that draw's reason); ``correct`` is whether the item is right under
    most draws; the prediction, prompt and log-likelihoods are draw 0's; the tokens are
    every draw's; ``draws`` keeps each draw's seed, prediction, scores and tokens.  An
    item that failed under any draw failed, with that draw's reason.
    """
    for seed, result in zip(seeds, draws, strict=True):
        if result.error:
            return replace(result, error=f"few-shot draw with seed {seed}: {result.error}"[:2000])
    first = draws[0]
    complete = [m for m in metrics if all(m in (r.scores or {}) for r in draws)]
    scores = {m: sum((r.scores or {})[m] for r in draws) / len(draws) for m in complete}
    errors = {m: e for m, e in (first.metric_errors or {}).items() if m in scores}
    for metric in metrics:
        if metric not in scores:
            reason = next(
                ((r.metric_errors or {}).get(metric) for r in draws if metric not in (r.scores or {})), None
            )
            if reason:
                errors[metric] = reason
    score = scores.get(metrics[0]) if metrics else None
    return replace(
        first,
        score=score,
        scores=scores,
        correct=None if first.correct is None or score is None else score >= 0.5,
        prompt_tokens=sum(r.prompt_tokens for r in draws),
        completion_tokens=sum(r.completion_tokens for r in draws),
        metric_errors=errors or None,
        draws=[
            {
                "seed": seed,
                "prediction": r.prediction,
                "scores": r.scores or {},
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                **({"filtered": r.filtered} if r.filtered else {}),
                **({"samples": r.samples} if r.samples else {}),
            }
            for seed, r in zip(seeds, draws, strict=True)
        ],
    )


#: One output's grading: its score per metric key, its filtered output per key (where the filters
#: changed it) and why a metric has no score (or, beside a 0, why it is 0).
Graded = tuple[ItemScore, dict[str, str], dict[str, str]]


def score_outputs(
    evalset: EvalSet, scorers: Mapping[str, Scorer], items: Sequence[EvalItem], outputs: Sequence[str]
) -> list[Graded]:
    """Grade each output of its item on every generation metric: its filters, then its scorer
    (``score_batch`` when the scorer has one).  A :class:`ScoreError` leaves the metric unscored
    for that output, its reason kept; a scorer's other exception fails the chunk (retried item by item)."""
    graded: list[Graded] = [(ItemScore(out, {}), {}, {}) for out in outputs]
    for metric in evalset.metric_specs:
        scorer = scorers[metric.key]
        filtered = [apply_filters(metric.filters, out) for out in outputs]
        for (score, kept, errors), raw, text, value in zip(
            graded, outputs, filtered, score_many(scorer, filtered, items), strict=True
        ):
            if text != raw:
                kept[metric.key] = text
            if isinstance(value, ScoreError):
                errors[metric.key] = (str(value) or type(value).__name__)[:2000]
                continue
            score.scores[metric.key] = float(value)
            reason = getattr(value, "reason", None)
            if reason:
                errors[metric.key] = str(reason)[:2000]
    return graded


def _reduce(
    scored: Sequence[Graded], metrics: Sequence[str], reducers: Mapping[str, str], repeats: int
) -> Graded:
    """Reduce repeated samples: a metric is reduced over the samples only when every sample has a score
    on it; else the item has none, with the first sample's reason."""
    complete = [m for m in metrics if all(m in s.scores for s, _, _ in scored)]
    reduced = reduce_samples(
        [s for s, _, _ in scored], complete, {m: r for m, r in reducers.items() if m in complete}, repeats
    )
    chosen = next((g for g in scored if g[0].prediction == reduced.prediction), scored[0])
    errors = {m: e for m, e in chosen[2].items() if m in reduced.scores}
    for metric in metrics:
        if metric not in complete:
            errors[metric] = next(e[metric] for _, _, e in scored if metric in e)
    return reduced, dict(chosen[1]), errors


def _sampling(decoding: GenerationSpec, repeat: int) -> Sampling:
    """The sampling of one repeat: the eval set's settings, the seed moved on by the repeat's number."""
    if decoding.greedy:
        return GREEDY
    seed = decoding.seed + repeat if decoding.seed is not None else None
    return Sampling(decoding.temperature, decoding.top_p, decoding.top_k, seed)


def _message_dicts(messages: Sequence[tuple[str, str]]) -> list[dict[str, str]] | None:
    return [{"role": role, "content": content} for role, content in messages] or None


def _multiple_choice_result(
    item: EvalItem, p: RenderedPrompt, answer: LoglikelihoodResult, metrics: Sequence[str]
) -> ItemResult:
    if answer.error is not None:
        return _failed_reason(item, answer.error)
    if answer.generated is not None:  # picked by generation: no log-likelihoods to keep
        chosen = next((i for i, ll in enumerate(answer.loglikelihoods) if ll > -math.inf), None)
        picked = score_picked_choice(item, chosen, answer.generated, metrics)
        return ItemResult(
            item_id=item.id,
            prediction=picked.prediction,
            target=item.target,
            correct=bool(picked.scores[metrics[0]]),
            score=picked.scores[metrics[0]],
            scores=picked.scores,
            prompt_tokens=answer.context_tokens,
            completion_tokens=answer.completion_tokens,
            prompt=p.text,
            messages=_message_dicts(p.messages),
        )
    scored = score_multiple_choice(item, answer.loglikelihoods, metrics)
    first = scored.scores[metrics[0]]
    return ItemResult(
        item_id=item.id,
        prediction=scored.prediction,
        target=item.target,
        correct=bool(first),
        score=first,
        scores=scored.scores,
        loglikelihoods=list(answer.loglikelihoods),
        prompt_tokens=answer.context_tokens,
        prompt=p.text,
        messages=_message_dicts(p.messages),
    )


def summarize(results: Sequence[ItemResult], metrics: Sequence[str]) -> dict[str, MetricValue]:
    """Aggregate the scored (non-failed) results into metrics with standard errors."""
    return aggregate((r.scores or {} for r in results if not r.error), metrics)


def run_verdict(
    total: int, failed: int, max_error_rate: float, first_error: str | None
) -> tuple[str, str | None]:
    """The final status of a finished run and, when failed, why."""
    if total == 0:
        return "failed", "no items were evaluated"
    share = failed / total
    if failed and share > max_error_rate:
        return "failed", (
            f"{failed} of {total} items failed ({share:.1%} > {max_error_rate:.0%}); first error: {first_error}"
        )
    return "succeeded", None


def describe_strategy(k: int) -> dict[str, Any]:
    return {"strategy": strategy_name(k), "fewshot_k": k}
