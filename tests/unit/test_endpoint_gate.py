"""The per-endpoint gate of the openai backend: one ``max_concurrency`` bound for every backend, run and
thread of the process that talks to one endpoint, endpoints independent of each other; measured at a
real server over loopback (the project's OpenAI-compatible server, with a latency on every request)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from monitor.backends import EndpointSpec
from monitor.backends.base import (
    GenerationRequest,
    GenerationResult,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    ModelFingerprint,
    ProgressCallback,
)
from monitor.backends.openai import POOL_CONNECTIONS, OpenAIBackend, endpoint_gate
from monitor.errors import BackendError
from monitor.testing.openai_server import FaultPlan, OpenAIServer, ServedModel

LATENCY_S = 0.05


class Echo:
    """A served model that answers every prompt with its last word (a real Backend; it cannot score)."""

    def generate(
        self, requests: Sequence[GenerationRequest], *, progress: ProgressCallback | None = None
    ) -> list[GenerationResult]:
        return [GenerationResult(" " + r.prompt.split()[-1], len(r.prompt.split()), 1) for r in requests]

    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], *, progress: ProgressCallback | None = None
    ) -> list[LoglikelihoodResult]:
        raise BackendError("this model cannot score")

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def fingerprint(self) -> ModelFingerprint:
        return ModelFingerprint("echo", "echo")

    def describe(self) -> dict[str, Any]:
        return {"backend": "echo"}

    def close(self) -> None:
        pass


def serve() -> OpenAIServer:
    models = [ServedModel(name, Echo(), None) for name in ("adapter-a", "adapter-b", "adapter-c")]
    return OpenAIServer(models, faults=FaultPlan(latency_s=LATENCY_S))


@pytest.fixture()
def server() -> Iterator[OpenAIServer]:
    with serve() as running:
        yield running


def connect(server: OpenAIServer, model: str, max_concurrency: int) -> OpenAIBackend:
    spec = EndpointSpec(server.url, max_concurrency=max_concurrency, mc_method="generate")
    return OpenAIBackend.load(model, spec, backoff_s=0.01)


def requests(n: int, tag: str) -> list[GenerationRequest]:
    return [GenerationRequest(f"ticket {tag} {i}", 2) for i in range(n)]


def at_once(*calls: Any) -> list[Any]:
    """Run each ``(backend, requests)`` on a thread of its own, all at once; their results."""
    results: list[Any] = [None] * len(calls)

    def call(i: int, backend: OpenAIBackend, batch: list[GenerationRequest]) -> None:
        results[i] = backend.generate(batch)

    threads = [threading.Thread(target=call, args=(i, *c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_the_bound_holds_across_the_backends_and_threads_of_one_endpoint(server: OpenAIServer) -> None:
    backends = [connect(server, name, 4) for name in ("adapter-a", "adapter-b", "adapter-c")]
    try:
        gate = endpoint_gate(backends[0].endpoint)
        assert gate is not None and gate.limit == 4
        assert all(b._gate is gate for b in backends)  # one loop and one gate for the endpoint
        started = time.perf_counter()
        out = at_once(*((b, requests(12, b.model)) for b in backends))
        elapsed = time.perf_counter() - started
        assert [[r.text for r in o] for o in out] == [[f" {i}" for i in range(12)]] * 3
        assert all(r.error is None for o in out for r in o)
        # 36 requests, 4 at a time at 50 ms: never more than 4 in flight, and the 4 always busy.
        assert server.max_in_flight == gate.max_in_flight == 4
        assert elapsed >= 36 / 4 * LATENCY_S * 0.9
    finally:
        for backend in backends:
            backend.close()
    assert endpoint_gate(backends[0].endpoint) is None  # the last backend out stopped its loop


def test_a_wide_endpoint_spreads_its_requests_over_small_connection_pools(server: OpenAIServer) -> None:
    """C = 40: three pools of at most 16 requests in flight each (httpcore walks a pool's every
    connection per request), each holding no more connections than it had requests at once."""
    backends = [connect(server, name, 40) for name in ("adapter-a", "adapter-b")]
    try:
        gate = endpoint_gate(backends[0].endpoint)
        assert gate is not None
        picked: list[int] = []  # the load of each pool a request was sent through, before it
        original = gate._pick_pool

        def pick() -> int:
            index = original()
            picked.append(gate._pool_load[index])
            return index

        gate._pick_pool = pick  # type: ignore[method-assign]
        out = at_once(*((b, requests(60, b.model)) for b in backends))
        assert all(r.error is None for o in out for r in o)
        assert server.max_in_flight == gate.max_in_flight == 40
        assert len(gate._pools) == 3 and len(picked) == 120 and max(picked) < POOL_CONNECTIONS
        assert gate._pool_load == [0, 0, 0]  # every slot given back to its pool
        for pool in gate._pools:
            assert len(pool._transport._pool.connections) <= POOL_CONNECTIONS  # type: ignore[attr-defined]
    finally:
        for backend in backends:
            backend.close()


def test_the_smallest_limit_of_an_endpoint_applies_until_its_backend_leaves(server: OpenAIServer) -> None:
    wide = connect(server, "adapter-a", 6)
    narrow = connect(server, "adapter-b", 2)
    try:
        gate = endpoint_gate(wide.endpoint)
        assert gate is not None and gate.limit == 2
        at_once((wide, requests(8, "w")), (narrow, requests(8, "n")))
        assert server.max_in_flight == 2
        narrow.close()
        assert gate.limit == 6
        server.max_in_flight = 0
        wide.generate(requests(12, "alone"))
        assert server.max_in_flight == 6
    finally:
        wide.close()
        narrow.close()


def test_separate_endpoints_are_bounded_independently(server: OpenAIServer) -> None:
    with serve() as other:
        here = connect(server, "adapter-a", 3)
        there = connect(other, "adapter-a", 3)
        try:
            assert endpoint_gate(here.endpoint) is not endpoint_gate(there.endpoint)
            started = time.perf_counter()
            at_once((here, requests(12, "h")), (there, requests(12, "t")))
            elapsed = time.perf_counter() - started
            assert server.max_in_flight == 3 and other.max_in_flight == 3
            # Each endpoint's 12 requests at 3 a time take 4 latencies; the two went side by side.
            assert elapsed < 2 * 12 / 3 * LATENCY_S
        finally:
            here.close()
            there.close()


def test_the_same_url_with_another_key_is_another_endpoint(
    server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_KEY", "sk-fleet")
    plain = connect(server, "adapter-a", 2)
    keyed = OpenAIBackend.load(
        "adapter-b",
        EndpointSpec(server.url, api_key_env="FLEET_KEY", max_concurrency=2, mc_method="generate"),
    )
    try:
        assert endpoint_gate(plain.endpoint) is not endpoint_gate(keyed.endpoint)
        at_once((plain, requests(8, "p")), (keyed, requests(8, "k")))
        assert server.max_in_flight == 4
    finally:
        plain.close()
        keyed.close()
