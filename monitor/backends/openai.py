"""The ``openai`` backend: a model behind an OpenAI-compatible HTTP API.

vLLM, TGI, Ollama, the llama.cpp server and hosted APIs all speak it.  The
model is named by its *served* name (a base model, or a LoRA adapter that
vLLM serves under its own name); the weights never enter this process.

Multiple choice is answered one of two ways, recorded as ``mc_method`` in
:meth:`OpenAIBackend.describe`:

``logprobs``
    ``/v1/completions`` with ``echo``, ``logprobs=1`` and ``max_tokens=1`` (as
    lm-evaluation-harness asks vLLM), one request per item with the context plus
    each continuation as a list of prompts.  The continuation's log-likelihood is
    the sum of the echoed prompt-token log-probabilities from the boundary on;
    the boundary is found from the tokens' text offsets, after the context's
    trailing whitespace (moved onto the continuation, as the ``hf`` backend and
    lm-eval do).  A token straddling the boundary counts for the continuation.
    On the same weights this gives the ``hf`` backend's numbers.
``generate``
    The choices are listed before the context ("Answer with one of: ..."), the
    answer is generated greedily and matched to a choice (:func:`match_choice`);
    an answer that matches none is wrong.  This is another measurement, so runs
    made this way are never paired with scored runs (see
    :func:`monitor.service.runs.record_mc_method`).

``auto`` (the default) probes the server at load and takes ``logprobs`` when
an echoed completion comes back with per-token log-probabilities.

Requests go out concurrently (at most ``max_concurrency`` in flight), paced by
token buckets for requests and tokens a minute, and are retried with
exponential backoff and jitter on connection errors, timeouts, malformed JSON,
429 and 5xx; a ``Retry-After`` header (seconds or an HTTP date) is honoured and
pauses every request of the backend.  Other 4xx answers are not retried.  An
item that still fails is returned with its ``error`` (the runner stores it as a
failed item, never as a wrong answer).

Token counts per item come from the responses' ``usage`` (generation) or the
echoed tokens (scoring).  :meth:`OpenAIBackend.count_tokens` asks the server's
``/tokenize`` (vLLM has one, next to ``/v1``) and otherwise estimates one token
per four characters.  The fingerprint hashes what ``/v1/models`` says about the
served model: its id, ``root``, ``parent``, ``max_model_len`` and ``owned_by``
(not ``created``, which vLLM sets at every start).

A refused API key (401 or 403) is never retried, and after
:data:`AUTH_FAILURES_TO_STOP` consecutive refusals the backend stops sending:
every later request fails at once with the same "authentication failed ...
(HTTP 401)" reason, so a wrong key costs a few calls, not one per item, and
the run fails with that reason.  A refusal while loading fails the load.

The API key is read from the environment variable named in the configuration
when the backend loads; it is sent as ``Authorization: Bearer`` and kept out of
every message, log line and record (any text that would carry it is redacted).

The ``max_concurrency`` bound is per endpoint and process-wide (:class:`EndpointGate`):
every backend of the same ``base_url`` and ``api_key_env`` (fifty adapters behind one
vLLM, the runs of several jobs in flight at once) runs on one event loop and shares
one gate, whose limit is the smallest ``max_concurrency`` among the backends using it.

This is the only backend module that talks HTTP; httpx exceptions become
:class:`~monitor.errors.EndpointError` here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from monitor._version import __version__
from monitor.backends.base import (
    GREEDY,
    PROBE_CONVERSATION,
    ChatTemplate,
    EndpointSpec,
    GenerationRequest,
    GenerationResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    ModelFingerprint,
    ProgressCallback,
    Sampling,
    cut_at_stop,
    fold_system,
    one_line,
    template_digest,
)
from monitor.errors import BackendError, EndpointAuthError, EndpointError, ModelLoadError, reason_of

log = logging.getLogger("monitor.backends.openai")
T = TypeVar("T")

#: Characters a token, for estimates when the server cannot count (English text, GPT-style tokenizers).
CHARS_PER_TOKEN = 4
#: The longest ``Retry-After`` the backend waits; a server asking for more fails the request.
MAX_RETRY_AFTER_S = 120.0
#: The longest backoff between two attempts.
MAX_BACKOFF_S = 30.0
#: Stop sequences sent to the server (OpenAI accepts four); all are applied to the text here.
MAX_STOP_SEQUENCES = 4
#: Model facts from ``/v1/models`` that identify the weights (``created`` changes at every vLLM start).
FINGERPRINT_FIELDS = ("id", "root", "parent", "max_model_len", "owned_by")
#: Consecutive authentication failures (401, 403) after which the backend sends nothing more.
AUTH_FAILURES_TO_STOP = 3
AUTH_STATUSES = (401, 403)
#: The chat template hash of a server that applies its template without showing it.
UNEXPOSED_TEMPLATE = "unknown: the server applies its chat template without exposing it"


class TokenBucket:
    """A token bucket refilled at ``per_minute / 60`` a second, holding at most ``burst_s`` seconds' worth.

    :meth:`reserve` takes what a request needs at once (the level may go below
    zero) and says how long to wait before sending; later callers queue behind.
    """

    def __init__(
        self, per_minute: float, *, burst_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self._clock = clock
        self._level = self.capacity
        self._updated = clock()

    def reserve(self, amount: float) -> float:
        """Take ``amount`` and return the seconds to wait before using it."""
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._updated) * self.rate)
        self._updated = now
        # A request larger than the bucket waits for a full bucket, then goes.
        needed = min(amount, self.capacity)
        wait = max(0.0, (needed - self._level) / self.rate)
        self._level -= amount
        return wait

    def adjust(self, amount: float) -> None:
        """Take ``amount`` more (give back when negative): the true cost once a response says it."""
        self._level -= amount


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay seconds or an HTTP date; None if absent or bad."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def match_choice(answer: str, choices: Sequence[str]) -> int | None:
    """The choice a generated ``answer`` names, or None.

    Case, punctuation and spacing are ignored.  An answer equal to a choice
    picks it; otherwise the choices found in the answer as whole words, less
    those inside a longer one found too (``shipping`` inside ``shipping and
    billing``), and of those the one named first.
    """
    said = _words(answer)
    names = [_words(choice) for choice in choices]
    for index, name in enumerate(names):
        if name and name == said:
            return index
    found: dict[int, int] = {}
    for index, name in enumerate(names):
        hit = re.search(rf"(?<!\w){re.escape(name)}(?!\w)", said) if name else None
        if hit is not None:
            found[index] = hit.start()
    for index in list(found):
        if any(other != index and names[index] in names[other] for other in found):
            del found[index]
    return min(found, key=lambda i: (found[i], i)) if found else None


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def choices_prompt(context: str, choices: Sequence[str]) -> str:
    """The prompt of ``mc_method: generate``: the choices listed, then the context."""
    return f"Answer with one of: {', '.join(choices)}.\n\n{context}"


class EndpointGate:
    """One endpoint's event loop and concurrency gate, shared by every backend of that endpoint in the process.

    Backends attach when they load and detach when closed; the loop runs on a thread of
    its own while any backend is attached.  At most :attr:`limit` requests are in flight
    through the gate at once, whichever backend, run or job sends them; waiting requests
    are let through first come, first served (one wake-up per freed slot, however many wait).
    """

    def __init__(self, key: tuple[str, str | None]) -> None:
        self.key = key
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name=f"openai-endpoint-{key[0]}", daemon=True
        )
        self.thread.start()
        self.users = 0
        self._limits: Counter[int] = Counter()
        #: The smallest ``max_concurrency`` among the attached backends (set under the gates' lock).
        self.limit = 1
        #: Requests through the gate now, and the most there ever were at once (read on any thread).
        self.in_flight = 0
        self.max_in_flight = 0
        # Touched on the loop's thread only: no lock.
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        #: The endpoint's connection pools and the requests in flight through each.
        self._pools: list[httpx.AsyncClient] = []
        self._pool_load: list[int] = []

    def client(self) -> httpx.AsyncClient:
        """The endpoint's first connection pool (on the loop's thread), for calls outside the gate's
        slots (loading, ``/version``, ``/tokenize``)."""
        return self._pools[0] if self._pools else self._pools[self._add_pool()]

    def _add_pool(self) -> int:
        self._pools.append(
            httpx.AsyncClient(
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=POOL_CONNECTIONS)
            )
        )
        self._pool_load.append(0)
        return len(self._pools) - 1

    def _pick_pool(self) -> int:
        """The first pool with fewer than :data:`POOL_CONNECTIONS` requests in flight (a new one when
        none has): the pools are shared by every backend of the endpoint, since a pool per backend
        would keep idle connections per backend (fifty adapters, thousands of sockets), and none
        grows past ``POOL_CONNECTIONS`` connections, since httpcore walks every connection of a pool
        on each request and its close (so one pool of ``C`` connections costs ``O(C)`` a request)."""
        for index, load in enumerate(self._pool_load):
            if load < POOL_CONNECTIONS:
                return index
        return self._add_pool()

    def _set_limits(self, max_concurrency: int, change: int) -> None:
        """Count a backend in (``change`` 1) or out (-1) and recompute the limit (under ``_GATES_LOCK``)."""
        self._limits[max_concurrency] += change
        if self._limits[max_concurrency] <= 0:
            del self._limits[max_concurrency]
        self.limit = min(self._limits) if self._limits else 1
        if change < 0:  # a larger limit may let waiting requests through
            self.loop.call_soon_threadsafe(self._admit)

    def _admit(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._take()
                waiter.set_result(None)

    def _take(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _give(self) -> None:
        self.in_flight -= 1
        self._admit()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[httpx.AsyncClient]:
        """Hold one of the endpoint's request slots (on the gate's loop): the pool to send it through."""
        if self.in_flight < self.limit and not self._waiters:
            self._take()
        else:
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._give()  # admitted as it was cancelled: hand the slot on
                raise
        index = self._pick_pool()
        self._pool_load[index] += 1
        try:
            yield self._pools[index]
        finally:
            self._pool_load[index] -= 1
            self._give()

    async def aclose(self) -> None:
        pools, self._pools, self._pool_load = self._pools, [], []
        for pool in pools:
            await pool.aclose()


_GATES: dict[tuple[str, str | None], EndpointGate] = {}
#: The most requests in flight through one of an endpoint's connection pools (:meth:`EndpointGate._pick_pool`).
POOL_CONNECTIONS = 16
_GATES_LOCK = threading.Lock()


def _gate_key(endpoint: EndpointSpec) -> tuple[str, str | None]:
    return (endpoint.base_url.rstrip("/"), endpoint.api_key_env)


def endpoint_gate(endpoint: EndpointSpec) -> EndpointGate | None:
    """The live gate of ``endpoint`` in this process (None when no backend of it is attached)."""
    with _GATES_LOCK:
        return _GATES.get(_gate_key(endpoint))


def _attach(endpoint: EndpointSpec) -> EndpointGate:
    key = _gate_key(endpoint)
    with _GATES_LOCK:
        gate = _GATES.get(key)
        if gate is None:
            gate = _GATES[key] = EndpointGate(key)
        gate.users += 1
        gate._set_limits(endpoint.max_concurrency, 1)
        return gate


def _detach(gate: EndpointGate, endpoint: EndpointSpec) -> None:
    with _GATES_LOCK:
        gate.users -= 1
        if gate.users > 0:
            gate._set_limits(endpoint.max_concurrency, -1)
            return
        if _GATES.get(gate.key) is gate:
            del _GATES[gate.key]
    if threading.current_thread() is gate.thread:
        gate.loop.call_soon_threadsafe(gate.loop.stop)
        return  # a backend dropped on the loop's own thread: the loop stops when this callback returns
    with contextlib.suppress(Exception):  # closing sockets: nothing to keep from a failure
        asyncio.run_coroutine_threadsafe(gate.aclose(), gate.loop).result(timeout=10)
    gate.loop.call_soon_threadsafe(gate.loop.stop)
    gate.thread.join(timeout=10)
    gate.loop.close()


class OpenAIBackend:
    """A model behind an OpenAI-compatible endpoint.  Build it with :meth:`load`.

    Implements :class:`monitor.backends.base.Backend`.  ``stats`` counts HTTP
    attempts by outcome (``requests``, ``retries``, ``gave_up``, ``http_<status>``,
    ``timeout``, ``connection``, ``malformed``) since the backend was loaded.
    """

    #: Calls may overlap (they share one concurrency gate): the runner hands over the next chunk
    #: while the last requests of the previous one are still in flight, so the slots never drain.
    overlapping_calls = 2

    def __init__(
        self,
        model: str,
        endpoint: EndpointSpec,
        *,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff_s: float = 0.5,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Wrap an endpoint without contacting it; use :meth:`load` instead."""
        self.model = model
        self.endpoint = endpoint
        self._key = api_key or None
        self._transport = transport
        self._backoff_s = backoff_s
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._requests = TokenBucket(endpoint.requests_per_minute) if endpoint.requests_per_minute else None
        self._tokens = TokenBucket(endpoint.tokens_per_minute) if endpoint.tokens_per_minute else None
        self._paused_until = 0.0
        self._url = endpoint.base_url.rstrip("/")
        self.mc_method = endpoint.mc_method
        self.server_facts: dict[str, Any] = {"id": model}
        self._can_tokenize: bool | None = None
        self.stats: Counter[str] = Counter()
        self._auth_failures = 0
        #: Why the backend stopped sending (the last authentication failure), once it has.
        self._auth_stopped: str | None = None
        self._chat: ChatTemplate | None = None
        self._chat_known = False
        #: Whether the server renders conversations for us (vLLM's /tokenize with messages, /detokenize).
        self._renders: bool | None = None
        #: ``endpoint.tokenizer``'s chat template, rendering for a server that does not show its own.
        self._local: Any = None
        self._stack: dict[str, str] | None = None
        # The endpoint's shared event loop and gate (attached at first use) and this backend's
        # connection pool on that loop, kept from call to call.
        self._gate: EndpointGate | None = None
        self._http: httpx.AsyncClient | None = None
        # Several runs (threads) may share this backend: one attaches it, one asks the server's facts.
        self._attach_lock = threading.Lock()
        self._facts_lock = threading.RLock()
        self._release: weakref.finalize[Any, Any] | None = None
        self._headers = {"User-Agent": f"model-aging-monitor/{__version__}", **dict(endpoint.headers)}
        if self._key:
            self._headers["Authorization"] = f"Bearer {self._key}"

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        model: str,
        endpoint: EndpointSpec,
        *,
        env: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff_s: float = 0.5,
    ) -> OpenAIBackend:
        """Check that the server serves ``model``, read its facts and settle the multiple-choice method.

        Raises :class:`ModelLoadError` when the key's variable is unset, the
        server cannot be reached, or it does not serve ``model``.
        """
        environ = os.environ if env is None else env
        key = None
        if endpoint.api_key_env:
            key = environ.get(endpoint.api_key_env)
            if not key:
                raise ModelLoadError(
                    f"environment variable {endpoint.api_key_env} (the API key of {model}) is not set"
                )
        backend = cls(model, endpoint, api_key=key, transport=transport, backoff_s=backoff_s)
        try:
            backend._run(backend._load())
        except EndpointError as exc:
            backend.close()
            raise ModelLoadError(f"{model} at {backend.safe_url}: {exc}") from exc
        return backend

    async def _load(self) -> None:
        client = self._connection_pool()
        try:
            listing = await self._call(client, "GET", "/models", None, tokens=0)
        except EndpointError as exc:
            if exc.status not in (404, 405):
                raise
            listing = None  # some servers have no model list: the name is all we know
        if listing is not None:
            served = [m for m in listing.get("data") or [] if isinstance(m, dict)]
            entry = next((m for m in served if m.get("id") == self.model), None)
            if entry is None:
                names = ", ".join(str(m.get("id")) for m in served) or "nothing"
                raise EndpointError(f"the server does not serve {self.model!r}; it serves {names}")
            self.server_facts = {k: entry[k] for k in FINGERPRINT_FIELDS if entry.get(k) is not None}
        if self.mc_method == "auto":
            self.mc_method = "logprobs" if await self._has_prompt_logprobs(client) else "generate"

    async def _has_prompt_logprobs(self, client: httpx.AsyncClient) -> bool:
        payload = {**self._logprob_payload(["Hello world"])}
        try:
            data = await self._call(client, "POST", "/completions", payload, tokens=4)
        except EndpointAuthError:
            raise
        except EndpointError as exc:
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                return False  # no completions endpoint, or no echo/logprobs: answer by generation
            raise
        try:
            logprobs = data["choices"][0]["logprobs"]
            return len(logprobs["token_logprobs"]) >= 2 and len(logprobs["text_offset"]) >= 2
        except (KeyError, IndexError, TypeError):
            return False

    # ------------------------------------------------------------------ Backend protocol

    def loglikelihood(
        self,
        requests: Sequence[LoglikelihoodRequest],
        *,
        progress: ProgressCallback | None = None,
    ) -> list[LoglikelihoodResult]:
        """Score (or, under ``mc_method: generate``, pick) the continuations of every request."""
        one = self._score_item if self.mc_method == "logprobs" else self._pick_item
        return self._run(self._each(requests, one, _failed_ll, progress))

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        progress: ProgressCallback | None = None,
    ) -> list[GenerationResult]:
        """Decode every request greedily (temperature 0) through chat or completions."""
        return self._run(self._each(requests, self._generate_item, _failed_gen, progress))

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` by the server's ``/tokenize``; an estimate (4 characters a token) without one."""
        if self._can_tokenize is not False:
            count = self._run(self._tokenize(text))
            if count is not None:
                return count
        return estimate_tokens(text)

    def fingerprint(self) -> ModelFingerprint:
        """A hash of what the server reports about the served model (id, root, parent, max_model_len)."""
        facts = json.dumps(self.server_facts, sort_keys=True, default=str)
        digest = hashlib.sha256(f"openai|{facts}".encode()).hexdigest()
        files = {k: str(v) for k, v in self.server_facts.items()}
        return ModelFingerprint(
            digest=digest, base=self.model, adapter=None, files=files, stack=self._stack_facts()
        )

    def _stack_facts(self) -> dict[str, str]:
        """What the server says about the stack around the weights: vLLM's ``/version``, and the
        chat template's hash when the server renders conversations for us (asked once)."""
        with self._facts_lock:
            return dict(self._ask_stack())

    def _ask_stack(self) -> dict[str, str]:
        if self._stack is None:
            stack = {f"server/{k}": str(v) for k, v in self.server_facts.items()}
            version = self._run(self._version())
            if version is not None:
                stack["server/version"] = version
            try:
                chat = self.chat_template()
            except EndpointAuthError:
                raise
            except BackendError:  # the weights' identity does not wait on a flaky /tokenize
                chat = None
            if chat is not None and chat.sha256 != UNEXPOSED_TEMPLATE:
                stack["chat_template/rendered"] = chat.sha256
            self._stack = stack
        return self._stack

    async def _version(self) -> str | None:
        root = re.sub(r"/v\d+$", "", self._url)
        try:
            data = await self._call(self._connection_pool(), "GET", "/version", None, tokens=0, base=root)
        except EndpointAuthError:
            raise
        except EndpointError:
            return None
        version = data.get("version")
        return str(version) if version is not None else None

    def chat_template(self) -> ChatTemplate | None:
        """The server's chat template as far as it shows it (asked once).

        A server that renders conversations (vLLM's ``/tokenize`` with ``messages``,
        then ``/detokenize``) gives the rendered probe's hash and whether a system
        message survives; one that does not is taken to apply a template unseen
        (``sha256`` reads :data:`UNEXPOSED_TEMPLATE`): chat requests then carry the
        messages, and multiple choice, which needs the text, fails its items with the reason.
        """
        with self._facts_lock:
            if not self._chat_known:
                chat = self._run(self._probe_chat())
                if chat.sha256 == UNEXPOSED_TEMPLATE and self.endpoint.tokenizer:
                    # the configured tokenizer's template stands for the server's, which it does not show
                    from monitor.backends.hf.chat import load_chat_renderer

                    self._local = load_chat_renderer(self.endpoint.tokenizer)
                    chat = self._local.template() or chat
                self._chat = chat
                self._chat_known = True
            return self._chat

    async def _probe_chat(self) -> ChatTemplate:
        # 404/405: no such endpoint (the template is not exposed); 400/422: the request was refused,
        # which for a conversation with a system message means the template has no system role.
        # Anything else (a server kept failing) is raised: a transient failure must not pass for a template.
        system_role = True
        try:
            rendered = await self._render(PROBE_CONVERSATION)
            system_role = PROBE_CONVERSATION[0][1] in rendered
        except EndpointAuthError:
            raise
        except EndpointError as exc:
            if exc.status in (404, 405):
                self._renders = False
                return ChatTemplate(UNEXPOSED_TEMPLATE, True, "server")
            if exc.status not in (400, 422):
                raise
            system_role = False
        if not system_role:
            try:
                rendered = await self._render(fold_system(PROBE_CONVERSATION))
            except EndpointAuthError:
                raise
            except EndpointError as exc:
                if exc.status not in (400, 404, 405, 422):
                    raise
                self._renders = False  # /tokenize takes no conversations here
                return ChatTemplate(UNEXPOSED_TEMPLATE, True, "server")
        self._renders = True
        return ChatTemplate(template_digest(rendered), system_role, "server")

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str | None:
        """The conversation as the server's template renders it (else as ``endpoint.tokenizer``'s does);
        None when neither shows it."""
        if self._renders is None:
            self.chat_template()
        if self._local is not None:
            return self._local.render(messages)
        if not self._renders:
            return None
        return self._run(self._render(messages))

    async def _render(self, messages: Sequence[tuple[str, str]]) -> str:
        """vLLM's way: ``/tokenize`` the conversation with the generation prompt, ``/detokenize`` the tokens."""
        root = re.sub(r"/v\d+$", "", self._url)
        client = self._connection_pool()
        payload = {
            "model": self.model,
            "messages": [{"role": role, "content": content} for role, content in messages],
            "add_generation_prompt": True,
            "add_special_tokens": False,
        }
        data = await self._call(client, "POST", "/tokenize", payload, tokens=0, base=root)
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise EndpointError("/tokenize: the response has no token ids")
        text = await self._call(
            client, "POST", "/detokenize", {"model": self.model, "tokens": tokens}, tokens=0, base=root
        )
        prompt = text.get("prompt")
        if not isinstance(prompt, str):
            raise EndpointError("/detokenize: the response has no prompt text")
        return prompt

    def describe(self) -> dict[str, Any]:
        """The endpoint (without credentials), the method, limits and request counts; never the key."""
        e = self.endpoint
        return {
            "backend": "openai",
            "model": self.model,
            "base_url": self.safe_url,
            "api": e.api,
            "mc_method": self.mc_method,
            # Only once asked (a chat eval set, or the fingerprint): describing sends nothing.
            "chat_template": None
            if self._chat is None
            else {
                "sha256": self._chat.sha256,
                "system_role": self._chat.system_role,
                "source": self._chat.source,
                **({"tokenizer": self.endpoint.tokenizer} if self._local is not None else {}),
            },
            "server": dict(self.server_facts),
            "token_counts": self.token_counts(),
            "tokenize": {None: "not asked", True: "server /tokenize", False: "estimate"}[self._can_tokenize],
            "api_key_env": e.api_key_env,
            "headers": sorted(name for name, _ in e.headers),
            "timeout_s": e.timeout_s,
            "max_concurrency": e.max_concurrency,
            "requests_per_minute": e.requests_per_minute,
            "tokens_per_minute": e.tokens_per_minute,
            "max_retries": e.max_retries,
            "requests": dict(self.stats),
            "httpx": httpx.__version__,
        }

    def token_counts(self) -> str:
        """Where the stored token counts of this backend's items come from, in words."""
        if self.mc_method == "logprobs":
            source = "echoed prompt tokens (multiple choice); the responses' usage (generation)"
        else:
            source = "the responses' usage, prompt and completion tokens"
        estimated = self.stats.get("usage_estimated", 0)
        if estimated:
            source += f"; estimated at 4 characters a token for {estimated} responses without usage"
        return source

    def close(self) -> None:
        """Close the connections and leave the endpoint's gate (its loop stops with its last backend)."""
        with self._attach_lock:
            gate, self._gate = self._gate, None
            release, self._release = self._release, None
        if gate is None:
            return
        http, self._http = self._http, None
        try:
            if http is not None:
                asyncio.run_coroutine_threadsafe(http.aclose(), gate.loop).result(timeout=10)
        finally:
            if release is not None:
                release()  # _detach, once

    @property
    def safe_url(self) -> str:
        """The base URL without any user or password in it."""
        parts = urlsplit(self._url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    # ------------------------------------------------------------------ per item

    async def _each(
        self,
        requests: Sequence[Any],
        one: Callable[[httpx.AsyncClient, Any], Awaitable[T]],
        failed: Callable[[Any, str], T],
        progress: ProgressCallback | None,
    ) -> list[T]:
        """Run ``one`` for every request, at most ``max_concurrency`` at a time; failures become results.

        The bound holds across overlapping calls, backends and runs: they share the endpoint's gate.
        """
        gate = self._gate
        assert gate is not None  # attached by _run, which every call goes through

        async def guarded(client: httpx.AsyncClient | None, request: Any) -> T:
            async with gate.slot() as pooled:
                try:
                    result = await one(client or pooled, request)
                except BackendError as exc:
                    result = failed(request, self._redact(reason_of(exc)))
            if progress is not None:
                progress(1)
            return result

        if not requests:
            return []
        own = self._connection_pool() if self._transport is not None else None  # a test's transport
        return list(await asyncio.gather(*(guarded(own, r) for r in requests)))

    async def _score_item(
        self, client: httpx.AsyncClient, request: LoglikelihoodRequest
    ) -> LoglikelihoodResult:
        if request.messages and not request.context:
            raise BackendError(
                "multiple choice under format: chat needs the rendered prompt, and the server does not expose "
                "its chat template (vLLM's /tokenize with messages and /detokenize): name the served model's "
                "tokenizer in endpoint.tokenizer to render it here"
            )
        prompts = [request.context + c for c in request.continuations]
        data = await self._call(
            client,
            "POST",
            "/completions",
            self._logprob_payload(prompts),
            tokens=sum(estimate_tokens(p) + 1 for p in prompts),
        )
        choices = _choices(data, len(prompts))
        # The hf backend's boundary: trailing whitespace of the context belongs to the continuation.
        boundary = len(request.context) if request.exact_boundary else len(request.context.rstrip())
        lls: list[float] = []
        greedy: list[bool] = []
        cont_tokens: list[int] = []
        context_tokens = 0
        for prompt, choice in zip(prompts, choices, strict=True):
            ll, is_greedy, n_context, n_cont = _continuation_logprob(choice, prompt, boundary)
            lls.append(ll)
            greedy.append(is_greedy)
            cont_tokens.append(n_cont)
            context_tokens = n_context
        return LoglikelihoodResult(tuple(lls), tuple(greedy), context_tokens, tuple(cont_tokens))

    async def _pick_item(
        self, client: httpx.AsyncClient, request: LoglikelihoodRequest
    ) -> LoglikelihoodResult:
        choices = [c.strip() for c in request.continuations]
        max_tokens = 16 + max(len(c) for c in choices) // 2
        if request.messages:  # the choices open the last user turn, and the server renders the conversation
            *before, (role, last) = request.messages
            messages = (*before, (role, choices_prompt(last, choices)))
            text, prompt_tokens, completion_tokens = await self._complete(
                client, "", max_tokens, ("\n",), messages=messages
            )
        else:
            prompt = choices_prompt(request.context, choices)
            text, prompt_tokens, completion_tokens = await self._complete(client, prompt, max_tokens, ("\n",))
        text = cut_at_stop(text.strip(), ("\n",)).strip()  # the first line: servers may ignore stop
        chosen = match_choice(text, choices)
        lls = tuple(0.0 if i == chosen else -math.inf for i in range(len(choices)))
        return LoglikelihoodResult(
            lls,
            tuple(i == chosen for i in range(len(choices))),
            prompt_tokens,
            tuple(0 for _ in choices),
            generated=text,
            completion_tokens=completion_tokens,
        )

    async def _generate_item(self, client: httpx.AsyncClient, request: GenerationRequest) -> GenerationResult:
        if request.max_new_tokens <= 0:
            return GenerationResult("", estimate_tokens(request.prompt), 0)
        text, prompt_tokens, completion_tokens = await self._complete(
            client,
            request.prompt,
            request.max_new_tokens,
            request.stop,
            # rendered here by endpoint.tokenizer: the text goes to /v1/completions (unless api: chat)
            messages=request.messages if self._local is None or self.endpoint.api == "chat" else (),
            sampling=request.sampling,
        )
        return GenerationResult(cut_at_stop(text, request.stop), prompt_tokens, completion_tokens)

    async def _complete(
        self,
        client: httpx.AsyncClient,
        prompt: str,
        max_tokens: int,
        stop: Sequence[str],
        *,
        messages: Sequence[tuple[str, str]] = (),
        sampling: Sampling = GREEDY,
    ) -> tuple[str, int, int]:
        """Text for ``prompt`` (or the conversation ``messages``, through the chat API) and the usage's
        prompt and completion tokens.  Greedy unless ``sampling`` says otherwise."""
        payload: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens,
            "temperature": sampling.temperature,
        }
        if not sampling.greedy:
            if sampling.top_p < 1.0:
                payload["top_p"] = sampling.top_p
            if sampling.top_k > 0:
                payload["top_k"] = sampling.top_k  # vLLM's extension of the OpenAI API
            if sampling.seed is not None:
                payload["seed"] = sampling.seed
        stops = [s for s in stop if s][:MAX_STOP_SEQUENCES]
        if stops:
            payload["stop"] = stops
        chat = self.endpoint.api == "chat" or bool(messages)
        if messages:
            payload["messages"] = [{"role": role, "content": content} for role, content in messages]
        elif chat:
            payload["messages"] = [{"role": "user", "content": prompt}]
        else:
            payload["prompt"] = prompt
        path = "/chat/completions" if chat else "/completions"
        sent = prompt or " ".join(content for _, content in messages)
        data = await self._call(client, "POST", path, payload, tokens=estimate_tokens(sent) + max_tokens)
        (choice,) = _choices(data, 1)
        try:
            text = choice["message"]["content"] if chat else choice["text"]
        except (KeyError, TypeError):
            raise EndpointError(f"{path}: the response has no {'message' if chat else 'text'}") from None
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        if _int(usage.get("prompt_tokens"), -1) < 0 or _int(usage.get("completion_tokens"), -1) < 0:
            self.stats["usage_estimated"] += 1
        prompt_tokens = _int(usage.get("prompt_tokens"), estimate_tokens(sent))
        completion_tokens = _int(usage.get("completion_tokens"), estimate_tokens(text or ""))
        return text or "", prompt_tokens, completion_tokens

    def _logprob_payload(self, prompts: list[str]) -> dict[str, Any]:
        # max_tokens=1, not 0: what lm-eval sends, and what servers that reject 0 accept.
        return {
            "model": self.model,
            "prompt": prompts,
            "max_tokens": 1,
            "temperature": 0,
            "echo": True,
            "logprobs": 1,
        }

    async def _tokenize(self, text: str) -> int | None:
        root = re.sub(r"/v\d+$", "", self._url)
        try:
            data = await self._call(
                self._connection_pool(),
                "POST",
                "/tokenize",
                {"model": self.model, "prompt": text},
                tokens=0,
                base=root,
            )
        except EndpointAuthError:
            raise
        except EndpointError as exc:
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                self._can_tokenize = False
                return None
            raise
        count = data.get("count")
        if not isinstance(count, int):
            tokens = data.get("tokens")
            count = len(tokens) if isinstance(tokens, list) else None
        self._can_tokenize = count is not None
        return count

    # ------------------------------------------------------------------ HTTP

    def _connection_pool(self) -> httpx.AsyncClient:
        """The endpoint's shared client (:meth:`EndpointGate.client`); a client of this backend's own
        when it was given a transport.  Headers and timeout go with each request."""
        if self._transport is None and self._gate is not None:
            return self._gate.client()
        if self._http is None:
            self._http = self._client()
        return self._http

    def _client(self) -> httpx.AsyncClient:
        limit = self.endpoint.max_concurrency
        return httpx.AsyncClient(
            headers=self._headers,
            timeout=httpx.Timeout(self.endpoint.timeout_s),
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
            transport=self._transport,
        )

    def _run(self, coroutine: Awaitable[T]) -> T:
        """Run ``coroutine`` on the backend's event loop (started at first use) and wait for it.

        Progress callbacks are called from the loop's thread.
        """
        with self._attach_lock:
            if self._gate is None:
                self._gate = _attach(self.endpoint)
                # A backend dropped without close() leaves the gate too (its limit no longer counts).
                self._release = weakref.finalize(self, _detach, self._gate, self.endpoint)
            gate = self._gate

        async def main() -> T:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(main(), gate.loop).result()

    async def _call(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        payload: dict[str, Any] | None,
        *,
        tokens: float,
        base: str | None = None,
    ) -> dict[str, Any]:
        """One API call with pacing and retries; the decoded JSON object.

        Raises :class:`EndpointError` at once on a 4xx other than 429, and after
        ``max_retries`` retries on anything retryable.
        """
        url = (base or self._url) + path
        attempts = self.endpoint.max_retries + 1
        for attempt in range(1, attempts + 1):
            await self._wait_turn(tokens)
            if self._auth_stopped is not None:
                self.stats["not_sent"] += 1
                raise EndpointAuthError(self._auth_stopped, None)
            self.stats["requests"] += 1
            retry_after: float | None = None
            status: int | None = None
            try:
                response = await client.request(
                    method, url, json=payload, headers=self._headers, timeout=self.endpoint.timeout_s
                )
            except httpx.TimeoutException:
                self.stats["timeout"] += 1
                problem = f"no answer within {self.endpoint.timeout_s:g}s"
            except httpx.TransportError as exc:
                self.stats["connection"] += 1
                problem = f"connection failed ({type(exc).__name__}: {one_line(exc)})"
            else:
                status = response.status_code
                if status < 400:
                    try:
                        data = response.json()
                    except ValueError:
                        data = None
                    if isinstance(data, dict):
                        self._auth_failures = 0
                        self._charge(tokens, data)
                        return data
                    self.stats["malformed"] += 1
                    problem = f"HTTP {status} with a body that is not a JSON object"
                else:
                    self.stats[f"http_{status}"] += 1
                    problem = f"HTTP {status} {response.reason_phrase}: {_error_message(response)}"
                    if status in AUTH_STATUSES:
                        raise self._refused(method, path, status, _error_message(response))
                    if status != 429 and status < 500:
                        raise EndpointError(self._redact(f"{method} {path}: {problem}"), status)
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if attempt == attempts:
                break
            if retry_after is not None:
                if retry_after > MAX_RETRY_AFTER_S:
                    self.stats["gave_up"] += 1
                    raise EndpointError(
                        self._redact(
                            f"{method} {path}: {problem}; the server asks to retry after {retry_after:.0f}s, "
                            f"more than the {MAX_RETRY_AFTER_S:.0f}s this backend waits"
                        ),
                        status,
                    )
                # The server's wait applies to every request of this backend, not only this one.
                self._paused_until = max(self._paused_until, time.monotonic() + retry_after)
                delay = retry_after
            else:
                delay = self._backoff(attempt)
            self.stats["retries"] += 1
            log.warning(
                "%s %s for %s: %s; retry %d of %d in %.2fs",
                method,
                path,
                self.model,
                self._redact(problem),
                attempt,
                attempts - 1,
                delay,
            )
            await self._sleep(delay)
        self.stats["gave_up"] += 1
        raise EndpointError(
            self._redact(f"{method} {path} failed after {attempts} attempts: {problem}"), status
        )

    def _refused(self, method: str, path: str, status: int, message: str) -> EndpointAuthError:
        """The error of a refused key; the backend stops sending after enough of them in a row."""
        self._auth_failures += 1
        key = f" (the key in ${self.endpoint.api_key_env})" if self.endpoint.api_key_env else ""
        reason = self._redact(
            f"authentication failed at {self.safe_url}{key} (HTTP {status}): {method} {path}: {message}"
        )
        if self._auth_failures >= AUTH_FAILURES_TO_STOP and self._auth_stopped is None:
            self._auth_stopped = (
                f"{reason}; {self._auth_failures} requests in a row were refused, so no more are sent"
            )
            log.error("%s: %s", self.model, self._auth_stopped)
        return EndpointAuthError(reason, status)

    async def _wait_turn(self, tokens: float) -> None:
        """Wait out a server's Retry-After pause and the rate limits, then go."""
        wait = self._paused_until - time.monotonic()
        if wait > 0:
            await self._sleep(wait)
        wait = 0.0
        if self._requests is not None:
            wait = max(wait, self._requests.reserve(1))
        if self._tokens is not None and tokens:
            wait = max(wait, self._tokens.reserve(tokens))
        if wait > 0:
            await self._sleep(wait)

    def _charge(self, estimated: float, data: dict[str, Any]) -> None:
        """Correct the token bucket with the tokens the response says it cost."""
        usage = data.get("usage")
        if self._tokens is not None and isinstance(usage, dict):
            total = usage.get("total_tokens")
            if isinstance(total, int | float):
                self._tokens.adjust(float(total) - estimated)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: between half and all of ``backoff_s * 2**(attempt-1)``."""
        ceiling = min(MAX_BACKOFF_S, self._backoff_s * 2 ** (attempt - 1))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "[redacted]") if self._key else text


# ---------------------------------------------------------------------- helpers


def estimate_tokens(text: str) -> int:
    """A token count without a tokenizer: one token per four characters, at least one for any text."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN)) if text else 0


def _choices(data: dict[str, Any], expected: int) -> list[dict[str, Any]]:
    """The response's choices in prompt order, checked to be ``expected`` many."""
    raw = data.get("choices")
    if not isinstance(raw, list) or len(raw) != expected or not all(isinstance(c, dict) for c in raw):
        got = len(raw) if isinstance(raw, list) else "no"
        raise EndpointError(f"expected {expected} choices in the response, got {got}")
    return sorted(raw, key=lambda c: c.get("index", 0))


def _continuation_logprob(choice: dict[str, Any], prompt: str, boundary: int) -> tuple[float, bool, int, int]:
    """Log-likelihood of ``prompt[boundary:]`` from an echoed choice, its greediness, and token counts."""
    try:
        logprobs = choice["logprobs"]
        tokens = list(logprobs["tokens"])
        values = list(logprobs["token_logprobs"])
        offsets = [int(o) for o in logprobs["text_offset"]]
        tops = list(logprobs.get("top_logprobs") or [None] * len(tokens))
    except (KeyError, TypeError, ValueError):
        raise EndpointError(
            "the response has no echoed log-probabilities (logprobs.tokens, text_offset)"
        ) from None
    # The echo is followed by the generated token(s): keep the prompt's.
    n = sum(1 for offset in offsets if offset < len(prompt))
    total = 0.0
    greedy = True
    context_tokens = continuation_tokens = 0
    for i in range(n):
        end = offsets[i + 1] if i + 1 < n else len(prompt)
        if end <= boundary and offsets[i] < boundary:
            context_tokens += 1
            continue
        value = values[i]
        if value is None:
            raise EndpointError("the server gave no log-probability for the continuation's first token")
        total += float(value)
        continuation_tokens += 1
        top = tops[i] if i < len(tops) else None
        greedy = greedy and isinstance(top, dict) and bool(top) and float(value) >= max(top.values()) - 1e-6
    if continuation_tokens == 0 and len(prompt) > boundary:
        raise EndpointError("the echoed tokens do not cover the continuation")
    return total, greedy, context_tokens, continuation_tokens


def _int(value: Any, default: int) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def _error_message(response: httpx.Response) -> str:
    """The server's error message (OpenAI's ``{"error": {"message": ...}}``), in one short line."""
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:300] or "(no body)"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    if error is None and isinstance(body, dict):
        error = body.get("message") or body.get("detail")
    return " ".join(str(error if error is not None else body).split())[:300]


def _failed_ll(request: LoglikelihoodRequest, reason: str) -> LoglikelihoodResult:
    return LoglikelihoodResult((), (), 0, (), error=reason)


def _failed_gen(request: GenerationRequest, reason: str) -> GenerationResult:
    return GenerationResult("", 0, 0, error=reason)
