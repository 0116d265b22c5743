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
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from monitor.backends.base import Backend, GenerationRequest, LoglikelihoodRequest, ProgressCallback
from monitor.errors import EndpointAuthError
from monitor.evals.evalset import EvalItem, EvalSet, strategy_name
from monitor.evals.results import ItemResult
from monitor.evals.scoring import (
    MetricValue,
    aggregate,
    score_generation,
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
) -> EvalOutcome:
    """Evaluate every item of ``evalset`` (except ``skip``) with ``backend``.

    ``sink`` receives each chunk's results once they are scored; ``should_stop``
    is checked between chunks so that a shutdown stops after a committed chunk.
    """
    evalset.render_fewshot_prefix(fewshot_k)  # fail early on an impossible strategy
    todo = [item for item in evalset.items if item.id not in skip]
    chunks = [todo[start : start + chunk_size] for start in range(0, len(todo), max(1, chunk_size))]
    outcome = EvalOutcome()
    started = time.perf_counter()
    overlap = max(1, int(getattr(backend, "overlapping_calls", 1)))
    if overlap == 1:
        for chunk in chunks:
            if should_stop is not None and should_stop():
                break
            results = _evaluate_chunk(backend, evalset, chunk, fewshot_k, progress)
            if sink is not None:
                sink(results)
            outcome.results.extend(results)
    else:
        _evaluate_overlapped(
            backend, evalset, chunks, fewshot_k, overlap, outcome, sink, progress, should_stop
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
            pending.append(pool.submit(_evaluate_chunk, backend, evalset, chunk, fewshot_k, progress))
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
) -> list[ItemResult]:
    try:
        return _score_chunk(backend, evalset, chunk, fewshot_k, progress)
    except EndpointAuthError:
        raise  # a refused key refuses every item: asking again one by one only costs calls
    except Exception as exc:
        if len(chunk) == 1:
            return [_failed(chunk[0], exc)]
    # One bad item must not sink its neighbours: retry one by one and keep each failure's reason.
    results = []
    for item in chunk:
        try:
            results.extend(_score_chunk(backend, evalset, [item], fewshot_k, None))
        except EndpointAuthError:
            raise
        except Exception as exc:
            results.append(_failed(item, exc))
        if progress is not None:
            progress(1)
    return results


def _failed(item: EvalItem, exc: BaseException) -> ItemResult:
    return _failed_reason(item, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def _failed_reason(item: EvalItem, reason: str) -> ItemResult:
    return ItemResult(item_id=item.id, prediction=None, target=item.target, error=reason[:2000])


def _score_chunk(
    backend: Backend,
    evalset: EvalSet,
    chunk: Sequence[EvalItem],
    fewshot_k: int,
    progress: ProgressCallback | None,
) -> list[ItemResult]:
    metrics = evalset.metrics
    contexts = [evalset.render_context(item, fewshot_k) for item in chunk]
    results = []
    if evalset.task == "multiple_choice":
        requests = [
            LoglikelihoodRequest(context, evalset.continuations(item))
            for context, item in zip(contexts, chunk, strict=True)
        ]
        for item, answer in zip(chunk, backend.loglikelihood(requests, progress=progress), strict=True):
            if answer.error is not None:
                results.append(_failed_reason(item, answer.error))
                continue
            if answer.generated is not None:  # picked by generation: no log-likelihoods to keep
                chosen = next((i for i, ll in enumerate(answer.loglikelihoods) if ll > -math.inf), None)
                picked = score_picked_choice(item, chosen, answer.generated, metrics)
                results.append(
                    ItemResult(
                        item_id=item.id,
                        prediction=picked.prediction,
                        target=item.target,
                        correct=bool(picked.scores[metrics[0]]),
                        score=picked.scores[metrics[0]],
                        scores=picked.scores,
                        prompt_tokens=answer.context_tokens,
                        completion_tokens=answer.completion_tokens,
                    )
                )
                continue
            scored = score_multiple_choice(item, answer.loglikelihoods, metrics)
            first = scored.scores[metrics[0]]
            results.append(
                ItemResult(
                    item_id=item.id,
                    prediction=scored.prediction,
                    target=item.target,
                    correct=bool(first),
                    score=first,
                    scores=scored.scores,
                    loglikelihoods=list(answer.loglikelihoods),
                    prompt_tokens=answer.context_tokens,
                )
            )
        return results
    spec = evalset.spec
    gen_requests = [GenerationRequest(context, spec.max_new_tokens, tuple(spec.stop)) for context in contexts]
    for item, out in zip(chunk, backend.generate(gen_requests, progress=progress), strict=True):
        if out.error is not None:
            results.append(_failed_reason(item, out.error))
            continue
        scored = score_generation(item, out.text, metrics)
        first = scored.scores[metrics[0]]
        results.append(
            ItemResult(
                item_id=item.id,
                prediction=out.text,
                target=item.target,
                correct=bool(scored.scores["exact_match"]) if "exact_match" in scored.scores else None,
                score=first,
                scores=scored.scores,
                prompt_tokens=out.prompt_tokens,
                completion_tokens=out.completion_tokens,
            )
        )
    return results


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
