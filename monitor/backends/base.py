"""The backend interface: what the evaluation loop needs from a model, whatever serves it.

A backend answers two kinds of request, in batches, and describes the model it
serves.  Backends are registered by name in :mod:`monitor.backends.registry` so
that configuration can refer to them as strings (``hf``, ``openai``).
:class:`ModelSpec` says which model to load and how; it is hashable, so the
service's model pool uses it as a key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

#: Called with the number of requests completed since the last call.
ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """Score every continuation of one context, as lm-evaluation-harness does.

    ``continuations`` already carry the eval set's target delimiter
    (``" " + choice`` by default).
    """

    context: str
    continuations: tuple[str, ...]


@dataclass(frozen=True)
class LoglikelihoodResult:
    """Summed log-probabilities, one per continuation, in request order."""

    loglikelihoods: tuple[float, ...]
    #: Whether each continuation is the greedy (argmax) continuation, token by token.
    is_greedy: tuple[bool, ...]
    #: Tokens of the context as the model sees it (cost accounting).
    context_tokens: int
    #: Tokens of each continuation.
    continuation_tokens: tuple[int, ...]
    #: Why the backend could not answer this request (after its own retries): the item is
    #: stored as failed with this reason, never scored as wrong.
    error: str | None = None
    #: The answer text when the choice was picked by generation instead of scored (the
    #: ``openai`` backend's ``mc_method: generate``): ``loglikelihoods`` are then 0.0 for the
    #: matched choice and -inf for the others, all -inf when the answer matched none.
    generated: str | None = None
    #: Tokens generated to pick the answer (``mc_method: generate``); 0 when the choices are scored.
    completion_tokens: int = 0


@dataclass(frozen=True)
class GenerationRequest:
    """Greedy decoding of ``prompt`` until a stop sequence or ``max_new_tokens``."""

    prompt: str
    max_new_tokens: int
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerationResult:
    """The decoded text (cut before the first stop sequence) and token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    #: Why the backend could not answer this request (after its own retries).
    error: str | None = None


@dataclass(frozen=True)
class ModelFingerprint:
    """Content hashes that identify exactly which weights produced a run."""

    digest: str
    base: str
    adapter: str | None = None
    files: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """A loaded model that can score and generate."""

    def loglikelihood(
        self,
        requests: Sequence[LoglikelihoodRequest],
        *,
        progress: ProgressCallback | None = None,
    ) -> list[LoglikelihoodResult]:
        """Score the continuations of every request."""
        ...

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        progress: ProgressCallback | None = None,
    ) -> list[GenerationResult]:
        """Decode every request greedily."""
        ...

    def count_tokens(self, text: str) -> int:
        """The number of tokens ``text`` costs under this model's tokenizer."""
        ...

    def fingerprint(self) -> ModelFingerprint:
        """Content hashes of the weights and adapter being served."""
        ...

    def describe(self) -> dict[str, Any]:
        """Facts worth recording with a run: device, dtype, library versions."""
        ...

    def close(self) -> None:
        """Release memory held by the model."""
        ...


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` before the earliest stop sequence (the whole text when none occurs)."""
    cut = len(text)
    for stop in stops:
        if stop and (found := text.find(stop)) >= 0:
            cut = min(cut, found)
    return text[:cut]


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (or its type), for one-line error reports."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:limit]


@dataclass(frozen=True)
class EndpointSpec:
    """How to reach a model behind an OpenAI-compatible server (the ``openai`` backend).

    Holds the *name* of the API key's environment variable, never the key.
    """

    base_url: str
    api_key_env: str | None = None
    api: str = "completions"
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float = 60.0
    max_concurrency: int = 8
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_retries: int = 5
    mc_method: str = "auto"


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to load one model: where its weights are and how to run it.

    For the ``openai`` backend ``base`` is the served model name and ``endpoint`` says where.
    """

    backend: str
    base: str
    adapter: str | None = None
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_tokens: int | None = None
    endpoint: EndpointSpec | None = None
