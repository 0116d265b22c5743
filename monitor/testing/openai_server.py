"""A small OpenAI-compatible server: local HF models and LoRA adapters served under model names.

It stands in for vLLM in the tests, the benchmark and the demo, and it can
misbehave on purpose.  Endpoints::

    GET  /v1/models             id, root, parent and max_model_len of every served model, as vLLM lists them
    POST /v1/completions        prompt (text or a list of texts), max_tokens, stop, echo, logprobs
    POST /v1/chat/completions   messages through the model's chat template with the generation prompt, as
                                vLLM applies it (a model without a template: the contents joined by blank lines)
    POST /tokenize              {"model", "prompt"} or {"model", "messages", "add_generation_prompt"}
                                -> {"count", "tokens", "max_model_len"}, as vLLM's
    POST /detokenize            {"model", "tokens"} -> {"prompt"}, as vLLM's
    GET  /version               {"version"}, as vLLM's
    GET  /health

Decoding is greedy unless a ``temperature`` above 0 is asked for; ``top_p``,
``top_k`` and ``seed`` are honoured as the ``hf`` backend samples (a seeded
request draws the same tokens every time).  A conversation the template
refuses (a system message a template has no role for) is a 400, as vLLM
answers.  Scores and
text come from :class:`~monitor.backends.hf.HFBackend`, so they are the
in-process numbers: an echoed prompt's per-token log-probabilities are
differences of cumulative log-likelihoods that the ``hf`` backend computes
for the prompt's token prefixes in one packed call (one forward pass over the
prompt).  ``top_logprobs`` holds the token itself when it is known to be the
greedy one, and nothing otherwise.  Tokens and text offsets come from the
model's ``tokenizer.json`` (the ``tokenizers`` library, the fast tokenizer the
``hf`` backend uses), each token's offset counting its leading space, as
vLLM's do.

Faults are set per server with a :class:`FaultPlan`: a latency added to every
inference request, and rules that answer chosen requests (by number, by
content or by a seeded chance) with an HTTP status (429 with ``Retry-After``,
500, 401, ...), a dropped connection, malformed JSON, or a late answer.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from monitor._version import __version__
from monitor.backends import Backend, ModelSpec, load_backend
from monitor.backends.base import GREEDY, ChatBackend, GenerationRequest, LoglikelihoodRequest, Sampling
from monitor.errors import BackendError, ModelLoadError

log = logging.getLogger("monitor.testing.openai_server")
INFERENCE_PATHS = ("/v1/completions", "/v1/chat/completions")


@dataclass(frozen=True)
class FaultRule:
    """One kind of misbehaviour and the inference requests it hits.

    A request is hit when its number (1-based, counting inference requests
    only) is in ``requests``, when its body contains ``contains``, or by a
    chance of ``probability`` (drawn from the plan's seeded generator).
    """

    kind: Literal["status", "drop", "malformed", "slow"]
    #: For ``status``: the HTTP status to answer with.
    status: int = 500
    #: For ``status``: a ``Retry-After`` header (seconds or an HTTP date).
    retry_after: str | None = None
    #: For ``slow``: how long to wait before answering normally.
    delay_s: float = 0.0
    requests: frozenset[int] = frozenset()
    contains: str | None = None
    probability: float = 0.0


@dataclass(frozen=True)
class FaultPlan:
    """Latency added to every inference request, and the rules of misbehaviour (the first hit applies)."""

    latency_s: float = 0.0
    rules: tuple[FaultRule, ...] = ()
    seed: int = 0


@dataclass
class ServedModel:
    """A loaded model under a served name, with the tokenizer that gives token offsets."""

    name: str
    backend: Backend
    tokenizer: Any
    #: What ``/v1/models`` says besides the id (root, parent, max_model_len).
    facts: dict[str, Any] = field(default_factory=dict)
    #: Texts starting with this (the BOS text) are tokenised without special tokens, as the hf backend does.
    prefix_text: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def token_spans(self, text: str) -> list[tuple[int, int, int]]:
        """(token id, start, end) of every token, each span starting where the previous one ended."""
        special = not (self.prefix_text and text.startswith(self.prefix_text))
        encoding = self.tokenizer.encode(text, add_special_tokens=special)
        spans = []
        start = 0
        for token_id, (_, end) in zip(encoding.ids, encoding.offsets, strict=True):
            end = max(end, start)
            spans.append((token_id, start, end))
            start = end
        return spans

    def prompt_logprobs(self, text: str) -> list[tuple[str, int, float | None, bool]]:
        """(token text, offset, log-probability, known greedy) of every token of ``text``; the first has none."""
        spans = self.token_spans(text)
        if not spans:
            return []
        first_end = spans[0][2]
        continuations = tuple(text[first_end:end] for _, _, end in spans[1:])
        totals: Sequence[float] = ()
        greedy: Sequence[bool] = ()
        if continuations:
            with self.lock:
                (result,) = self.backend.loglikelihood(
                    [LoglikelihoodRequest(text[:first_end], continuations)]
                )
            totals, greedy = result.loglikelihoods, result.is_greedy
        out: list[tuple[str, int, float | None, bool]] = [(text[: spans[0][2]], 0, None, False)]
        previous = 0.0
        for (_, start, end), total, is_greedy in zip(spans[1:], totals, greedy, strict=True):
            out.append((text[start:end], start, total - previous, is_greedy))
            previous = total
        return out

    def generate(
        self, prompt: str, max_tokens: int, stop: Sequence[str], sampling: Sampling = GREEDY
    ) -> tuple[str, int, int]:
        if max_tokens <= 0:
            return "", len(self.token_spans(prompt)), 0
        with self.lock:
            (out,) = self.backend.generate([GenerationRequest(prompt, max_tokens, tuple(stop), sampling)])
        return out.text, out.prompt_tokens, out.completion_tokens

    def has_chat_template(self) -> bool:
        backend = self.backend
        return isinstance(backend, ChatBackend) and backend.chat_template() is not None

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        """The conversation through the model's chat template with the generation prompt (vLLM's way)."""
        assert isinstance(self.backend, ChatBackend)
        try:
            with self.lock:
                text = self.backend.render_chat(messages)
        except BackendError as exc:
            raise _BadRequest(400, str(exc)) from None
        return text or ""

    def score(self, context: str, continuation: str) -> float:
        with self.lock:
            (result,) = self.backend.loglikelihood([LoglikelihoodRequest(context, (continuation,))])
        return result.loglikelihoods[0]


def load_served_model(name: str, base: str | Path, adapter: str | Path | None = None) -> ServedModel:
    """Load a local HF model folder (and optionally a LoRA adapter) on the CPU in float32, to serve as ``name``."""
    from tokenizers import Tokenizer

    base_dir = Path(base)
    tokenizer_file = base_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ModelLoadError(f"{base_dir} has no tokenizer.json (the server needs a fast tokenizer)")
    backend = load_backend(
        ModelSpec("hf", str(base_dir), str(adapter) if adapter else None, device="cpu", dtype="float32")
    )
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    facts: dict[str, Any] = {
        "root": str(adapter) if adapter else str(base_dir),
        "parent": base_dir.name if adapter else None,
        "max_model_len": backend.describe().get("max_length"),
    }
    return ServedModel(name, backend, tokenizer, facts, prefix_text=_prefix_text(base_dir))


def _prefix_text(base_dir: Path) -> str:
    """The BOS (else EOS) token's text from ``tokenizer_config.json``."""
    try:
        config = json.loads((base_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    for key in ("bos_token", "eos_token"):
        token = config.get(key)
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str) and token:
            return token
    return ""


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class OpenAIServer:
    """The server on a background thread: ``with OpenAIServer(models) as server: ... server.url``.

    ``api_key`` (when given) must come as ``Authorization: Bearer``; ``memoize``
    keeps every answer by request body (decoding is greedy, so answers repeat):
    the benchmark uses it to take the model's compute out of the measurement.
    ``tokenize=False`` leaves ``/tokenize`` out, as most servers but vLLM do.
    ``stats`` counts requests by path and faults by kind.
    """

    def __init__(
        self,
        models: Mapping[str, ServedModel] | Sequence[ServedModel],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultPlan | None = None,
        api_key: str | None = None,
        memoize: bool = False,
        tokenize: bool = True,
    ) -> None:
        served = list(models.values()) if isinstance(models, Mapping) else list(models)
        self.models = {m.name: m for m in served}
        self.api_key = api_key or None
        self.memoize = memoize
        self.tokenize = tokenize
        self.stats: Counter[str] = Counter()
        #: Inference requests being answered now, and the most there ever were at once.
        self.in_flight = 0
        self.max_in_flight = 0
        self._cache: dict[str, tuple[int, dict[str, Any]]] = {}
        #: memoized answers as sent, by path and the request's bytes: a repeated request is
        #: answered without parsing or encoding JSON (the fleet benchmark's rate)
        self._sent: dict[tuple[str, bytes], bytes] = {}
        self._lock = threading.Lock()
        self.set_faults(faults or FaultPlan())
        handler = type("Handler", (_Handler,), {"app": self})
        self._httpd = _Server((host, port), handler)
        self._thread: threading.Thread | None = None

    def set_faults(self, plan: FaultPlan) -> None:
        """Misbehave from now on as ``plan`` says; the request count starts again at 1."""
        with self._lock:
            self.faults = plan
            self._rng = random.Random(plan.seed)
            self._count = 0

    @property
    def url(self) -> str:
        """The base URL clients use, ``http://host:port/v1``."""
        host, port = self._httpd.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else host
        return f"http://{name}:{port}/v1"

    def start(self) -> OpenAIServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="openai-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ faults

    def pick_fault(self, body: bytes) -> FaultRule | None:
        """The rule this inference request falls under, if any (and count it)."""
        with self._lock:
            self._count += 1
            number = self._count
            text = body.decode("utf-8", "replace")
            for rule in self.faults.rules:
                hit = (
                    number in rule.requests
                    or (rule.contains is not None and rule.contains in text)
                    or (rule.probability > 0 and self._rng.random() < rule.probability)
                )
                if hit:
                    self.stats[
                        f"fault_{rule.kind}" + (f"_{rule.status}" if rule.kind == "status" else "")
                    ] += 1
                    return rule
        return None

    # ------------------------------------------------------------------ endpoints

    def handle(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        """Answer one well-formed request: (status, JSON object)."""
        if method == "GET" and path in ("/v1/models", "/models"):
            return 200, {"object": "list", "data": [self._model_entry(m) for m in self.models.values()]}
        if method == "GET" and path == "/health":
            return 200, {"status": "ok"}
        if method == "GET" and path == "/version":
            return 200, {"version": f"monitor-openai-server {__version__}"}
        endpoints = (*INFERENCE_PATHS, "/tokenize", "/detokenize") if self.tokenize else INFERENCE_PATHS
        if method != "POST" or path not in endpoints:
            return 404, _error(404, f"no such endpoint: {method} {path}")
        if body is None:
            return 400, _error(400, "the body must be a JSON object")
        key = json.dumps([path, body], sort_keys=True) if self.memoize and repeatable(body) else ""
        if key and key in self._cache:
            return self._cache[key]
        try:
            model = self._model(body)
            if path == "/tokenize":
                answer: tuple[int, dict[str, Any]] = (200, self._tokenize(model, body))
            elif path == "/detokenize":
                answer = (200, self._detokenize(model, body))
            elif path == "/v1/completions":
                answer = (200, self._completions(model, body))
            else:
                answer = (200, self._chat(model, body))
        except _BadRequest as exc:
            return exc.status, _error(exc.status, str(exc))
        if key:
            self._cache[key] = answer
        return answer

    def _model_entry(self, model: ServedModel) -> dict[str, Any]:
        return {"id": model.name, "object": "model", "created": 0, "owned_by": "monitor", **model.facts}

    def _model(self, body: dict[str, Any]) -> ServedModel:
        name = body.get("model")
        if name not in self.models:
            raise _BadRequest(404, f"The model `{name}` does not exist.")
        if body.get("n", 1) != 1:
            raise _BadRequest(400, "n must be 1")
        return self.models[str(name)]

    def _tokenize(self, model: ServedModel, body: dict[str, Any]) -> dict[str, Any]:
        if "messages" in body:
            if not model.has_chat_template():
                raise _BadRequest(400, f"{model.name} has no chat template")
            if body.get("add_generation_prompt", True) is not True:
                raise _BadRequest(400, "this server renders conversations with the generation prompt only")
            rendered = model.render_chat(_messages(body))
            # vLLM's default for conversations: the template places the special tokens itself.
            special = bool(body.get("add_special_tokens", False))
            ids = list(model.tokenizer.encode(rendered, add_special_tokens=special).ids)
        else:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                raise _BadRequest(400, "prompt must be a string")
            ids = [token_id for token_id, _, _ in model.token_spans(prompt)]
        return {"count": len(ids), "max_model_len": model.facts.get("max_model_len"), "tokens": ids}

    def _detokenize(self, model: ServedModel, body: dict[str, Any]) -> dict[str, Any]:
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in tokens
        ):
            raise _BadRequest(400, "tokens must be a list of token ids")
        return {"prompt": model.tokenizer.decode(tokens, skip_special_tokens=False)}

    def _completions(self, model: ServedModel, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise _BadRequest(400, "prompt must be a string or a list of strings")
        max_tokens = _max_tokens(body)
        stop = _stop(body)
        sampling = _sampling(body)
        echo = bool(body.get("echo", False))
        logprobs = body.get("logprobs")
        choices = []
        usage = Counter[str]()
        for index, text in enumerate(prompts):
            generated, prompt_tokens, completion_tokens = model.generate(text, max_tokens, stop, sampling)
            usage["prompt_tokens"] += prompt_tokens
            usage["completion_tokens"] += completion_tokens
            choice: dict[str, Any] = {
                "index": index,
                "text": (text + generated) if echo else generated,
                "logprobs": None,
                "finish_reason": "length" if completion_tokens >= max_tokens else "stop",
            }
            if logprobs is not None:
                choice["logprobs"] = _logprobs(model, text, generated, echo)
            choices.append(choice)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {
            "id": f"cmpl-{time.monotonic_ns()}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model.name,
            "choices": choices,
            "usage": dict(usage),
        }

    def _chat(self, model: ServedModel, body: dict[str, Any]) -> dict[str, Any]:
        messages = _messages(body)
        if model.has_chat_template():
            prompt = model.render_chat(messages)
        else:
            prompt = "\n\n".join(content for _, content in messages)
        max_tokens = _max_tokens(body)
        text, prompt_tokens, completion_tokens = model.generate(
            prompt, max_tokens, _stop(body), _sampling(body)
        )
        return {
            "id": f"chatcmpl-{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "length" if completion_tokens >= max_tokens else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _messages(body: dict[str, Any]) -> list[tuple[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest(400, "messages must be a non-empty list")
    out = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise _BadRequest(400, "every message needs a role and a text content")
        out.append((str(message.get("role", "user")), message["content"]))
    return out


def _sampling(body: dict[str, Any]) -> Sampling:
    """Greedy at temperature 0 (the default here), else sampled as the body says."""
    temperature = body.get("temperature", 0)
    top_p = body.get("top_p", 1.0)
    top_k = body.get("top_k", 0)
    seed = body.get("seed")
    if not isinstance(temperature, int | float) or isinstance(temperature, bool) or temperature < 0:
        raise _BadRequest(400, "temperature must be a number, zero or more")
    if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        raise _BadRequest(400, "top_p must be in (0, 1]")
    if not isinstance(top_k, int) or top_k < -1:
        raise _BadRequest(400, "top_k must be a whole number (0 or -1: off)")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise _BadRequest(400, "seed must be a whole number")
    if temperature == 0:
        return GREEDY
    return Sampling(float(temperature), float(top_p), max(0, top_k), seed)


def _max_tokens(body: dict[str, Any]) -> int:
    value = body.get("max_tokens", 16)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _BadRequest(400, "max_tokens must be a whole number, zero or more")
    return value


def _stop(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop") or []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _BadRequest(400, "stop must be a string or a list of strings")
    return stops


def _logprobs(model: ServedModel, prompt: str, generated: str, echo: bool) -> dict[str, Any]:
    """OpenAI's legacy ``logprobs`` object: the prompt's tokens when echoed, then the generated text."""
    tokens: list[str] = []
    values: list[float | None] = []
    offsets: list[int] = []
    tops: list[dict[str, float] | None] = []
    if echo:
        for piece, offset, value, greedy in model.prompt_logprobs(prompt):
            tokens.append(piece)
            values.append(value)
            offsets.append(offset)
            tops.append({piece: value} if greedy and value is not None else None)
    if generated:
        value = model.score(prompt, generated)
        tokens.append(generated)
        values.append(value)
        offsets.append(len(prompt) if echo else 0)
        tops.append(None)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def repeatable(body: Mapping[str, Any]) -> bool:
    """Whether an answer repeats for the same request: a sampled one without a seed is drawn anew."""
    return not body.get("temperature") or body.get("seed") is not None


def _error(status: int, message: str) -> dict[str, Any]:
    kinds = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError", 429: "RateLimitError"}
    return {"error": {"message": message, "type": kinds.get(status, "InternalServerError"), "code": status}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops the connections a client opens at once past it;
    # each dropped one waits a second for its SYN to be sent again.
    request_queue_size = 256


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle's algorithm the body would wait for the
    # client's delayed ACK (40 ms on Linux) on every kept-alive connection.
    disable_nagle_algorithm = True
    app: OpenAIServer

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        app = self.app
        path = self.path.split("?", 1)[0]
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        app.stats[path] += 1
        if app.api_key is not None and not self._authorized(app.api_key):
            self._send(401, _error(401, "Incorrect API key provided."))
            return
        inference = method == "POST" and path in INFERENCE_PATHS
        if inference:
            with app._lock:
                app.in_flight += 1
                app.max_in_flight = max(app.max_in_flight, app.in_flight)
        try:
            if inference:
                plan = app.faults
                if plan.latency_s > 0:
                    time.sleep(plan.latency_s)
                rule = app.pick_fault(raw)
                if rule is not None and self._misbehave(rule):
                    return
            sent = app._sent.get((path, raw)) if app.memoize and inference else None
            if sent is not None:
                self._send_raw(200, sent, "application/json")
                return
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            try:
                status, answer = app.handle(method, path, body if isinstance(body, dict) else None)
            except Exception as exc:  # a model that cannot answer: a 500, as a real server gives
                log.warning("%s %s failed: %s: %s", method, path, type(exc).__name__, exc)
                status, answer = 500, _error(500, f"{type(exc).__name__}: {exc}")
            payload = json.dumps(answer).encode()
            if app.memoize and inference and status == 200 and isinstance(body, dict) and repeatable(body):
                app._sent[(path, raw)] = payload
            self._send_raw(status, payload, "application/json")
        finally:
            if inference:
                with app._lock:
                    app.in_flight -= 1

    def _misbehave(self, rule: FaultRule) -> bool:
        """Apply a fault; False when the request should then be answered normally (a late answer)."""
        if rule.kind == "slow":
            time.sleep(rule.delay_s)
            return False
        if rule.kind == "drop":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return True
        if rule.kind == "malformed":
            self._send_raw(200, b'{"id": "cmpl-broken", "choices": [{"text": "', "application/json")
            return True
        headers = [("Retry-After", rule.retry_after)] if rule.retry_after is not None else []
        self._send(rule.status, _error(rule.status, f"injected fault: HTTP {rule.status}"), headers)
        return True

    def _authorized(self, key: str) -> bool:
        scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode())

    def _send(self, status: int, body: dict[str, Any], headers: Sequence[tuple[str, str]] = ()) -> None:
        self._send_raw(status, json.dumps(body).encode(), "application/json", headers)

    def _send_raw(
        self, status: int, payload: bytes, content_type: str, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client gave up (a timeout test): nothing to answer
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)
