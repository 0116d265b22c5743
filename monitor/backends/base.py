"""The backend interface: what the evaluation loop needs from a model, whatever serves it.

A backend answers two kinds of request, in batches, and describes the model it
serves.  Backends are registered by name in :mod:`monitor.backends.registry` so
that configuration can refer to them as strings (``hf``, ``openai``).
:class:`ModelSpec` says which model to load and how; it is hashable, so the
service's model pool uses it as a key.
"""

from __future__ import annotations

import hashlib
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
    #: The continuations start exactly where ``context`` ends (after a chat template's generation
    #: prompt): the context's trailing whitespace stays in the context instead of moving onto them.
    exact_boundary: bool = False
    #: The conversation ``context`` was rendered from (``format: chat``); ``context`` is empty
    #: when the backend's server renders it without showing the text.
    messages: tuple[tuple[str, str], ...] = ()


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
class Sampling:
    """How to pick each next token: greedy (the default), or sampled with a temperature.

    ``seed`` makes a sample reproducible: the ``hf`` backend draws each request's
    tokens from a generator of its own seeded with it, whatever else is in the batch.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


GREEDY = Sampling()


@dataclass(frozen=True)
class GenerationRequest:
    """Decoding of ``prompt`` until a stop sequence or ``max_new_tokens`` (greedy unless ``sampling`` says).

    ``messages`` (a chat eval set) is the conversation ``prompt`` was rendered
    from: a backend whose server applies the chat template itself (``openai``)
    sends the messages; one that renders in process has ``prompt`` already.
    """

    prompt: str
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    sampling: Sampling = GREEDY
    messages: tuple[tuple[str, str], ...] = ()


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
    """Content hashes that identify exactly which weights produced a run, and the stack around them.

    ``digest`` covers the weights only.  ``stack`` maps what else decides the
    answers (tokenizer files, special tokens, chat template, generation config;
    for a server what it says about itself) to digests or facts, and
    ``stack_digest`` hashes it: "stack changed" is told apart from "weights changed".
    """

    digest: str
    base: str
    adapter: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    stack: dict[str, str] = field(default_factory=dict)

    @property
    def stack_digest(self) -> str | None:
        """``sha256:<hex>`` over the stack's entries; None when nothing is known of the stack."""
        if not self.stack:
            return None
        digest = hashlib.sha256()
        for name, value in sorted(self.stack.items()):
            digest.update(f"{name} {value}\n".encode())
        return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class ChatTemplate:
    """What a backend knows of the chat template it renders conversations with.

    ``sha256`` hashes a fixed probe conversation rendered through the template
    (system, user, assistant, user and the generation prompt), so two backends
    with the same template and special tokens agree, and any change that alters
    what the model sees changes it.  ``system_role`` is False for a template
    that refuses or drops a system message: the runner then folds the system
    prompt into the first user turn.
    """

    sha256: str
    system_role: bool
    #: Where the template lives: ``tokenizer`` (in process) or ``server``.
    source: str


@runtime_checkable
class ChatBackend(Protocol):
    """A backend that can render conversations through a chat template (``format: chat``)."""

    def chat_template(self) -> ChatTemplate | None:
        """The template conversations are rendered with; None when the model has none."""
        ...

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str | None:
        """``messages`` as the model sees them, ending with the assistant's generation prompt.

        None when the text cannot be known here (a server that applies its template
        without exposing it).
        """
        ...


#: The conversation rendered to hash a chat template (see :class:`ChatTemplate`).
PROBE_CONVERSATION = (
    ("system", "probe system prompt"),
    ("user", "probe question one"),
    ("assistant", "probe answer one"),
    ("user", "probe question two"),
)


def template_digest(rendered: str) -> str:
    """``sha256:<hex>`` of a rendered probe conversation."""
    return "sha256:" + hashlib.sha256(rendered.encode()).hexdigest()


def fold_system(messages: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """A conversation without a system message: its text starts the first user turn instead."""
    if not messages or messages[0][0] != "system":
        return tuple(messages)
    system, rest = messages[0][1], list(messages[1:])
    for i, (role, content) in enumerate(rest):
        if role == "user":
            rest[i] = ("user", f"{system}\n\n{content}")
            return tuple(rest)
    return (("user", system), *rest)


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
    #: A tokenizer whose chat template renders conversations when the server does not show its own.
    tokenizer: str | None = None


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
    #: A chat template (its Jinja text) to use instead of the tokenizer's own (hf only).
    chat_template: str | None = None
